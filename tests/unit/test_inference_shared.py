"""Runners whose windows mean the same tick one FeatureWindows (agent/inference.py, Models).

Real parts: tiny signed ONNX bundles run by onnxruntime, the real FeatureWindows, TagTable and
Scorer. Every check compares the shared runners with the same runners each ticking alone in a
Models of its own (the straightforward path): windows, counters, schedule and scores equal.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.inference import ModelRunner, Models
from tests.tiny_bundles import write_bundle
from tests.unit.test_inference import Plant, binding, context

ROLES = {"v": "A", "p": "B"}
SPECS: dict[str, dict[str, Any]] = {
    # name: bundle stride, binding extras
    "m1": {"stride": 1, "kw": {}},
    "m2": {"stride": 1, "kw": {}},  # the same windows as m1: shares m1's
    "m3": {"stride": 1, "kw": {"bad_input": "hold", "hold_cycles": 2}},  # holds bad values: its own
    "m4": {"stride": 2, "kw": {}},  # frames every other tick: its own
    "m5": {"stride": 1, "kw": {}},  # shares m1's too
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        name: write_bundle(
            root / name,
            name=name,
            period_s=0.2,
            length=3,
            stride=spec["stride"],
            roles=[("v", "mm/s", (0, 100), "instant"), ("p", "bar", (0, 10), "instant")],
        )
        for name, spec in SPECS.items()
    }


def load(models: Models, bundles: dict[str, Path], names: list[str]) -> None:
    models.replace([models.load(binding(n, bundles[n], ROLES, **SPECS[n]["kw"])) for n in names])


def state(r: ModelRunner) -> tuple[Any, ...]:
    latest = {a: (s.model, s.frame_end, s.outputs) for a, s in r.latest.items()}
    return (
        r.windows.snapshot(),
        r.windows.counters,
        r.windows.reason("p1"),
        r.next_tick,
        r.last_tick_utc,
        r.scored_mono,
        r.scorer.calls,
        r.scorer.errors,
        latest,
    )


GOOD_A, GOOD_B = st.floats(0, 100), st.floats(0, 10)  # mostly in range, so windows fill and score
POLL = st.fixed_dictionaries(
    {
        "A": st.one_of(GOOD_A, GOOD_A, GOOD_A, st.none(), st.floats(-10, 120)),
        "B": st.one_of(GOOD_B, GOOD_B, GOOD_B, st.none(), st.just(float("nan")), st.floats(-1, 12)),
    }
)


async def run(
    plants: list[Plant], polls: list[dict[str, float | None]], step_s: float, t0: float = 0.0
) -> None:
    for i, values in enumerate(polls):
        for plant in plants:
            plant.now = t0 + i * step_s
            if any(v is not None for v in values.values()):  # else no poll: tags may go stale
                plant.poll({t: v for t, v in values.items()})
            await plant.advance()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(polls=st.lists(POLL, min_size=1, max_size=60), step_s=st.sampled_from([0.05, 0.2, 0.45, 11.0]))
def test_shared_windows_tick_as_each_runner_would_alone(
    bundles: dict[str, Path], tmp_path: Path, polls: list[dict[str, float | None]], step_s: float
) -> None:
    names = list(SPECS)
    shared = Models(context(tmp_path / "shared"))
    load(shared, bundles, names)
    by = {r.name: r for r in shared}
    # the path under test is taken: m2 and m5 tick m1's windows; m3 (hold) and m4 (stride) not
    assert by["m2"].windows is by["m1"].windows is by["m5"].windows
    assert by["m3"].windows is not by["m1"].windows and by["m4"].windows is not by["m1"].windows
    alone = []
    for n in names:
        m = Models(context(tmp_path / f"alone-{n}"))
        load(m, bundles, [n])
        alone.append(m)
    plants = [Plant(shared), *(Plant(m) for m in alone)]
    good: list[dict[str, float | None]] = [{"A": 5.0, "B": 1.0}] * 20  # every model scores at least once
    asyncio.run(run(plants, good, 0.05))
    asyncio.run(run(plants, polls, step_s, t0=1.0))
    for r, single in zip(shared, (m[0] for m in alone), strict=True):
        assert state(r) == state(single), r.name
        assert r.scorer.calls > 0, r.name
        for s in r.latest.values():
            assert s.model == r.bundle.manifest.name  # each model scored its own frames


def _m1_m2_shared_and_alone(
    bundles: dict[str, Path], tmp_path: Path, n_polls: int
) -> tuple[Models, list[Models], list[Plant], list[dict[str, float | None]]]:
    """m1 and m2 sharing a window, each of them alone, the plants that poll them, and polls."""
    shared = Models(context(tmp_path / "shared"))
    load(shared, bundles, ["m1", "m2"])
    solo = [Models(context(tmp_path / "s1")), Models(context(tmp_path / "s2"))]
    load(solo[0], bundles, ["m1"])
    load(solo[1], bundles, ["m2"])
    plants = [Plant(shared), *(Plant(m) for m in solo)]
    polls: list[dict[str, float | None]] = [
        {"A": 1.0 + i % 7, "B": 2.0 if i % 9 else None} for i in range(n_polls)
    ]
    return shared, solo, plants, polls


async def test_a_reload_keeps_sharing_only_what_ticks_in_lockstep(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    # A new version of a follower carries its window over (same inputs): it keeps sharing and
    # scores under its own name; a runner added later with an empty window ticks its own.
    shared, solo, plants, polls = _m1_m2_shared_and_alone(bundles, tmp_path, 200)
    await run(plants, polls[:100], 0.05)
    v2 = write_bundle(
        tmp_path / "m2v2", name="m2", version="2", period_s=0.2, length=3,
        roles=[("v", "mm/s", (0, 100), "instant"), ("p", "bar", (0, 10), "instant")],
    )  # fmt: skip
    for models in (shared, solo[1]):
        old = next(r for r in models if r.name == "m2")
        new = models.load(binding("m2", v2, ROLES))
        new.carry_over(old)
        models.replace([new if r is old else r for r in models])
    late = shared.load(binding("m5", bundles["m5"], ROLES))
    shared.replace([*shared, late])
    assert shared[1].windows is shared[0].windows and late.windows is not shared[0].windows
    # the shared window now names m2 (its last install): m1 still scores its own frames
    assert shared[0].windows.manifest.version == "2"
    await run(plants, polls[100:], 0.05, t0=5.0)
    for r, single in zip(shared[:2], [solo[0][0], solo[1][0]], strict=True):
        assert state(r) == state(single), r.name
    assert shared[1].latest["p1"].version == "2" and shared[0].latest["p1"].model == "m1"
    assert late.scorer.calls > 0 and late.windows.counters.ticks < shared[0].windows.counters.ticks


async def test_a_runner_that_may_no_longer_follow_gets_its_own_copy(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    # m2 carried m1's shared window over into a binding that persists its window (which is
    # never shared): it ticks a copy of its own, and m1's window is ticked once per tick still.
    shared, solo, plants, polls = _m1_m2_shared_and_alone(bundles, tmp_path, 160)
    await run(plants, polls[:80], 0.05)
    for models in (shared, solo[1]):
        old = models[-1]
        new = models.load(binding("m2", bundles["m2"], ROLES, persist_window=True))
        new.carry_over(old)
        assert new.windows is old.windows
        models.replace([new if r is old else r for r in models])
    assert shared[1].windows is not shared[0].windows
    assert shared[1].windows.snapshot() == shared[0].windows.snapshot()
    await run(plants, polls[80:], 0.05, t0=4.0)
    for r, single in zip(shared, [solo[0][0], solo[1][0]], strict=True):
        assert state(r) == state(single), r.name
