"""Latency statistics of repeated calls (inference, polls): for `status` and the metrics endpoint.

Recording is one comparison per bucket and an append: cheap enough for every call on the hot
path; everything else (percentiles, cumulative buckets) is computed when someone looks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["INFERENCE_BUCKETS_S", "POLL_BUCKETS_S", "LatencyStats"]

INFERENCE_BUCKETS_S: tuple[float, ...] = (
    1e-4, 2.5e-4, 1e-3, 2.5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1.0, float("inf"),
)  # fmt: skip
"""Upper bounds for model calls (tens of microseconds to a second)."""

POLL_BUCKETS_S: tuple[float, ...] = (
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"),
)  # fmt: skip
"""Upper bounds for device polls (a millisecond on a LAN to the timeouts of a dead device)."""


@dataclass(slots=True)
class LatencyStats:
    """Latency of calls: last, count, sum, a histogram (counts per bucket, not cumulative) over
    ``buckets_s`` (ending with +inf), and percentiles over the last ``window`` calls."""

    window: int = 1024
    last_s: float = 0.0
    count: int = 0
    sum_s: float = 0.0
    buckets_s: tuple[float, ...] = INFERENCE_BUCKETS_S
    histogram: list[int] = field(default_factory=list)
    _recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if not self.buckets_s or self.buckets_s[-1] != float("inf"):
            raise ValueError("buckets_s must end with +inf")
        if not self.histogram:
            self.histogram = [0] * len(self.buckets_s)

    def record(self, seconds: float) -> None:
        self.last_s = seconds
        self.count += 1
        self.sum_s += seconds
        for i, bound in enumerate(self.buckets_s):
            if seconds <= bound:
                self.histogram[i] += 1
                break
        self._recent.append(seconds)
        while len(self._recent) > self.window:
            self._recent.popleft()

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, calls at or below it), as Prometheus histograms count."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip(self.buckets_s, self.histogram, strict=True):
            total += n
            out.append((bound, total))
        return out

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the last ``window`` calls (NaN before the first)."""
        if not self._recent:
            return float("nan")
        return float(np.percentile(np.fromiter(self._recent, dtype=np.float64), q))

    @property
    def p50_s(self) -> float:
        return self.percentile(50)

    @property
    def p99_s(self) -> float:
        return self.percentile(99)
