"""The latest sample of every tag, with staleness applied when it is read.

Sources write into it; stages read from it. A tag not refreshed within its staleness limit
reads as BAD (stale) with the age in the reason, whatever its last quality was: a value that
stopped arriving must never look GOOD.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime

from agent.types import Quality, Sample

__all__ = ["TagTable", "TagsAt"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_tag_of = operator.itemgetter(0)  # Sample.tag


class TagTable:
    """Latest sample per tag. ``stale_limits`` maps tag name → seconds.

    One task writes it (the event loop: pollers, write-back); readers on the same loop.
    """

    def __init__(
        self, stale_limits: Mapping[str, float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = dict(stale_limits)
        self._latest: dict[str, Sample] = {}
        self._clock = clock
        self._names: tuple[int, tuple[str, ...]] = (-1, ())  # (len(_latest) it was made for, names)
        self.updates = 0

    def update(self, samples: Iterable[Sample]) -> None:
        """Take a poll's samples (a later sample of a tag replaces the earlier one)."""
        batch = samples if isinstance(samples, (list, tuple)) else list(samples)
        self._latest.update(zip(map(_tag_of, batch), batch, strict=True))  # in C: one poll, one call
        self.updates += len(batch)

    def get(self, tag: str, now: float | None = None) -> Sample:
        """The tag's latest sample; BAD "stale" when too old, BAD "no value yet" when never seen."""
        return _get(self._latest, self._limits, tag, self._clock() if now is None else now)

    def at(self, now: float | None = None) -> TagsAt:
        """:meth:`snapshot` of every tag at ``now``, as a mapping that applies staleness when a
        tag is looked up: the same samples, for the price of a copy of the latest ones (the
        runtime's view of the tags, refreshed every cycle and read far less often)."""
        now = self._clock() if now is None else now
        return TagsAt(dict(self._latest), self._limits, self._all_names(), now)

    def _all_names(self) -> tuple[str, ...]:
        made_for, names = self._names
        if made_for != len(self._latest):  # tags are never removed: a new one changes the size
            names = tuple(self._limits.keys() | self._latest.keys())
            self._names = (len(self._latest), names)
        return names

    def snapshot(self, tags: Iterable[str] | None = None, now: float | None = None) -> dict[str, Sample]:
        """:meth:`get` of ``tags`` (default: every tag with a limit or a sample) at one ``now``."""
        now = self._clock() if now is None else now
        if tags is None:
            tags = self._all_names()
        # get()'s common case inlined (a sample fresh within its limit): this runs over every
        # tag each cycle; anything else takes get() itself, the reference.
        latest, limits, get = self._latest, self._limits, self.get
        out: dict[str, Sample] = {}
        for t in tags:
            s = latest.get(t)
            if s is not None:
                limit = limits.get(t)
                if limit is None or now - s.mono <= limit:
                    out[t] = s
                    continue
            out[t] = get(t, now)
        return out


def _get(latest: Mapping[str, Sample], limits: Mapping[str, float], tag: str, now: float) -> Sample:
    """:meth:`TagTable.get` over ``latest`` at ``now``."""
    s = latest.get(tag)
    if s is None:
        return Sample(tag, None, Quality.bad("no value yet"), _EPOCH, now)
    limit = limits.get(tag)
    if limit is None or now - s.mono <= limit:  # a NaN time is stale (fail closed)
        return s
    age = now - s.mono
    return Sample(
        tag,
        s.value,
        Quality.bad(f"stale: no update for {age:.1f} s (limit {limit:g} s)"),
        s.received_at,
        s.mono,
        s.source_time,
    )


class TagsAt(Mapping[str, Sample]):
    """Every tag of a :class:`TagTable` as it was at one ``now`` (:meth:`TagTable.at`): the
    keys and samples of ``snapshot(now=now)``, each looked up when asked for."""

    __slots__ = ("_latest", "_limits", "_names", "now")

    def __init__(
        self, latest: dict[str, Sample], limits: Mapping[str, float], names: tuple[str, ...], now: float
    ) -> None:
        self._latest, self._limits, self._names, self.now = latest, limits, names, now

    def __getitem__(self, tag: str) -> Sample:
        if tag not in self._latest and tag not in self._limits:
            raise KeyError(tag)
        return _get(self._latest, self._limits, tag, self.now)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
