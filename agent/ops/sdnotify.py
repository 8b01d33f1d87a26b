"""systemd notification (sd_notify) without a dependency: READY, WATCHDOG, STATUS, STOPPING.

:func:`notify` is a no-op when the agent was not started by systemd (no ``NOTIFY_SOCKET``).

The watchdog pings only while every loop of the agent makes progress, never once per cycle (a
cycle may be longer than the watchdog)::

    cycle loop ──beat──▶ Progress ◀──beat── each poller
                            │ stalled()?
                            ▼
    Notifier (its own task): WATCHDOG=1 every half WATCHDOG_USEC while nothing is stalled;
                             STATUS=<one line> whenever that line changes

A loop is *stalled* when it has not beaten for longer than the larger of twice its own period
and the watchdog timeout: the cycle loop beats between its stages and while it waits for the
next tick, a poller after every poll (each poll is bounded by its interval). A loop stuck in one
await stops the pings and says so in ``STATUS=``; an event loop that is blocked stops them by
itself (the notifier cannot run). systemd then restarts the service.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Heartbeat", "Notifier", "Progress", "enabled", "notify", "watchdog_interval_s"]

Clock = Callable[[], float]


def enabled() -> bool:
    """Whether a service manager listens (``NOTIFY_SOCKET`` is set)."""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=polling 3 devices"``). True if sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(addr)
            sock.sendall("\n".join(fields).encode())
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asks for (``WATCHDOG_USEC``), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    try:
        value = int(usec) / 2e6
    except ValueError:
        return None
    return value if value > 0 else None


@dataclass(slots=True)
class Heartbeat:
    """One loop's progress record: :meth:`beat` whenever the loop moves on (cheap: one clock
    read)."""

    name: str
    period_s: float
    """How often the loop beats when healthy (its poll interval, the cycle)."""
    last: float
    clock: Clock

    def beat(self) -> None:
        self.last = self.clock()


class Progress:
    """The heartbeats of every loop the watchdog watches. Not thread-safe: one event loop."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._loops: dict[str, Heartbeat] = {}

    def register(self, name: str, period_s: float) -> Heartbeat:
        """A heartbeat for the loop ``name`` (beaten now); replaces one of the same name."""
        hb = Heartbeat(name, period_s, self._clock(), self._clock)
        self._loops[name] = hb
        return hb

    def unregister(self, name: str) -> None:
        self._loops.pop(name, None)

    def stalled(self, timeout_s: float, now: float | None = None) -> dict[str, float]:
        """Loops silent for longer than max(2 × their period, ``timeout_s``) → seconds silent."""
        now = self._clock() if now is None else now
        out: dict[str, float] = {}
        for hb in self._loops.values():
            silent = now - hb.last
            if silent > max(2 * hb.period_s, timeout_s):
                out[hb.name] = silent
        return out


class Notifier:
    """The task that tells systemd the agent is alive (see the module docstring).

    ``watchdog_s`` is the ping interval (half ``WATCHDOG_USEC``; None: no watchdog, STATUS
    only); ``summary`` gives the one-line status. ``send`` is :func:`notify` (a test may pass
    its own seam, but the subprocess tests use a real socket).
    """

    def __init__(
        self,
        progress: Progress,
        summary: Callable[[], str],
        *,
        watchdog_s: float | None,
        clock: Clock = time.monotonic,
        send: Callable[..., bool] = notify,
        default_timeout_s: float = 30.0,
    ) -> None:
        self.progress = progress
        self._summary = summary
        self._interval = watchdog_s
        # A loop is stalled past the watchdog timeout (twice the ping interval); without a
        # watchdog, STATUS still names a stalled loop after ``default_timeout_s``.
        self.timeout_s = 2 * watchdog_s if watchdog_s is not None else default_timeout_s
        self._clock = clock
        self._send = send
        self._next_ping = -float("inf")
        self._last_status: str | None = None
        self.pings = 0

    @property
    def tick_s(self) -> float:
        """How often :meth:`run` looks: the ping interval, at most one second."""
        return min(1.0, self._interval) if self._interval is not None else 1.0

    def step(self, now: float) -> list[str]:
        """The fields to send at ``now`` (and remembers what was sent)."""
        fields: list[str] = []
        stalled = self.progress.stalled(self.timeout_s, now)
        if stalled:
            names = ", ".join(f"{n} (no progress for {s:.0f} s)" for n, s in sorted(stalled.items()))
            text = f"stalled: {names}"
        else:
            text = self._summary()
        if text != self._last_status:
            fields.append(f"STATUS={text}")
            self._last_status = text
        if self._interval is not None and not stalled and now >= self._next_ping:
            fields.append("WATCHDOG=1")
            self._next_ping = now + self._interval
            self.pings += 1
        return fields

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            fields = self.step(self._clock())
            if fields:
                self._send(*fields)
            await asyncio.sleep(self.tick_s)
