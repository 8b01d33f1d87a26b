"""The latest sample of every tag, with staleness applied when it is read.

Sources write into it; stages read from it. A tag not refreshed within its staleness limit
reads as BAD (stale) with the age in the reason, whatever its last quality was: a value that
stopped arriving must never look GOOD.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from agent.types import Quality, Sample

__all__ = ["TagTable"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TagTable:
    """Latest sample per tag. ``stale_limits`` maps tag name → seconds."""

    def __init__(
        self, stale_limits: Mapping[str, float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = dict(stale_limits)
        self._latest: dict[str, Sample] = {}
        self._clock = clock
        self.updates = 0

    def update(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            self._latest[s.tag] = s
            self.updates += 1

    def get(self, tag: str, now: float | None = None) -> Sample:
        """The tag's latest sample; BAD "stale" when too old, BAD "no value yet" when never seen."""
        now = self._clock() if now is None else now
        s = self._latest.get(tag)
        if s is None:
            return Sample(tag, None, Quality.bad("no value yet"), _EPOCH, now)
        limit = self._limits.get(tag)
        if limit is not None and s.stale(limit, now):
            age = now - s.mono
            return Sample(
                tag,
                s.value,
                Quality.bad(f"stale: no update for {age:.1f} s (limit {limit:g} s)"),
                s.received_at,
                s.mono,
                s.source_time,
            )
        return s

    def snapshot(self, tags: Iterable[str] | None = None, now: float | None = None) -> dict[str, Sample]:
        now = self._clock() if now is None else now
        names = self._limits.keys() | self._latest.keys() if tags is None else tags
        return {t: self.get(t, now) for t in names}
