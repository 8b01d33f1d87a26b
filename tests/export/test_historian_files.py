"""A plant's own historian files, quirks and all, loaded or refused with one clear line.

The files come from the second test plant (:mod:`tests.plants.cstr`, a jacketed reactor at
180 s), written the way historians write them (:mod:`tests.plants.formats`): local time in a
day-first format with a UTC offset, rows off the grid, gaps, duplicated rows, a column of
strings; the long exception-based form; and the agent's own recording directories. Read through
the export chain's one loader (:func:`export.tables.read_table`), and through ``edge-export
train`` where the error must reach the user.
"""

from __future__ import annotations

import csv
import gzip
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from export.tables import DataError, TimestampSpec, read_table
from tests.plants import cstr
from tests.plants.formats import (
    Episode,
    write_agent_recording,
    write_historian_long,
    write_historian_wide,
)

ROOT = Path(__file__).resolve().parents[2]
LOCAL = TimestampSpec(column="Time (UTC+01:00)", format="%d.%m.%Y %H:%M:%S %z")


@pytest.fixture(scope="module")
def run():
    dropout = Episode("feed_flow_dropout", 3, 20 * 3600.0, 30 * 3600.0, "r1", "R1.FI101")
    return cstr.simulate(2.0, seed=21, episodes=[dropout])


@pytest.fixture
def historian(run, tmp_path: Path):
    path = tmp_path / "R1 export 2026-11.csv"
    return path, write_historian_wide(run, path, seed=4)


def test_wide_export_with_offset_local_format_gaps_and_duplicates(run, historian) -> None:
    path, quirks = historian
    table = read_table(path, LOCAL)
    # local day-first time with +01:00 read as UTC: the first row is the run's first sample
    t, v = table.numeric("R1.TI201")
    assert t[0] == run.start.timestamp()
    assert table.duplicates == len(quirks.duplicated_rows)
    assert np.all(np.diff(t) > 0)  # sorted, unique
    # rows off the grid: up to the jitter, never a whole period
    grid = run.start.timestamp() + run.period_s * np.round((t - run.start.timestamp()) / run.period_s)
    off = np.abs(t - grid)
    assert off.max() <= quirks.jitter_s + 1e-6 and off.std() > 1.0
    # on the model's grid, each gap of the export is a run of missing rows, nothing invented
    times, cols = table.grid(["R1.TI201", "R1.AI201"], run.period_s)
    missing = np.isnan(cols[0])
    for a, b in quirks.gap_rows:
        lo = round((run.start.timestamp() + a * run.period_s - times[0]) / run.period_s)
        hi = round((run.start.timestamp() + (b - 1) * run.period_s - times[0]) / run.period_s)
        assert missing[lo + 2 : hi - 1].all(), f"gap rows {a}-{b} not missing"
    assert missing.sum() < sum(b - a for a, b in quirks.gap_rows) + 10
    # the values that are there are the plant's (to the export's 6 decimals)
    k = np.searchsorted(t, run.start.timestamp() + 5 * run.period_s - quirks.jitter_s)
    assert v[k] == pytest.approx(run.values["R1.TI201"][5], abs=1e-5)
    # the feed-flow dropout: empty cells are gaps, not zeros
    _fi_t, fi = table.numeric("R1.FI101")
    assert np.isnan(fi).sum() > 10 and np.nanmin(fi) > 2.0


def test_a_column_of_strings_is_kept_and_refused_as_an_input(historian) -> None:
    path, quirks = historian
    table = read_table(path, LOCAL)
    _t, modes = table.series[quirks.string_column]
    assert {"RUN", "RAMP"} <= set(modes.tolist())
    with pytest.raises(DataError) as err:
        table.numeric(quirks.string_column)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:2 column 'Mode': 'RUN' is not a number"), msg


