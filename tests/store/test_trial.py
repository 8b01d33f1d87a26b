"""The trial decision unit: the exact binomial tail and the promote/roll back rules."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.modelstore.trial import OutputCount, TrialPolicy, TrialStats, binomial_sf, decide


def brute_sf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@given(st.integers(0, 60), st.integers(0, 60), st.floats(1e-4, 0.9999))
def test_binomial_sf_matches_the_sum_of_the_pmf(k: int, n: int, p: float) -> None:
    expected = brute_sf(k, n, p) if k <= n else 0.0
    assert math.isclose(binomial_sf(k, n, p), expected, rel_tol=1e-9, abs_tol=1e-300)


@given(st.integers(1, 5000), st.floats(1e-6, 0.5), st.data())
@settings(max_examples=60)
def test_binomial_sf_falls_with_k_and_rises_with_p(n: int, p: float, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    assert binomial_sf(0, n, p) == 1.0
    assert binomial_sf(k + 1, n, p) <= binomial_sf(k, n, p) + 1e-12
    assert binomial_sf(k, n, min(0.99, p * 1.5)) >= binomial_sf(k, n, p) - 1e-12
    assert 0.0 <= binomial_sf(k, n, p) <= 1.0


def stats(k: int, n: int, p0: float = 0.001, latency: float = 0.001) -> TrialStats:
    return TrialStats(
        periods=n, frames=n, latencies_s=[latency] * 20, outputs={"score": OutputCount(k, n, p0)}
    )


@given(st.integers(1, 2000), st.data())
@settings(max_examples=80)
def test_more_exceedances_never_turn_a_roll_back_into_a_promotion(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n - 1))
    a, b = decide(stats(k, n), 1.0), decide(stats(k + 1, n), 1.0)
    assert not (b.promote and not a.promote)
    assert decide(stats(0, n), 1.0).promote  # no exceedance: consistent with any calibration


def test_the_stated_level_is_the_boundary() -> None:
    # 3 of 100 at p0 = 0.001: P(X >= 3) ~ 1.6e-4
    pv = binomial_sf(3, 100, 0.001)
    assert decide(stats(3, 100), 1.0, TrialPolicy(level=pv * 1.01)).promote is False
    assert decide(stats(3, 100), 1.0, TrialPolicy(level=pv * 0.99)).promote is True
    assert decide(stats(1, 100), 1.0).promote  # one in 100 at p0 = 0.001: p ~ 0.095, not < 0.01


def test_unhealthy_empty_and_slow_trials_roll_back() -> None:
    s = stats(0, 10)
    s.errors = 1
    assert not decide(s, 1.0).promote and "unhealthy" in decide(s, 1.0).reason
    assert "no frame" in decide(TrialStats(periods=5), 1.0).reason
    slow = decide(stats(0, 10, latency=0.2), 1.0)
    assert not slow.promote and "budget of 100.0 ms" in slow.reason
    assert decide(stats(0, 10, latency=0.2), 1.0, TrialPolicy(latency_budget=0.5)).promote
    one_slow = stats(0, 10)
    one_slow.latencies_s[0] = 0.9  # one preempted call of 20 does not decide
    assert decide(one_slow, 1.0).promote


def test_scores_are_counted_per_asset_against_the_alarm_threshold() -> None:
    s = TrialStats()
    s.add_scores([{"score": 1.0}, {"score": 3.0}], {"score": (2.0, 0.01), "other": (0.0, None)})
    s.add_scores([{"score": 2.5}], {"score": (2.0, 0.01)})
    c = s.outputs["score"]
    assert (s.frames, c.k, c.n, c.p0) == (2, 2, 3, 0.01) and "other" not in s.outputs
