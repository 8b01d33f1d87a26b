"""The wall clock jumps (NTP steps it, an operator sets it, a gateway without RTC boots in 1970):
the agent times nothing by it.

The real Agent runs in this process on the demo config against the embedded plant (Modbus, 20x
simulation speed, the demo scenario unloads pump 1 so the agent writes setpoints). Its wall
clock is injected (``agent.types._wall_clock``, the one source of UTC in the agent; the host's
clock is never touched) and jumps 2 h forward, then 3 h back. Cycles, rate limits, TTLs and
alarm delays run on the monotonic clock: the cycle rate does not change, no setpoint moves
faster than its rate limit (judged on the plant's own log of the writes it received, on the
plant's simulated time), every write has its committed audit decision, and records simply
carry the wall time they were made at.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import agent.types
from agent.ops.audit import AuditConfig, query_audit
from simulator import Plant, serve
from simulator.faults import load_scenario
from tests.e2e.plant_fixtures import modbus_test_config, running_agent

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("Pump1.ExternalSpeedSetpoint", "Pump2.ExternalSpeedSetpoint")
RATE_PER_S = 600 / 60  # the demo's rate_per_min
SPEED = 20


async def test_a_wall_clock_jump_forward_and_back_changes_no_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offset = timedelta(0)
    monkeypatch.setattr(agent.types, "_wall_clock", lambda: datetime.now(UTC) + offset)
    scenario = load_scenario(ROOT / "configs" / "scenarios" / "demo.yaml")
    plant = Plant(seed=3, scenario=scenario)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=SPEED, heartbeat_timeout_s=5) as station:
        cfg = modbus_test_config(station.modbus_port, tmp_path / "state")
        async with running_agent(cfg) as running:
            counts = []  # (cycles run, cycles due) in 6 s after each jump
            for jump in (timedelta(0), timedelta(hours=2), timedelta(hours=-1)):
                offset = jump
                before, t0 = running.view.cycles, time.monotonic()
                await asyncio.sleep(6)
                due = (time.monotonic() - t0) * 1000 / cfg.agent.cycle_ms
                counts.append((running.view.cycles - before, due))
            alive = running.view.cycles
        writes = [e for e in station.write_log if e.tag in TARGETS and e.protocol == "modbus" and e.accepted]

    # the cycle keeps its cadence through both jumps: a schedule on the wall clock would run
    # thousands of catch-up cycles after the forward jump and none for an hour after the back
    # one; on the monotonic clock each 6 s holds its 6 cycles (one either way: phase, load)
    for ran, due in counts:
        assert due - 2 <= ran <= due + 1.5, counts
    assert alive > 15
    # setpoints were written across the jumps, each no faster than its rate limit
    assert len(writes) >= 5, "too few writes to judge"
    for tag in TARGETS:
        seq = [e for e in writes if e.tag == tag]
        for a, b in itertools.pairwise(seq):
            dt_s = (b.sim_time_s - a.sim_time_s) / SPEED
            assert abs(float(b.value) - float(a.value)) <= RATE_PER_S * (dt_s + 0.25) + 1e-6, (a, b)
    # every write the PLC took has a committed decision; records carry the (jumped) wall time
    rows = query_audit(AuditConfig(path=tmp_path / "state" / "audit.sqlite"))
    decided = [r for r in rows if r.kind == "decision" and r.action in ("WRITE", "CLAMP")]
    assert len(decided) >= len(writes)
    stamps = [r.utc for r in rows]
    real = datetime.now(UTC)
    assert any(s > real + timedelta(minutes=90) for s in stamps), "rows made 2 h ahead carry that time"
    assert any(s < real - timedelta(minutes=50) for s in stamps), "rows made 1 h behind carry that time"
