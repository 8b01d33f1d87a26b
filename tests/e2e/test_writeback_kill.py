"""The write path end to end, judged on the embedded plant's own log of the writes it received.

The plant's PLC appends every write it receives to a file as it arrives (one JSON line, written
unbuffered), so killing the agent loses nothing of the evidence. The invariants are those of the
property test in ``tests/unit/test_writeback.py``, on real processes and real time:

* the agent is killed with SIGKILL ten times during a ramp, each time right after the plant
  logged one of its setpoint writes, and restarted with the same state directory: every pair
  of consecutive writes the plant received stays within [min, max], and each write differs
  from what the register held just before it (the PLC's own record: after a kill its setpoint
  tracking may have moved it) by no more than ``rate_per_min`` × the time since the previous
  reception (a crash loop earns no fresh allowance), and every write has its committed audit
  row;
* a poller that dies is a fault of the agent: the agent stops (non-zero), its heartbeat stops
  so the PLC falls back, the status word shows it degraded and stopping, the audit says why.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.errors import AgentError
from agent.ops.audit import AuditConfig, query_audit
from agent.runtime import STATUS_BITS, Agent
from simulator import Plant, serve
from tests.e2e.plant_fixtures import DEMO_CONFIG, modbus_test_config
from tests.e2e.test_writeback_on_plant import agent_config, agent_process

pytestmark = pytest.mark.timeout(240)

TARGET = "Pump1.ExternalSpeedSetpoint"
RATE_PER_MIN = 30.0  # slower than the demo's 600: the ramp must outlast ten restarts
MIN, MAX = 1500.0, 2950.0
KILLS = 10


def received(log_path: Path, tag: str) -> list[dict[str, Any]]:
    if not log_path.exists():
        return []
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return [e for e in lines if e["tag"] == tag and e["protocol"] == "modbus"]


async def next_write(log_path: Path, tag: str, seen: int, timeout_s: float) -> int:
    """Wait until the plant has logged more than ``seen`` writes of ``tag``; return the count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        n = len(received(log_path, tag))
        if n > seen:
            return n
        await asyncio.sleep(0.005)
    raise AssertionError(f"no new write of {tag} within {timeout_s} s (had {seen})")


def slow_ramp_config(tmp_path: Path, port: int) -> Path:
    """The demo config with a slow rate and a small deadband: every restart moves the setpoint
    a little, and the ramp toward the rule's optimum outlasts the ten kills."""
    path = agent_config(tmp_path, port)
    data = yaml.safe_load(path.read_text())
    for t in data["guard"]["targets"]:
        t["rate_per_min"], t["deadband"] = RATE_PER_MIN, 0.2
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def test_kill_9_ten_times_during_a_ramp(tmp_path: Path) -> None:
    plant = Plant(seed=11, permissive=True)
    log_path = tmp_path / "plant-writes.jsonl"
    plant.plc.log_writes_to(log_path)
    try:
        async with serve(plant, modbus_port=0, opcua_port=None, speed=20, heartbeat_timeout_s=5) as station:
            cfg = slow_ramp_config(tmp_path, station.modbus_port)
            seen = 0
            for _ in range(KILLS):
                async with agent_process(cfg) as proc:
                    seen = await next_write(log_path, TARGET, seen, timeout_s=30)
                    proc.send_signal(signal.SIGKILL)  # right after the plant logged the write
                    await proc.wait()
            # and a last run, stopped cleanly, to see the ramp go on after the kills
            async with agent_process(cfg) as proc:
                seen = await next_write(log_path, TARGET, seen, timeout_s=30)
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        plant.plc.close_write_log()

    writes = received(log_path, TARGET)
    assert len(writes) >= KILLS + 1
    for e in writes:
        assert MIN <= float(e["value"]) <= MAX, e
    for a, b in itertools.pairwise(writes):
        step = abs(float(b["value"]) - float(b["previous"]))
        allowed = RATE_PER_MIN * (b["mono"] - a["mono"]) / 60.0
        assert step <= allowed + 1e-6, f"{step:g} rpm in {b['mono'] - a['mono']:.3f} s ({a} -> {b})"
    # every write the plant received had its decision committed to the audit log before it
    rows = query_audit(AuditConfig(path=tmp_path / "state" / "audit.sqlite"))
    decisions = [r for r in rows if r.kind == "decision" and r.action in ("WRITE", "CLAMP") and r.tag == TARGET]
    used: set[int] = set()
    for e in writes:
        at = datetime.fromisoformat(e["wall_time"])
        match = next(
            (
                r
                for r in decisions
                if r.id not in used and r.applied is not None and abs(r.applied - float(e["value"])) < 1e-3
                and r.utc <= at
            ),
            None,
        )  # fmt: skip
        assert match is not None, f"write without a prior committed audit row: {e}"
        assert match.detail.get("boot_id") and "credit_from" in match.detail and "origin" in match.detail
        used.add(match.id)
    # the ramp went on: every run moved the setpoint on from where it found it (the PLC's own
    # tracking while the agent was dead may have moved it back: judged per write, not end to end)
    moves = [abs(float(e["value"]) - float(e["previous"])) for e in writes]
    assert all(m > 0.01 for m in moves), moves
    assert sum(moves) > 5, moves


async def test_a_poller_that_dies_stops_the_agent_and_its_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant = Plant(seed=12, permissive=True)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=1, heartbeat_timeout_s=5) as station:
        cfg = modbus_test_config(station.modbus_port, tmp_path / "state")
        agent = Agent(cfg, config_path=DEMO_CONFIG)
        (driver,) = agent.drivers.values()
        polls = 0
        original = driver.poll

        async def poll(deadline: float) -> Any:
            nonlocal polls
            polls += 1
            if polls > 6:
                raise RuntimeError("driver bug: index out of range")
            return await original(deadline)

        monkeypatch.setattr(driver, "poll", poll)
        stop = asyncio.Event()
        with pytest.raises(AgentError, match="poller plant died: RuntimeError: driver bug"):
            async with asyncio.timeout(30):
                await agent.run(stop)
        beat = plant.state.tags["Station.AgentHeartbeat"]
        status = int(plant.state.tags["Station.AgentStatus"])
        await asyncio.sleep(2.0)
        assert plant.state.tags["Station.AgentHeartbeat"] == beat, "the heartbeat went on"
    assert status & (1 << STATUS_BITS["degraded"]) and status & (1 << STATUS_BITS["stopping"])
    assert not status & (1 << STATUS_BITS["running"])
    rows = query_audit(AuditConfig(path=tmp_path / "state" / "audit.sqlite"))
    faults = [r for r in rows if r.kind == "event" and r.action == "fault"]
    assert faults and "driver bug" in faults[0].message
