"""The Modbus driver against real pymodbus servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

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
    # Waiting for the silent unit would hold a poll for its 1 s timeout, every time the breaker
    # lets it be asked again (about 7 times in 6 s): no period comes near the timeout, and a
    # late tick (a loaded machine: 1 in 60 was seen) is rare.
    assert periods[-1] < 0.5, f"longest period {periods[-1] * 1000:.0f} ms"
    late = [p for p in periods if p > interval + 0.050]
    assert len(late) <= 3, f"{len(late)} periods over {1000 * interval + 50:.0f} ms: {late}"
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


async def run_for(
    drv: ModbusDriver, seconds: float, interval: float = 0.05
) -> list[tuple[float, dict[str, Sample]]]:
    """Poll ``drv`` on a RunningSource for ``seconds``; every cycle's samples, stamped."""
    cycles: list[tuple[float, dict[str, Sample]]] = []

    def sink(samples: list[Sample]) -> None:
        cycles.append((time.monotonic(), by_tag(samples)))

    task = asyncio.create_task(RunningSource(drv, interval, sink).run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return cycles


def events(logs: list[dict[str, Any]], event: str, source: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event and e.get("source", "").startswith(source)]


async def test_a_peer_that_is_not_modbus_is_named_once_and_backed_off() -> None:
    # An HTTP server that answers anything it cannot parse with 400 and closes, as nginx does
    accepted = 0

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tags = [{"name": "v", "table": "holding", "address": 0, "type": "uint16"}]
    dev = device(port, tags, breaker={"failures": 3, "backoff_ms": 100, "backoff_max_ms": 400})
    try:
        async with ModbusDriver(dev) as drv:
            with capture_logs() as logs:
                cycles = await run_for(drv, 2.0)
            status = drv.unit_status()[0]
    finally:
        server.close()
        await server.wait_closed()
    reasons = [c["v"].quality.reason for _, c in cycles]
    assert all(
        r.startswith(("not a Modbus TCP server", "device unreachable (not a Modbus TCP server"))
        for r in reasons
    )
    assert "HTTP/1.1 400" in reasons[0] and "wrong unit" not in reasons[0]
    lost = events(logs, "lost", "plc (")
    assert len(lost) == 1 and lost[0]["reason"].startswith("not a Modbus TCP server: 127.0.0.1:")
    assert events(logs, "recovered", "plc") == []  # a TCP connect is no proof: no flapping
    assert not [e for e in logs if e["event"] == "lost" and "unit" in e["source"]]
    # backoff 0.1, 0.2, 0.4, 0.4 ... s: a handful of connections in 2 s, not one per cycle
    assert 3 <= accepted <= 8, accepted
    assert status.state == "lost" and status.last_error.startswith("not a Modbus TCP server")


async def test_a_text_peer_that_keeps_the_connection_open_is_named_and_closed() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(100):
            writer.write(b"ERROR unknown command\r\n")

    server = await asyncio.start_server(chatty, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tags = [{"name": "v", "table": "holding", "address": 0, "type": "uint16"}]
    try:
        async with ModbusDriver(device(port, tags, timeout_ms=2000)) as drv:
            t0 = time.monotonic()
            got = await poll(drv, budget=5)
            assert time.monotonic() - t0 < 0.5  # named at once, not at the timeout
            assert not drv.connected  # the stream cannot be framed any more: closed
    finally:
        for w in connections:
            w.close()
        server.close()
        await server.wait_closed()
    assert got["v"].quality.reason.startswith("not a Modbus TCP server: 127.0.0.1:")
    assert "ERROR unknown command" in got["v"].quality.reason


async def test_a_short_reply_to_a_merged_read_is_split_at_the_end_of_the_table() -> None:
    # This server answers a read past the end of its table (register 100) with the registers
    # it has, not with exception 02.
    async with ModbusTestServer(size=200) as srv:
        srv.faults.table_end[1] = 100
        await srv.set_registers(1, 95, [7])
        await srv.set_registers(1, 97, codec.encode(2.5, codec.DataType.FLOAT32, "ABCD"))
        tags = [
            {"name": "a", "table": "holding", "address": 95, "type": "uint16"},
            {"name": "b", "table": "holding", "address": 97, "type": "float32"},
            {"name": "c", "table": "holding", "address": 99, "type": "float32"},  # 99..100: half past
            {"name": "d", "table": "holding", "address": 103, "type": "uint16"},  # wholly past
        ]
        async with ModbusDriver(device(srv.port, tags, hole_fill_gap=8)) as drv:
            with capture_logs() as logs:
                first = await poll(drv)
            n_first = len(srv.faults.requests)
            second = await poll(drv)
            third = await poll(drv)
            n_later = len(srv.faults.requests) - n_first
            status = drv.unit_status()[0]
    for got in (first, second, third):
        assert (got["a"].value, got["b"].value) == (7, 2.5)
        assert got["a"].quality.is_good and got["b"].quality.is_good
        assert got["c"].value is None and got["d"].value is None
        assert got["c"].quality.reason == (
            "short reply: 5 of 9 registers from unit 1: 40100..40101 is past the end of the unit's table "
            "(the reply stopped after 40100)"
        )
        assert got["d"].quality.reason == (
            "short reply: 0 of 1 registers from unit 1: 40104 is past the end of the unit's table "
            "(nothing came from 40104 on)"
        )
    # merged [95, 104) answered short with 5 registers; then "d" alone, answered with none
    assert srv.faults.requests[:2] == [(1, 3, 95, 9), (1, 3, 103, 1)] and n_first == 2
    assert n_later == 2  # remembered: one read of a and b per cycle, nothing past the end
    assert srv.faults.requests[-1] == (1, 3, 95, 4)
    assert [(e["event"], e["start"], e["reason"]) for e in logs] == [
        ("merged read split", 95, "short reply: 5 of 9 registers from unit 1")
    ]
    assert status.state == "ok"


async def test_a_unit_refusing_every_address_is_lost_once_probed_with_backoff_and_found_later() -> None:
    # A gateway answers exception 02 for a unit id it does not have; the drive is added later.
    async with ModbusTestServer(units=[1, 5]) as srv:
        srv.faults.refuse_units.add(5)
        await srv.set_registers(5, 3, [33])
        await srv.set_registers(5, 10, [44])
        tags = [
            {"name": "live", "unit": 1, "table": "holding", "address": 0, "type": "uint16"},
            {"name": "x", "unit": 5, "table": "holding", "address": 3, "type": "uint16"},
            {"name": "y", "unit": 5, "table": "holding", "address": 10, "type": "uint16"},
        ]
        dev = device(
            srv.port, tags, units=[1, 5], breaker={"failures": 2, "backoff_ms": 100, "backoff_max_ms": 400}
        )
        async with ModbusDriver(dev) as drv:
            with capture_logs() as logs:
                absent = await run_for(drv, 2.0)
                status = {s.unit: s for s in drv.unit_status()}
                asked_absent = [r for r in srv.faults.requests if r[0] == 5]
                srv.faults.refuse_units.clear()  # the drive is there now
                t_added = time.monotonic()
                present = await run_for(drv, 1.0)
    live = [c["live"] for _, c in absent + present if "live" in c]  # a late cycle may defer some
    assert len(live) >= 50 and all(s.quality.is_good for s in live)
    reasons = {c[k].quality.reason for _, c in absent for k in ("x", "y") if k in c}
    assert all(reasons) and any("exception 02" in r for r in reasons)
    lost = events(logs, "lost", "plc unit 5")
    assert len(lost) == 1
    assert lost[0]["reason"].startswith(
        "every configured address refused: exception 02 (illegal data address)"
    )
    assert status[5].state == "lost" and status[5].last_error == lost[0]["reason"]
    assert status[1].state == "ok"
    # asked again with backoff (0.1, 0.2, 0.4, 0.4 s): not every cycle, and not never
    cycles = len(absent)
    assert cycles >= 35 and 6 <= len(asked_absent) <= 20, (cycles, asked_absent)
    found = [t for t, c in present if "y" in c and c["x"].quality.is_good and c["y"].quality.is_good]
    assert found and found[0] - t_added <= 0.4 + 0.1, "found within the backoff cap"
    last = [c for _, c in present if "y" in c][-1]
    assert (last["x"].value, last["y"].value) == (33, 44)
    assert len(events(logs, "recovered", "plc unit 5")) == 1


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
