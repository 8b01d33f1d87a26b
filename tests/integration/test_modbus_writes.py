"""Modbus writes against real pymodbus servers on 127.0.0.1: purpose, order, per-item errors,
what a write's failure means for the PLC (refused, not sent, possibly applied, not verified),
bits in holding registers (FC22 mask write, read-modify-write) and the explicit read."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agent.config import ModbusTcpDevice
from agent.drivers import modbus_codec as codec
from agent.drivers.modbus import ModbusDriver
from agent.errors import (
    DeviceUnreachable,
    DriverError,
    ReadBackFailed,
    WriteRefused,
    WriteUnconfirmed,
)
from agent.types import QualityCode
from tests.modbus_server import ModbusTestServer

pytestmark = pytest.mark.timeout(60)

WRITE_FCS = (5, 6, 15, 16, 22)


def device(port: int, tags: list[dict[str, Any]], **kw: Any) -> ModbusTcpDevice:
    base: dict[str, Any] = {
        "name": "plc",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "timeout_ms": 200,
        "tags": tags,
    }
    base.update(kw)
    return ModbusTcpDevice.model_validate(base)


def hr(name: str, address: int, dtype: str = "uint16", purpose: str = "display", **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "table": "holding",
        "address": address,
        "type": dtype,
        "access": "read-write",
        "purpose": purpose,
        **kw,
    }


def coil(name: str, address: int, purpose: str = "display") -> dict[str, Any]:
    return {
        "name": name,
        "table": "coil",
        "address": address,
        "type": "bool",
        "access": "read-write",
        "purpose": purpose,
    }


def writes(srv: ModbusTestServer) -> list[tuple[int, int]]:
    """(function code, address) of every write request the server received, in order."""
    return [(fc, addr) for _, fc, addr, _ in srv.faults.requests if fc in WRITE_FCS]


# --------------------------------------------------------------------------- purpose


async def test_a_write_for_another_purpose_is_refused_before_anything_is_sent() -> None:
    async with ModbusTestServer() as srv:
        tags = [
            hr("sp", 10, purpose="setpoint"),
            hr("word", 20),
            {"name": "ro", "table": "holding", "address": 30, "type": "uint16"},
        ]
        async with ModbusDriver(device(srv.port, tags)) as drv:
            with pytest.raises(WriteRefused) as info:
                await drv.write("sp", 7, purpose="display")
            assert str(info.value) == "sp (40011) is a setpoint tag: refused a write for purpose display"
            with pytest.raises(WriteRefused, match=r"ro \(40031\) is read-only"):
                await drv.write("ro", 7, purpose="display")
            assert srv.faults.requests == []  # nothing at all reached the device
            # in a batch, the mismatched item is refused and the rest written
            got = await drv.write_many([("sp", 9), ("word", 3)], purpose="display")
            assert isinstance(got["sp"], WriteRefused) and "setpoint tag" in str(got["sp"])
            assert got["word"] == 3
            assert writes(srv) == [(6, 20)]
        assert await srv.get_registers(1, 10, 1) == [0]
        assert await srv.get_registers(1, 20, 1) == [3]


async def test_a_tag_without_a_declared_purpose_is_never_written() -> None:
    async with ModbusTestServer() as srv:
        # The config refuses such a tag; the driver refuses it too (a config built another way)
        dev = device(srv.port, [hr("w", 5)])
        dev = dev.model_copy(update={"tags": [dev.tags[0].model_copy(update={"purpose": None})]})
        async with ModbusDriver(dev) as drv:
            with pytest.raises(WriteRefused, match=r"w \(40006\) is declared for no purpose"):
                await drv.write("w", 1, purpose="display")
        assert srv.faults.requests == []


# --------------------------------------------------------------------------- order and isolation


async def test_write_many_keeps_the_callers_order_and_merges_only_neighbours_in_it() -> None:
    async with ModbusTestServer() as srv:
        tags = [
            hr("word", 10),
            hr("sev", 11),
            hr("score", 12, "float32"),
            hr("far", 30, "int16"),
            coil("c0", 0),
            coil("c1", 1),
        ]
        async with ModbusDriver(device(srv.port, tags)) as drv:
            # details first, the word last: the word's register comes first in the address space
            back = await drv.write_many(
                [("sev", 3), ("score", 2.5), ("far", -7), ("c1", True), ("c0", False), ("word", 5)],
                purpose="display",
            )
            assert list(back) == ["sev", "score", "far", "c1", "c0", "word"]
            assert back == {"sev": 3, "score": 2.5, "far": -7, "c1": True, "c0": False, "word": 5}
            assert writes(srv) == [(16, 11), (6, 30), (5, 1), (5, 0), (6, 10)]
            # sev and score were one FC16 of 3 registers; each write was read back after its reply
            assert (1, 16, 11, 3) in srv.faults.requests
            fcs = [fc for _, fc, _, _ in srv.faults.requests]
            assert fcs == [16, 3, 6, 3, 5, 1, 5, 1, 6, 3]
            srv.faults.requests.clear()
            # adjacent in the caller's order: merged, in one request
            await drv.write_many([("word", 1), ("sev", 2), ("c0", True), ("c1", True)], purpose="display")
            assert writes(srv) == [(16, 10), (15, 0)]
        assert await srv.get_registers(1, 10, 4) == [1, 2, *codec.encode(2.5, codec.DataType.FLOAT32, "ABCD")]
        assert await srv.get_registers(1, 30, 1) == [0xFFF9]


async def test_each_item_gets_its_own_answer_and_one_bad_value_blocks_nothing() -> None:
    async with ModbusTestServer() as srv:
        tags = [
            hr("a", 10),
            hr("b", 11),
            hr("c", 12),
            {"name": "ro", "table": "holding", "address": 13, "type": "uint16"},
        ]
        async with ModbusDriver(device(srv.port, tags)) as drv:
            got = await drv.write_many(
                [("a", 70000), ("b", 5), ("ro", 1), ("nope", 1), ("c", "x")], purpose="display"
            )
            assert list(got) == ["a", "b", "ro", "nope", "c"]
            assert got["b"] == 5
            assert isinstance(got["a"], WriteRefused) and "70000" in str(got["a"])
            assert isinstance(got["ro"], WriteRefused) and "read-only" in str(got["ro"])
            assert isinstance(got["nope"], WriteRefused) and "unknown tag" in str(got["nope"])
            assert isinstance(got["c"], WriteRefused) and "takes a number" in str(got["c"])
            assert writes(srv) == [(6, 11)]
            with pytest.raises(ValueError, match="more than once: b"):
                await drv.write_many([("b", 1), ("b", 2)], purpose="display")
        assert await srv.get_registers(1, 10, 4) == [0, 5, 0, 0]


async def test_a_merged_write_refused_for_an_address_is_retried_item_by_item() -> None:
    async with ModbusTestServer(holes=[(12, 13)]) as srv:
        tags = [hr("a", 10), hr("b", 11), hr("c", 12)]
        async with ModbusDriver(device(srv.port, tags, hole_fill_gap=0)) as drv:
            got = await drv.write_many([("a", 1), ("b", 2), ("c", 3)], purpose="display")
        assert got["a"] == 1 and got["b"] == 2
        assert isinstance(got["c"], WriteRefused) and "exception 02" in str(got["c"])
        assert writes(srv) == [(16, 10), (6, 10), (6, 11), (6, 12)]
        assert await srv.get_registers(1, 10, 2) == [1, 2]


async def test_a_device_exception_is_a_refusal_and_nothing_is_applied() -> None:
    async with ModbusTestServer() as srv:
        srv.faults.refuse_functions[6] = 4
        async with ModbusDriver(device(srv.port, [hr("a", 10)])) as drv:
            with pytest.raises(
                WriteRefused, match=r"a \(40011\): the device refused the write: exception 04"
            ):
                await drv.write("a", 9, purpose="display")
        assert await srv.get_registers(1, 10, 1) == [0]


# --------------------------------------------------------------------------- unconfirmed, not sent


async def test_a_unit_that_stops_answering_leaves_the_write_unconfirmed_and_the_rest_unsent() -> None:
    async with ModbusTestServer(units=[1, 2]) as srv:
        tags = [hr("a", 10, unit=1), hr("b", 20, unit=1), hr("c", 10, unit=2)]
        async with ModbusDriver(device(srv.port, tags, units=[1, 2])) as drv:
            assert await drv.write("a", 1, purpose="display") == 1
            srv.faults.silent_units.add(1)
            srv.faults.requests.clear()
            with pytest.raises(WriteUnconfirmed, match=r"a \(40011\): sent, but timeout.*possibly applied"):
                await drv.write("a", 2, purpose="display")
            srv.faults.requests.clear()
            got = await drv.write_many([("a", 3), ("b", 4), ("c", 5)], purpose="display")
            assert isinstance(got["a"], WriteUnconfirmed)
            assert isinstance(got["b"], DeviceUnreachable) and "not sent" in str(got["b"])
            assert got["c"] == 5  # the healthy unit behind the same connection is still written
            assert writes(srv) == [(6, 10), (6, 10)]  # a to unit 1, then c to unit 2: b never left
        # "possibly applied": the silent unit did execute the writes
        assert await srv.get_registers(1, 10, 1) == [3]
        assert await srv.get_registers(1, 20, 1) == [0]
        assert await srv.get_registers(2, 10, 1) == [5]


async def test_a_unit_the_poll_found_not_responding_is_not_written_until_its_breaker_allows() -> None:
    async with ModbusTestServer(units=[1]) as srv:
        tags = [hr("a", 10, unit=2)]
        breaker = {"failures": 1, "backoff_ms": 5000, "backoff_max_ms": 5000}
        # a 2 s timeout: refused at once, not after it (with a margin a loaded machine keeps)
        dev = device(srv.port, tags, units=[2], breaker=breaker, timeout_ms=2000)
        async with ModbusDriver(dev) as drv:
            await drv.poll(time.monotonic() + 0.5)  # unit 2 does not answer: its breaker opens
            srv.faults.requests.clear()
            t0 = time.monotonic()
            with pytest.raises(DeviceUnreachable, match=r"a \(40011\): not sent: unit 2 not responding"):
                await drv.write("a", 1, purpose="display")
            assert time.monotonic() - t0 < 1.0 and srv.faults.requests == []


async def test_a_connection_dropped_after_sending_is_unconfirmed_and_no_connection_is_not_sent() -> None:
    received: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(260))  # takes the request, then closes without a reply
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ModbusDriver(device(port, [hr("a", 10)], timeout_ms=2000)) as drv:
            t0 = time.monotonic()
            with pytest.raises(WriteUnconfirmed, match=r"closed the connection.*possibly applied"):
                await drv.write("a", 1, purpose="display")
            assert time.monotonic() - t0 < 1.0  # when the link dropped, not at the 2 s timeout
            assert len(received) == 1 and received[0][7] == 6  # the FC6 reached the peer
    finally:
        server.close()
        await server.wait_closed()
    async with ModbusDriver(device(port, [hr("a", 10)])) as drv:  # nothing listens any more
        with pytest.raises(DeviceUnreachable, match="not sent") as info:
            await drv.write("a", 1, purpose="display")
        assert not isinstance(info.value, WriteUnconfirmed)


# --------------------------------------------------------------------------- read-back


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("exception", "exception 04"), ("silent", "timeout"), ("short", "short reply")],
)
async def test_an_acknowledged_write_whose_read_back_fails_is_applied_not_verified(
    fault: str, reason: str
) -> None:
    async with ModbusTestServer() as srv:
        if fault == "exception":
            srv.faults.refuse_functions[3] = 4
        elif fault == "silent":
            srv.faults.silent_functions.add(3)
        else:
            srv.faults.short_reply_units.add(1)
        tags = [hr("a", 10), hr("b", 11)]
        async with ModbusDriver(device(srv.port, tags)) as drv:
            got = await drv.write_many([("a", 7), ("b", 8)], purpose="display")
        for name in ("a", "b"):
            err = got[name]
            assert isinstance(err, ReadBackFailed), err
            assert "written, but the read-back failed" in str(err) and reason in str(err)
        assert await srv.get_registers(1, 10, 2) == [7, 8]  # applied


# --------------------------------------------------------------------------- bits in registers


def bit_tag(bit_write: str | None, bit: int = 4) -> dict[str, Any]:
    tag = hr("flag", 40, "bit", purpose="command", bit=bit)
    if bit_write is not None:
        tag["bit_write"] = bit_write
    return tag


async def test_mask_write_sets_and_clears_one_bit_with_fc22() -> None:
    async with ModbusTestServer() as srv:
        await srv.set_registers(1, 40, [0b1000_0000_0000_0001])
        async with ModbusDriver(device(srv.port, [bit_tag("mask")], mask_write_units=[1])) as drv:
            assert await drv.write("flag", True, purpose="command") is True
            assert await srv.get_registers(1, 40, 1) == [0b1000_0000_0001_0001]
            assert await drv.write("flag", False, purpose="command") is False
        assert await srv.get_registers(1, 40, 1) == [0b1000_0000_0000_0001]
        fcs = [fc for _, fc, _, _ in srv.faults.requests]
        assert fcs == [22, 3, 22, 3]  # no read before the write: the device applies the mask
        assert srv.faults.requests[0] == (1, 22, 40, 0xFFEF)  # AND mask clears only bit 4


async def test_a_device_without_fc22_refuses_the_mask_write_and_nothing_else_is_tried() -> None:
    async with ModbusTestServer() as srv:
        srv.faults.refuse_functions[22] = 1
        await srv.set_registers(1, 40, [0b0000_0000_0000_0001])
        async with ModbusDriver(device(srv.port, [bit_tag("mask")], mask_write_units=[1])) as drv:
            with pytest.raises(WriteRefused, match=r"unit 1 does not support FC22 mask write \(exception 01"):
                await drv.write("flag", True, purpose="command")
        assert [fc for _, fc, _, _ in srv.faults.requests] == [22]  # no fallback
        assert await srv.get_registers(1, 40, 1) == [0b0000_0000_0000_0001]


async def test_read_modify_write_reads_sets_the_bit_and_writes_the_register() -> None:
    async with ModbusTestServer() as srv:
        await srv.set_registers(1, 40, [0b0100_0000_0000_0010])
        async with ModbusDriver(device(srv.port, [bit_tag("read_modify_write", bit=0)])) as drv:
            assert await drv.write("flag", True, purpose="command") is True
        assert [fc for _, fc, _, _ in srv.faults.requests] == [3, 6, 3]
        assert await srv.get_registers(1, 40, 1) == [0b0100_0000_0000_0011]


@pytest.mark.parametrize(
    ("bit_write", "units", "reason"),
    [
        (None, [], "needs|only with bit_write"),
        ("mask", [], "not declared in mask_write_units"),
    ],
)
async def test_a_bit_without_a_declared_way_to_write_it_is_refused(
    bit_write: str | None, units: list[int], reason: str
) -> None:
    """The config refuses both; the driver refuses them too (a device built another way)."""
    async with ModbusTestServer() as srv:
        dev = device(srv.port, [bit_tag("read_modify_write")])
        flag = dev.tags[0].model_copy(update={"bit_write": bit_write})
        dev = dev.model_copy(update={"tags": [flag], "mask_write_units": units})
        async with ModbusDriver(dev) as drv:
            with pytest.raises(WriteRefused, match=reason):
                await drv.write("flag", True, purpose="command")
        assert srv.faults.requests == []


# --------------------------------------------------------------------------- explicit read


async def test_read_issues_one_request_for_the_tag_now_and_never_raises_for_the_device() -> None:
    async with ModbusTestServer(units=[1], holes=[(50, 60)]) as srv:
        await srv.set_registers(1, 10, codec.encode(12.5, codec.DataType.FLOAT32, "CDAB"))
        await srv.set_registers(1, 40, [0b10000])
        await srv.set_bits(1, 3, [True])
        tags = [
            hr("sp", 10, "float32", word_order="CDAB"),
            hr("near", 12),  # would be merged with sp by a poll
            bit_tag("read_modify_write"),
            coil("c", 3),
            {"name": "hole", "table": "holding", "address": 55, "type": "uint16"},
            {"name": "gone", "unit": 2, "table": "holding", "address": 0, "type": "uint16"},
        ]
        async with ModbusDriver(device(srv.port, tags, units=[1, 2])) as drv:
            s = await drv.read("sp")
            assert (s.tag, s.value, s.quality.is_good) == ("sp", 12.5, True)
            assert srv.faults.requests == [(1, 3, 10, 2)]  # exactly its own registers
            await srv.set_registers(1, 10, codec.encode(13.0, codec.DataType.FLOAT32, "CDAB"))
            t0 = time.monotonic()
            s = await drv.read("sp")
            assert s.value == 13.0 and s.mono >= t0  # issued now, not a cached value
            assert (await drv.read("flag")).value is True
            assert (await drv.read("c")).value is True
            hole = await drv.read("hole")
            assert hole.quality.code is QualityCode.BAD and "exception 02" in hole.quality.reason
            assert "40056" in hole.quality.reason
            gone = await drv.read("gone")
            assert gone.quality.code is QualityCode.BAD and "timeout" in gone.quality.reason
            with pytest.raises(KeyError):
                await drv.read("nope")
        await srv.stop()
        async with ModbusDriver(device(srv.port, tags, units=[1, 2])) as drv:
            down = await drv.read("sp")
            assert down.quality.code is QualityCode.BAD and "connect" in down.quality.reason


async def test_cancelling_a_pending_write_propagates() -> None:
    async with ModbusTestServer() as srv:
        srv.faults.silent_units.add(1)
        async with ModbusDriver(device(srv.port, [hr("a", 10)], timeout_ms=5000)) as drv:
            task = asyncio.create_task(drv.write("a", 1, purpose="display"))
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - t0 < 0.5


def test_every_write_error_is_a_driver_error() -> None:
    for cls in (WriteRefused, WriteUnconfirmed, ReadBackFailed, DeviceUnreachable):
        assert issubclass(cls, DriverError)
    assert not issubclass(WriteUnconfirmed, DeviceUnreachable)
