"""The one policy wrapper around every driver: interval, overrun-skip, backoff, breakers,
state-change logging, counters.

Drivers speak their protocol and nothing more (see :mod:`agent.drivers.base`). What a
controls engineer expects of a poller lives here, once:

* :class:`RunningSource` polls a source on a fixed-rate grid. A poll that overruns its
  interval skips the ticks it missed and counts them: polls never stack.
* :class:`Backoff`: exponential with jitter and a cap, owned by us (pymodbus's own
  reconnect loop is switched off).
* :class:`CircuitBreaker`: per unit (or per device). A silent unit is skipped while open and
  probed once per backoff, so it cannot eat the cycle of the healthy units beside it.
  Transitions are logged once: "lost" on the first failure that opens it, "recovered" once.
* :class:`Counters`: per device and unit, for the status view and metrics.
* :class:`QualityLog`: every tag's quality transitions, logged once each ("BAD" with the
  reason, "recovered"), and a summary of the tags that stay not GOOD every few minutes.

Everything logged while a :class:`RunningSource` polls (the driver's own events included)
carries ``device``: the loop binds it in its task's logging context.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from agent.drivers.base import Source
from agent.types import Quality, QualityCode, Sample

__all__ = [
    "Backoff",
    "BreakerState",
    "CircuitBreaker",
    "Counters",
    "QualityLog",
    "RunningSource",
    "same_cause",
]

log = structlog.get_logger("agent.running")

Clock = Callable[[], float]


class Backoff:
    """Exponential backoff with jitter and a cap: base, 2·base, 4·base … ≤ cap, each ± jitter."""

    def __init__(
        self, base_s: float, cap_s: float, jitter: float = 0.2, rng: random.Random | None = None
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        raw = min(self.cap_s, self.base_s * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        spread = raw * self.jitter
        delay: float = raw + self._rng.uniform(-spread, spread)
        return max(0.0, min(self.cap_s, delay))

    def reset(self) -> None:
        self.attempts = 0


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """A breaker per unit: CLOSED → (``threshold`` consecutive failures) → OPEN → (backoff
    elapsed) → HALF_OPEN: one probe → CLOSED on success, OPEN with a longer backoff on failure.

    Not thread-safe; one poll loop owns it. ``clock`` is injectable for tests. ``context`` is
    logged with its transitions (e.g. ``{"device": "plc1", "unit": 3}``).
    """

    def __init__(
        self,
        name: str,
        threshold: int,
        backoff: Backoff,
        clock: Clock = time.monotonic,
        context: Mapping[str, object] | None = None,
    ) -> None:
        self.name = name
        # passed with each call, not bound: a bound logger would keep the configuration of
        # the moment it was made (setup_logging runs after the drivers are built)
        self._context = dict(context or {})
        self.threshold = threshold
        self.backoff = backoff
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.open_until = 0.0
        self.last_error = ""
        self.ever_connected = False

    def allow(self) -> bool:
        """May a request be sent now? Moves OPEN → HALF_OPEN when the backoff has elapsed."""
        if self.state is BreakerState.OPEN and self._clock() >= self.open_until:
            self.state = BreakerState.HALF_OPEN
        return self.state is not BreakerState.OPEN

    def record_success(self) -> None:
        if self.state is not BreakerState.CLOSED or self.failures:
            if self.state is not BreakerState.CLOSED:
                log.info("recovered", source=self.name, after_failures=self.failures, **self._context)
            self.state = BreakerState.CLOSED
        self.failures = 0
        self.last_error = ""
        self.ever_connected = True
        self.backoff.reset()

    def record_failure(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            if self.state is BreakerState.CLOSED:
                log.warning(
                    "lost", source=self.name, reason=reason, failures=self.failures, **self._context
                )
            delay = self.backoff.next_delay()
            self.state = BreakerState.OPEN
            self.open_until = self._clock() + delay

    @property
    def is_open(self) -> bool:
        return self.state is not BreakerState.CLOSED


@dataclass
class Counters:
    """Per-source statistics; reported by `status` and the metrics endpoint."""

    polls: int = 0
    overruns: int = 0
    skipped_ticks: int = 0
    samples: int = 0
    bad_samples: int = 0
    errors: int = 0
    last_poll_s: float = 0.0
    per_unit: dict[str, dict[str, int]] = field(default_factory=dict)

    def bump(self, unit: str, key: str, n: int = 1) -> None:
        d = self.per_unit.setdefault(unit, {})
        d[key] = d.get(key, 0) + n


_WORDS = re.compile(r"[^\W\d_]+")


@functools.lru_cache(maxsize=1024)
def _cause(reason: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _WORDS.findall(reason))


def same_cause(a: str, b: str) -> bool:
    """Do two reasons of a not-GOOD quality name the same cause?

    Numbers do not count (a countdown, a timing, an out-of-range value change every poll), and
    a reason that only adds words around the other is the same cause: a driver reports a
    failure as ``timeout: no reply from unit 3`` when it asks and as ``unit 3 not responding
    (timeout: no reply from unit 3); skipped until retry`` while its breaker is open.
    ``timeout`` → ``exception 02 (illegal data address)`` is a different cause.
    """
    if a == b:
        return True
    ca, cb = _cause(a), _cause(b)
    if not ca or not cb:
        return False
    return ca <= cb or cb <= ca


_GOOD = QualityCode.GOOD
_BAD = QualityCode.BAD


class QualityLog:
    """Logs the quality transitions of one source's tags once each, never every poll (STYLE 7).

    * A tag turns BAD or UNCERTAIN: a warning ``tag BAD`` (``tag UNCERTAIN``) with its
      ``reason`` and what it ``was``.
    * While not GOOD, another code or another cause (:func:`same_cause`; timeout → exception
      02): one more such warning.
    * GOOD again: ``tag recovered``, once, with the reason it had and ``after_s`` not GOOD.
    * Tags that change the same way in one poll (a device lost: every tag) share one line,
      ``tags BAD`` with ``count`` and the first ``names_at_most`` names in ``tags``.
    * Every ``summary_every_s`` (on ``clock``) while some tags are not GOOD: ``tags not GOOD``
      with the count and the longest-standing few with their reasons.

    ``tag_context`` adds fields to a tag's lines (e.g. ``{"T1": {"unit": 3}}``); a group line
    gets them when all its tags share them.

    :meth:`observe` is on the hot path (every sample of every poll): a tag whose quality is the
    object of the poll before, or has its code and reason text, costs a dict lookup and two
    comparisons. One poll loop owns it; not thread-safe.
    """

    def __init__(
        self,
        device: str,
        *,
        summary_every_s: float = 300.0,
        clock: Clock = time.monotonic,
        tag_context: Mapping[str, Mapping[str, object]] | None = None,
        names_at_most: int = 10,
        summary_names: int = 5,
    ) -> None:
        if summary_every_s <= 0:
            raise ValueError("summary_every_s must be > 0")
        self.device = device
        self.summary_every_s = summary_every_s
        self._clock = clock
        self._context = dict(tag_context or {})
        self._names_at_most = names_at_most
        self._summary_names = summary_names
        self._last: dict[str, Quality] = {}  # tag → the quality of its latest sample
        self._held: dict[str, tuple[Quality, float]] = {}  # not GOOD: (as reported, since)
        self._next_summary: float | None = None
        self.transitions = 0  # lines logged for transitions (a group line counts once)

    @property
    def not_good(self) -> dict[str, Quality]:
        """Tags whose latest quality is not GOOD, with it."""
        return {t: self._last[t] for t in self._held}

    def observe(self, samples: Sequence[Sample]) -> int:
        """Take one poll's samples; log what changed. Returns how many are not GOOD."""
        get = self._last.get
        not_good = 0
        changed: list[Sample] | None = None
        for s in samples:
            q = s[2]
            p = get(s[0])
            if p is q or (p is not None and p.code is q.code and p.reason == q.reason):
                if q.code is not _GOOD:
                    not_good += 1
                continue
            if q.code is not _GOOD:
                not_good += 1
            if changed is None:
                changed = []
            changed.append(s)
        now = self._clock()
        if changed is not None:
            self._changed(changed, now)
        if self._next_summary is None:
            self._next_summary = now + self.summary_every_s
        elif now >= self._next_summary:
            self._next_summary = now + self.summary_every_s
            self._summary(now)
        return not_good

    def _changed(self, changed: list[Sample], now: float) -> None:
        # (event kind, reason, was) → [tags], the earliest "since" among them
        groups: dict[tuple[str, str, str], tuple[list[str], float]] = {}
        for s in changed:
            tag, q = s[0], s[2]
            seen = tag in self._last
            self._last[tag] = q
            held = self._held.get(tag)
            if q.code is _GOOD:
                if held is None:
                    continue
                del self._held[tag]
                key = ("recovered", str(held[0]), "")
                since = held[1]
            else:
                if held is None:
                    since = now
                    was = "GOOD" if seen else "no value yet"
                elif held[0].code is q.code and same_cause(held[0].reason, q.reason):
                    continue
                else:
                    since = held[1]
                    was = str(held[0])
                self._held[tag] = (q, since)
                key = (q.code.name, q.reason, was)
            tags, first = groups.get(key, ([], since))
            tags.append(tag)
            groups[key] = (tags, min(first, since))
        for (kind, reason, was), (tags, since) in groups.items():
            fields: dict[str, object] = {"device": self.device, **self._tag_fields(tags)}
            one = len(tags) == 1
            if kind == "recovered":
                fields.update(was=reason, after_s=round(now - since, 1))
                log.info("tag recovered" if one else "tags recovered", **fields)
            else:
                fields.update(reason=reason, was=was)
                log.warning(f"tag {kind}" if one else f"tags {kind}", **fields)
            self.transitions += 1

    def _tag_fields(self, tags: list[str]) -> dict[str, object]:
        if len(tags) == 1:
            return {**self._context.get(tags[0], {}), "tag": tags[0]}
        shared = self._context.get(tags[0], {})
        fields: dict[str, object] = {"count": len(tags), "tags": tags[: self._names_at_most]}
        if shared and all(self._context.get(t) == shared for t in tags):
            fields = {**shared, **fields}
        return fields

    def _summary(self, now: float) -> None:
        if not self._held:
            return
        oldest = sorted(self._held.items(), key=lambda kv: (kv[1][1], kv[0]))
        bad = sum(1 for t in self._held if self._last[t].code is _BAD)
        log.warning(
            "tags not GOOD",
            device=self.device,
            count=len(oldest),
            bad=bad,
            uncertain=len(oldest) - bad,
            oldest_s=round(now - oldest[0][1][1], 1),
            first=[f"{t}: {self._last[t]}" for t, _ in oldest[: self._summary_names]],
        )


