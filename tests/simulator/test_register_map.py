"""The register map as data: consistent, documented, and our codec agrees with pymodbus's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from simulator.register_map import (
    MAX_PUMPS,
    NAMESPACE_URI,
    REGISTER_MAP,
    build_register_map,
    decode,
    encode,
    entry_by_name,
    render_markdown,
)

DOC = Path(__file__).resolve().parents[2] / "simulator" / "REGISTER_MAP.md"
DT = AsyncModbusTcpClient.DATATYPE


def test_documented_tables_are_generated_from_the_data() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert render_markdown() in text, (
        "REGISTER_MAP.md is stale: run simulator.register_map.update_markdown_file()"
    )
    for e in REGISTER_MAP:
        assert f"`{e.name}`" in text


@pytest.mark.parametrize("pumps", range(1, MAX_PUMPS + 1))
def test_map_is_consistent_for_every_station_size(pumps: int) -> None:
    entries = build_register_map(pumps)
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    for i in range(1, pumps + 1):
        assert f"Pump{i}.Speed" in names and f"Pump{i}.ExternalSpeedSetpoint" in names
        assert entry_by_name(f"Pump{i}.Speed", pumps).address == 100 * i
        assert entry_by_name(f"Simulation.Pump{i}.FaultInject", pumps).address == 1000 + i
    assert f"Pump{pumps + 1}.Speed" not in names
    for e in entries:
        assert e.table in ("input", "holding", "coil", "discrete")
        assert (e.count == 2) == bool(e.order) and e.order in ("", "ABCD", "CDAB")
        assert e.access in ("R", "RW") and (e.access == "RW") == (e.table in ("holding", "coil"))
        assert e.opcua_type in ("Double", "Float", "UInt16", "Boolean")
    # each pump block is contiguous (one read per block)
    for table, first, last in (("input", 100, 119), ("holding", 100, 110)):
        used = {a for e in entries if e.table == table and e.pump == 1 for a in range(e.address, e.end + 1)}
        assert set(range(first, last + 1)) <= used


def test_required_types_are_present() -> None:
    kinds = {(e.type, e.order) for e in REGISTER_MAP}
    assert {("float32", "ABCD"), ("float32", "CDAB"), ("int32", "ABCD"), ("bits16", "")} <= kinds
    assert entry_by_name("Pump1.ExternalSpeedSetpoint").modicon == "40121-40122"
    assert entry_by_name("Station.Permissive").modicon == "00001"
    assert entry_by_name("Station.HeartbeatOk").modicon == "10001"
    assert entry_by_name("Pump1.Speed").where == "IR 100-101 (30101-30102)"
    assert NAMESPACE_URI == "urn:edge-inference-agent:simulator"


@pytest.mark.parametrize("value", [0.0, 1.5, -273.15, 2950.0, 1e-3, 3.4e38])
def test_float_codec_agrees_with_pymodbus_word_orders(value: float) -> None:
    abcd = entry_by_name("Pump1.Speed")
    cdab = entry_by_name("Pump1.Flow")
    assert encode(abcd, value) == AsyncModbusTcpClient.convert_to_registers(
        value, DT.FLOAT32, word_order="big"
    )
    assert encode(cdab, value) == AsyncModbusTcpClient.convert_to_registers(
        value, DT.FLOAT32, word_order="little"
    )
    assert decode(abcd, encode(abcd, value)) == pytest.approx(value, rel=1e-7)
    assert decode(cdab, encode(cdab, value)) == pytest.approx(value, rel=1e-7)


def test_integer_codecs_scale_saturate_and_mark_missing_values() -> None:
    energy = entry_by_name("Station.EnergyTotal")  # int32 ABCD, Wh
    regs = encode(energy, 123456.789)
    assert regs == AsyncModbusTcpClient.convert_to_registers(123456789, DT.INT32, word_order="big")
    assert decode(energy, regs) == pytest.approx(123456.789)
    volume = entry_by_name("Station.VolumeTotal")  # uint32 CDAB, 0.01 m3
    regs = encode(volume, 70000.01)
    assert regs == AsyncModbusTcpClient.convert_to_registers(7000001, DT.UINT32, word_order="little")
    suction = entry_by_name("Pump1.SuctionPressure")  # int16 x0.01
    assert encode(suction, -0.87) == [(-87) & 0xFFFF]
    assert decode(suction, [(-87) & 0xFFFF]) == pytest.approx(-0.87)
    assert encode(suction, 1000.0) == [32767]  # saturates
    assert encode(suction, math.nan) == [0x8000] and math.isnan(decode(suction, [0x8000]))
    current = entry_by_name("Pump1.MotorCurrent")  # uint16 x0.1
    assert encode(current, 27.46) == [275] and encode(current, -5.0) == [0]
    assert encode(current, math.nan) == [0xFFFF] and math.isnan(decode(current, [0xFFFF]))
    assert encode(entry_by_name("Pump1.Speed"), math.nan) == [0x7FC0, 0]
    assert encode(entry_by_name("Pump1.Status"), 0b1000_0011) == [131]
