"""The scenario harness: a driver polled on its RunningSource, every cycle recorded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from agent.config import ModbusTcpDevice
from agent.drivers.modbus import ModbusDriver
from agent.running import RunningSource
from agent.types import Sample

INTERVAL_S = 0.05
TIMEOUT_MS = 100
BACKOFF_MS = 50
BACKOFF_MAX_MS = 200
FAILURES = 2
# Once the fault is gone: one backoff at its cap, one request that may still time out, the
# poll grid, and slack for a machine shared with other work.
RESUME_S = BACKOFF_MAX_MS / 1000 + TIMEOUT_MS / 1000 + 2 * INTERVAL_S + 0.5

Cycle = dict[str, Sample]


def device(port: int, tags: list[dict[str, Any]], **kw: Any) -> ModbusTcpDevice:
    """A device with short timeouts and backoffs, so that a scenario takes seconds."""
    base: dict[str, Any] = {
        "name": "plc",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "timeout_ms": TIMEOUT_MS,
        "poll_interval_ms": int(INTERVAL_S * 1000),
        "hole_fill_gap": 0,
        "breaker": {"failures": FAILURES, "backoff_ms": BACKOFF_MS, "backoff_max_ms": BACKOFF_MAX_MS},
        "tags": tags,
    }
    base.update(kw)
    return ModbusTcpDevice.model_validate(base)


def good(cycle: Cycle, *tags: str) -> bool:
    return all(t in cycle and cycle[t].quality.is_good for t in tags)


def bad(cycle: Cycle, *tags: str) -> bool:
    return all(t in cycle and not cycle[t].quality.is_good for t in tags)


class Poller:
    """``async with Poller(driver) as p``: the driver runs on a RunningSource until the block
    ends, and must still be running then (a fault never stops it). :meth:`until` waits for a
    cycle that satisfies a condition; :attr:`cycles` holds every cycle, stamped on the
    monotonic clock."""

    def __init__(self, driver: ModbusDriver, interval_s: float = INTERVAL_S) -> None:
        self.driver = driver
        self.interval_s = interval_s
        self.cycles: list[tuple[float, Cycle]] = []
        self._new = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _sink(self, samples: Iterable[Sample]) -> None:
        self.cycles.append((time.monotonic(), {s.tag: s for s in samples}))
        self._new.set()

    async def __aenter__(self) -> Self:
        runner = RunningSource(self.driver, self.interval_s, self._sink)
        self._task = asyncio.create_task(runner.run(), name=f"poller {self.driver.name}")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        alive = not self._task.done()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if et is None:
            assert alive, "the driver stopped polling"

    async def until(self, condition: Callable[[Cycle], bool], timeout_s: float, what: str = "") -> float:
        """The time of the first cycle from now on that satisfies ``condition``."""
        seen = len(self.cycles)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for stamp, cycle in self.cycles[seen:]:
                        if condition(cycle):
                            return stamp
                    seen = len(self.cycles)
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            last = self.cycles[-1][1] if self.cycles else {}
            reasons = {k: (s.value, s.quality.reason) for k, s in last.items()}
            raise AssertionError(f"not within {timeout_s:.2f} s: {what}; last cycle: {reasons}") from None

    def since(self, t0: float, t1: float = float("inf")) -> list[Cycle]:
        return [c for stamp, c in self.cycles if t0 <= stamp <= t1]

    def reasons(self, tag: str) -> list[str]:
        return [c[tag].quality.reason for _, c in self.cycles if tag in c and not c[tag].quality.is_good]

    def assert_honest(self, allowed: Mapping[str, Iterable[object]]) -> None:
        """Every sample is GOOD with a value the server really held, or not GOOD with a
        reason: nothing from a fault reaches the pipeline as GOOD."""
        values = {tag: list(v) for tag, v in allowed.items()}
        for stamp, cycle in self.cycles:
            for tag, s in cycle.items():
                if s.quality.is_good:
                    assert s.value in values[tag], f"{tag}: GOOD {s.value!r} at {stamp:.3f}, never held"
                else:
                    assert s.quality.reason, f"{tag}: not GOOD without a reason at {stamp:.3f}"
