"""The running wrapper: backoff, breaker, fixed-rate polling with overrun skip."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import pytest

from agent.running import Backoff, BreakerState, CircuitBreaker, RunningSource
from agent.tagtable import TagTable
from agent.types import Quality, Sample


def test_backoff_doubles_with_jitter_up_to_cap() -> None:
    b = Backoff(0.5, 8.0, jitter=0.2, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    for i, d in enumerate(delays[:4]):
        nominal = 0.5 * 2**i
        assert 0.8 * nominal <= d <= 1.2 * nominal
    assert all(d <= 8.0 for d in delays)
    assert delays[-1] >= 8.0 * 0.8
    assert len(set(delays)) > 5  # jittered, not lock-step
    b.reset()
    assert b.next_delay() <= 0.6


def test_breaker_opens_probes_and_recovers() -> None:
    now = [0.0]
    br = CircuitBreaker("u", threshold=2, backoff=Backoff(1.0, 4.0, jitter=0.0), clock=lambda: now[0])
    assert br.allow()
    br.record_failure("timeout")
    assert br.state is BreakerState.CLOSED and br.allow()
    br.record_failure("timeout")
    assert br.state is BreakerState.OPEN and not br.allow()
    now[0] = 1.01
    assert br.allow() and br.state is BreakerState.HALF_OPEN
    br.record_failure("timeout")  # probe failed: longer backoff
    now[0] = 2.5
    assert not br.allow()
    now[0] = 3.1
    assert br.allow()
    br.record_success()
    assert br.state is BreakerState.CLOSED and br.failures == 0 and br.last_error == ""


class SlowSource:
    name = "slow"

    def __init__(self, durations: list[float]) -> None:
        self.durations = durations
        self.calls = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def poll(self, deadline: float) -> Sequence[Sample]:
        d = self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1
        await asyncio.sleep(d)
        return [Sample.now("x", self.calls, Quality.good())]


async def test_overrun_skips_ticks_and_never_stacks() -> None:
    # a 200 ms interval: the margins (50 ms before the tick the slow poll overruns into,
    # 100 ms after it) hold on a loaded CI machine
    src = SlowSource([0.0, 0.45, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    got: list[Sample] = []
    runner = RunningSource(src, 0.2, got.extend)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.counters.overruns == 1
    assert runner.counters.skipped_ticks == 2
    # ticks at 0, 0.2 (slow, to 0.65), then 0.8, 1.0, 1.2, 1.4 → 6 polls, no burst
    assert 5 <= src.calls <= 7
    gaps = [b.mono - a.mono for a, b in itertools.pairwise(got)]
    assert min(gaps) > 0.05  # polls never stacked back to back (a burst: microseconds apart)


def test_tag_table_turns_stale_values_bad() -> None:
    now = [100.0]
    table = TagTable({"x": 2.0}, clock=lambda: now[0])
    assert table.get("x").quality.reason == "no value yet"
    table.update([Sample("x", 1.5, Quality.good(), Sample.now("x", 0, Quality.good()).received_at, 100.0)])
    assert table.get("x").quality.is_good
    now[0] = 102.5
    s = table.get("x")
    assert not s.quality.is_good and s.quality.reason.startswith("stale")
    assert s.value == 1.5  # the last value is kept for display, marked BAD


class SwallowingSource(SlowSource):
    """A source whose library swallows the cancel (as asyncio.wait_for does in Python 3.11
    when the reply arrives in the same loop pass): poll returns normally."""

    async def poll(self, deadline: float) -> Sequence[Sample]:
        self.calls += 1
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
        return [Sample.now("x", self.calls, Quality.good())]


async def test_a_swallowed_cancellation_still_stops_the_loop() -> None:
    src = SwallowingSource([0.0])
    runner = RunningSource(src, 0.01, lambda samples: None)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1.0)
    calls = src.calls
    await asyncio.sleep(0.1)
    assert src.calls == calls  # no poll after the cancel
