"""The recorder unit (agent/record.py): files, manifest, gaps, rotation, quota, reserve, errors.

Real files in tmp_path; the only fake is the free-space function, at our own seam. The files
are read back with export/data.py's own readers, as training reads them.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.errors import RecordError
from agent.record import (
    MANIFEST_FILE,
    MIB,
    RecordConfig,
    Recorder,
    RecordingWriter,
    RecordTag,
    Row,
    format_utc,
    tags_to_record,
)
from agent.types import Quality, Sample
from export.data import load_columns, read_long_csv, sniff_format

T0 = 1_796_000_000_000  # ms, on a 1 s grid
TAGS = [RecordTag("flow", "m3/h", 3.0, 1.0), RecordTag("temp", "degC", 3.0, 1.0)]
GOOD = Quality.good()


def sample(tag: str, value: object, q: Quality = GOOD) -> Sample:
    return Sample(tag, value, q, Sample.now(tag, None, GOOD).received_at, 0.0)  # type: ignore[arg-type]


def row(i: int, flow: object = None, temp: object = None, qf: Quality = GOOD, qt: Quality = GOOD) -> Row:
    flow = 10.0 + i if flow is None else flow
    temp = 40.0 + i / 10 if temp is None else temp
    return Row(T0 + 1000 * i, (sample("flow", flow, qf), sample("temp", temp, qt)))


def manifest(d: Path) -> dict:
    return json.loads((d / MANIFEST_FILE).read_text())


def listed_files_exist(d: Path) -> None:
    doc = manifest(d)
    on_disk = {p.name for p in d.iterdir() if p.name != MANIFEST_FILE}
    assert on_disk == {f["name"] for f in doc["files"]}
    for f in doc["files"]:
        assert (d / f["name"]).stat().st_size == f["bytes"], f


def writer(d: Path, free: tuple[int, int] = (10**12, 10**13), **cfg: float) -> RecordingWriter:
    cfg.setdefault("manifest_s", 1.0)  # rewritten with every batch here
    return RecordingWriter(d, TAGS, 1.0, RecordConfig(**cfg), free_space=lambda _: free, version="t")


def test_files_manifest_qualities_and_gaps(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.open()
    stale = Quality.bad("stale: no update for 3.1 s (limit 3 s)")
    rows = [row(i) for i in range(5)]
    rows += [row(i, qf=Quality.bad("timeout: no reply from unit 1"), qt=stale) for i in range(5, 8)]
    rows += [row(8, qt=Quality.uncertain("out of range")), row(9, True, 7)]
    rows += [row(i) for i in range(15, 17)]  # 10..14 were never taken: not recorded
    assert w.write(rows[:6]) == [] and w.write(rows[6:]) == []
    info = w.close()
    assert info is not None and info[0].rows == info[1].rows == len(rows)
    doc = manifest(tmp_path)
    assert doc["format"] == "edge-agent-recording" and doc["complete"] is True and doc["stopped"] is None
    assert doc["period_s"] == 1.0 and doc["agent_version"] == "t"
    assert doc["start_utc"] == "2026-11-30T00:53:20.000Z" == format_utc(T0)
    assert doc["end_utc"] == format_utc(T0 + 16_000)
    assert doc["tags"] == [
        {"name": "flow", "unit": "m3/h", "counts": {"GOOD": 9, "UNCERTAIN": 0, "BAD": 3}},
        {"name": "temp", "unit": "degC", "counts": {"GOOD": 8, "UNCERTAIN": 1, "BAD": 3}},
    ]
    assert doc["gaps"] == [
        {"start_utc": format_utc(T0 + 5000), "end_utc": format_utc(T0 + 8000), "reason": "no GOOD sample"},
        {"start_utc": format_utc(T0 + 10_000), "end_utc": format_utc(T0 + 15_000), "reason": "not recorded"},
    ]
    listed_files_exist(tmp_path)
    wide = next(tmp_path.glob("wide-*.csv"))
    assert wide.name == "wide-20261130T005320.000Z.csv"
    lines = list(csv.reader(wide.open()))
    assert lines[0] == ["timestamp", "flow", "temp"]
    assert lines[1] == ["2026-11-30T00:53:20.000Z", "10.0", "40.0"]
    assert lines[6] == ["2026-11-30T00:53:25.000Z", "", ""]  # BAD: empty cells
    assert lines[9] == ["2026-11-30T00:53:28.000Z", "18.0", ""]  # UNCERTAIN: empty
    assert lines[10] == ["2026-11-30T00:53:29.000Z", "1", "7"]  # a bool as 1
    long = next(tmp_path.glob("long-*.csv.gz"))
    assert long.name == "long-20261130T005320.000Z.csv.gz"
    with gzip.open(long, "rt") as fh:
        rows_long = list(csv.reader(fh))
    assert rows_long[0] == ["timestamp", "tag", "value", "quality", "reason"]
    assert rows_long[11] == [
        "2026-11-30T00:53:25.000Z",
        "flow",
        "15.0",
        "BAD",
        "timeout: no reply from unit 1",
    ]
    assert rows_long[18] == ["2026-11-30T00:53:28.000Z", "temp", "40.8", "UNCERTAIN", "out of range"]
    assert len(rows_long) == 1 + 2 * len(rows)

    # export/data.py's readers load both forms (the long one gzipped, with its reason column)
    assert sniff_format(long) == "long" and sniff_format(wide) == "wide"
    series = read_long_csv(long, ["flow", "temp"])
    t, v = series["flow"]
    assert len(t) == len(rows) and t[0] == T0 / 1000
    assert v[0] == 10.0 and math.isnan(v[5]) and v[9] == 1.0
    (seg,) = load_columns(long, ["flow", "temp"], 1.0)
    assert seg.shape[1] == 2 and np.isnan(seg[5, 0])
    (grid,) = load_columns(wide, ["flow", "temp"], 1.0)
    # on the period's grid: periods not recorded are held for the loader's hold time (as a
    # historian's exception-based rows are), beyond it they read as gaps (NaN)
    gap = np.isnan(grid).all(axis=1)
    assert len(grid) == 17 and gap[12:15].all() and not gap[15:].any()
    assert grid[0].tolist() == [10.0, 40.0] and np.isnan(grid[6]).all()


def test_rotation_by_size_and_by_time_and_the_quota(tmp_path: Path) -> None:
    rot = 1000 / MIB  # a pair of about 1 kB
    w = writer(tmp_path, rotate_mb=rot, quota_mb=3 * rot)
    w.open()
    closed = []
    for b in range(12):
        closed += w.write([row(10 * b + i) for i in range(10)])
    doc = manifest(tmp_path)
    assert len(closed) >= 4  # rotated by size
    assert doc["removed"]["files"] > 0 and doc["removed"]["bytes"] > 0
    total = sum(f["bytes"] for f in doc["files"])
    assert total <= 3 * 1000
    listed_files_exist(tmp_path)
    # counts cover the files still there; the start moved to the oldest one kept
    rows_kept = sum(f["rows"] for f in doc["files"] if f["kind"] == "wide")
    assert doc["tags"][0]["counts"]["GOOD"] == rows_kept < 120
    first = min(f["first_utc"] for f in doc["files"])
    assert doc["start_utc"] == first != format_utc(T0)
    w.close()

    tdir = tmp_path / "time"
    w = writer(tdir, rotate_s=5)
    w.open()
    for b in range(4):
        w.write([row(3 * b + i) for i in range(3)])
    w.close()
    doc = manifest(tdir)
    wides = [f for f in doc["files"] if f["kind"] == "wide"]
    assert [f["rows"] for f in wides] == [5, 5, 2]  # a pair spans less than 5 s
    assert wides[1]["name"] == f"wide-{format_utc(T0 + 5000).replace('-', '').replace(':', '')}.csv"
    listed_files_exist(tdir)


def test_the_manifest_is_rewritten_at_most_every_manifest_s_between_events(tmp_path: Path) -> None:
    w = writer(tmp_path, manifest_s=10)
    w.open()
    w.write([row(0)])
    first = manifest(tmp_path)
    for i in range(1, 10):
        w.write([row(i)])
    assert manifest(tmp_path) == first  # 9 s of rows: not rewritten (flash wears)
    w.write([row(10)])
    assert manifest(tmp_path)["end_utc"] == format_utc(T0 + 10_000)
    w.close()
    assert manifest(tmp_path)["complete"] is True


def test_below_the_reserve_recording_pauses_and_resumes(tmp_path: Path) -> None:
    free = [10 * MIB]
    w = RecordingWriter(
        tmp_path,
        TAGS,
        1.0,
        RecordConfig(reserve_mb=512, reserve_percent=5),
        free_space=lambda _: (free[0], 100 * MIB),
    )  # the reserve: 5 % of 100 MiB = 5 MiB (smaller than 512 MiB)
    w.open()
    with capture_logs() as logs:
        w.write([row(i) for i in range(3)])
        free[0] = 5 * MIB - 1
        w.write([row(i) for i in range(3, 6)])
        w.write([row(i) for i in range(6, 9)])
        assert w.paused
        free[0] = 6 * MIB
        w.write([row(i) for i in range(9, 12)])
        assert not w.paused
    events = [e["event"] for e in logs]
    assert events.count("recording paused: free disk below the reserve kept for the audit log") == 1
    assert events.count("recording resumed") == 1
    w.close()
    doc = manifest(tmp_path)
    assert doc["gaps"] == [
        {
            "start_utc": format_utc(T0 + 3000),
            "end_utc": format_utc(T0 + 9000),
            "reason": "paused: free disk below the reserve",
        }
    ]
    assert sum(f["rows"] for f in doc["files"] if f["kind"] == "wide") == 6
    assert w.rows_paused == 6


def test_a_recording_is_continued_or_refused(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.open()
    w.write([row(i) for i in range(3)])
    w.close()
    again = writer(tmp_path)
    again.open()
    again.write([row(i) for i in range(100, 102)])
    again.close()
    doc = manifest(tmp_path)
    assert len(doc["files"]) == 4 and doc["tags"][0]["counts"]["GOOD"] == 5
    assert doc["gaps"] == [
        {"start_utc": format_utc(T0 + 3000), "end_utc": format_utc(T0 + 100_000), "reason": "not recorded"}
    ]
    listed_files_exist(tmp_path)
    other = RecordingWriter(tmp_path, TAGS[:1], 1.0, RecordConfig(), free_space=lambda _: (10**12, 10**13))
    with pytest.raises(RecordError, match="holds a recording of other tags or another period"):
        other.open()


def test_config_section_and_tags_to_record(tmp_path: Path) -> None:
    text = f"""
