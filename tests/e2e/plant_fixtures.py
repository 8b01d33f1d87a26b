"""Shared helpers for end-to-end tests of the real Agent against the embedded plant.

Everything here is real: the plant's Modbus TCP / OPC UA servers (``simulator.serve``), the
``Agent`` built from ``configs/demo.yaml`` (with test overrides), and plain pymodbus / asyncua
clients that read the PLC like an HMI would. Nothing is mocked.

* :func:`demo_config_data` / :func:`modbus_test_config` / :func:`opcua_test_config`: the demo
  configuration as data, with the overrides a test needs (device port or endpoint, a fresh
  ``state_dir``, scaled alarm delays, latching), validated by ``Config.model_validate`` exactly
  as ``load_config`` validates a file. The model bundle keeps resolving relative to
  ``configs/demo.yaml``: pass :data:`DEMO_CONFIG` as ``config_path``.
* :func:`running_agent`: ``Agent.run(stop)`` in a task, up to its first cycle; stopped (and
  awaited, errors re-raised) when the block ends.
* :class:`Hmi`: a pymodbus client on the plant with the demo's HMI addresses (HR 0/1 heartbeat
  and status, HR 100+/200+ per-pump blocks, coil 1 acknowledge, HR 1000+N fault injection).
* :class:`LimitWatch`: watches the plant's *true* tag value (in process, every 20 ms) and
  records when it went beyond an alarm limit, so a test can judge the agent's on-delay against
  the moment the physics actually crossed, not against a guess.
* :func:`wait_until`: poll an (async) predicate with a deadline.

Timing model of the agent (used by the tests' bounds): a tag is polled every
``poll_interval_ms`` (500 ms in the demo), the pipeline runs every ``cycle_ms`` (1 s; the demo's
models tick at their own 1 s sample period, beside the cycle), an alarm goes active on the first cycle
after its condition held ``on_delay_s`` on consecutive cycles, and the HMI block is written in
that same cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pymodbus.client import AsyncModbusTcpClient

from agent.config import Config
from agent.runtime import STATUS_BITS, Agent

__all__ = [
    "CYCLE_S",
    "DEMO_CONFIG",
    "NAMESPACE_URI",
    "POLL_S",
    "Hmi",
    "HmiBlockRegs",
    "LimitWatch",
    "alarm_def",
    "bit",
    "demo_config_data",
    "modbus_test_config",
    "opcua_test_config",
    "running_agent",
    "status_has",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
NAMESPACE_URI = "urn:edge-inference-agent:simulator"
UNIT = 1

CYCLE_S = 1.0  # demo agent.cycle_ms (alarms, HMI, write-back; the models tick at their own period)
POLL_S = 0.5  # demo devices[0].poll_interval_ms

# The demo's HMI map (simulator/REGISTER_MAP.md): pump i's block at HR 100*i.
HR_HEARTBEAT = 0
HR_STATUS = 1
COIL_PERMISSIVE = 0
COIL_ACKNOWLEDGE = 1
DI_HEARTBEAT_OK = 0


def bit(code: int) -> int:
    """An alarm code's bit in the HMI words (code 1 = bit 0)."""
    return 1 << (code - 1)


# --------------------------------------------------------------------------- configuration


