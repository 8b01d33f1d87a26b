"""Guarded write-back against the plant, judged by the PLC's own log of the writes it received.

The agent runs as a real process (`edge-agent run`) on the demo config against the embedded
plant served on 127.0.0.1 (Modbus), at 20x simulation speed so that the bearing fault of the
demo scenario shows within seconds. The PLC's write log is the independent record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import resource
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_config
from agent.ops.audit import AuditConfig, query_audit
from simulator import Plant, serve
from simulator.faults import load_scenario
from tests.agent_process import agent_process as spawn

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("Pump1.ExternalSpeedSetpoint", "Pump2.ExternalSpeedSetpoint")
RATE_PER_S = 600 / 60


def agent_config(tmp_path: Path, port: int) -> Path:
    """configs/demo.yaml, pointed at the served plant, with its state in tmp_path."""
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    data: dict[str, Any] = cfg.model_dump(mode="json", exclude_none=True)
    data["agent"]["state_dir"] = str(tmp_path / "state")
    data["agent"]["log_format"] = "json"
    data["agent"]["log_level"] = "info"
    data["devices"][0]["port"] = port
    # paths in a config are relative to its file: make them absolute for the copy in tmp_path
    for m in data["models"]:
        m["bundle"] = str((ROOT / "configs" / m["bundle"]).resolve())
    trust = data["models_trust"]
    trust["public_keys"] = [str((ROOT / "configs" / k).resolve()) for k in trust["public_keys"]]
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def agent_process(config: Path, *, fsize: int | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    async with spawn(config, stderr=asyncio.subprocess.PIPE, preexec_fn=limit) as proc:
        yield proc


def setpoint_writes(log: list[Any]) -> list[Any]:
    return [e for e in log if e.tag in TARGETS and e.protocol == "modbus"]


def audit_rows_before(writes: list[Any], audit_path: Path) -> list[Any]:
    """For each write the PLC received, the committed audit decision that preceded it.

    Fails the test for a write without one (each row matches one write only)."""
    rows = query_audit(AuditConfig(path=audit_path))
    decisions = [r for r in rows if r.kind == "decision" and r.action in ("WRITE", "CLAMP")]
    used: set[int] = set()
    matched = []
    for e in writes:
        match = next(
            (
                r
                for r in decisions
                if r.id not in used
                and r.tag == e.tag
                and r.applied is not None
                and abs(r.applied - float(e.value)) < 1e-3
                and r.utc <= e.wall_time
            ),
            None,
        )
        assert match is not None, f"write without a prior committed audit row: {e}"
        used.add(match.id)
        matched.append(match)
    return matched


async def test_every_write_is_audited_first_safe_and_survives_kill_9(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "configs" / "scenarios" / "demo.yaml")
    plant = Plant(seed=3, scenario=scenario)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=20, heartbeat_timeout_s=5) as station:
        cfg = agent_config(tmp_path, station.modbus_port)
        permissive_off: list[tuple[datetime, datetime]] = []
        async with agent_process(cfg) as proc:
            await asyncio.sleep(14)
            off_at = datetime.now(UTC)
            plant.plc.write("Station.Permissive", False, protocol="scenario")
            await asyncio.sleep(4)
            on_at = datetime.now(UTC)
            plant.plc.write("Station.Permissive", True, protocol="scenario")
            permissive_off.append((off_at, on_at))
            await asyncio.sleep(10)
            assert proc.returncode is None, "the agent died"
            proc.send_signal(signal.SIGKILL)  # no clean shutdown: what was committed must be there
            await proc.wait()
        writes = setpoint_writes(list(station.write_log))

    assert len(writes) >= 5, "the agent made too few setpoint writes to judge"
    # 1. every write the PLC received was preceded by a committed audit row for it (after kill -9)
    for row in audit_rows_before(writes, tmp_path / "state" / "audit.sqlite"):
        # 2. made from GOOD inputs
        assert row.qualities and all(q == "GOOD" for q in row.qualities.values()), row
    # 3. none while the permissive was off (allowing the agent one poll + cycle to see it)
    for e in writes:
        for off, on in permissive_off:
            assert not (off.timestamp() + 2.0 < e.wall_time.timestamp() < on.timestamp()), e
        assert e.reason != "permissive off" or any(
            off.timestamp() <= e.wall_time.timestamp() <= off.timestamp() + 2.0 for off, _ in permissive_off
        ), e
    # 4. within limits, and no faster than the rate limit (between writes with remote active)
    for e in writes:
        assert 1500 <= float(e.value) <= 2950, e
    for tag in TARGETS:
        seq = [e for e in writes if e.tag == tag and e.accepted]
        for a, b in itertools.pairwise(seq):
            if any(a.wall_time <= on and b.wall_time >= off for off, on in permissive_off):
                continue  # the origin moved with the PLC's own control (bumpless restart)
            dt = (b.wall_time - a.wall_time).total_seconds()
            assert abs(float(b.value) - float(a.value)) <= RATE_PER_S * (dt + 0.25) + 1e-6, (a, b)
    # the demo story happened: pump 1 was unloaded toward its minimum speed
    assert min(float(e.value) for e in writes if e.tag == TARGETS[0]) < 1900


async def test_a_full_audit_disk_stops_auto_writes_and_the_agent_keeps_running(tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE, a quota the test sets on the agent process) makes the
    audit log unwritable after start-up. Writes stop while the audit cannot commit (SQLite may
    find room again after a checkpoint; then a write goes out only after its row committed),
    the agent says so and keeps its heartbeat going."""
    plant = Plant(seed=5, permissive=True)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=20, heartbeat_timeout_s=5) as station:
        cfg = agent_config(tmp_path, station.modbus_port)
        async with agent_process(cfg, fsize=48 * 1024) as proc:
            assert proc.stderr is not None
            failed_at: datetime | None = None
            deadline = asyncio.get_running_loop().time() + 40
            while failed_at is None and asyncio.get_running_loop().time() < deadline:
                line = await asyncio.wait_for(proc.stderr.readline(), timeout=40)
                if b"automatic writes stop" in line:
                    failed_at = datetime.now(UTC)
            assert failed_at is not None, "the audit log never filled up"
            # make the agent want to write: unload pump 1 with a fault
            plant.plc.write("Simulation.Pump1.FaultInject", 1, protocol="scenario")
            heartbeat_before = plant.state.tags["Station.AgentHeartbeat"]
            drain = asyncio.create_task(proc.stderr.read())
            await asyncio.sleep(12)
            assert proc.returncode is None, "the agent must keep running"
            heartbeat_after = plant.state.tags["Station.AgentHeartbeat"]
            proc.kill()
            await proc.wait()
            await drain
        writes = setpoint_writes(list(station.write_log))
    audit_rows_before(writes, tmp_path / "state" / "audit.sqlite")  # none unaudited, full disk or not
    assert heartbeat_after != heartbeat_before
    assert (tmp_path / "state" / "audit.sqlite").stat().st_size <= 48 * 1024