SampleSink = Callable[[Sequence[Sample]], Awaitable[None] | None]


class RunningSource:
    """Polls one source on a fixed-rate grid and hands every batch of samples to ``sink``.

    The grid is ``start + k·interval``. When a poll overruns, the missed ticks are skipped and
    counted, never stacked. The source itself bounds each poll (its timeouts are given the time
    left until the next tick). Cancellation stops the loop at once and propagates.

    Every batch goes through ``quality`` (a :class:`QualityLog` of the source, made here
    unless given) before the sink: tags' quality transitions are logged once each.
    """

    def __init__(
        self,
        source: Source,
        interval_s: float,
        sink: SampleSink,
        clock: Clock = time.monotonic,
        *,
        quality: QualityLog | None = None,
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self.sink = sink
        self.counters = Counters()
        self._clock = clock
        self.quality = quality if quality is not None else QualityLog(source.name, clock=clock)
        self.first_poll_done = asyncio.Event()

    async def run(self) -> None:
        """Poll until cancelled (see the class docstring)."""
        with structlog.contextvars.bound_contextvars(device=self.source.name):
            await self._run()

    async def _run(self) -> None:
        start = self._clock()
        k = 0
        while True:
            tick = start + k * self.interval_s
            now = self._clock()
            if now < tick:
                await asyncio.sleep(tick - now)
            deadline = tick + self.interval_s
            t0 = self._clock()
            samples = await self.source.poll(deadline)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A library swallowed our cancellation (asyncio.wait_for in Python 3.11 returns
                # a result that arrives in the same pass as the cancel): honour it here.
                raise asyncio.CancelledError
            elapsed = self._clock() - t0
            self.counters.polls += 1
            self.counters.last_poll_s = elapsed
            self.counters.samples += len(samples)
            self.counters.bad_samples += self.quality.observe(samples)
            result = self.sink(samples)
            if result is not None:
                await result
            self.first_poll_done.set()
            # next tick strictly in the future: skip (and count) the ones we overran
            next_k = max(k + 1, int((self._clock() - start) / self.interval_s) + 1)
            if next_k > k + 1:
                self.counters.overruns += 1
                self.counters.skipped_ticks += next_k - k - 1
                if self.counters.overruns == 1 or self.counters.overruns % 100 == 0:
                    log.warning(
                        "poll overran its interval",
                        device=self.source.name,
                        elapsed_ms=round(elapsed * 1000, 1),
                        interval_ms=round(self.interval_s * 1000, 1),
                        overruns=self.counters.overruns,
                    )
            k = next_k
