"""The stuck detector's per-value update (Python floats, every cycle) against the windowed
detectors' numpy update and ``batch``: identical results and state, whatever the sequence."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pipeline.detectors import StuckConfig, StuckDetector, _WindowDetector

VALUES = st.one_of(
    st.sampled_from([1.0, 1.0, 1.0, 1.001, 2.5, -0.0, 0.0, math.nan, math.inf, None]),
    st.floats(-1e3, 1e3, allow_nan=False),
)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 6),
    st.sampled_from([0.0, 0.001, 0.5]),
    st.lists(st.tuples(VALUES, st.integers(0, 12)), min_size=1, max_size=40),
)
def test_update_is_the_numpy_update(
    window: int, tolerance: float, steps: list[tuple[float | None, int]]
) -> None:
    cfg = StuckConfig(window=window, tolerance=tolerance)
    fast, ref = StuckDetector(cfg), StuckDetector(cfg)
    for x, op in steps:
        if op == 0:  # a batch now and then: both read and replace the same window
            xs = np.array([x if x is not None else math.nan] * 3, dtype=float)
            a, b = fast.batch(xs), ref.batch(xs)
            assert np.array_equal(a[0], b[0], equal_nan=True) and np.array_equal(a[1], b[1])
        elif op == 1:
            fast.reset()
            ref.reset()
        got, want = fast.update(x), _WindowDetector.update(ref, x)  # the numpy path: the reference
        assert (got.outlier, got.ready) == (want.outlier, want.ready)
        assert got.score == want.score or (math.isnan(got.score) and math.isnan(want.score))
        assert fast.ready == ref.ready and np.array_equal(fast._buf, ref._buf)