agent: {{state_dir: {tmp_path}}}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    poll_interval_ms: 500
    tags:
      - {{name: a, table: holding, address: 0, type: uint16, engineering_unit: bar}}
      - {{name: b, table: holding, address: 1, type: uint16}}
      - {{name: sp, table: holding, address: 2, type: uint16, access: write, purpose: display}}
record:
  tags: [b]
  rotate_mb: 1
"""
    cfg = parse_config(text, "x.yaml")
    assert cfg.record is not None and cfg.record.directory(tmp_path) == tmp_path / "recording"
    assert [t.name for t in tags_to_record(cfg)] == ["a", "b"]  # every tag it reads
    assert tags_to_record(cfg, ["a"])[0] == RecordTag("a", "bar", 2.5, 0.5)
    with pytest.raises(RecordError, match="unknown tag"):
        tags_to_record(cfg, ["zz"])
    with pytest.raises(RecordError, match="only writes"):
        tags_to_record(cfg, ["sp"])
    with pytest.raises(RecordError, match="unknown model binding 'm'"):
        tags_to_record(cfg, [], "m")
    from agent.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(text.replace("tags: [b]", "tags: [b, nope]"), "x.yaml")
    assert str(err.value) == "x.yaml:13 record.tags[1]: unknown tag 'nope'"
    with pytest.raises(ConfigError) as err:
        parse_config(text.replace("rotate_mb: 1", "rotate_mb: 1\n  quota_mb: 1"), "x.yaml")
    assert "x.yaml:12 record: rotate_mb 1 must be at most half of quota_mb 1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(text.replace("rotate_mb: 1", "rotat_mb: 1"), "x.yaml")
    assert "x.yaml:14 record.rotat_mb: unknown key" in str(err.value)


async def test_recorder_takes_rows_on_the_grid_and_closes_complete(tmp_path: Path) -> None:
    closed = []
    rec = Recorder(tmp_path, TAGS, 0.05, RecordConfig(flush_s=0.2), on_file=lambda w, _: closed.append(w))
    task = asyncio.create_task(rec.run())
    t0 = time.monotonic()
    for i in range(20):
        rec.observe([Sample.now("flow", float(i), GOOD), Sample.now("other", 1.0, GOOD)])
        await asyncio.sleep(0.025)
    elapsed = time.monotonic() - t0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    doc = manifest(tmp_path)
    assert doc["complete"] is True and rec.state == "recording"
    (wide,) = [f for f in doc["files"] if f["kind"] == "wide"]
    assert len(closed) == 1 and closed[0].name == wide["name"]
    assert 3 <= wide["rows"] <= elapsed / 0.05 + 2  # a row per 50 ms from the first poll on
    ts = [r[0] for r in csv.reader((tmp_path / wide["name"]).open())][1:]
    ms = [int(t[-4:-1]) for t in ts]
    assert all(m % 50 == 0 for m in ms)  # on the 50 ms grid of the wall clock
    assert doc["tags"][1]["counts"]["BAD"] == wide["rows"]  # temp never came: "no value yet"
    long = read_long_csv(tmp_path / doc["files"][1]["name"], ["temp"])
    assert np.isnan(long["temp"][1]).all()


async def test_a_write_error_stops_recording_never_the_caller(tmp_path: Path) -> None:
    d = tmp_path / "rec"
    rec = Recorder(d, TAGS, 0.05, RecordConfig(flush_s=0.1, manifest_s=0.1))
    task = asyncio.create_task(rec.run())
    rec.observe([Sample.now("flow", 1.0, GOOD)])
    deadline = time.monotonic() + 5
    while not list(d.glob("wide-*.csv")) and time.monotonic() < deadline:  # noqa: ASYNC110 (a file)
        await asyncio.sleep(0.02)
    wide = next(d.glob("wide-*.csv"))
    with capture_logs() as logs:
        # the directory is gone (moved away in one step: the writer thread may be creating a
        # file in it right now) and a directory stands where a file was
        d.rename(tmp_path / "gone")
        d.mkdir()
        (d / (MANIFEST_FILE + ".tmp")).mkdir()
        deadline = time.monotonic() + 5
        while rec.state != "stopped" and time.monotonic() < deadline:  # noqa: ASYNC110 (a state)
            await asyncio.sleep(0.02)
    # which error stops it depends on when the writer thread runs: between the rename and the
    # mkdir its file has no directory, after them the manifest's place is a directory
    assert rec.state == "stopped" and rec.stopped is not None
    assert "Is a directory" in rec.stopped or "No such file or directory" in rec.stopped
    assert rec.stats.write_errors >= 1
    stopped = [e for e in logs if e["event"] == "recording stopped"]
    assert len(stopped) == 1
    await asyncio.wait_for(task, 2)  # it ends, quietly: no exception for its caller
    assert task.result() is None and not wide.exists()


async def test_flushes_write_in_a_worker_thread_while_the_loop_turns(tmp_path: Path) -> None:
    """A big flush (120 rows of 500 tags) is written by a worker thread, and the loop keeps
    turning while it writes (how cheap observing and taking rows is: bench, not here)."""
    tags = [RecordTag(f"t{i}", "", 10.0, 1.0) for i in range(500)]
    rec = Recorder(tmp_path, tags, 1.0, RecordConfig())
    batch = [Sample.now(f"t{i}", float(i), GOOD) for i in range(1000)]  # half of them recorded
    for _ in range(100):
        rec.observe(batch)
        rec._last_t_ms = None
        rec.take_row()
    await asyncio.to_thread(rec.writer.open)
    for _ in range(20):
        rec.take_row()
    loop_thread = threading.get_ident()
    writing = threading.Event()
    turns_while_writing = 0
    write = rec.writer.write

    def observed_write(rows: Any) -> Any:
        writing.set()
        try:
            assert threading.get_ident() != loop_thread, "the flush wrote on the event loop's thread"
            # hold the write until the loop has turned: a flush that blocked the loop never ends
            deadline = time.monotonic() + 10
            while turns_while_writing < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
            return write(rows)
        finally:
            writing.clear()

    rec.writer.write = observed_write  # type: ignore[method-assign]

    async def watch() -> None:
        nonlocal turns_while_writing
        while True:
            await asyncio.sleep(0)
            if writing.is_set():
                turns_while_writing += 1

    watcher = asyncio.create_task(watch())
    await rec.flush()
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    assert rec.stats.rows_written == 120
    assert turns_while_writing >= 3, "the loop did not turn while the thread wrote"


def test_check_paths_names_a_recording_directory_that_cannot_be_made(tmp_path: Path) -> None:
    from agent.config import check_paths

    blocker = tmp_path / "file"
    blocker.write_text("x")
    text = f"""agent: {{state_dir: {tmp_path / "state"}}}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    tags: [{{name: a, table: holding, address: 0, type: uint16}}]
