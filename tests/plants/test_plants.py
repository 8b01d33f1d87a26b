"""The test plants themselves: seeded, fast, their faults visible, their files as promised.

A plant for testing "models for any plant" is only useful if what it claims holds: the same
seed gives the same data, every labelled fault changes the measurements from its onset (and
not before), the progpy pump's RUL ends at progpy's own failure threshold, and the historian
export carries the quirks the loader must cope with.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.plants import cstr, progpy_source
from tests.plants.formats import (
    Episode,
    write_agent_recording,
    write_events,
    write_historian_long,
    write_historian_wide,
)

DAY = 86400.0


@pytest.fixture(scope="module")
def pump_run():
    return progpy_source.simulate(6.0, seed=3)


def test_cstr_is_seeded() -> None:
    # (how fast it simulates is bench/operating_point.py's to report, not a timed assert here)
    a = cstr.simulate(10.0, seed=5)
    b = cstr.simulate(10.0, seed=5)
    c = cstr.simulate(10.0, seed=6)
    assert len(a) == 10 * 480  # 180 s samples
    np.testing.assert_array_equal(a.matrix(), b.matrix())
    np.testing.assert_array_equal(a.label, b.label)
    assert a.episodes == b.episodes
    assert not np.allclose(np.nan_to_num(a.matrix()), np.nan_to_num(c.matrix()))
    assert [e.kind for e in a.episodes] != [e.kind for e in c.episodes] or a.episodes != c.episodes


def test_cstr_has_operating_point_changes_and_disturbances() -> None:
    run = cstr.simulate(6.0, seed=2, episodes="normal")
    target = run.values["R1.FIC101.SP"]
    assert len(np.unique(target)) >= 3  # the planners moved the rate
    assert not run.label.any() and not run.episodes
    # the feed follows its target; the coolant valve moves with the load and the day
    np.testing.assert_allclose(np.nanmean(run.values["R1.FI101"] - target), 0.0, atol=0.05)
    assert np.corrcoef(run.values["R1.XV301"], target)[0, 1] > 0.3
    assert np.ptp(run.values["R1.TI401"]) > 3.0  # cooling water follows the day
    # the loops hold their set points through all of it
    assert abs(np.mean(run.values["R1.TI201"]) - 80.0) < 0.3
    assert abs(np.mean(run.values["R1.LI201"]) - 70.0) < 0.5
    for t in run.tags:
        v = run.values[t.name]
        assert np.all((v >= t.low) & (v <= t.high)), t.name  # normal data stays in the sensor range


# which tags each fault must move, by how many noise standard deviations (at least)
VISIBLE = {
    "thermometer_drift": ["R1.AI201", "R1.XV301"],  # the loop holds the drifting reading: the process cools
    "analyser_stuck": ["R1.AI201"],
    "feed_flow_dropout": ["R1.FI101"],
    "exchanger_fouling": ["R1.TI301", "R1.XV301"],
    "coolant_valve_stiction": ["R1.XV301"],
    "feed_inhibitor": ["R1.AI201", "R1.XV301"],
}


@pytest.mark.parametrize("kind", sorted(VISIBLE))
def test_every_cstr_fault_shows_from_its_onset_and_not_before(kind: str) -> None:
    """The run with one fault against its twin without it (same seed, same disturbances)."""
    spec = next(f for f in cstr.FAULTS if f.name == kind)
    onset, end = 1.5 * DAY, 2.5 * DAY
    ep = Episode(kind, spec.code, onset, end, cstr.ASSET, spec.tag)
    faulty = cstr.simulate(3.0, seed=11, episodes=[ep])
    twin = cstr.simulate(3.0, seed=11, episodes=[])
    a, b = int(onset // cstr.PERIOD_S), int(end // cstr.PERIOD_S)
    assert (
        np.all(faulty.label[a:b] == spec.code)
        and not faulty.label[:a].any()
        and not faulty.label[b + 1 :].any()
    )
    for tag in (t.name for t in cstr.TAGS):
        before_f, before_t = faulty.values[tag][:a], twin.values[tag][:a]
        np.testing.assert_array_equal(before_f, before_t, err_msg=f"{kind} changed {tag} before its onset")
    noise = {t: np.nanstd(np.diff(twin.values[t][:a])) / math.sqrt(2) for t in VISIBLE[kind]}
    for tag in VISIBLE[kind]:
        f, t = faulty.values[tag][a:b], twin.values[tag][a:b]
        if kind == "feed_flow_dropout":
            assert np.isnan(f).mean() > 0.2 and not np.isnan(twin.values[tag]).any()
            continue
        if kind == "analyser_stuck":
            assert np.ptp(f) == 0.0 and np.ptp(t) > 10 * noise[tag]
            continue
        if kind == "coolant_valve_stiction":  # the valve sticks, then slips: jumps well above noise
            assert np.nanstd(np.diff(f)) > 3 * np.nanstd(np.diff(t))
            continue
        shift = np.nanmax(np.abs(f - t))
        assert shift > 5 * noise[tag], f"{kind}: {tag} moved {shift:.3g}, noise {noise[tag]:.3g}"


def test_cstr_random_schedule_labels_every_fault_once() -> None:
    run = cstr.simulate(8.0, seed=4)
    assert sorted(e.kind for e in run.episodes) == sorted(f.name for f in cstr.FAULTS)
    first = min(e.start_s for e in run.episodes)
    assert first >= DAY  # a normal first day to learn from
    for e in run.episodes:
        a, b = int(e.start_s // cstr.PERIOD_S), int(e.end_s // cstr.PERIOD_S)
        assert np.all(run.label[a + 1 : b] == e.code)
    assert set(np.unique(run.label)) == {0, *(f.code for f in cstr.FAULTS)}


def test_progpy_pump_wears_to_its_failure_threshold(pump_run) -> None:
    run = pump_run
    assert run.episodes, "no wear episode in six hours"
    for e in run.episodes:
        a, b = int(e.start_s / run.period_s), int(e.end_s / run.period_s)
        assert np.all(run.label[a:b] == e.code)
        rul = run.rul_h[a:b]
        if e.end_s < len(run) * run.period_s:  # failed inside the run: RUL counts down to 0
            assert rul[-1] == pytest.approx(run.period_s / 3600.0)
            assert np.all(np.diff(rul) < 0)
            assert rul[0] == pytest.approx((e.end_s - e.start_s) / 3600.0, abs=run.period_s / 3600.0)
        if e.kind != "impeller_wear":  # a bearing fails at progpy's overheat limit (370 K)
            tag = "P101.TI_THR" if e.kind == "thrust_bearing_wear" else "P101.TI_RAD"
            assert np.max(run.values[tag][a:b]) > 90.0
            assert np.median(run.values[tag][run.label == 0]) < 60.0
    assert np.all(np.isnan(run.rul_h[run.label == 0]))


def test_progpy_pump_is_seeded(pump_run) -> None:
    again = progpy_source.simulate(6.0, seed=3)
    np.testing.assert_array_equal(again.matrix(), pump_run.matrix())
    assert again.episodes == pump_run.episodes
    assert progpy_source.simulate(6.0, seed=4).episodes != pump_run.episodes


def test_agent_recording_format(tmp_path: Path) -> None:
    run = cstr.simulate(
        2.0, seed=1, episodes=[Episode("feed_flow_dropout", 3, 0.5 * DAY, DAY, "r1", "R1.FI101")]
    )
    d = write_agent_recording(run, tmp_path / "rec", rows_per_file=200)
    meta = json.loads((d / "recording.json").read_text())
    assert meta["period_s"] == 180.0
    assert meta["format"] == "edge-agent-recording" and meta["complete"] is True
    assert meta["start_utc"] == "2026-11-02T00:00:00.000Z"
    assert [t["name"] for t in meta["tags"]] == [t.name for t in cstr.TAGS]
    fi = next(t for t in meta["tags"] if t["name"] == "R1.FI101")
    assert fi["unit"] == "m3/h" and fi["counts"]["BAD"] == int(np.isnan(run.values["R1.FI101"]).sum()) > 0
    wides = sorted(d.glob("wide-*.csv"))
    longs = sorted(d.glob("long-*.csv.gz"))
    assert len(wides) == len(longs) == math.ceil(len(run) / 200)
    assert sorted(f["name"] for f in meta["files"]) == sorted(p.name for p in [*wides, *longs])
    assert wides[0].name == "wide-20261102T000000.000Z.csv"
    assert sum(f["rows"] for f in meta["files"] if f["kind"] == "wide") == len(run)
    rows = [r for w in wides for r in list(csv.reader(w.open()))[1:]]
    assert len(rows) == len(run)
    header = next(csv.reader(wides[0].open()))
    assert header == ["timestamp", *(t.name for t in cstr.TAGS)]
    assert rows[1][0] == "2026-11-02T00:03:00.000Z"
    col = header.index("R1.FI101")
    assert sum(r[col] == "" for r in rows) == fi["counts"]["BAD"]
    with gzip.open(longs[0], "rt") as fh:
        lrows = list(csv.reader(fh))
    assert lrows[0] == ["timestamp", "tag", "value", "quality", "reason"]
    bad = []
    for lr in longs:
        with gzip.open(lr, "rt") as fh:
            bad += [r for r in csv.reader(fh) if r[3] == "BAD"]
    assert len(bad) == fi["counts"]["BAD"] and all(r[1] == "R1.FI101" and r[2] == "" for r in bad)


def test_historian_wide_export_has_its_quirks(tmp_path: Path) -> None:
    run = cstr.simulate(3.0, seed=2)
    path = tmp_path / "historian.csv"
    q = write_historian_wide(run, path, seed=3)
    raw = path.read_bytes()
    assert b"\r\n" in raw  # written on Windows
    rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
    assert rows[0][0] == "Time (UTC+01:00)" and rows[0][1] == "Mode"
    stamps = [datetime.strptime(r[0], q.time_format) for r in rows[1:]]
    assert all(s.utcoffset() == timedelta(hours=1) for s in stamps)
    assert rows[1][0] == "02.11.2026 01:00:00 +0100"  # local time, day first
    dt = np.diff([s.timestamp() for s in stamps])
    assert np.sum(dt == 0) == len(q.duplicated_rows) > 0  # duplicated rows
    steps = dt[dt > 0]
    assert steps.std() > 5.0  # irregular
    assert np.sum(dt > 10 * cstr.PERIOD_S) == len(q.gap_rows)  # gaps
    assert {r[1] for r in rows[1:]} >= {"RUN", "RAMP"}  # a column of strings
    assert len(rows) - 1 == len(run) - sum(b - a for a, b in q.gap_rows) + len(q.duplicated_rows)


def test_historian_long_and_events(tmp_path: Path) -> None:
    run = cstr.simulate(3.0, seed=7)
    long = write_historian_long(run, tmp_path / "long.csv", deadband=0.002)
    rows = list(csv.reader(long.open()))
    assert rows[0] == ["timestamp", "tag", "value", "quality"]
    per_tag = {t.name: sum(r[1] == t.name for r in rows[1:]) for t in run.tags}
    assert per_tag["R1.FIC101.SP"] < 20  # exception-based: a target held for hours is one row
    assert len(run) // 10 < per_tag["R1.TI201"] < len(run)  # a noisy temperature: many rows, not all
    ev = write_events(run, tmp_path / "events.csv")
    erows = list(csv.DictReader(ev.open()))
    assert [r["class"] for r in erows] == [e.kind for e in run.episodes]
    assert all(r["asset"] == "r1" and r["start"].endswith("Z") and r["start"] < r["end"] for r in erows)


def test_the_stand_in_site_files_load(tmp_path: Path) -> None:
    """What ``python -m tests.plants.serve`` writes for the README walkthrough is valid for the
    tools that read it: both agent configs, the training config, the historian export."""
    from agent.config import load_config as load_agent_config
    from export.pipeline import load_config as load_export_config
    from export.tables import TimestampSpec, read_table
    from tests.plants.serve import HISTORIAN_TIME, write_site

    d = tmp_path / "site"
    write_site(d, 5021, 90.0)
    rec = load_agent_config(d / "agent.yaml")
    assert [t.name for t in rec.devices[0].tags] == [t.name for t in cstr.TAGS]
    run = load_agent_config(d / "agent-run.yaml")
    (binding,) = run.models
    assert binding.assets["r1"]["TI201"] == "R1.TI201" and len(binding.assets["r1"]) == 17
    exp = load_export_config(d / "export.yaml")
    assert exp.models[0].data.window.sample_period_s == cstr.PERIOD_S / 90.0
    table = read_table(d / "historian" / "R1-2026-11.csv", TimestampSpec(**HISTORIAN_TIME))
    assert table.duplicates > 0 and "Mode" in table.columns


def test_scaled_sliced_and_merged_runs() -> None:
    """A faster clock keeps the samples and moves the episodes; two plants merge on the fast grid."""
    from tests.plants.formats import merge_runs

    slow = cstr.simulate(1.0, seed=3, episodes=[Episode("analyser_stuck", 2, 6 * 3600.0, 9 * 3600.0, "r1")])
    fast = progpy_source.simulate(0.5, seed=3, wear="normal")
    s = slow.scaled(90.0)
    assert s.period_s == 2.0 and s.episodes[0].start_s == 240.0
    np.testing.assert_array_equal(s.matrix(), slow.matrix())
    cut = slow.slice(100, 200)
    assert cut.start == slow.start + timedelta(seconds=100 * 180.0) and len(cut) == 100
    assert cut.episodes[0].start_s == 20 * 180.0 and cut.episodes[0].end_s == 80 * 180.0
    both = merge_runs(fast.scaled(50.0), s)
    assert len(both) == len(fast) and len(both.tags) == len(slow.tags) + len(fast.tags)
    # 0.2 s rows: each slow sample (2 s) is held for ten rows
    np.testing.assert_array_equal(both.values["R1.TI201"][:20], np.repeat(slow.values["R1.TI201"][:2], 10))
    np.testing.assert_array_equal(both.values["P101.SI"], fast.values["P101.SI"])
