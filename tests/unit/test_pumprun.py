"""Pump run state: running feedback, run hours counted and persisted, start/stop limits."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.pipeline.guard import StartStopTarget
from agent.pipeline.policy import RecommenderConfig, RecommenderPump
from agent.pumprun import RUN_HOURS_FILE, PumpRunTracker, StartHistory
from agent.tagtable import TagTable
from agent.types import Quality, Sample

T0 = 1_700_000_000.0  # UTC seconds


def _rc(run_hours_tag: str | None = None) -> RecommenderConfig:
    return RecommenderConfig(
        level_tag="L",
        demand_tag="D",
        pumps=[
            RecommenderPump(asset="pump1", target="S1", start_stop_tag="R1", run_hours_tag=run_hours_tag),
            RecommenderPump(asset="pump2", target="S2", speed_tag="N2"),
        ],
    )


TARGET = StartStopTarget(
    tag="R1", asset="pump1", running_tag="F1", remote_start_tag="RA", min_run_s=600, min_stop_s=300,
    max_starts_per_hour=3,
)  # fmt: skip


def _table(now: float, **values: object) -> TagTable:
    t = TagTable({})
    t.update(
        Sample(tag, v, Quality.good() if v is not None else Quality.bad("timeout"), datetime.now(UTC), now)
        for tag, v in values.items()
    )
    return t


async def _persist_and_flush(tr: PumpRunTracker, now: float) -> None:
    await tr.persist(now)
    await tr.flush()


def test_counts_run_hours_from_the_feedback_and_keeps_them_across_restarts(tmp_path: Path) -> None:
    tr = PumpRunTracker(_rc(), [TARGET], tmp_path, save_every_s=60)
    history: dict[str, StartHistory] = {"R1": ((), T0 - 7200, None)}
    for k in range(0, 361):  # an hour, a cycle every 10 s; pump 2 runs the second half only
        now = float(10 * k)
        table = _table(now, F1=True, N2=1500.0 if k >= 180 else 0.0)
        states = tr.observe(table, now, T0 + now, history.get)
    assert tr.hours["pump1"] == pytest.approx(1.0, abs=1e-9)
    assert tr.hours["pump2"] == pytest.approx(0.5, abs=1e-9)
    assert set(states) == {"pump1"}  # only pumps with a start/stop target get a run state
    s = states["pump1"]
    assert s.running is True and s.run_hours == pytest.approx(1.0) and s.may_stop and s.starts_left == 3
    asyncio.run(_persist_and_flush(tr, 3600.0))
    doc = json.loads((tmp_path / RUN_HOURS_FILE).read_text())
    assert doc["hours"]["pump1"] == pytest.approx(1.0)
    # a gap the agent did not watch is not counted; a new agent goes on from the file
    again = PumpRunTracker(_rc(), [TARGET], tmp_path)
    assert again.hours == pytest.approx(tr.hours)
    again.observe(_table(0.0, F1=True), 0.0, T0, history.get)
    again.observe(_table(100.0, F1=True), 100.0, T0 + 100, history.get)  # 100 s gap: not counted
    again.observe(_table(110.0, F1=True), 110.0, T0 + 110, history.get)
    assert again.hours["pump1"] == pytest.approx(1.0 + 10 / 3600)


def test_a_bad_feedback_counts_nothing_and_a_run_hours_tag_wins(tmp_path: Path) -> None:
    tr = PumpRunTracker(_rc("H1"), [TARGET], None)
    h: dict[str, StartHistory] = {"R1": ((), None, None)}
    s0 = tr.observe(_table(0.0, F1=None, H1=1234.5), 0.0, T0, h.get)["pump1"]
    s1 = tr.observe(_table(5.0, F1=None, H1=1234.5), 5.0, T0 + 5, h.get)["pump1"]
    assert s0.running is None and s1.running is None and tr.hours["pump1"] == 0.0
    assert s1.run_hours == 1234.5  # the PLC's counter
    bad = tr.observe(_table(10.0, F1=True, H1=None), 10.0, T0 + 10, h.get)["pump1"]
    assert bad.run_hours == 0.0  # a BAD counter: the agent's own count


def test_limits_follow_the_start_history(tmp_path: Path) -> None:
    tr = PumpRunTracker(_rc(), [TARGET], tmp_path)
    table = _table(0.0, F1=False)
    # stopped 100 s ago (rest 300 s): no start yet
    s = tr.observe(table, 0.0, T0, {"R1": ((T0 - 2000,), T0 - 2000, T0 - 100)}.get)["pump1"]
    assert not s.may_start and s.starts_left == 2
    # three starts in the hour: none left, even rested
    s = tr.observe(table, 0.0, T0, {"R1": ((T0 - 3000, T0 - 2000, T0 - 1000), T0 - 1000, T0 - 900)}.get)[
        "pump1"
    ]
    assert not s.may_start and s.starts_left == 0
    s = tr.observe(table, 0.0, T0, {"R1": ((T0 - 3000,), T0 - 3000, T0 - 900)}.get)["pump1"]
    assert s.may_start and s.starts_left == 2
    # running 500 s (min run 600 s): no stop; an unknown start: never stopped early
    table = _table(0.0, F1=True)
    assert not tr.observe(table, 0.0, T0, {"R1": ((), T0 - 500, None)}.get)["pump1"].may_stop
    assert tr.observe(table, 0.0, T0, {"R1": ((), T0 - 700, None)}.get)["pump1"].may_stop
    assert not tr.observe(table, 0.0, T0, {"R1": ((), None, None)}.get)["pump1"].may_stop
    unknown = tr.observe(table, 0.0, T0, {}.get)["pump1"]  # no history read (audit down)
    assert not unknown.may_stop and not unknown.may_start


def test_an_unreadable_file_starts_from_zero(tmp_path: Path) -> None:
    (tmp_path / RUN_HOURS_FILE).write_text("{not json")
    assert PumpRunTracker(_rc(), [TARGET], tmp_path).hours == {"pump1": 0.0, "pump2": 0.0}
    (tmp_path / RUN_HOURS_FILE).write_text(json.dumps({"hours": {"pump1": -5, "pump2": 7.5}}))
    assert PumpRunTracker(_rc(), [TARGET], tmp_path).hours == {"pump1": 0.0, "pump2": 7.5}


async def test_a_due_write_runs_in_the_background_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cycle that finds the counts due does not wait for the disk; a shutdown (force) waits
    # for the write in flight and writes the newest counts.
    import agent.pumprun as pumprun

    gate = threading.Event()
    writes: list[dict[str, float]] = []
    real = pumprun.write_json_atomic

    def slow(path: Path, doc: Mapping[str, Any]) -> None:
        assert gate.wait(10), "test gate never opened"
        writes.append(dict(doc["hours"]))
        real(path, doc)

    monkeypatch.setattr(pumprun, "write_json_atomic", slow)
    tr = PumpRunTracker(_rc(), [TARGET], tmp_path, save_every_s=60)
    h: dict[str, StartHistory] = {"R1": ((), None, None)}
    tr.observe(_table(0.0, F1=True), 0.0, T0, h.get)
    tr.observe(_table(10.0, F1=True), 10.0, T0 + 10, h.get)
    await asyncio.wait_for(tr.persist(10.0), 1)  # returns while the write is held
    assert not (tmp_path / RUN_HOURS_FILE).exists()
    tr.observe(_table(20.0, F1=True), 20.0, T0 + 20, h.get)
    await tr.persist(80.0)  # due again, but one write at a time: nothing new started
    gate.set()
    await tr.persist(90.0, force=True)  # waits for the first, then writes the newest counts
    assert writes == [
        {"pump1": pytest.approx(10 / 3600), "pump2": 0.0},
        {"pump1": pytest.approx(20 / 3600), "pump2": 0.0},
    ]
    doc = json.loads((tmp_path / RUN_HOURS_FILE).read_text())
    assert doc["hours"]["pump1"] == pytest.approx(20 / 3600)


async def test_a_failed_write_is_made_again_when_next_due(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    tr = PumpRunTracker(_rc(), [TARGET], blocker, save_every_s=60)
    h: dict[str, StartHistory] = {"R1": ((), None, None)}
    tr.observe(_table(0.0, F1=True), 0.0, T0, h.get)
    tr.observe(_table(10.0, F1=True), 10.0, T0 + 10, h.get)
    await tr.persist(10.0)
    await tr.flush()  # the write failed (logged), the counts stay dirty
    blocker.unlink()
    await tr.persist(30.0)  # not due yet
    await tr.flush()
    assert not blocker.exists()
    await tr.persist(70.0)
    await tr.flush()
    assert json.loads((blocker / RUN_HOURS_FILE).read_text())["hours"]["pump1"] == pytest.approx(10 / 3600)
