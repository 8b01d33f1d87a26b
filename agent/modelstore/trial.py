"""Deciding a shadow trial: promote the new version, or roll it back. Pure, no I/O.

A version installed with ``--trial N`` is scored in shadow beside the live one for N of its
sample periods (:mod:`agent.modelstore.watch` runs it); :func:`decide` then judges what it saw
(:class:`TrialStats`). It is promoted only when all three hold:

* **healthy**: at least one frame was scored and no frame failed (an inference error, a
  non-finite output);
* **within its latency budget**: the 95th percentile of its scoring calls (features and
  session) is at most ``latency_budget`` of the model's sample period (default 10 %: the cycle
  must also poll, alarm and write); a percentile, so that one call the OS preempted does not
  decide;
* **threshold exceedances consistent with its calibration**: for every output with an
  ``alarm`` threshold and a calibrated ``false_alarm_rate`` p0 (in the manifest), the count k
  of (frame, asset) scores above the threshold out of n is tested against H0: rate <= p0 with
  the exact one-sided binomial test, P(X >= k | n, p0); H0 is rejected, and the trial failed,
  when that p-value is below ``level`` (default 0.01). Agreement with the old model is not the
  criterion: a better model may well disagree with it.

The outcome is shown on the HMI's model-status register (``hmi.model_status_tag``) as one of
:data:`MODEL_STATUS_CODES`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MODEL_STATUS_CODES",
    "OutputCount",
    "TrialDecision",
    "TrialPolicy",
    "TrialStats",
    "binomial_sf",
    "decide",
]

MODEL_STATUS_CODES: Mapping[str, int] = {
    "none": 0,
    "trial_running": 1,
    "promoted": 2,
    "rolled_back": 3,
}
"""The model-status register: 0 no trial since the agent started, 1 a trial is running,
2 the last trial promoted its version, 3 the last trial was rolled back (the old version runs)."""


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (summed in log space, numpy only)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    j = np.arange(1, n + 1, dtype=np.float64)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log(n - j + 1) - np.log(j))))
    i = np.arange(0, n + 1, dtype=np.float64)
    log_pmf = log_comb + i * math.log(p) + (n - i) * math.log1p(-p)

    def total(lp: np.ndarray) -> float:
        top = float(np.max(lp))
        return math.exp(top) * float(np.sum(np.exp(lp - top)))

    # Sum the smaller side: the upper tail directly, or one minus the lower one.
    if k > n * p:
        return float(min(1.0, total(log_pmf[k:])))
    return float(max(0.0, 1.0 - total(log_pmf[:k])))


@dataclass(frozen=True)
class TrialPolicy:
    """The stated test level and the latency budget (fraction of the sample period)."""

    level: float = 0.01
    latency_budget: float = 0.1


@dataclass
class OutputCount:
    """Exceedances of one output's alarm threshold: ``k`` of ``n`` scores, calibrated rate ``p0``."""

    k: int = 0
    n: int = 0
    p0: float | None = None


@dataclass
class TrialStats:
    """What the shadow run saw."""

    periods: int = 0
    frames: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    outputs: dict[str, OutputCount] = field(default_factory=dict)

    @property
    def p95_latency_s(self) -> float:
        """The 95th percentile of the scoring calls' latencies (0 without calls)."""
        return float(np.percentile(self.latencies_s, 95)) if self.latencies_s else 0.0

    def add_scores(
        self, scores: Iterable[Mapping[str, float]], thresholds: Mapping[str, tuple[float, float | None]]
    ) -> None:
        """Count one scored frame: each asset's outputs against ``thresholds``
        (output → (alarm threshold, calibrated false alarm rate))."""
        self.frames += 1
        for outputs in scores:
            for name, (limit, p0) in thresholds.items():
                if name not in outputs:
                    continue
                c = self.outputs.setdefault(name, OutputCount(p0=p0))
                c.n += 1
                c.k += int(outputs[name] > limit)


@dataclass(frozen=True)
class TrialDecision:
    """Promote or not, and why (one line, for the audit and the log)."""

    promote: bool
    reason: str


def decide(stats: TrialStats, sample_period_s: float, policy: TrialPolicy = TrialPolicy()) -> TrialDecision:
    """Judge a finished trial (see the module docstring)."""
    if stats.errors:
        return TrialDecision(
            False, f"unhealthy: {stats.errors} of {stats.frames + stats.errors} frames failed"
        )
    if stats.frames == 0:
        return TrialDecision(False, f"unhealthy: no frame scored in {stats.periods} periods")
    budget = policy.latency_budget * sample_period_s
    if stats.p95_latency_s > budget:
        return TrialDecision(
            False, f"latency p95 {stats.p95_latency_s * 1e3:.1f} ms over its budget of {budget * 1e3:.1f} ms"
        )
    tested = []
    for name, c in sorted(stats.outputs.items()):
        if c.p0 is None or c.n == 0:
            continue
        pv = binomial_sf(c.k, c.n, c.p0)
        if pv < policy.level:
            return TrialDecision(
                False,
                f"output {name} exceeded its alarm threshold in {c.k} of {c.n} scores, calibrated rate "
                f"{c.p0:g}: one-sided binomial p={pv:.2g} < {policy.level:g}",
            )
        tested.append(f"{name} {c.k}/{c.n} (p={pv:.2g})")
    rates = ", ".join(tested) or "no calibrated output"
    return TrialDecision(
        True,
        f"healthy, {stats.frames} frames, latency p95 {stats.p95_latency_s * 1e3:.2f} ms within "
        f"{budget * 1e3:.0f} ms, exceedances consistent with calibration at level {policy.level:g}: {rates}",
    )
