"""Start/stop on the plant over Modbus: an alarmed pump is stopped through its run request.

The agent (in process, the demo config) gets a start/stop target on pump 1: the PLC's run
request coil (purpose command), its running feedback and the remote-start permissive
(``Station.RemoteActive``). An imbalance on pump 1 raises vibration_high (severity 3): the rule
recommends a stop, the start/stop unit audits it, clears the request, reads it back, and the
PLC's running feedback confirms; the other pump carries the flow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config
from agent.ops.audit import AuditConfig, query_audit
from simulator import Fault, FaultKind, Plant, serve

from .plant_fixtures import demo_config_data, running_agent, wait_until

pytestmark = pytest.mark.timeout(90)


def _config(port: int, state: Path) -> Config:
    data = demo_config_data()
    data["agent"]["state_dir"] = str(state)
    data["agent"]["log_level"] = "warning"
    (device,) = data["devices"]
    device["port"] = port
    device["tags"] += [
        {
            "name": "Pump1.RunRequest",
            "table": "coil",
            "address": 2,
            "type": "bool",
            "access": "read-write",
            "purpose": "command",
        },
        {"name": "Pump1.Running", "table": "discrete", "address": 4, "type": "bool"},
        {"name": "Station.RemoteActive", "table": "discrete", "address": 1, "type": "bool"},
    ]
    for d in data["alarms"]["defs"]:
        for level in ("high", "high_high", "low", "low_low"):
            if isinstance(d.get(level), dict) and d[level].get("on_delay_s"):
                d[level]["on_delay_s"] = 2.0
        if d.get("on_delay_s"):
            d["on_delay_s"] = 2.0
    g = data["guard"]
    g["allow_list"] = [*g["allow_list"], "Pump1.RunRequest"]
    g["start_stop"] = [
        {
            "tag": "Pump1.RunRequest",
            "asset": "pump1",
            "running_tag": "Pump1.Running",
            "remote_start_tag": "Station.RemoteActive",
            "min_run_s": 2,
            "min_stop_s": 0,
            "confirm_timeout_s": 10,
        }
    ]
    data["recommender"]["pumps"][0]["start_stop_tag"] = "Pump1.RunRequest"
    return Config.model_validate(data)


async def test_an_alarmed_pump_is_stopped_through_its_run_request(tmp_path: Path) -> None:
    plant = Plant(seed=7, permissive=True)
    async with serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=5) as station:
        assert station.modbus_port is not None
        config = _config(station.modbus_port, tmp_path / "state")
        async with running_agent(config) as agent:
            await wait_until(
                lambda: plant.state.tags["Station.RemoteActive"], timeout_s=10, what="remote active"
            )
            assert plant.state.tags["Pump1.Running"] is True
            plant.inject(Fault(FaultKind.IMBALANCE, pump=1, severity=2.5))
            await wait_until(lambda: plant.speed[0] == 0.0, timeout_s=40, what="pump 1 stopped")
            assert plant.speed[1] > 1500 and plant.q[1] > 0  # the other pump carries the flow
            assert plant.plc.read("Pump1.RunRequest") is False
            assert any(e.tag == "Pump1.RunRequest" and e.value is False for e in station.write_log)
            await wait_until(
                lambda: "confirmed" in " ".join(r.message for r in agent.audit.query(kinds=["event"])),
                timeout_s=10,
                what="the stop confirmed in the audit",
            )
    rows = query_audit(AuditConfig(path=tmp_path / "state" / "audit.sqlite"), kinds=["event"])
    actions = [r.action for r in rows if r.detail.get("target") == "Pump1.RunRequest"]
    assert "start_stop_request" in actions and "start_stop_confirmed" in actions
    request = next(r for r in rows if r.action == "start_stop_request")
    assert "pump1 stopped" in request.message and request.detail["value"] is False
