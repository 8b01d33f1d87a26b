"""The real agent with a tariff against the embedded plant: the plan drives the pumps, through
the Guard.

`edge-agent run` (a real process) on the demo config with ``recommender.tariff`` (cheap now,
dear later) and the tank of a station with storage (400 m²), against the plant served on
127.0.0.1 at 20x with its structured demand. Fresh start: no history yet, so the forecast is
persistence; the plan fills the tank while power is cheap. Judged by the plant: it pumped more
than the consumers drew, the level stayed in band, and every setpoint the PLC received was
audited first with the plan's reason.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.ops.audit import AuditConfig, query_audit
from agent.ops.status import SOCKET_NAME, read_status
from simulator import Plant, StationParams, serve
from simulator.demand import DemandParams
from tests.e2e.test_writeback_on_plant import agent_config, agent_process, audit_rows_before, setpoint_writes

pytestmark = pytest.mark.timeout(120)


def tariff_config(tmp_path: Path, port: int) -> Path:
    path = agent_config(tmp_path, port)
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    hour = datetime.now(UTC).hour
    data["recommender"]["station"] = {"tank_area_m2": 400}
    data["recommender"]["tariff"] = {
        "currency": "EUR",
        "weekly": [
            {"days": "all", "from": f"{hour:02d}:00", "to": f"{min(hour + 2, 24):02d}:00", "price": 0.08},
            {"days": "all", "from": "00:00", "to": "24:00", "price": 0.30},
        ],
    }
    data["recommender"]["forecast"] = {"temperature_tag": "Station.AmbientTemp"}
    data["recommender"]["schedule"] = {"every_s": 10, "horizon_h": 12}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def test_the_agent_fills_the_tank_while_power_is_cheap_through_the_guard(tmp_path: Path) -> None:
    plant = Plant(StationParams(tank_area_m2=400, demand=DemandParams()), seed=5, permissive=True)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=20, heartbeat_timeout_s=5) as station:
        cfg = tariff_config(tmp_path, station.modbus_port)
        lo, hi = plant.level, plant.level
        async with agent_process(cfg) as proc:
            await asyncio.sleep(3)  # start-up: the PLC's own control until the first writes
            pumped0, drawn0 = plant.volume_m3, plant.demand_volume_m3
            for _ in range(40):
                await asyncio.sleep(0.5)
                lo, hi = min(lo, plant.level), max(hi, plant.level)
            assert proc.returncode is None, "the agent died"
            doc = await asyncio.to_thread(read_status, [tmp_path / "state" / SOCKET_NAME])
            pumped, drawn = plant.volume_m3 - pumped0, plant.demand_volume_m3 - drawn0
        writes = setpoint_writes(list(station.write_log))
    assert len(writes) >= 4
    rows = audit_rows_before(writes, tmp_path / "state" / "audit.sqlite")  # audited before sent
    assert any("planned station flow" in " ".join(r.reasons) + r.message for r in rows), rows[-1]
    assert pumped > drawn * 1.05, (pumped, drawn)  # filling while cheap (the PLC holds its setpoint)
    assert lo >= 2.0 and hi <= 4.0
    decisions = [
        r for r in query_audit(AuditConfig(path=tmp_path / "state" / "audit.sqlite")) if r.kind == "decision"
    ]
    plan = doc["energy_plan"]  # edge-agent status shows the plan
    assert plan["currency"] == "EUR" and plan["feasible"] and plan["forecast"].startswith("persistence")
    assert plan["first_flow_m3h"] > 0 and 0.05 < plan["kwh_per_m3"] < 0.5
    assert plan["prices"] == "weekly table"
    assert doc["recommender"].startswith("pump1 ") and "saved" in doc["recommender"]
    assert decisions and all(r.model == "pump-energy-rule" for r in decisions if r.model)
