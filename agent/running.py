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
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from agent.drivers.base import Source
from agent.types import Sample

__all__ = ["Backoff", "BreakerState", "CircuitBreaker", "Counters", "RunningSource"]

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

    Not thread-safe; one poll loop owns it. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        name: str,
        threshold: int,
        backoff: Backoff,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
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
                log.info("recovered", source=self.name, after_failures=self.failures)
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
                log.warning("lost", source=self.name, reason=reason, failures=self.failures)
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


SampleSink = Callable[[Sequence[Sample]], Awaitable[None] | None]


class RunningSource:
    """Polls one source on a fixed-rate grid and hands every batch of samples to ``sink``.

    The grid is ``start + k·interval``. When a poll overruns, the missed ticks are skipped and
    counted, never stacked. The source itself bounds each poll (its timeouts are given the time
    left until the next tick). Cancellation stops the loop at once and propagates.
    """

    def __init__(self, source: Source, interval_s: float, sink: SampleSink, clock: Clock = time.monotonic):
        self.source = source
        self.interval_s = interval_s
        self.sink = sink
        self.counters = Counters()
        self._clock = clock
        self.first_poll_done = asyncio.Event()

    async def run(self) -> None:
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
            self.counters.bad_samples += sum(1 for s in samples if not s.quality.is_good)
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
                        source=self.source.name,
                        elapsed_ms=round(elapsed * 1000, 1),
                        interval_ms=round(self.interval_s * 1000, 1),
                        overruns=self.counters.overruns,
                    )
            k = next_k
