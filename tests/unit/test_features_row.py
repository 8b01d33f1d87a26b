"""FeatureWindows' per-tick row (the models' hot path) against the plain reference it replaced.

The reference below is the row as it was written before its common case (every role GOOD)
got a path of its own: for any sequence of ticks (GOOD, BAD, NaN, out of range, text, missing
roles, whole ticks without samples) both give the same windows, holds, counters and reasons.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pipeline.features import FeatureWindows
from agent.types import Quality, Sample
from tests.unit.test_features import T0, binding, manifest


def reference_row(self: Any, ring: Any, samples: Any) -> tuple[list[float], list[bool], list[bool]]:
    n = len(self.roles)
    values = [math.nan] * n
    good = [False] * n
    reasons: list[str] = []
    lo, hi = self._lo, self._hi
    for i, role in enumerate(self.roles):
        s = samples.get(role) if samples is not None else None
        if s is None:
            reasons.append(f"{role}: no sample this tick")
            continue
        v = s.as_float()
        if not s.quality.is_good:
            reasons.append(f"{role}: {s.quality}")
        elif not math.isfinite(v):
            reasons.append(f"{role}: value {s.value!r} is not a finite number")
        elif not lo[i] <= v <= hi[i]:
            reasons.append(f"{role}: {v:g} outside plausible range [{lo[i]:g}, {hi[i]:g}]")
        else:
            values[i] = v
            good[i] = True
    valid = good.copy()
    last_good, bad_run = ring.last_good, ring.bad_run
    bad = held = 0
    for i in range(n):
        if good[i]:
            last_good[i] = values[i]
            bad_run[i] = 0
            continue
        bad += 1
        bad_run[i] += 1
        if bad_run[i] <= self.hold_limit and math.isfinite(last_good[i]):
            values[i] = last_good[i]
            valid[i] = True
            held += 1
    self.counters.bad_values += bad
    self.counters.held_values += held
    if reasons and not all(valid):
        ring.reason = "; ".join(reasons)
    return values, valid, good


values = st.one_of(
    st.floats(-10, 60),  # the ranges are [0, 50] and [0, 20]
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(-5, 70),
    st.booleans(),
    st.none(),
    st.just("text"),
)
cells = st.one_of(
    st.none(),  # no sample for the role
    st.tuples(values, st.sampled_from(["good", "good", "good", "bad", "uncertain"])),
)
ticks = st.lists(
    st.one_of(st.none(), st.tuples(cells, cells)),  # None: a tick without any push for the asset
    min_size=1,
    max_size=25,
)


def sample(cell: tuple[Any, str]) -> Sample:
    value, q = cell
    quality = {"good": Quality.good(), "bad": Quality.bad("timeout"), "uncertain": Quality.uncertain("old")}[
        q
    ]
    return Sample("t", value, quality, T0, 0.0)


@settings(max_examples=300, deadline=None)
@given(ticks, st.sampled_from(["skip", "hold"]), st.integers(1, 3))
def test_rows_are_those_of_the_reference(rows: list[Any], policy: str, hold: int) -> None:
    m = manifest(length=3)
    b = binding(policy, hold if policy == "hold" else None, assets=("p1",))
    fast, slow = FeatureWindows(m, b), FeatureWindows(m, b)
    slow._row = reference_row.__get__(slow)  # type: ignore[method-assign]
    for k, tick in enumerate(rows):
        for w in (fast, slow):
            if tick is not None:
                pushed = {
                    role: sample(c) for role, c in zip(("vibration", "current"), tick, strict=True) if c
                }
                w.push("p1", pushed, float(k))
            w.frame(now_utc=T0, now_mono=float(k))
        assert fast.counters == slow.counters
        a, b_ = fast._rings["p1"], slow._rings["p1"]
        assert a.values.tobytes() == b_.values.tobytes()  # NaN where NaN
        assert (a.valid == b_.valid).all() and (a.good == b_.good).all()
        assert a.reason == b_.reason
        assert [repr(x) for x in a.last_good] == [repr(x) for x in b_.last_good]  # NaN equals NaN
        assert a.bad_run == b_.bad_run


def test_a_sample_as_a_float() -> None:
    import numpy as np

    def as_float(v: object) -> float:
        return Sample("t", v, Quality.good(), T0, 0.0).as_float()  # type: ignore[arg-type]

    assert as_float(1.5) == 1.5 and as_float(2) == 2.0 and type(as_float(2)) is float
    assert as_float(True) == 1.0 and as_float(np.float64(2.5)) == 2.5
    assert all(math.isnan(as_float(v)) for v in (None, "1.5", np.int64(3)))  # as always: not an int
