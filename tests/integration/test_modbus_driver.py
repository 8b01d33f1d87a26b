"""The Modbus driver against real pymodbus servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Any

import pytest

from agent.config import ModbusTcpDevice
from agent.drivers import modbus_codec as codec
from agent.drivers.modbus import ModbusDriver
from agent.errors import WriteRefused, WriteUnconfirmed
from agent.running import RunningSource
from agent.types import Sample
from tests.modbus_server import ModbusTestServer

pytestmark = pytest.mark.timeout(60)


def device(port: int, tags: list[dict[str, Any]], **kw: Any) -> ModbusTcpDevice:
    base: dict[str, Any] = {
        "name": "plc",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "timeout_ms": 200,
        "poll_interval_ms": 100,
        "tags": tags,
    }
    base.update(kw)
    return ModbusTcpDevice.model_validate(base)


def by_tag(samples: list[Sample]) -> dict[str, Sample]:
    return {s.tag: s for s in samples}


async def poll(driver: ModbusDriver, budget: float = 2.0) -> dict[str, Sample]:
    return by_tag(list(await driver.poll(time.monotonic() + budget)))


CASES: list[tuple[str, str | None, Any]] = [
    ("int16", None, -12345),
    ("int16", "BA", -2),
    ("uint16", None, 54321),
    ("int32", "ABCD", -123456789),
    ("int32", "CDAB", 123456789),
    ("uint32", "BADC", 4000000000),
    ("uint32", "DCBA", 305419896),
    ("float32", "ABCD", 3.5),
    ("float32", "CDAB", -1234.5),
    ("float32", "BADC", 0.15625),
    ("float32", "DCBA", 1e10),
    ("int64", "ABCDEFGH", -(2**60) + 7),
    ("uint64", "GHEFCDAB", 2**63 + 12345),
    ("float64", "BADCFEHG", math.pi),
    ("float64", "HGFEDCBA", -2.5e-300),
]


async def test_every_type_and_order_reads_back_exactly() -> None:
    async with ModbusTestServer(size=300) as srv:
        tags = []
        address = 0
        for i, (dtype, order, value) in enumerate(CASES):
            words = codec.encode(value, codec.DataType(dtype), order)
            await srv.set_registers(1, address, words)
            tag: dict[str, Any] = {"name": f"t{i}", "table": "holding", "address": address, "type": dtype}
            if order:
                tag["word_order"] = order
            tags.append(tag)
            address += len(words) + 1  # one-register holes: merged by the hole-fill gap
        await srv.set_registers(
            1, 200, codec.encode("PUMP-7", codec.DataType.STRING, length=4, byte_swap=True)
        )
        tags.append(
            {
                "name": "s",
                "table": "holding",
                "address": 200,
                "type": "string",
                "length": 4,
                "byte_swap": True,
            }
        )
        await srv.set_registers(1, 210, [0b1010_0000_0000_0100])
        tags.append({"name": "b2", "table": "holding", "address": 210, "type": "bit", "bit": 2})
        tags.append({"name": "b3", "table": "holding", "address": 210, "type": "bit", "bit": 3})
        tags.append({"name": "b15", "table": "holding", "address": 210, "type": "bit", "bit": 15})
        await srv.set_bits(1, 5, [True, False, True])
        tags.append({"name": "c5", "table": "coil", "address": 5, "type": "bool"})
        tags.append({"name": "c6", "table": "coil", "address": 6, "type": "bool"})
        await srv.set_registers(1, 7, [1234], table="input")
        tags.append(
            {"name": "scaled", "table": "input", "address": 7, "type": "uint16", "scale": 0.1, "offset": -10}
        )

        async with ModbusDriver(device(srv.port, tags)) as drv:
            got = await poll(drv)
        for i, (dtype, _order, value) in enumerate(CASES):
            s = got[f"t{i}"]
            assert s.quality.is_good, (dtype, s.quality)
            if dtype == "float32":
                assert s.value == pytest.approx(value, rel=1e-7)
            else:
                assert s.value == value, dtype
        assert got["s"].value == "PUMP-7"
        assert (got["b2"].value, got["b3"].value, got["b15"].value) == (True, False, True)
        assert (got["c5"].value, got["c6"].value) == (True, False)
        assert got["scaled"].value == pytest.approx(113.4)
        # Planned: the holding registers 0..~60 in one request, not one per tag.
        fc3 = [r for r in srv.faults.requests if r[1] == 3]
        assert len(fc3) <= 3


async def test_nan_and_out_of_range_are_bad_with_reason() -> None:
    async with ModbusTestServer() as srv:
        await srv.set_registers(1, 0, codec.encode(1.0, codec.DataType.FLOAT32, "ABCD"))
        await srv.set_registers(1, 0, [0x7FC0, 0x0000])  # NaN
        await srv.set_registers(1, 2, codec.encode(150.0, codec.DataType.FLOAT32, "ABCD"))
        tags = [
            {"name": "nan", "table": "holding", "address": 0, "type": "float32"},
            {"name": "hot", "table": "holding", "address": 2, "type": "float32", "range": [0, 120]},
        ]
        async with ModbusDriver(device(srv.port, tags)) as drv:
            got = await poll(drv)
    assert not got["nan"].quality.is_good and "not finite" in got["nan"].quality.reason
    assert not got["hot"].quality.is_good and "out of range" in got["hot"].quality.reason


async def test_exception_short_reply_wrong_unit_timeout_each_bad_with_reason() -> None:
    async with ModbusTestServer(units=[1, 2, 3], holes=[(50, 60)]) as srv:
        srv.faults.short_reply_units.add(2)
        srv.faults.wrong_unit[3] = 9
        tags = [
            {"name": "ok", "unit": 1, "table": "holding", "address": 0, "type": "uint16"},
            {"name": "hole", "unit": 1, "table": "holding", "address": 55, "type": "uint16"},
            {"name": "short", "unit": 2, "table": "holding", "address": 0, "type": "float32"},
            {"name": "wrong", "unit": 3, "table": "holding", "address": 0, "type": "uint16"},
            {"name": "silent", "unit": 4, "table": "holding", "address": 0, "type": "uint16"},
        ]
        async with ModbusDriver(device(srv.port, tags, units=[1, 2, 3, 4], hole_fill_gap=0)) as drv:
            got = await poll(drv)
    assert got["ok"].quality.is_good
    assert "illegal data address" in got["hole"].quality.reason and "40056" in got["hole"].quality.reason
    assert "short reply" in got["short"].quality.reason and got["short"].value is None
    assert "wrong unit" in got["wrong"].quality.reason and got["wrong"].value is None
    assert "timeout" in got["silent"].quality.reason
    assert all(not got[k].quality.is_good for k in ("hole", "short", "wrong", "silent"))


async def test_merged_read_across_unmapped_range_is_split_and_remembered() -> None:
    async with ModbusTestServer(holes=[(10, 12)]) as srv:
        await srv.set_registers(1, 8, [7, 7])
        await srv.set_registers(1, 12, [9])
        tags = [
            {"name": "a", "table": "holding", "address": 8, "type": "uint16"},
            {"name": "b", "table": "holding", "address": 12, "type": "uint16"},
        ]
        async with ModbusDriver(device(srv.port, tags, hole_fill_gap=8)) as drv:
            first = await poll(drv)
            n_first = len(srv.faults.requests)
            second = await poll(drv)
            n_second = len(srv.faults.requests) - n_first
    assert first["a"].value == 7 and first["b"].value == 9
    assert first["a"].quality.is_good and first["b"].quality.is_good
    assert second["a"].quality.is_good and second["b"].quality.is_good
    assert n_first == 3  # merged (refused with 02), then the two halves
    assert n_second == 2  # remembered: never merged again


async def test_server_restart_data_resumes_without_restarting_anything() -> None:
    srv = ModbusTestServer()
    await srv.start()
    port = srv.port
    tags = [{"name": "v", "table": "holding", "address": 0, "type": "uint16"}]
    dev = device(port, tags, breaker={"failures": 1, "backoff_ms": 50, "backoff_max_ms": 200})
    async with ModbusDriver(dev) as drv:
        await srv.set_registers(1, 0, [11])
        assert (await poll(drv))["v"].value == 11
        await srv.stop()
        down = await poll(drv)
        assert not down["v"].quality.is_good
        srv2 = ModbusTestServer(port=port)
        await srv2.start()
        try:
            await srv2.set_registers(1, 0, [22])
            value = None
            for _ in range(40):
                s = (await poll(drv))["v"]
                if s.quality.is_good:
                    value = s.value
                    break
                await asyncio.sleep(0.05)
            assert value == 22
        finally:
            await srv2.stop()


async def test_silent_unit_does_not_slow_the_live_unit_on_the_same_connection() -> None:
    interval = 0.1
    async with ModbusTestServer(units=[1]) as srv:
        tags = [
            {"name": "live", "unit": 1, "table": "holding", "address": 0, "type": "uint16"},
            {"name": "dead", "unit": 2, "table": "holding", "address": 0, "type": "uint16"},
        ]
        dev = device(
            srv.port,
            tags,
            units=[1, 2],
            timeout_ms=1000,  # longer than the interval: only the deadline clipping saves us
            poll_interval_ms=int(interval * 1000),
            breaker={"failures": 1, "backoff_ms": 200, "backoff_max_ms": 1000},
        )
        stamps: list[float] = []
        dead_reasons: list[str] = []

        def sink(samples: list[Sample]) -> None:
            for s in samples:
                if s.tag == "live" and s.quality.is_good:
                    stamps.append(s.mono)
                if s.tag == "dead":
                    dead_reasons.append(s.quality.reason)

        async with ModbusDriver(dev) as drv:
            runner = RunningSource(drv, interval, sink)
            task = asyncio.create_task(runner.run())
            await asyncio.sleep(6.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    periods = sorted(b - a for a, b in itertools.pairwise(stamps))
    assert len(periods) > 40
    p99 = periods[int(0.99 * (len(periods) - 1))]
    assert p99 <= interval + 0.050, f"p99 period {p99 * 1000:.0f} ms"
    assert dead_reasons and all(r for r in dead_reasons)
    assert any("not responding" in r for r in dead_reasons)


async def test_cancellation_propagates_through_a_pending_request() -> None:
    async with ModbusTestServer(units=[1]) as srv:
        tags = [{"name": "dead", "unit": 2, "table": "holding", "address": 0, "type": "uint16"}]
        async with ModbusDriver(device(srv.port, tags, units=[2], timeout_ms=5000)) as drv:
            task = asyncio.create_task(drv.poll(time.monotonic() + 10))
            await asyncio.sleep(0.3)  # the request is now waiting for a reply that never comes
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - t0 < 0.5
            # the driver is still usable after a cancelled request
            srv.faults.silent_units.clear()


async def test_writes_coil_register_multi_and_bit_with_read_back() -> None:
    async with ModbusTestServer() as srv:
        await srv.set_registers(1, 20, [0b1000_0000_0000_0001])
        rw = {"access": "read-write", "purpose": "setpoint"}
        tags = [
            {"name": "run", "table": "coil", "address": 3, "type": "bool", **rw},
            {
                "name": "sp16",
                "table": "holding",
                "address": 10,
                "type": "int16",
                "access": "write",
                "purpose": "setpoint",
            },
            {
                "name": "sp",
                "table": "holding",
                "address": 12,
                "type": "float32",
                "word_order": "CDAB",
                "range": [0, 3000],
                **rw,
            },
            {
                "name": "flags3",
                "table": "holding",
                "address": 20,
                "type": "bit",
                "bit": 3,
                "bit_write": "read_modify_write",
                **rw,
            },
            {"name": "ro", "table": "holding", "address": 30, "type": "uint16"},
            {
                "name": "scaled",
                "table": "holding",
                "address": 31,
                "type": "uint16",
                "scale": 0.1,
                "access": "write",
                "purpose": "setpoint",
            },
        ]
        async with ModbusDriver(device(srv.port, tags)) as drv:
            assert await drv.write("run", True, purpose="setpoint") is True
            assert await drv.write("sp16", -5, purpose="setpoint") == -5
            assert await drv.write("sp", 1450.5, purpose="setpoint") == pytest.approx(1450.5)
            assert await drv.write("flags3", True, purpose="setpoint") is True
            assert await drv.write("scaled", 12.3, purpose="setpoint") == pytest.approx(12.3)
            with pytest.raises(WriteRefused, match="read-only"):
                await drv.write("ro", 1, purpose="setpoint")
            with pytest.raises(WriteRefused, match="outside plausible range"):
                await drv.write("sp", 5000.0, purpose="setpoint")
            with pytest.raises(WriteRefused, match="not finite"):
                await drv.write("sp", float("nan"), purpose="setpoint")
            with pytest.raises(WriteRefused):
                await drv.write("sp16", 40000, purpose="setpoint")
        assert (await srv.get_bits(1, 3, 1)) == [True]
        assert (await srv.get_registers(1, 10, 1)) == [0xFFFB]
        assert (await srv.get_registers(1, 12, 2)) == codec.encode(1450.5, codec.DataType.FLOAT32, "CDAB")
        assert (await srv.get_registers(1, 20, 1)) == [0b1000_0000_0000_1001]  # other bits untouched
        assert (await srv.get_registers(1, 31, 1)) == [123]
        fcs = {r[1] for r in srv.faults.requests}
        assert {5, 6, 16}.issubset(fcs)


async def test_a_reply_from_the_wrong_unit_is_reported_at_once_not_at_the_timeout() -> None:
    async with ModbusTestServer(units=[1, 3]) as srv:
        srv.faults.wrong_unit[3] = 9
        tags = [
            {"name": "ok", "unit": 1, "table": "holding", "address": 0, "type": "uint16"},
            {"name": "wrong", "unit": 3, "table": "holding", "address": 0, "type": "uint16"},
            {
                "name": "sp",
                "unit": 3,
                "table": "holding",
                "address": 5,
                "type": "uint16",
                "access": "write",
                "purpose": "setpoint",
            },
        ]
        async with ModbusDriver(device(srv.port, tags, units=[1, 3], timeout_ms=2000)) as drv:
            t0 = time.monotonic()
            got = await poll(drv, budget=5)
            assert time.monotonic() - t0 < 1.0
            assert got["ok"].quality.is_good
            assert got["wrong"].quality.reason == "reply from the wrong unit: asked 3, got 9"
            t0 = time.monotonic()
            with pytest.raises(WriteUnconfirmed, match="wrong unit"):  # it answered: something got it
                await drv.write("sp", 1, purpose="setpoint")
            assert time.monotonic() - t0 < 1.0
            assert (await poll(drv))["ok"].quality.is_good  # the link is still fine


async def test_a_connection_that_stops_answering_is_closed_and_opened_again() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def half_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # takes everything, answers nothing, never closes

    server = await asyncio.start_server(half_open, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tags = [{"name": "v", "table": "holding", "address": 0, "type": "uint16"}]
    dev = device(port, tags, timeout_ms=100, breaker={"failures": 2, "backoff_ms": 50, "backoff_max_ms": 100})
    reasons: list[str] = []
    try:
        async with ModbusDriver(dev) as drv:
            for _ in range(40):
                reasons.append((await poll(drv, budget=0.5))["v"].quality.reason)
                if len(connections) >= 3:
                    break
                await asyncio.sleep(0.05)
    finally:
        for w in connections:
            w.close()
        server.close()
        await server.wait_closed()
    assert len(connections) >= 3, reasons
    assert any("nothing received on the connection for 3 requests in a row" in r for r in reasons)
    assert all(reasons)


async def test_a_silent_unit_behind_a_live_gateway_never_closes_the_shared_connection() -> None:
    async with ModbusTestServer(units=[1]) as srv:
        tags = [
            {"name": "live", "unit": 1, "table": "holding", "address": 0, "type": "uint16"},
            {"name": "dead", "unit": 2, "table": "holding", "address": 0, "type": "uint16"},
        ]
        dev = device(
            srv.port,
            tags,
            units=[1, 2],
            timeout_ms=50,
            breaker={"failures": 1, "backoff_ms": 10, "backoff_max_ms": 10},
        )
        async with ModbusDriver(dev) as drv:
            for _ in range(15):
                got = await poll(drv)
                assert got["live"].quality.is_good
                await asyncio.sleep(0.02)
            assert drv.counters.per_unit["link"]["connects"] == 1
            assert drv.counters.per_unit["2"]["requests"] >= 5  # it was asked, and timed out


async def test_a_peer_that_is_not_modbus_is_named_as_such() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        tags = [{"name": "v", "table": "holding", "address": 0, "type": "uint16"}]
        async with ModbusDriver(device(port, tags)) as drv:
            got = await poll(drv)
    finally:
        server.close()
        await server.wait_closed()
    assert "not Modbus TCP" in got["v"].quality.reason and "HTTP" in got["v"].quality.reason
    assert "wrong unit" not in got["v"].quality.reason


async def test_a_dropped_connection_ends_the_pending_request_at_once() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(260)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        tags = [{"name": "v", "table": "holding", "address": 0, "type": "uint16"}]
        async with ModbusDriver(device(port, tags, timeout_ms=3000)) as drv:
            t0 = time.monotonic()
            got = await poll(drv, budget=5)
            assert time.monotonic() - t0 < 1.0
            assert (
                "connection lost" in got["v"].quality.reason
                and "closed the connection" in got["v"].quality.reason
            )
            st = drv.unit_status()[0]
            assert st.state == "lost" and "closed the connection" in st.last_error
    finally:
        server.close()
        await server.wait_closed()


async def test_unit_status_always_gives_a_reason_when_not_ok() -> None:
    # a unit that answers exception 02 at every address (some servers do this for a unit id they
    # do not have): it answers, so no breaker trips, but it is not ok either
    async with ModbusTestServer(units=[1], holes=[(0, 100)]) as srv:
        tags = [{"name": "v", "table": "holding", "address": 3, "type": "uint16"}]
        async with ModbusDriver(device(srv.port, tags)) as drv:
            assert drv.unit_status()[0].last_error == "not asked yet"
            await poll(drv)
            st = drv.unit_status()[0]
    assert st.state != "ok" and "exception 02" in st.last_error and "40004" in st.last_error
