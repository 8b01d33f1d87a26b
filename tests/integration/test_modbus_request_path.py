"""The driver's request path against real pymodbus servers on 127.0.0.1: a poll's reply is
decoded while the next request is out (same samples, order and stamps as decoding each reply as
it comes), and one timer bounds every request by its own deadline."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import pytest

from agent.drivers import modbus as modbus_driver
from agent.drivers import modbus_codec as codec
from agent.drivers.modbus import ModbusDriver
from agent.types import Sample
from tests.integration.test_modbus_driver import device
from tests.modbus_server import ModbusTestServer

pytestmark = pytest.mark.timeout(60)

# Several requests (two units, holding and input registers, coils), a refused read between
# good ones, a NaN and an out-of-range value (the tag-by-tag path), a short reply.
TAGS: list[dict[str, Any]] = [
    {"name": "a", "unit": 1, "table": "holding", "address": 0, "type": "float32"},
    {"name": "nan", "unit": 1, "table": "holding", "address": 2, "type": "float32"},
    {"name": "hole", "unit": 1, "table": "holding", "address": 55, "type": "uint16"},
    {"name": "b", "unit": 1, "table": "holding", "address": 70, "type": "int16", "scale": 0.1},
    {"name": "hot", "unit": 1, "table": "holding", "address": 80, "type": "uint16", "range": [0, 100]},
    {"name": "in", "unit": 1, "table": "input", "address": 3, "type": "uint32"},
    {"name": "c0", "unit": 1, "table": "coil", "address": 1, "type": "bool"},
    {"name": "c1", "unit": 1, "table": "coil", "address": 40, "type": "bool"},
    {"name": "u2", "unit": 2, "table": "holding", "address": 10, "type": "uint16"},
    {"name": "short", "unit": 3, "table": "holding", "address": 0, "type": "float32"},
]


async def fill(srv: ModbusTestServer) -> None:
    await srv.set_registers(1, 0, codec.encode(2.5, codec.DataType.FLOAT32, "ABCD"))
    await srv.set_registers(1, 2, [0x7FC0, 0x0000])  # NaN
    await srv.set_registers(1, 70, [65535 - 41])  # -42 -> -4.2
    await srv.set_registers(1, 80, [150])  # out of its range
    await srv.set_registers(1, 3, codec.encode(70000, codec.DataType.UINT32), table="input")
    await srv.set_bits(1, 40, [True])
    await srv.set_registers(2, 10, [7])


def sync_decode(drv: ModbusDriver) -> None:
    """The reference: each reply decoded as it comes, before the next request is sent."""

    def decode_now(out: list[Sample], table: Any, req: Any, data: Sequence[int] | Sequence[bool]) -> None:
        out.extend(drv._decode(table, req, data))

    drv._decode_later = decode_now  # type: ignore[method-assign]


async def polls(deferred: bool, n: int = 3) -> list[list[tuple[Any, ...]]]:
    async with ModbusTestServer(units=[1, 2, 3], holes=[(50, 60)]) as srv:
        await fill(srv)
        srv.faults.short_reply_units.add(3)
        ticks = itertools.count()
        drv = ModbusDriver(
            device(srv.port, TAGS, units=[1, 2, 3], hole_fill_gap=30),
            clock=lambda: float(next(ticks)),  # the same calls, the same stamps
        )
        if not deferred:
            sync_decode(drv)
        out = []
        async with drv:
            for _ in range(n):
                samples = await drv.poll(1e12)
                # a BAD sample of a failed request is stamped by time.monotonic, not the clock
                out.append(
                    [(s.tag, s.value, s.quality, s.mono if s.quality.is_good else None) for s in samples]
                )
        assert not drv._pending
    return out


async def test_deferred_decoding_gives_the_samples_of_decoding_at_once() -> None:
    deferred, at_once = await polls(True), await polls(False)
    assert deferred == at_once
    first = {row[0]: row for row in deferred[0]}
    assert set(first) == {t["name"] for t in TAGS}
    assert first["a"][1] == 2.5 and first["a"][2].is_good
    assert first["b"][1] == pytest.approx(-4.2) and first["in"][1] == 70000
    assert first["c1"][1] is True and first["u2"][1] == 7
    assert not first["nan"][2].is_good and not first["hot"][2].is_good
    assert "illegal data address" in first["hole"][2].reason
    assert "short reply" in first["short"][2].reason


async def test_a_reply_is_decoded_after_the_next_request_left(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    decode = modbus_driver._Columns.decode

    def spy(self: Any, data: Any, received_at: Any, mono: float) -> list[Sample]:
        events.append("decode")
        return decode(self, data, received_at, mono)

    monkeypatch.setattr(modbus_driver._Columns, "decode", spy)
    async with ModbusTestServer(units=[1, 2]) as srv:
        await fill(srv)
        tags = [t for t in TAGS if t["unit"] == 1 and t["name"] != "hole"]
        async with ModbusDriver(device(srv.port, tags, hole_fill_gap=0)) as drv:
            send = drv._client.ctx.pdu_send

            def sent(*args: Any, **kwargs: Any) -> Any:
                events.append("send")
                return send(*args, **kwargs)

            drv._client.ctx.pdu_send = sent
            samples = await drv.poll(1e12)
    assert len(samples) == len(tags)
    n = events.count("send")
    assert n >= 4 and events.count("decode") == n  # one decoding per reply
    # the first reply is decoded once the second request left, and so on; the last at the end
    assert events == ["send", "send"] + ["decode", "send"] * (n - 2) + ["decode", "decode"]


async def test_a_decoding_bug_is_raised_by_the_poll_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, data: Any, received_at: Any, mono: float) -> list[Sample]:
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(modbus_driver._Columns, "decode", broken)
    async with ModbusTestServer(units=[1]) as srv:
        tags = [TAGS[0], TAGS[3]]  # two requests: the first reply decoded in the send path
        async with ModbusDriver(device(srv.port, tags, hole_fill_gap=0)) as drv:
            with pytest.raises(RuntimeError, match="decoder bug"):
                await drv.poll(1e12)
            assert not drv._pending


# ---------------------------------------------------------------- the request deadline
# One timer enforces every request's timeout (ModbusDriver._arm_deadline): it must end each
# request at its own deadline, whether the timer was armed for a later or an earlier one.

SILENT = [
    {"name": "live", "unit": 1, "table": "holding", "address": 0, "type": "uint16"},
    {"name": "silent", "unit": 4, "table": "holding", "address": 0, "type": "uint16"},
]


async def test_a_request_ends_at_its_own_deadline_before_an_armed_later_one() -> None:
    async with (
        ModbusTestServer(units=[1]) as srv,
        ModbusDriver(device(srv.port, SILENT, units=[1, 4], timeout_ms=3000)) as drv,
    ):
        assert (await drv.read("live")).quality.is_good  # arms the timer 3 s ahead
        t0 = time.monotonic()
        got = {s.tag: s for s in await drv.poll(t0 + 0.3)}  # the silent unit: ~0.3 s left
        elapsed = time.monotonic() - t0
    assert "timeout" in got["silent"].quality.reason
    assert elapsed < 1.5, elapsed  # not the 3 s the armed timer was for


async def test_a_request_is_not_ended_by_an_earlier_requests_deadline() -> None:
    async with ModbusTestServer(units=[1]) as srv:
        dev = device(srv.port, SILENT, units=[1, 4], timeout_ms=600, breaker={"failures": 1})
        async with ModbusDriver(dev) as drv:
            await drv.poll(time.monotonic() + 0.1)  # the silent unit times out: its breaker opens
            got = {s.tag: s for s in await drv.poll(time.monotonic() + 0.1)}
            assert got["live"].quality.is_good and "skipped" in got["silent"].quality.reason
            # the timer stays armed for the live unit's request: ~0.1 s
            t0 = time.monotonic()
            late = await drv.read("silent")  # 600 ms, while the timer is armed for ~0.1 s
            elapsed = time.monotonic() - t0
    assert "within 600 ms" in late.quality.reason
    assert elapsed >= 0.55, elapsed


async def test_the_deadline_timer_leaves_with_the_driver() -> None:
    async with ModbusTestServer(units=[1]) as srv:
        async with ModbusDriver(device(srv.port, SILENT[:1], timeout_ms=3000)) as drv:
            assert (await drv.read("live")).quality.is_good
            timer = drv._deadline_timer
            assert timer is not None and not timer.cancelled()
        assert timer.cancelled() and drv._deadline_timer is None


# ---------------------------------------------------------------- writes: checks made once


async def test_a_writes_checks_are_made_once_per_purpose_and_refusals_every_time() -> None:
    from agent.errors import WriteRefused
    from tests.integration.test_modbus_writes import hr, writes

    async with ModbusTestServer(holes=[(50, 60)]) as srv:
        tags = [hr("sp", 10, purpose="setpoint"), hr("w", 20), hr("gone", 55)]
        async with ModbusDriver(device(srv.port, tags)) as drv:
            for _ in range(2):  # the second time from what was checked the first
                with pytest.raises(WriteRefused, match=r"^sp \(40011\) is a setpoint tag"):
                    await drv.write("sp", 7, purpose="display")
                assert await drv.write("sp", 7, purpose="setpoint") == 7
                with pytest.raises(WriteRefused, match=r"^w: .*70000"):
                    await drv.write("w", 70000, purpose="display")  # the value is checked each time
                assert await drv.write("w", 3, purpose="display") == 3
                with pytest.raises(WriteRefused, match=r"^gone \(40056\): the device refused the write"):
                    await drv.write("gone", 1, purpose="display")
            with pytest.raises(WriteRefused, match="unknown tag"):
                await drv.write("nope", 1, purpose="display")
            assert writes(srv) == [(6, 10), (6, 20), (6, 55)] * 2


def test_a_modbus_driver_never_has_a_certificate_warning() -> None:
    # the runtime reads it from every driver every cycle (status word, warnings)
    drv = ModbusDriver(device(1502, SILENT[:1]))
    assert drv.cert_warning is None and "cert_warning" not in vars(drv)
