"""sd_notify: READY, WATCHDOG, STATUS and STOPPING from a real agent process on a real socket.

The agent runs as ``python -m agent run`` with ``NOTIFY_SOCKET`` naming a unix datagram socket
this test binds, and ``WATCHDOG_USEC`` as systemd would set it. The watchdog's rule (ping only
while every loop makes progress) is also shown as a unit, with an injected clock.

A blocked event loop is made honestly: the alarm state file is written on the agent's event
loop, and here its temporary file is a FIFO nobody reads yet, so the first alarm transition
blocks the loop in ``open()`` (as a hung disk would) until the test opens the FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from agent.ops.sdnotify import Notifier, Progress
from simulator import Plant, free_port, serve
from tests.agent_process import agent_process
from tests.e2e.test_writeback_on_plant import agent_config

pytestmark = pytest.mark.timeout(120)



# --------------------------------------------------------------------------- the rule, as a unit


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_pings_only_while_every_loop_progresses() -> None:
    clock = FakeClock()
    progress = Progress(clock)
    cycle = progress.register("cycle", 1.0)
    poller = progress.register("poller plant", 0.5)
    summary = ["1/1 devices connected"]
    notifier = Notifier(progress, lambda: summary[0], watchdog_s=5.0, clock=clock)  # WATCHDOG_USEC = 10 s
    assert notifier.step(clock.t) == ["STATUS=1/1 devices connected", "WATCHDOG=1"]
    clock.t += 1
    assert notifier.step(clock.t) == []  # not due yet, and STATUS only when it changes
    # a cycle slower than the watchdog keeps the pings while it moves through its stages
    for _ in range(30):
        clock.t += 1
        cycle.beat()
        poller.beat()
        notifier.step(clock.t)
    assert notifier.pings == 1 + 6  # every 5 s over 31 s
    # the poller hangs: pings stop once it is silent for longer than the watchdog timeout (10 s)
    clock.t += 1
    cycle.beat()
    silent_since = clock.t
    sent: list[str] = []
    while clock.t - silent_since <= 20:
        clock.t += 1
        cycle.beat()
        sent += notifier.step(clock.t)
    pings_while_silent = [f for f in sent if f == "WATCHDOG=1"]
    stalled = [f for f in sent if f.startswith("STATUS=stalled: poller plant (no progress for ")]
    assert len(pings_while_silent) == 2  # at 5 and 10 s of silence, then none
    assert len(stalled) >= 1
    # it moves again: pings resume at once, and STATUS says what it says
    poller.beat()
    summary[0] = "1/1 devices connected, 1 alarms active"
    assert notifier.step(clock.t) == ["STATUS=1/1 devices connected, 1 alarms active", "WATCHDOG=1"]


def test_a_slow_loop_is_judged_on_its_own_period() -> None:
    clock = FakeClock()
    progress = Progress(clock)
    slow = progress.register("poller slow", 60.0)  # polls once a minute
    assert progress.stalled(10.0, clock.t + 100) == {}  # < 2 periods
    assert progress.stalled(10.0, clock.t + 121) == {"poller slow": 121}
    slow.beat()
    assert progress.stalled(10.0, clock.t + 1) == {}


def test_without_watchdog_status_only() -> None:
    clock = FakeClock()
    notifier = Notifier(Progress(clock), lambda: "ok", watchdog_s=None, clock=clock)
    assert notifier.step(clock.t) == ["STATUS=ok"]
    clock.t += 100
    assert notifier.step(clock.t) == []


# --------------------------------------------------------------------------- a real agent process


@dataclass
class NotifySocket:
    """A unix datagram socket as systemd's notify socket: every message with its arrival time."""

    path: Path
    sock: socket.socket
    messages: list[tuple[float, list[str]]] = field(default_factory=list)

    def fields(self) -> Iterator[tuple[float, str]]:
        for at, fs in self.messages:
            for f in fs:
                yield at, f

    def has(self, prefix: str) -> list[float]:
        return [at for at, f in self.fields() if f.startswith(prefix)]

    async def wait_for(self, prefix: str, timeout_s: float, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = [t for t in self.has(prefix) if t > after]
            if got:
                return got[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {prefix!r} within {timeout_s} s; got {[f for _, f in self.fields()]}")


@contextlib.asynccontextmanager
async def notify_socket() -> AsyncIterator[NotifySocket]:
    with tempfile.TemporaryDirectory(prefix="sdn") as d:  # short: sun_path holds 108 bytes
        path = Path(d) / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        ns = NotifySocket(path, sock)
        loop = asyncio.get_running_loop()

        async def receive() -> None:
            while True:
                data = await loop.sock_recv(sock, 4096)
                ns.messages.append((time.monotonic(), data.decode().split("\n")))

        task = asyncio.create_task(receive(), name="notify-socket")
        try:
            yield ns
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sock.close()


def agent_run(config: Path, env: dict[str, str]) -> contextlib.AbstractAsyncContextManager[
    asyncio.subprocess.Process
]:
    return agent_process(config, env=env)


async def stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


async def test_ready_watchdog_status_and_stopping_from_a_real_agent(tmp_path: Path) -> None:
    plant = Plant(seed=21, permissive=True)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=1) as station, notify_socket() as ns:
        cfg = agent_config(tmp_path, station.modbus_port)
        async with agent_run(cfg, {"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000"}) as proc:
            ready = await ns.wait_for("READY=1", timeout_s=30)
            await asyncio.sleep(5.0)
            pings = [t for t in ns.has("WATCHDOG=1") if t > ready]
            # every half WATCHDOG_USEC (0.5 s): about 10 in 5 s; once per cycle (1 s) would be 5
            assert 8 <= len(pings) <= 12, pings
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert max(gaps) < 1.5, gaps
            statuses = [f for _, f in ns.fields() if f.startswith("STATUS=")]
            assert any("1/1 devices connected" in s and "4/4 models healthy" in s for s in statuses), statuses
            assert all(a != b for a, b in itertools.pairwise(statuses))  # sent when it changes
            assert await stop(proc) == 0
        assert ns.has("STOPPING=1"), [f for _, f in ns.fields()]
        assert ns.has("STOPPING=1")[0] > pings[-1]


async def test_ready_with_every_plc_down(tmp_path: Path) -> None:
    async with notify_socket() as ns:
        cfg = agent_config(tmp_path, free_port())  # nothing listens there
        t0 = time.monotonic()
        async with agent_run(cfg, {"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "2000000"}) as proc:
            ready = await ns.wait_for("READY=1", timeout_s=30)
            # pollers and the cycle loop keep moving with the PLC down: the pings go on
            await asyncio.sleep(4.0)
            pings = [t for t in ns.has("WATCHDOG=1") if t > ready]
            assert len(pings) >= 3, pings
            statuses = [f for _, f in ns.fields() if f.startswith("STATUS=")]
            assert any(s.startswith("STATUS=0/1 devices connected") for s in statuses), statuses
            assert proc.returncode is None
            assert await stop(proc) == 0
        assert ready - t0 < 30


def _blocking_alarm_config(tmp_path: Path, port: int) -> Path:
    """The demo with an alert that goes active 3 s after the first good value (its limit is
    below any bearing temperature), and the alarm state's temporary file a FIFO."""
    path = agent_config(tmp_path, port)
    data = yaml.safe_load(path.read_text())
    used = {d["code"] for d in data["alarms"]["defs"]}
    data["alarms"]["defs"].append(
        {
            "name": "always",
            "code": min(set(range(1, 17)) - used),  # the first code the demo leaves free
            "kind": "alert",
            "source": "bearing_temp",
            "high": {"value": -100, "severity": 1},
            "on_delay_s": 3,
        }
    )
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    os.mkfifo(state / "alarms.tmp")
    return path


async def test_watchdog_stops_while_the_event_loop_is_blocked(tmp_path: Path) -> None:
    plant = Plant(seed=22, permissive=True)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=1) as station, notify_socket() as ns:
        cfg = _blocking_alarm_config(tmp_path, station.modbus_port)
        fifo = tmp_path / "state" / "alarms.tmp"
        async with agent_run(cfg, {"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000"}) as proc:
            ready = await ns.wait_for("READY=1", timeout_s=30)
            await ns.wait_for("WATCHDOG=1", timeout_s=5, after=ready)  # it pings once ready
            # the alert goes active ~3 s after the first data; saving its state blocks the loop
            deadline = time.monotonic() + 30
            while True:
                pings = ns.has("WATCHDOG=1")
                if time.monotonic() - pings[-1] > 2.5:
                    break
                assert time.monotonic() < deadline, "the pings never stopped"
                await asyncio.sleep(0.1)
            assert len([t for t in pings if t > ready]) >= 2  # it pinged before it blocked
            blocked_at = pings[-1]
            assert proc.returncode is None  # blocked, not dead (systemd would kill it now)
            # unblock: read what the agent was writing
            saved = await asyncio.to_thread(fifo.read_text)
            assert '"always"' in saved
            resumed = await ns.wait_for("WATCHDOG=1", timeout_s=10, after=blocked_at)
            assert resumed - blocked_at > 2.0
            assert await stop(proc) == 0
        assert ns.has("STOPPING=1")
