"""Stopping a pump for energy on the plant over Modbus, with its reason on the HMI.

The real agent (in process, the demo config) gets start/stop targets on both pumps (run request
coils, running feedback, ``Station.RemoteActive`` as the remote-start permissive; a short
minimum run time so the test does not wait 15 minutes). With the tank mid-band and the demand of
the embedded plant, one pump delivers the flow at lower kWh/m³ than two: the rule recommends a
stop, the start/stop unit audits it and clears the request bit, the PLC's running feedback
confirms, the other pump carries the flow, and the stopped pump's HMI block shows the reason
code 9 (stopped for energy) in its ``RecommenderReason`` register, read over Modbus like an HMI
would. At shutdown the agent's own run-hours count is in ``state_dir/run_hours.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from agent.config import Config
from agent.ops.audit import AuditConfig, query_audit
from agent.pipeline.policy import ReasonCode
from agent.pumprun import RUN_HOURS_FILE
from simulator import Plant, serve

from .plant_fixtures import demo_config_data, running_agent, wait_until

pytestmark = pytest.mark.timeout(120)


def _config(port: int, state: Path) -> Config:
    data = demo_config_data()
    data["agent"]["state_dir"] = str(state)
    (device,) = data["devices"]
    device["port"] = port
    g = data["guard"]
    g["start_stop"] = []
    for i in (1, 2):
        device["tags"] += [
            {"name": f"Pump{i}.RunRequest", "table": "coil", "address": 1 + i, "type": "bool",
             "access": "read-write", "purpose": "command"},
            {"name": f"Pump{i}.Running", "table": "discrete", "address": 3 + i, "type": "bool"},
        ]  # fmt: skip
        g["allow_list"] = [*g["allow_list"], f"Pump{i}.RunRequest"]
        g["start_stop"].append(
            {
                "tag": f"Pump{i}.RunRequest",
                "asset": f"pump{i}",
                "running_tag": f"Pump{i}.Running",
                "remote_start_tag": "Station.RemoteActive",
                "min_run_s": 3,
                "min_stop_s": 0,
                "confirm_timeout_s": 10,
            }
        )
        data["recommender"]["pumps"][i - 1]["start_stop_tag"] = f"Pump{i}.RunRequest"
    device["tags"].append({"name": "Station.RemoteActive", "table": "discrete", "address": 1, "type": "bool"})
    return Config.model_validate(data)


async def _reason(port: int, pump: int) -> int:
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    try:
        rr = await client.read_holding_registers(100 * pump + 22, count=1, device_id=1)
        return int(rr.registers[0])
    finally:
        client.close()


async def test_a_pump_is_stopped_for_energy_and_the_hmi_says_why(tmp_path: Path) -> None:
    plant = Plant(seed=7, permissive=True)
    state = tmp_path / "state"
    async with serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=5) as station:
        port = station.modbus_port
        assert port is not None
        async with running_agent(_config(port, state)) as agent:
            await wait_until(lambda: min(plant.speed) == 0.0, timeout_s=60, what="a pump stopped for energy")
            stopped = 1 if plant.speed[0] == 0.0 else 2
            other = 3 - stopped
            assert plant.speed[other - 1] > 1500 and plant.q[other - 1] > 0  # the other carries the flow
            assert plant.plc.read(f"Pump{stopped}.RunRequest") is False
            code = int(ReasonCode.STOPPED_FOR_ENERGY)
            await wait_until(
                lambda: _reason_is(port, stopped, code), timeout_s=15, what="reason code 9 on the HMI"
            )
            assert await _reason(port, other) not in (0, code)  # the running pump: what bound it
            assert agent.rule is not None and agent.rule.last_specific_energy is not None
            spec, level_control = agent.rule.last_specific_energy
            assert spec < level_control
    rows = query_audit(AuditConfig(path=state / "audit.sqlite"), kinds=["event"])
    request = next(r for r in rows if r.action == "start_stop_request" and r.detail["value"] is False)
    assert "stopped for energy" in request.message and "kWh/m³" in request.message
    assert any(r.action == "start_stop_confirmed" for r in rows)
    hours = json.loads((state / RUN_HOURS_FILE).read_text())["hours"]
    assert hours[f"pump{other}"] > 0  # the agent counted what it saw running


async def _reason_is(port: int, pump: int, code: int) -> bool:
    return await _reason(port, pump) == code