def test_the_export_without_its_timestamp_settings_is_refused_naming_the_column(historian) -> None:
    path, _ = historian
    with pytest.raises(DataError) as err:
        read_table(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:1 column 'timestamp'") and "timestamp.column" in msg
    # the right column, the wrong format (month first): the first row that does not read
    with pytest.raises(DataError) as err:
        read_table(path, TimestampSpec(column="Time (UTC+01:00)", format="%m/%d/%Y %H:%M:%S"))
    assert str(err.value).startswith(
        f"{path}:2 column 'Time (UTC+01:00)': timestamp '02.11.2026 01:00:00 +0100'"
    )


def test_naive_local_time_in_a_named_timezone(run, tmp_path: Path) -> None:
    """The same export without the offset in the cells: the config names the plant's zone."""
    path = tmp_path / "naive.csv"
    write_historian_wide(run, path, seed=4, time_format="%d/%m/%Y %H:%M:%S")
    text = path.read_text(encoding="utf-8").replace(" +0100", "")
    path.write_text(text, encoding="utf-8")
    table = read_table(
        path, TimestampSpec(column="Time (UTC+01:00)", format="%d/%m/%Y %H:%M:%S", timezone="Europe/Berlin")
    )
    assert table.numeric("R1.TI201")[0][0] == run.start.timestamp()  # 2 November: CET, UTC+1
    wrong = read_table(path, TimestampSpec(column="Time (UTC+01:00)", format="%d/%m/%Y %H:%M:%S"))
    assert wrong.numeric("R1.TI201")[0][0] == run.start.timestamp() + 3600  # read as UTC: an hour late


def test_long_form_quality_and_exceptions(run, tmp_path: Path) -> None:
    path = write_historian_long(run, tmp_path / "long.csv", deadband=0.001)
    table = read_table(path)
    assert table.form == "long"
    # the historian archives a steady value at least every 8 h: hold that long
    times, cols = table.grid(["R1.FIC101.SP", "R1.FI101", "R1.TI201"], run.period_s, max_hold_s=8 * 3600.0)
    assert times[0] == run.start.timestamp()
    # a set point archived once per change is held between changes
    np.testing.assert_allclose(cols[0], run.values["R1.FIC101.SP"][: len(times)], atol=1e-6)
    # a BAD row is a gap until the next GOOD value
    bad = np.isnan(run.values["R1.FI101"][: len(times)])
    assert np.isnan(cols[1][bad]).all()


def test_agent_recording_directories_wide_and_gzip_long(run, tmp_path: Path) -> None:
    d = write_agent_recording(run, tmp_path / "rec", rows_per_file=100)
    table = read_table(d)
    assert table.units["R1.TI201"] == "degC" and table.units["R1.FI101"] == "m3/h"
    t, v = table.numeric("R1.AI201")
    assert len(t) == len(run) and t[0] == run.start.timestamp()
    np.testing.assert_allclose(v, run.values["R1.AI201"], atol=1e-6)
    # the long, gzipped files alone (a recording whose wide files were not kept)
    only_long = tmp_path / "rec-long"
    shutil.copytree(d, only_long)
    for w in only_long.glob("wide-*.csv"):
        w.unlink()
    t2, v2 = read_table(only_long).numeric("R1.AI201")
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_allclose(v2, v, atol=1e-6)
    fi = read_table(only_long).numeric("R1.FI101")[1]
    assert np.isnan(fi).sum() == np.isnan(run.values["R1.FI101"]).sum()


def test_broken_files_are_refused_with_one_line(tmp_path: Path) -> None:
    gz = tmp_path / "not-gzip.csv.gz"
    gz.write_text("timestamp,a\n2026-11-02T00:00:00Z,1\n")
    bad_row = tmp_path / "bad-row.csv"
    bad_row.write_text("timestamp,a,b\n2026-11-02T00:00:00Z,1,2\nyesterday,1,2\n")
    empty_dir = tmp_path / "not-a-recording"
    empty_dir.mkdir()
    for path, start in (
        (gz, f"{gz}: cannot read"),
        (bad_row, f"{bad_row}:3 column 'timestamp': timestamp 'yesterday'"),
        (empty_dir, f"{empty_dir}: a directory must be an agent recording"),
    ):
        with pytest.raises(DataError) as err:
            read_table(path)
        assert str(err.value).startswith(start) and "\n" not in str(err.value), str(err.value)


def test_train_refuses_the_string_column_naming_file_row_and_column(historian, tmp_path: Path) -> None:
    """Bulk mapping every column of the export takes in the Mode column too: the user sees the
    file, row and column, exit 2, no traceback."""
    path, _ = historian
    cfg = tmp_path / "export.yaml"
    cfg.write_text(
        f"""
progress: false
recordings:
  sets:
    - {{name: history, files: ['{path}'], split: train}}
models:
  - name: r1-ae
    task: anomaly
    out: {tmp_path / "out"}
    data:
      assets: [r1]
      columns: '*'
      timestamp: {{column: 'Time (UTC+01:00)', format: '%d.%m.%Y %H:%M:%S %z'}}
      window: {{sample_period_s: 180, length: 10, stride: 1}}
    teachers: [{{arch: autoencoder, hidden: [16], bottleneck: 4}}]
    student: {{arch: autoencoder, hidden: [8], bottleneck: 4}}
    fit: {{epochs: 1, finetune_epochs: 1}}
""",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "export.cli", "train", "--config", str(cfg), "--no-sign"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}:2 column 'Mode'" in lines[0] and "not a number" in lines[0], (
        proc.stderr
    )
    assert not (tmp_path / "out").exists()


