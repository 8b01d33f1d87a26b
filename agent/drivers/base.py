"""The small protocols every driver implements.

A driver speaks its protocol and nothing more: scheduling, backoff, statistics and logging
of state changes live in :mod:`agent.running`.

Lifecycle: ``async with source:`` opens what the driver needs (it must not fail when the
device is down: the first poll reports that); ``__aexit__`` closes it and never raises for
the device's sake. One task polls a source; writes and explicit reads may come from another
task of the same event loop, so a driver serialises access to its link itself (one request at
a time on a Modbus TCP connection or RS-485 bus).

``poll(deadline)`` returns one sample per configured tag (GOOD or BAD with a reason); it
never raises for a device fault, only for cancellation or a bug. ``deadline`` is the
monotonic time by which the poll must be done: request timeouts are clipped to it so one
silent unit cannot push the healthy ones past their tick.

``read(tag)`` is one explicit read of one tag, issued now (never a cached poll or
subscription value): the evidence a write-back verifies against. Like ``poll`` it returns a
BAD sample with the reason on a device fault and never raises :class:`~agent.errors.DriverError`.

``write(tag, value, purpose=...)`` writes one tag and returns the value read back by a read
issued after the write's reply. ``write_many(items, purpose=...)`` writes several, in the
order given, and reports each one: its read-back value or its own
:class:`~agent.errors.DriverError`; one failed item never stops the others. What each error
means for the PLC:

* :class:`~agent.errors.WriteRefused`: not applied. The agent refused it before sending
  (unknown or read-only tag, the tag's declared ``purpose`` is not the one asked for, the value
  does not encode) or the device answered with an exception.
* :class:`~agent.errors.DeviceUnreachable`: not applied, nothing was sent (no connection, or
  the unit did not answer an earlier request that this write needed).
* :class:`~agent.errors.WriteUnconfirmed`: sent, no valid reply: *possibly applied*.
* :class:`~agent.errors.ReadBackFailed`: acknowledged, the verifying read failed: applied,
  not verified.

``asyncio.CancelledError`` always propagates.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from agent.configbase import Purpose
from agent.errors import DriverError, WriteRefused
from agent.types import Sample, Value

__all__ = ["Sink", "Source", "WriteResults", "check_purpose"]

WriteResults = dict[str, Value | DriverError]
"""``write_many``'s answer: per tag, in the order given, the value read back or the error."""


def check_purpose(name: str, reference: str, declared: Purpose | None, requested: Purpose) -> None:
    """WriteRefused unless the tag was declared for ``requested`` (called before sending)."""
    if declared != requested:
        what = f"a {declared} tag" if declared is not None else "declared for no purpose"
        raise WriteRefused(f"{name} ({reference}) is {what}: refused a write for purpose {requested}")


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

    async def write(self, tag_name: str, value: Value, *, purpose: Purpose) -> Value: ...

    async def write_many(self, items: Sequence[tuple[str, Value]], *, purpose: Purpose) -> WriteResults: ...

    async def read(self, tag_name: str) -> Sample: ...
