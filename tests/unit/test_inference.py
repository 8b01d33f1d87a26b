"""Model runners at their own rates (agent/inference.py), on a fake clock at our seam.

Real parts: tiny signed ONNX bundles run by onnxruntime, the real FeatureWindows, TagTable,
Scorer and files in tmp_path. The clock (monotonic and UTC) is the test's.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.config import ModelsTrust
from agent.inference import LoadContext, Models
from agent.modelstore.binding import ModelBinding
from agent.tagtable import TagTable
from agent.types import Quality, Sample
from tests.tiny_bundles import DEV_PUB, write_bundle

T0 = 1_700_000_000.0  # UTC epoch of mono 0: a multiple of every period used here
UNITS = {"A": "mm/s", "B": "bar", "C": "bar"}


def utc(mono: float) -> datetime:
    return datetime.fromtimestamp(T0 + mono, UTC)


class Plant:
    """A tag table on the fake clock, fed like a poller feeds it (and the models' hook)."""

    def __init__(self, models: Models) -> None:
        self.now = 0.0
        self.table = TagTable(dict.fromkeys(UNITS, 10.0), clock=lambda: self.now)
        self.models = models

    def poll(self, values: dict[str, float | None]) -> list[Sample]:
        samples = [
            Sample(t, v, Quality.good() if v is not None else Quality.bad("timeout"), utc(self.now), self.now)
            for t, v in values.items()
        ]
        self.table.update(samples)
        self.models.observe(samples)
        return samples

    async def advance(self) -> int:
        return await self.models.advance(self.table, self.now, utc(self.now))


def context(tmp_path: Path, poll_s: float = 0.05) -> LoadContext:
    return LoadContext(
        resolve=lambda p: p,
        trust=ModelsTrust(public_keys=[DEV_PUB]),
        tag_units=UNITS,
        tag_periods_s=dict.fromkeys(UNITS, poll_s),
        source="test.yaml",
        state_dir=tmp_path / "state",
    )


def binding(name: str, bundle: Path, roles: dict[str, str], **kw: object) -> ModelBinding:
    return ModelBinding.model_validate({"name": name, "bundle": bundle, "assets": {"p1": roles}, **kw})


def fast_and_slow(tmp_path: Path) -> Models:
    fast = write_bundle(
        tmp_path / "fast", name="fast", period_s=0.2, length=3, roles=[("v", "mm/s", (0, 100), "instant")]
    )
    slow = write_bundle(
        tmp_path / "slow",
        name="slow",
        period_s=2.0,
        length=3,
        roles=[("v", "mm/s", (0, 100), "instant"), ("m", "bar", (0, 100), "mean")],
    )
    models = Models(context(tmp_path))
    models.replace(
        [
            models.load(binding("fast", fast, {"v": "A"})),
            models.load(binding("slow", slow, {"v": "A", "m": "B"})),
        ]
    )
    return models


async def test_each_model_ticks_and_scores_at_its_own_period(tmp_path: Path) -> None:
    models = fast_and_slow(tmp_path)
    fast, slow = models
    plant = Plant(models)
    for i in range(401):  # 20 s, a poll every 50 ms
        plant.now = i * 0.05
        plant.poll({"A": 1.0 + i % 7, "B": 2.0})
        await plant.advance()
    # the first tick on the UTC grid after the start, then one every period
    assert fast.windows.counters.ticks == 100 and slow.windows.counters.ticks == 10
    assert fast.windows.counters.missed_ticks == 0 == slow.windows.counters.missed_ticks
    assert fast.scorer.calls == 100 - 3 + 1 and slow.scorer.calls == 10 - 3 + 1
    assert slow.last_tick_utc == utc(20.0)
    assert slow.latest["p1"].frame_end == utc(20.0)
    assert models.healthy(plant.now)


async def test_runners_that_share_tags_tick_as_each_would_alone(tmp_path: Path) -> None:
    # Models reads each tag once for all the runners due at a tick: the frames are the same
    # as those of each runner ticking on its own (every quality: good, bad, stale).
    def load(models: Models, name: str, roles: dict[str, str]) -> None:
        bundle = write_bundle(
            tmp_path / name,
            name=name,
            period_s=0.2,
            length=3,
            roles=[(r, "mm/s" if t == "A" else "bar", (0, 100), "instant") for r, t in roles.items()],
        )
        models.replace([*models, models.load(binding(name, bundle, roles))])

    both = Models(context(tmp_path / "both"))
    load(both, "m1", {"v": "A", "p": "B"})
    load(both, "m2", {"v": "A", "q": "C"})
    alone = [Models(context(tmp_path / "a1")), Models(context(tmp_path / "a2"))]
    load(alone[0], "m1", {"v": "A", "p": "B"})
    load(alone[1], "m2", {"v": "A", "q": "C"})
    plants = [Plant(both), *(Plant(m) for m in alone)]
    for i in range(300):
        for plant in plants:
            plant.now = i * 0.05
            if i < 60:  # then no poll at all: every tag goes stale after its 10 s
                plant.poll({"A": 1.0 + i % 5, "B": None if i % 16 < 8 else 2.0, "C": 3.0})
            await plant.advance()
    for shared, single in zip(both, [alone[0][0], alone[1][0]], strict=True):
        assert shared.windows.counters == single.windows.counters
        assert shared.windows.reason("p1") == single.windows.reason("p1")
        assert shared.latest["p1"].outputs == single.latest["p1"].outputs
    assert both[0].windows.counters.bad_values > both[1].windows.counters.bad_values > 0
    assert "stale" in both[1].windows.reason("p1")


async def test_mean_is_the_mean_of_the_good_polls_of_the_period(tmp_path: Path) -> None:
    models = fast_and_slow(tmp_path)
    slow = models[1]
    plant = Plant(models)
    polled: list[Sample] = []
    rng = np.random.default_rng(1)
    for i in range(121):  # 6 s
        plant.now = i * 0.05
        b = None if i % 5 == 0 else float(rng.uniform(1, 9))
        polled += [s for s in plant.poll({"A": 3.0, "B": b}) if s.tag == "B"]
        before = slow.windows.counters.ticks
        await plant.advance()
        if slow.windows.counters.ticks > before:
            agg = slow.aggregates["B"]
            good = [s.value for s in polled if s.quality.is_good and agg.first_mono <= s.mono <= agg.last_mono]
            assert agg.count == len(good) >= 30  # 2 s of 50 ms polls, one in five BAD
            assert agg.mean == pytest.approx(float(np.mean(good)), rel=1e-12)
            row = slow.windows.snapshot()["assets"]["p1"]["values"][-1]
            assert row == [3.0, agg.mean]  # instant role: the latest value; mean role: the mean
            polled = [s for s in polled if s.mono > agg.last_mono]
    assert slow.windows.counters.ticks == 3
    score = slow.latest["p1"]
    window = np.array(slow.windows.snapshot()["assets"]["p1"]["values"])
    assert score.outputs["echo[1]"] == pytest.approx(window[-1, 1], rel=1e-6)  # the model got the mean
    assert score.outputs["echo[3]"] == pytest.approx(window[:, 1].mean(), rel=1e-6)


async def test_a_period_without_a_good_poll_is_a_bad_row(tmp_path: Path) -> None:
    models = fast_and_slow(tmp_path)
    slow = models[1]
    plant = Plant(models)
    for i in range(81):  # 4 s; B is BAD throughout the second period
        plant.now = i * 0.05
        plant.poll({"A": 3.0, "B": None if plant.now > 2.0 else 4.0})
        await plant.advance()
    assert slow.windows.counters.ticks == 2
    assert slow.aggregates["B"].count == 0 and slow.aggregates["B"].mean is None
    assert slow.windows.snapshot()["assets"]["p1"]["good"][-1] == [True, False]
    assert slow.windows.counters.bad_values == 1
    assert "m: BAD (no GOOD sample in the 2 s period)" in slow.windows._rings["p1"].reason


async def test_a_score_older_than_its_intervals_is_stale(tmp_path: Path) -> None:
    models = fast_and_slow(tmp_path)
    fast, slow = models
    plant = Plant(models)
    for i in range(21):
        plant.now = i * 0.05
        plant.poll({"A": 3.0, "B": 1.0})
        await plant.advance()
    assert fast.scored_mono == pytest.approx(1.0) and slow.scored_mono is None  # slow: window filling
    assert models.take_fresh(1.0) == {"fast": {"p1": fast.latest["p1"]}}
    assert models.take_fresh(1.0) == {}  # taken once
    assert models.healthy(1.0 + 2.5 * 0.2 - 1e-6)
    assert not models.healthy(1.0 + 2.5 * 0.2 + 1e-6)  # nothing scored for 2.5 periods
    fast._fresh = dict(fast.latest)
    assert models.take_fresh(1.6) == {}  # a stale model gives the alarm engine nothing
    assert fast.scorer.healthy  # the session is fine: stale is about time


async def test_a_late_loop_inserts_the_missed_ticks_as_bad_rows(tmp_path: Path) -> None:
    models = fast_and_slow(tmp_path)
    fast = models[0]
    plant = Plant(models)
    for t in (0.0, 0.2, 0.4, 1.05):  # ticks due at 0.6 and 0.8 never ran; 1.0 runs at 1.05
        plant.now = t
        plant.poll({"A": 3.0, "B": 1.0})
        await plant.advance()
    assert fast.windows.counters.missed_ticks == 2 and fast.windows.counters.ticks == 5
    assert fast.windows.snapshot()["assets"]["p1"]["good"] == [[False], [False], [True]]
    assert fast.windows.snapshot()["assets"]["p1"]["values"][-1] == [3.0]
    assert fast.next_tick == pytest.approx(1.2)  # back on the grid


# --------------------------------------------------------------------------- persistence


def hourly(tmp_path: Path, v_range: tuple[float, float] = (0, 100)) -> Models:
    """A slow model (period 5 s: persisted by default), window 4, bad input held for 2 ticks."""
    bundle = write_bundle(tmp_path / "slow", name="slow", period_s=5.0, length=4, roles=[("v", "mm/s", v_range, "instant")])
    models = Models(context(tmp_path))
    models.replace([models.load(binding("slow", bundle, {"v": "A"}, bad_input="hold", hold_cycles=2))])
    return models


async def run_for(models: Models, start: float, seconds: float, value: float = 3.0) -> Plant:
    plant = Plant(models)
    for i in range(int(seconds / 0.5) + 1):
        plant.now = start + i * 0.5
        plant.poll({"A": value + plant.now})
        await plant.advance()
    return plant


async def test_a_slow_window_is_saved_each_tick_and_restored_after_a_restart(tmp_path: Path) -> None:
    first = hourly(tmp_path)
    await run_for(first, 0.0, 30.0)
    (runner,) = first
    path = tmp_path / "state" / "windows" / "slow.json"
    assert runner.persist_path == path and runner.saves == 6
    saved = json.loads(path.read_text())
    assert saved["tick_utc"] == utc(30.0).isoformat() and saved["window"]["ticks"] == 6
    assert not list(path.parent.glob("*.tmp"))

    # down from 30 s to 37 s: the tick at 35 s was missed; the first tick after start is at 40 s
    again = hourly(tmp_path)
    (restored,) = again
    with capture_logs() as logs:
        await run_for(again, 37.0, 3.0)
    assert [e["missed_ticks"] for e in logs if e["event"] == "model window restored"] == [1]
    assert restored.windows.counters.ticks == 6 + 1 + 1
    assert restored.scorer.calls == 1  # scored at the first tick, not four ticks later
    rows = restored.windows.snapshot()["assets"]["p1"]
    assert rows["good"] == [[True], [True], [False], [True]]  # the missed tick is a bad row…
    assert rows["values"][:2] == [[3.0 + 25.0], [3.0 + 30.0]] and rows["values"][2] == [3.0 + 30.0]  # …held
    assert rows["values"][3] == [3.0 + 40.0]
    assert restored.latest["p1"].frame_end == utc(40.0)


async def test_a_window_older_than_its_length_is_discarded(tmp_path: Path) -> None:
    await run_for(hourly(tmp_path), 0.0, 30.0)
    late = hourly(tmp_path)
    with capture_logs() as logs:
        await run_for(late, 51.0, 5.0)  # 35, 40, 45 and 50 s missed: nothing of it left at 55 s
    (e,) = [e for e in logs if e["event"] == "model window not restored"]
    assert "older than the window" in e["reason"]
    assert late[0].windows.counters.ticks == 1 and late[0].scorer.calls == 0


async def test_a_window_written_for_other_inputs_is_ignored(tmp_path: Path) -> None:
    await run_for(hourly(tmp_path), 0.0, 30.0)
    other = hourly(tmp_path / "other", v_range=(0, 50))  # another plausible range
    other[0].persist_path = tmp_path / "state" / "windows" / "slow.json"
    with capture_logs() as logs:
        await run_for(other, 31.0, 4.0)
    (e,) = [e for e in logs if e["event"] == "model window not restored"]
    assert "written for other inputs (by slow v1)" in e["reason"]
    assert other[0].windows.counters.ticks == 1 and other[0].scorer.calls == 0


async def test_fast_windows_are_not_persisted_unless_asked(tmp_path: Path) -> None:
    models = fast_and_slow(tmp_path)
    assert all(r.persist_path is None for r in models)  # 0.2 s and 2 s: below 5 s
    bundle = tmp_path / "fast"
    asked = models.load(binding("fast", bundle, {"v": "A"}, persist_window=True))
    assert asked.persist_path == tmp_path / "state" / "windows" / "fast.json"
    assert math.isclose(asked.interval_s, 0.2)


async def test_a_new_bundle_version_with_the_same_inputs_keeps_the_slow_window(tmp_path: Path) -> None:
    models = hourly(tmp_path)
    await run_for(models, 0.0, 30.0)
    old = models[0]
    write_bundle(tmp_path / "slow", name="slow", period_s=5.0, length=4, roles=[("v", "mm/s", (0, 100), "instant")], version="2", threshold=5.0)
    events: list[tuple[str, str]] = []

    async def event(action: str, message: str) -> None:
        events.append((action, message))

    assert await models.reload_bundles([], event) == ["slow: installed slow v2 (was slow v1)"]
    assert events == [("model_installed", "slow: slow v2 replaces slow v1")]
    new = models[0]
    assert new is not old and new.bundle.manifest.version == "2"
    await run_for(models, 31.0, 4.0)  # the first tick of v2 at 35 s
    assert new.scorer.calls == 1 and new.latest["p1"].version == "2"
    assert new.latest["p1"].outputs["score_alarm"] == 1.0  # v2's threshold
    assert await models.reload_bundles([], event) == ["slow: unchanged (slow v2)"]