def test_events_file_times_match_the_data(run, tmp_path: Path) -> None:
    """An events file's episodes land on the rows they name (UTC in the file, local data)."""
    from export.dataconfig import read_events

    ev = tmp_path / "events.csv"
    ep = Episode("analyser_stuck", 2, 6 * 3600.0, 9 * 3600.0, "r1", "R1.AI201")
    with ev.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["start", "end", "asset", "class"])
        w.writerow([
            (run.start + timedelta(seconds=ep.start_s)).isoformat().replace("+00:00", "Z"),
            (run.start + timedelta(seconds=ep.end_s)).isoformat().replace("+00:00", "Z"),
            "r1", ep.kind,
        ])  # fmt: skip
    (event,) = read_events(ev, LOCAL)
    assert event.start == run.start.timestamp() + ep.start_s and event.what == "analyser_stuck"
    assert event.asset == "r1"
    backwards = tmp_path / "backwards.csv"
    backwards.write_text("start,end,asset,class\n2026-11-02T09:00:00Z,2026-11-02T06:00:00Z,r1,x\n")
    with pytest.raises(DataError) as err:
        read_events(backwards, LOCAL)
    assert str(err.value).startswith(f"{backwards}:2 column 'end'")
    with pytest.raises(DataError) as err:  # a maintenance log naming a unit the model does not cover
        read_events(ev, LOCAL, assets=["r2"])
    assert str(err.value).startswith(f"{ev}:2 column 'asset': 'r1' is not one of the assets")


def test_gzip_historian_export(run, tmp_path: Path) -> None:
    plain = tmp_path / "h.csv"
    q = write_historian_wide(run, plain, seed=9)
    packed = tmp_path / "h.csv.gz"
    with plain.open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    a, b = read_table(plain, LOCAL), read_table(packed, LOCAL)
    np.testing.assert_array_equal(a.numeric("R1.LI201")[1], b.numeric("R1.LI201")[1])
    assert b.duplicates == len(q.duplicated_rows)
    assert datetime.fromtimestamp(b.span()[0], UTC) == run.start


@pytest.mark.parametrize("offset_ms", range(0, 2000, 200))
def test_the_grid_keeps_the_last_row_of_a_sub_second_recording(tmp_path: Path, offset_ms: int) -> None:
    """25 rows 0.2 s apart give 25 grid rows wherever the recording starts: epoch seconds carry
    float error that once put (end - start) / period just below 24 and dropped the last row."""
    t0 = datetime(2026, 12, 7, 8, 11, 57, tzinfo=UTC) + timedelta(milliseconds=offset_ms)
    path = tmp_path / "wide.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "flow"])
        for k in range(25):
            stamp = (t0 + timedelta(milliseconds=200 * k)).isoformat(timespec="milliseconds")
            w.writerow([stamp.replace("+00:00", "Z"), 50.0 + k])
    grid, (flow,) = read_table(path, columns=["flow"]).grid(["flow"], 0.2)
    assert len(grid) == 25 and flow[-1] == 74.0