record:
  dir: {blocker / "rec"}
"""
    cfg = parse_config(text, "x.yaml")
    assert check_paths(cfg, "x.yaml") == [
        f"x.yaml:8 record.dir: recording directory {blocker / 'rec'} cannot be created: {blocker} is not a directory"
    ]
    off = parse_config(text + "  enabled: false\n", "x.yaml")
    assert check_paths(off, "x.yaml") == []


async def test_the_recorder_shows_paused_below_the_reserve_and_records_again_above(tmp_path: Path) -> None:
    free = [100 * MIB]  # of 1 GiB: the reserve is 5 % = 51 MiB (less than 512 MiB)
    rec = Recorder(
        tmp_path,
        TAGS,
        0.05,
        RecordConfig(flush_s=0.1, manifest_s=0.1),
        free_space=lambda _: (free[0], 1024 * MIB),
    )
    task = asyncio.create_task(rec.run())
    deadline = time.monotonic() + 5

    async def until(done: Callable[[], bool]) -> None:
        while not done() and time.monotonic() < deadline:
            rec.observe([Sample.now("flow", 1.0, GOOD), Sample.now("temp", 2.0, GOOD)])
            await asyncio.sleep(0.02)

    await until(lambda: rec.status()["rows"] >= 2)
    free[0] = MIB
    await until(lambda: rec.state == "paused")
    rows = rec.status()["rows"]
    await until(lambda: rec.status()["rows_paused"] >= 3)
    assert rec.state == "paused" and rec.status()["rows"] == rows
    free[0] = 100 * MIB
    await until(lambda: rec.status()["rows"] >= rows + 2)
    assert rec.state == "recording"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    doc = manifest(tmp_path)
    assert doc["complete"] is True
    assert [g["reason"] for g in doc["gaps"]] == ["paused: free disk below the reserve"]
