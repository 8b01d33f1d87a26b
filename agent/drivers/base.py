"""The small protocols every driver implements.

A driver speaks its protocol and nothing more: scheduling, backoff, statistics and logging
of state changes live in :mod:`agent.running`.

Lifecycle: ``async with source:`` opens what the driver needs (it must not fail when the
device is down: the first poll reports that); ``__aexit__`` closes it and never raises for
the device's sake. One task polls a source; writes may come from another task of the same
event loop, so a driver serialises access to its link itself (one request at a time on a
Modbus TCP connection or RS-485 bus).

``poll(deadline)`` returns one sample per configured tag (GOOD or BAD with a reason); it
never raises for a device fault, only for cancellation or a bug. ``deadline`` is the
monotonic time by which the poll must be done: request timeouts are clipped to it so one
silent unit cannot push the healthy ones past their tick.

``write(tag, value)`` encodes and writes a tag, then returns the value read back (when the
protocol can read it) so that the caller can verify. It raises
:class:`agent.errors.WriteRefused` when the tag is not writable or the device refuses, and
:class:`agent.errors.DriverError` when the device cannot be reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from agent.types import Sample, Value

__all__ = ["Sink", "Source"]


@runtime_checkable
class Source(Protocol):
    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def poll(self, deadline: float) -> Sequence[Sample]: ...


@runtime_checkable
class Sink(Protocol):
    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def write(self, tag: str, value: Value) -> Value: ...