def demo_config_data() -> dict[str, Any]:
    """``configs/demo.yaml`` as plain data (a fresh copy each call)."""
    data = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def alarm_def(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The alarm definition called ``name`` in config data."""
    for d in data["alarms"]["defs"]:
        if d["name"] == name:
            return dict(d)
    raise KeyError(name)


def _scale_alarms(
    data: dict[str, Any],
    *,
    on_delay_s: float | None,
    off_delay_s: float | None,
    latch: Iterable[str],
) -> None:
    latched = set(latch)
    unknown = latched - {d["name"] for d in data["alarms"]["defs"]}
    assert not unknown, f"no such alarm defs: {sorted(unknown)}"
    for d in data["alarms"]["defs"]:
        if on_delay_s is not None and d.get("on_delay_s"):
            d["on_delay_s"] = on_delay_s
        if off_delay_s is not None and d.get("off_delay_s"):
            d["off_delay_s"] = off_delay_s
        if d["name"] in latched:
            d["latch"] = True


def _common(data: dict[str, Any], state_dir: Path) -> None:
    data["agent"]["state_dir"] = str(state_dir)
    data["agent"]["log_level"] = "warning"


def modbus_test_config(
    port: int,
    state_dir: Path,
    *,
    on_delay_s: float | None = 2.0,
    off_delay_s: float | None = 2.0,
    latch: Iterable[str] = (),
) -> Config:
    """The demo config against the plant's Modbus server on ``port``.

    Overrides: the device port, ``state_dir`` (audit + alarm state), and every non-zero
    ``on_delay_s`` / ``off_delay_s`` replaced by the given values (None keeps the demo's);
    alarm names in ``latch`` get ``latch: true``. Everything else (tags, HMI block, alarm limits,
    deadbands, severities, guard in auto, recommender, the PCA model) is the demo's.
    """
    data = demo_config_data()
    _common(data, state_dir)
    (device,) = data["devices"]
    assert device["protocol"] == "modbus_tcp"
    device["port"] = port
    _scale_alarms(data, on_delay_s=on_delay_s, off_delay_s=off_delay_s, latch=latch)
    return Config.model_validate(data)


def opcua_test_config(
    endpoint: str,
    state_dir: Path,
    *,
    on_delay_s: float | None = 2.0,
    off_delay_s: float | None = 2.0,
    anomaly_source: str | None = None,
    mode: str = "subscription",
) -> Config:
    """The demo config with its device replaced by the plant's OPC UA server at ``endpoint``.

    Every demo tag becomes the OPC UA node of the same name, addressed by namespace URI
    (``nsu=urn:edge-inference-agent:simulator;s=<tag>``), with the demo's engineering unit,
    plausible range and access; security None (``allow_insecure: true``, the simulator only).
    The node data types are the server's (words UInt16, AnomalyScore Float, speeds Double): the
    agent's driver reads each node's type and writes a Variant of it. ``anomaly_source``, when
    given, replaces every asset's anomaly source (see the OPC UA test for why).
    """
    data = demo_config_data()
    _common(data, state_dir)
    (modbus,) = data["devices"]
    tags = []
    for t in modbus["tags"]:
        tag: dict[str, Any] = {"name": t["name"], "node_id": f"nsu={NAMESPACE_URI};s={t['name']}"}
        for key in ("engineering_unit", "range", "access", "purpose"):
            if key in t:
                tag[key] = copy.deepcopy(t[key])
        tags.append(tag)
    data["devices"] = [
        {
            "name": modbus["name"],
            "protocol": "opcua",
            "endpoint": endpoint,
            "security_policy": "None",
            "security_mode": "None",
            "allow_insecure": True,
            "mode": mode,
            "publishing_interval_ms": 250,
            "poll_interval_ms": modbus["poll_interval_ms"],
            "timeout_ms": 2000,
            "tags": tags,
        }
    ]
    if anomaly_source is not None:
        for a in data["assets"]:
            a["anomaly_source"] = anomaly_source
    _scale_alarms(data, on_delay_s=on_delay_s, off_delay_s=off_delay_s, latch=())
    return Config.model_validate(data)


# --------------------------------------------------------------------------- the agent


@contextlib.asynccontextmanager
async def running_agent(
    config: Config,
    *,
    config_path: Path = DEMO_CONFIG,
    first_cycle_timeout_s: float = 10.0,
) -> AsyncIterator[Agent]:
    """Run the real Agent until the block ends; yields it once its first cycle has run.

    On exit: ``stop`` is set and the run task awaited (its orderly shutdown: sources, scorers,
    final HOLD, alarm state saved, audit closed, sinks closed); an error of the agent is raised.
    """
    agent = Agent(config, config_path=config_path)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent-under-test")
    try:
        deadline = time.monotonic() + first_cycle_timeout_s
        while agent.view.cycles < 1:
            if task.done():
                task.result()  # start-up error: raise it here
                raise AssertionError("the agent stopped before its first cycle")
            assert time.monotonic() < deadline, "the agent ran no cycle in time"
            await asyncio.sleep(0.02)
        yield agent
    finally:
        stop.set()
        try:
            async with asyncio.timeout(20):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise AssertionError("the agent did not stop within 20 s") from None


# --------------------------------------------------------------------------- waiting


async def wait_until(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)


# --------------------------------------------------------------------------- Modbus HMI client


@dataclass(frozen=True)
class HmiBlockRegs:
    """HR 100*i .. 100*i+4 of pump i as the PLC holds them."""

    alarm_word: int
    highest_severity: int
    active_count: int
    first_out_code: int
    fault_class: int


class Hmi:
    """A plain pymodbus client reading and writing the plant like an HMI / operator panel."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.client = AsyncModbusTcpClient(host, port=port, timeout=1, retries=1)

    async def __aenter__(self) -> Hmi:
        assert await self.client.connect(), "cannot connect to the plant's Modbus server"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()

    async def _hr(self, address: int, count: int) -> list[int]:
        rr = await self.client.read_holding_registers(address, count=count, device_id=UNIT)
        assert not rr.isError(), f"read HR {address}+{count}: {rr}"
        return list(rr.registers)

    async def block(self, pump: int) -> HmiBlockRegs:
        r = await self._hr(100 * pump, 5)
        return HmiBlockRegs(*r)

    async def alarm_word(self, pump: int) -> int:
        return (await self._hr(100 * pump, 1))[0]

    async def heartbeat(self) -> int:
        return (await self._hr(HR_HEARTBEAT, 1))[0]

    async def status_word(self) -> int:
        return (await self._hr(HR_STATUS, 1))[0]

    async def heartbeat_ok(self) -> bool:
        rr = await self.client.read_discrete_inputs(DI_HEARTBEAT_OK, count=1, device_id=UNIT)
        assert not rr.isError(), f"read DI {DI_HEARTBEAT_OK}: {rr}"
        return bool(rr.bits[0])

    async def write_hr(self, address: int, value: int) -> None:
        rr = await self.client.write_register(address, value, device_id=UNIT)
        assert not rr.isError(), f"write HR {address} = {value}: {rr}"

    async def inject_fault(self, pump: int, code: int) -> None:
        """Write ``Simulation.Pump<pump>.FaultInject`` (HR 1000 + pump): code 1..9, 0 clears."""
        await self.write_hr(1000 + pump, code)

    async def set_acknowledge(self, on: bool) -> None:
        """The operator's acknowledge pushbutton (coil 1 = 00002)."""
        rr = await self.client.write_coil(COIL_ACKNOWLEDGE, on, device_id=UNIT)
        assert not rr.isError(), f"write coil {COIL_ACKNOWLEDGE} = {on}: {rr}"


def status_has(word: int, name: str) -> bool:
    """Whether the agent status word has the bit ``name`` (agent.runtime.STATUS_BITS)."""
    return bool(word >> STATUS_BITS[name] & 1)


# --------------------------------------------------------------------------- plant truth


@dataclass
class LimitWatch:
    """Record when the plant's true (published) value of ``tag`` is beyond ``limit``.

    ``direction`` is ``"high"`` (value > limit) or ``"low"`` (value < limit). Runs as a task
    sampling ``plant.state`` every ``interval_s`` in this event loop; since the station steps
    and refreshes its Modbus image in one go without yielding, what it sees is what a client
    could read at that moment (within ``interval_s``).
    """

    plant: Any
    tag: str
    limit: float
    direction: str = "high"
    interval_s: float = 0.02
    first_beyond: float | None = None  # monotonic time the value was first seen beyond
    run_start: float | None = None  # start of the current run beyond the limit (None: inside)
    runs: list[tuple[float, float | None]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def beyond(self) -> bool:
        v = float(self.plant.state.tags[self.tag])
        return v > self.limit if self.direction == "high" else v < self.limit

    def _sample(self) -> None:
        now = time.monotonic()
        if self.beyond():
            if self.run_start is None:
                self.run_start = now
                self.runs.append((now, None))
                if self.first_beyond is None:
                    self.first_beyond = now
        elif self.run_start is not None:
            self.runs[-1] = (self.run_start, now)
            self.run_start = None

    async def _loop(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval_s)

    def run_start_before(self, t: float) -> float | None:
        """Start of the last run beyond the limit that began at or before ``t``."""
        starts = [s for s, _ in self.runs if s <= t]
        return starts[-1] if starts else None

    async def __aenter__(self) -> LimitWatch:
        self._sample()
        self._task = asyncio.create_task(self._loop(), name=f"limit-watch {self.tag}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
