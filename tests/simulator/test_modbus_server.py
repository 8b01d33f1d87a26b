"""The Modbus TCP server, read and written by a real pymodbus client and by mbpoll."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from simulator import Plant, serve
from simulator.faults import Fault, FaultKind
from simulator.register_map import build_register_map, decode
from simulator.station import Station

from .conftest import assert_no_other_tasks, f32, f32_regs, i16

MBPOLL = shutil.which("mbpoll") or "/usr/bin/mbpoll"


@pytest.fixture
async def station() -> AsyncIterator[Station]:
    async with serve(Plant(seed=3), modbus_port=0, opcua_port=None, speed=0, tick_s=0.05) as st:
        yield st
    assert_no_other_tasks()


@pytest.fixture
async def client(station: Station) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=station.modbus_port, timeout=1, retries=0)
    assert await c.connect()
    yield c
    c.close()


async def _ok(coro):
    rr = await coro
    assert not rr.isError(), rr
    return rr


async def test_reads_match_the_plant_in_every_type_and_word_order(station: Station, client) -> None:
    await station.step(30.0)
    tags = station.plant.state.tags
    st = (await _ok(client.read_input_registers(0, count=19, device_id=1))).registers
    assert f32(st[0:2], "ABCD") == pytest.approx(tags["Station.TankLevel"], rel=1e-6)
    assert f32(st[2:4], "CDAB") == pytest.approx(tags["Station.OutletFlow"], rel=1e-6)
    assert f32(st[4:6], "CDAB") == pytest.approx(tags["Station.TotalFlow"], rel=1e-6)
    assert st[6] * 0.01 == pytest.approx(tags["Station.HeaderPressure"], abs=0.006)
    assert (st[10] << 16 | st[11]) == round(tags["Station.EnergyTotal"] * 1000)  # int32 ABCD, Wh
    assert (st[13] << 16 | st[12]) == round(tags["Station.VolumeTotal"] * 100)  # uint32 CDAB
    assert st[15] == tags["Station.Status"]
    for i in (1, 2):
        b = 100 * i
        p = (await _ok(client.read_input_registers(b, count=20, device_id=1))).registers
        assert f32(p[0:2], "ABCD") == pytest.approx(tags[f"Pump{i}.Speed"], rel=1e-6)
        assert f32(p[4:6], "CDAB") == pytest.approx(tags[f"Pump{i}.Flow"], rel=1e-6)
        # pymodbus's own converter agrees ("little" word order = CDAB)
        assert client.convert_from_registers(
            p[4:6], client.DATATYPE.FLOAT32, word_order="little"
        ) == pytest.approx(tags[f"Pump{i}.Flow"], rel=1e-6)
        assert i16(p[6]) * 0.01 == pytest.approx(tags[f"Pump{i}.SuctionPressure"], abs=0.006)
        assert p[8] * 0.1 == pytest.approx(tags[f"Pump{i}.MotorCurrent"], abs=0.06)
        assert f32(p[9:11], "CDAB") == pytest.approx(tags[f"Pump{i}.MotorPower"], rel=1e-6)
        assert i16(p[12]) * 0.1 == pytest.approx(tags[f"Pump{i}.BearingTemp"], abs=0.06)
        assert f32(p[13:15], "ABCD") == pytest.approx(tags[f"Pump{i}.Vibration"], rel=1e-6)
        assert p[19] & 1  # RUNNING
    sim = (await _ok(client.read_input_registers(1000, count=10, device_id=1))).registers
    assert (sim[0] << 16 | sim[1]) == 300  # 30.0 s in 0.1 s
    assert f32(sim[4:6], "ABCD") == pytest.approx(station.plant.state.oracle_speed_rpm, rel=1e-6)
    coils = await _ok(client.read_coils(0, count=2, device_id=1))
    assert coils.bits[:2] == [False, False]
    di = await _ok(client.read_discrete_inputs(0, count=4, device_id=1))
    assert di.bits[:4] == [False, False, False, False]


async def test_values_follow_the_simulation(station: Station, client) -> None:
    first = (await _ok(client.read_input_registers(1000, count=2, device_id=1))).registers
    await station.step(5.0)
    second = (await _ok(client.read_input_registers(1000, count=2, device_id=1))).registers
    assert (second[0] << 16 | second[1]) - (first[0] << 16 | first[1]) == 50


async def test_gaps_and_ranges_give_exception_02(station: Station, client) -> None:
    for address, count in ((0, 40), (119, 2), (19, 1), (50, 1), (9000, 4)):
        rr = await client.read_input_registers(address, count=count, device_id=1)
        assert rr.isError() and rr.exception_code == 2, (address, count)
    rr = await client.read_holding_registers(100, count=22, device_id=1)  # HMI block + gap + setpoint
    assert rr.isError() and rr.exception_code == 2
    assert not (await client.read_holding_registers(100, count=11, device_id=1)).isError()
    assert (await client.read_coils(16, count=1, device_id=1)).isError()


async def test_other_unit_ids_get_gateway_exception(station: Station, client) -> None:
    rr = await client.read_input_registers(100, count=2, device_id=2)
    assert rr.isError() and rr.exception_code == 0x0B
    rr = await client.read_input_registers(100, count=2, device_id=0)
    assert rr.isError() and rr.exception_code == 0x0B


async def test_silent_and_answering_unit_policies() -> None:
    async with serve(Plant(seed=1), modbus_port=0, speed=0, other_units="silent") as st:
        c = AsyncModbusTcpClient("127.0.0.1", port=st.modbus_port, timeout=0.3, retries=0)
        await c.connect()
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(100, count=2, device_id=5)
        c.close()
    async with serve(Plant(seed=1), modbus_port=0, speed=0, other_units="answer") as st:
        c = AsyncModbusTcpClient("127.0.0.1", port=st.modbus_port, timeout=1, retries=0)
        await c.connect()
        a = (await _ok(c.read_input_registers(100, count=2, device_id=5))).registers
        b = (await _ok(c.read_input_registers(100, count=2, device_id=1))).registers
        assert a == b
        c.close()
    assert_no_other_tasks()


async def test_writes_go_through_the_plc_and_are_logged(station: Station, client) -> None:
    plant = station.plant
    # permissive off: accepted on the wire, refused by the PLC, register keeps tracking
    await _ok(client.write_register(0, 1, device_id=1))
    await _ok(client.write_registers(120, f32_regs(2500.0), device_id=1))
    back = (await _ok(client.read_holding_registers(120, count=2, device_id=1))).registers
    assert f32(back, "ABCD") == pytest.approx(plant.state["Pump1.SpeedSetpoint"], rel=1e-6) != 2500.0
    # operator permissive (coil), heartbeat, setpoint: applied; out of range: clamped
    await _ok(client.write_coil(0, True, device_id=1))
    await _ok(client.write_register(0, 2, device_id=1))
    await _ok(client.write_registers(120, f32_regs(2500.0), device_id=1))
    await _ok(client.write_registers(220, f32_regs(3500.0), device_id=1))
    back2 = (await _ok(client.read_holding_registers(220, count=2, device_id=1))).registers
    assert f32(back2, "ABCD") == 2950.0
    await station.step(10.0)
    ir = (await _ok(client.read_input_registers(100, count=4, device_id=1))).registers
    assert f32(ir[2:4], "ABCD") == 2500.0  # SpeedSetpoint in use
    assert abs(f32(ir[0:2], "ABCD") - 2500.0) < 15  # actual speed after the ramp
    di = (await _ok(client.read_discrete_inputs(0, count=2, device_id=1))).bits
    assert di[:2] == [True, True]  # HeartbeatOk, RemoteActive
    hr = (await _ok(client.read_holding_registers(0, count=3, device_id=1))).registers
    assert hr == [2, 0, 1]  # heartbeat, status word, OperatorCommand mirror of the coil
    # the HMI block in one FC16
    block = [0b101, 3, 2, 17, 1, *f32_regs(0.875), *f32_regs(42.5), *f32_regs(2100.0)]
    await _ok(client.write_registers(100, block, device_id=1))
    tags = plant.state.tags
    assert (tags["Pump1.AlarmWord"], tags["Pump1.HighestSeverity"], tags["Pump1.FirstOutCode"]) == (5, 3, 17)
    assert (tags["Pump1.AnomalyScore"], tags["Pump1.RUL"], tags["Pump1.RecommendedSpeed"]) == (
        0.875,
        42.5,
        2100.0,
    )
    assert (await _ok(client.read_holding_registers(100, count=11, device_id=1))).registers == block
    log = station.write_log
    assert [(e.tag, e.accepted, e.reason) for e in log[:6]] == [
        ("Station.AgentHeartbeat", True, "heartbeat changed"),
        ("Pump1.ExternalSpeedSetpoint", False, "permissive off"),
        ("Station.Permissive", True, "permissive on"),
        ("Station.AgentHeartbeat", True, "heartbeat changed"),
        ("Pump1.ExternalSpeedSetpoint", True, "applied"),
        ("Pump2.ExternalSpeedSetpoint", True, "clamped to 2950"),
    ]
    assert log[1].address == "HR 120-121 (40121-40122)" and log[1].protocol == "modbus"
    assert log[1].raw == f32_regs(2500.0) and log[1].value == 2500.0
    assert log[2].address == "CO 0 (00001)"
    assert [e.tag for e in log[6:]] == [
        "Pump1.AlarmWord",
        "Pump1.HighestSeverity",
        "Pump1.ActiveAlarmCount",
        "Pump1.FirstOutCode",
        "Pump1.FaultClass",
        "Pump1.AnomalyScore",
        "Pump1.RUL",
        "Pump1.RecommendedSpeed",
    ]
    assert all(e.accepted and e.protocol == "modbus" for e in log[6:])


async def test_refused_writes_get_exceptions_and_log_entries(station: Station, client) -> None:
    plant = station.plant
    rr = await client.write_register(5, 1, device_id=1)  # unmapped
    assert rr.isError() and rr.exception_code == 2
    rr = await client.write_register(121, 0, device_id=1)  # half of a float
    assert rr.isError() and rr.exception_code == 2
    rr = await client.write_coil(5, True, device_id=1)  # spare coil
    assert rr.isError() and rr.exception_code == 2
    await _ok(client.write_coil(0, True, device_id=1))
    await _ok(client.write_register(0, 9, device_id=1))
    rr = await client.write_registers(120, f32_regs(math.nan), device_id=1)
    assert rr.isError() and rr.exception_code == 3
    rr = await client.write_register(1001, 42, device_id=1)  # unknown fault code
    assert rr.isError() and rr.exception_code == 3
    await _ok(client.write_register(1001, int(FaultKind.CAVITATION), device_id=1))
    assert plant.active_faults(1) == (Fault(FaultKind.CAVITATION, 1),)
    assert (await _ok(client.read_holding_registers(1001, count=1, device_id=1))).registers == [2]
    log = station.write_log
    assert [(e.accepted, e.reason) for e in log[:3]] == [
        (False, "illegal address HR 5 (40006)"),
        (False, "write splits a 32-bit value"),
        (False, "illegal address CO 5 (00006)"),
    ]
    assert log[5].tag == "Pump1.ExternalSpeedSetpoint" and log[5].reason == "not finite"
    assert log[6].reason == "unknown fault code 42" and not log[6].accepted
    assert log[7].accepted and log[7].reason == "fault injected"
    assert len(log) == 8


async def _mbpoll(port: int, *args: str, values: tuple[str, ...] = ()) -> str:
    proc = await asyncio.create_subprocess_exec(
        MBPOLL,
        "-m",
        "tcp",
        "-p",
        str(port),
        "-a",
        "1",
        "-0",
        "-1",
        "-o",
        "2",
        *args,
        "127.0.0.1",
        *values,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    return text


def _values(text: str) -> dict[int, str]:
    return {int(a): v for a, v in re.findall(r"^\[(\d+)\]:\s+(\S+)", text, flags=re.M)}


async def test_mbpoll_reads_both_word_orders_and_writes(station: Station) -> None:
    port = station.modbus_port
    assert port is not None
    tags = station.plant.state.tags
    abcd = _values(await _mbpoll(port, "-t", "3:float", "-B", "-r", "100", "-c", "2"))
    assert float(abcd[100]) == pytest.approx(tags["Pump1.Speed"], rel=1e-5)
    assert float(abcd[102]) == pytest.approx(tags["Pump1.SpeedSetpoint"], rel=1e-5)
    cdab = _values(await _mbpoll(port, "-t", "3:float", "-r", "104", "-c", "1"))  # mbpoll default: CDAB
    assert float(cdab[104]) == pytest.approx(tags["Pump1.Flow"], rel=1e-5)
    regs = _values(await _mbpoll(port, "-t", "3", "-r", "106", "-c", "3"))
    assert int(regs[108]) * 0.1 == pytest.approx(tags["Pump1.MotorCurrent"], abs=0.06)
    await _mbpoll(port, "-t", "0", "-r", "0", values=("1",))  # permissive coil
    await _mbpoll(port, "-t", "4", "-r", "0", values=("77",))  # heartbeat
    await _mbpoll(port, "-t", "4:float", "-B", "-r", "220", values=("2222.5",))
    back = _values(await _mbpoll(port, "-t", "4:float", "-B", "-r", "220", "-c", "1"))
    assert float(back[220]) == 2222.5
    log = station.write_log
    assert [(e.tag, e.value, e.accepted) for e in log] == [
        ("Station.Permissive", True, True),
        ("Station.AgentHeartbeat", 77, True),
        ("Pump2.ExternalSpeedSetpoint", 2222.5, True),
    ]
    entry = build_register_map(2)
    assert decode(next(e for e in entry if e.name == "Pump2.ExternalSpeedSetpoint"), log[2].raw) == 2222.5
