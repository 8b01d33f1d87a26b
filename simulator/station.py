"""Serve a plant over Modbus TCP and OPC UA, stepping it in real time x speed.

::

    async with serve(Plant(seed=1), modbus_port=0, opcua_port=0, speed=10) as station:
        station.modbus_port, station.opcua_endpoint, station.write_log ...

One owned task runs the loop: every ``tick_s`` of wall time it steps the plant with the fixed
simulated step ``dt_s`` until simulated time has caught up with ``elapsed wall time x speed``,
then refreshes the Modbus image and publishes OPC UA values. ``speed=0`` pauses real time: the
caller steps with ``await station.step(seconds)``. If the plant cannot keep up (more than
``max_steps_per_tick`` steps due), the lag is skipped and counted in ``station.lag_skips``.

The PLC's heartbeat watchdog and acknowledge pulse run on the monotonic wall clock while served
(the agent lives in wall time). Leaving the block cancels the loop, stops both servers and
re-raises an error of the loop, if any. Port 0 picks a free port (read it back from
``station.modbus_port`` / ``station.opcua_port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from .modbus_server import ModbusStationServer
from .physics import Plant
from .plc import WriteLogEntry
from .register_map import NAMESPACE_URI

if TYPE_CHECKING:
    from .opcua_server import OpcUaStationServer

__all__ = ["Station", "free_port", "serve"]

log = logging.getLogger("simulator.station")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (another process may take it before you do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_dt(speed: float) -> float:
    """Simulated step used by :func:`serve` when none is given: 0.1 s, 1 s above 50x."""
    return 0.1 if speed <= 50 else 1.0


class Station:
    """A served plant. Created by :func:`serve`; attributes are read-only for callers."""

    def __init__(
        self,
        plant: Plant,
        *,
        speed: float,
        dt_s: float,
        tick_s: float,
        host: str,
        modbus: ModbusStationServer | None,
        opcua: OpcUaStationServer | None,
        max_steps_per_tick: int,
    ) -> None:
        self.plant = plant
        self.speed = float(speed)
        self.dt_s = float(dt_s)
        self.tick_s = float(tick_s)
        self.host = host
        self.modbus = modbus
        self.opcua = opcua
        self.max_steps_per_tick = max_steps_per_tick
        self.ticks = 0
        self.lag_skips = 0
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._sim0 = 0.0
        self._lagging = False
        self._ticked = asyncio.Condition()

    # -- what clients need ------------------------------------------------------------------

    @property
    def modbus_port(self) -> int | None:
        return self.modbus.port if self.modbus is not None else None

    @property
    def opcua_port(self) -> int | None:
        return self.opcua.port if self.opcua is not None else None

    @property
    def opcua_endpoint(self) -> str | None:
        return self.opcua.endpoint if self.opcua is not None else None

    @property
    def namespace_uri(self) -> str:
        return self.opcua.namespace_uri if self.opcua is not None else NAMESPACE_URI

    @property
    def namespace_index(self) -> int | None:
        return self.opcua.namespace_index if self.opcua is not None else None

    @property
    def write_log(self) -> list[WriteLogEntry]:
        """Every external write received so far (a copy), oldest first."""
        return list(self.plant.plc.write_log)

    @property
    def sim_time_s(self) -> float:
        return self.plant.t

    # -- control ----------------------------------------------------------------------------

    async def step(self, seconds: float) -> None:
        """Advance simulated time by ``seconds`` now (in steps of ``dt_s``) and publish."""
        n = max(1, round(seconds / self.dt_s))
        for _ in range(n):
            self.plant.step(self.dt_s)
        self._sim0 += n * self.dt_s  # the real-time schedule does not try to catch up
        await self.publish()

    async def publish(self) -> None:
        if self.modbus is not None:
            self.modbus.refresh()
        if self.opcua is not None:
            await self.opcua.publish()

    async def wait_until(self, sim_time_s: float, timeout_s: float = 10.0) -> None:
        """Wait (wall time) until simulated time reaches ``sim_time_s``."""
        async with asyncio.timeout(timeout_s), self._ticked:
            await self._ticked.wait_for(lambda: self.plant.t >= sim_time_s - 1e-9)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._sim0 = self.plant.t
        next_tick = self._t0
        plant = self.plant
        dt = self.dt_s
        while True:
            now = loop.time()
            if self.speed > 0:
                target = self._sim0 + (now - self._t0) * self.speed
                due = int((target - plant.t) / dt + 1e-6)
                if due > self.max_steps_per_tick:
                    self.lag_skips += 1
                    if not self._lagging:
                        log.warning("simulation cannot keep up with speed %gx: skipping lag", self.speed)
                        self._lagging = True
                    self._sim0 -= (due - self.max_steps_per_tick) * dt
                    due = self.max_steps_per_tick
                elif self._lagging and due <= 1:
                    log.info("simulation caught up with real time x %g", self.speed)
                    self._lagging = False
                for _ in range(due):
                    plant.step(dt)
            else:
                plant.plc.update()
            await self.publish()
            self.ticks += 1
            async with self._ticked:
                self._ticked.notify_all()
            next_tick += self.tick_s
            delay = next_tick - loop.time()
            if delay < 0:
                next_tick = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="simulator-station")

    async def _stop(self) -> BaseException | None:
        error: BaseException | None = None
        task, self._task = self._task, None
        if task is not None:
            if task.done():
                error = task.exception() if not task.cancelled() else None
            else:
                task.cancel()
                await asyncio.wait([task])
        for server in (self.opcua, self.modbus):
            if server is not None:
                try:
                    await server.stop()
                except Exception as exc:  # keep stopping the other one; reported below
                    log.exception("error stopping %s", type(server).__name__)
                    error = error or exc
        return error


@asynccontextmanager
async def serve(
    plant: Plant | None = None,
    *,
    modbus_port: int | None = 5020,
    opcua_port: int | None = None,
    host: str = "127.0.0.1",
    speed: float = 1.0,
    dt_s: float | None = None,
    tick_s: float = 0.1,
    heartbeat_timeout_s: float | None = None,
    unit_id: int = 1,
    other_units: str = "exception",
    opcua_options: Mapping[str, Any] | None = None,
    max_steps_per_tick: int = 5000,
) -> AsyncIterator[Station]:
    """Serve ``plant`` (a default ``Plant(seed=0)`` if None) until the block ends.

    ``modbus_port`` / ``opcua_port``: None disables that server, 0 picks a free port.
    ``opcua_options`` go to :class:`simulator.opcua_server.OpcUaStationServer` (endpoint,
    certificate, private_key, security_policies, extra_namespaces_first, ...).
    ``heartbeat_timeout_s`` overrides the plant's. See the module docstring.
    """
    plant = plant if plant is not None else Plant()
    if speed < 0:
        raise ValueError("speed must be >= 0")
    plc = plant.plc
    previous_clock = plc.clock
    plc.set_clock(time.monotonic)
    if heartbeat_timeout_s is not None:
        plc.heartbeat_timeout_s = float(heartbeat_timeout_s)
    modbus = (
        ModbusStationServer(plant, host=host, port=modbus_port, unit_id=unit_id, other_units=other_units)
        if modbus_port is not None
        else None
    )
    opcua: OpcUaStationServer | None = None
    try:
        if modbus is not None:
            await modbus.start()
        if opcua_port is not None:
            from .opcua_server import OpcUaStationServer  # lazy: asyncua costs ~25 MB

            opts = dict(opcua_options or {})
            for attempt in range(3):
                port = opcua_port or free_port(host)
                opcua = OpcUaStationServer(plant, host=host, port=port, **opts)
                try:
                    await opcua.start()
                    break
                except OSError:
                    await opcua.stop()
                    opcua = None
                    if opcua_port or attempt == 2:
                        raise
        station = Station(
            plant,
            speed=speed,
            dt_s=dt_s if dt_s is not None else default_dt(speed),
            tick_s=tick_s,
            host=host,
            modbus=modbus,
            opcua=opcua,
            max_steps_per_tick=max_steps_per_tick,
        )
        await station.publish()
        await station._start()
    except BaseException:
        for server in (opcua, modbus):
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.stop()
        plc.set_clock(previous_clock)
        raise
    try:
        yield station
    except BaseException:
        await station._stop()
        plc.set_clock(previous_clock)
        raise
    error = await station._stop()
    plc.set_clock(previous_clock)  # the plant goes back to its simulated-time watchdog
    if error is not None:
        raise error
