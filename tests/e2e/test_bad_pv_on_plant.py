"""Against the plant over Modbus: a transmitter's dropout is the bad-PV alarm on the HMI, with
the tag and the driver's quality reason in its text, and it returns once the value is GOOD; a
lost device (replies dropped by the fault proxy of tests/faults) is the bad-PV alarm on every
pump, with the driver's reason.

The real ``Agent`` on ``configs/demo.yaml`` (its ``model_input_bad`` alarm: ``kind: bad_pv`` on
every tag the demo's anomaly model reads) against the real plant server; the dropout is
injected with ``plant.inject`` (the plant then publishes 0xFFFF in the uint16 register, which
the driver reads as 655.35 bar, outside the tag's range: BAD). Scaled as in
``test_alarms_on_plant.py``: every non-zero on/off-delay is 2 s, the plant runs at 10x.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.types import AlarmState
from simulator import Fault, FaultKind, Plant, serve
from tests.faults.proxy import Fault as LinkFault
from tests.faults.proxy import FaultProxy

from .plant_fixtures import (
    CYCLE_S,
    POLL_S,
    Hmi,
    alarm_def,
    bit,
    demo_config_data,
    modbus_test_config,
    running_agent,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


async def test_a_dropout_raises_the_bad_pv_alarm_naming_the_tag_and_reason(tmp_path: Path) -> None:
    d = alarm_def(demo_config_data(), "model_input_bad")
    code, severity, delay = d["code"], d["severity"], 2.0
    plant = Plant(seed=7)
    dropout = Fault(FaultKind.SENSOR_DROPOUT, pump=1, tag="DischargePressure")
    async with serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=5) as station:
        port = station.modbus_port
        assert port is not None
        config = modbus_test_config(port, tmp_path / "state", on_delay_s=delay, off_delay_s=delay)
        async with running_agent(config) as agent, Hmi(port) as hmi:
            await wait_until(
                lambda: {"Pump1.AlarmWord", "Pump2.AlarmWord"} <= {e.tag for e in station.write_log},
                timeout_s=3,
                what="the agent's first HMI writes",
            )
            assert await hmi.alarm_word(1) == 0 and await hmi.alarm_word(2) == 0

            plant.inject(dropout)
            t0 = time.monotonic()
            budget = delay + 2 * CYCLE_S + POLL_S + 3.0

            async def raised() -> bool:
                return bool(await hmi.alarm_word(1) & bit(code))

            await wait_until(raised, timeout_s=budget, what="model_input_bad's bit in Pump1.AlarmWord")
            assert time.monotonic() - t0 >= delay - 0.25, "the on-delay was not honoured"
            block = await hmi.block(1)
            assert (block.alarm_word, block.highest_severity, block.first_out_code) == (
                bit(code),
                severity,
                code,
            )
            (event,) = [a for a in agent.view.alarms if a.asset == "pump1" and a.code == code]
            assert event.state is AlarmState.UNACK and not event.is_alert
            assert event.message.startswith(
                "model_input_bad: Pump1.DischargePressure BAD (out of range: 655.35 not in [0, 10])"
            ), event.message
            assert await hmi.alarm_word(2) == 0  # pump 2 reads its own transmitter

            plant.clear(dropout)

            async def returned() -> bool:
                return agent.alarms.state("pump1", code) is AlarmState.RTN_UNACK

            await wait_until(
                returned, timeout_s=budget, what="model_input_bad back to normal (unacknowledged)"
            )

            async def cleared() -> bool:
                return not await hmi.alarm_word(1) & bit(code)

            await wait_until(cleared, timeout_s=2 * CYCLE_S + 0.5, what="the bit cleared on the HMI")


async def test_a_lost_device_raises_the_bad_pv_alarm_on_every_pump(tmp_path: Path) -> None:
    d = alarm_def(demo_config_data(), "model_input_bad")
    code, delay = d["code"], 2.0
    plant = Plant(seed=7)
    async with (
        serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=30) as station,
        FaultProxy(station.modbus_port, lifetime_s=50) as proxy,
    ):
        config = modbus_test_config(proxy.port, tmp_path / "state", on_delay_s=delay, off_delay_s=delay)
        async with running_agent(config) as agent:
            await asyncio.sleep(3 * CYCLE_S)
            assert all(agent.alarms.state(p, code) is AlarmState.NORMAL for p in ("pump1", "pump2"))
            proxy.set(down=LinkFault(drop=True))  # the device goes silent

            def raised() -> bool:
                return all(agent.alarms.state(p, code) is AlarmState.UNACK for p in ("pump1", "pump2"))

            await wait_until(
                raised, timeout_s=delay + 4 * CYCLE_S + 3.0, what="model_input_bad on both pumps"
            )
            for pump in ("pump1", "pump2"):
                (event,) = [a for a in agent.view.alarms if a.asset == pump and a.code == code]
                assert event.message.startswith("model_input_bad: "), event.message
                # the tag, BAD, and the driver's own reason for a silent device: a timeout, stale
                # once polls stop, or the connection it closed after persistent timeouts (a
                # half-open link is reopened; on a loaded box that can come first)
                head = event.message.split(";")[0]
                reasons = ("timeout", "stale", "device unreachable")
                assert "BAD (" in head and any(r in head for r in reasons), head
            proxy.clear()

            def returned() -> bool:
                return all(agent.alarms.state(p, code) is AlarmState.RTN_UNACK for p in ("pump1", "pump2"))

            await wait_until(
                returned, timeout_s=delay + 10.0, what="model_input_bad back to normal on both pumps"
            )
