"""Fault scenarios: the Modbus driver against real servers, through the fault proxy.

Each scenario asserts that the driver keeps polling, that every sample is GOOD with a value
the server held or BAD with a reason, that data resumes within the backoff cap once the fault
is gone, and (autouse fixtures) that no task, thread or file descriptor leaks and that no
traceback reaches the log or stderr.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.drivers import modbus_codec as codec
from agent.drivers.modbus import ModbusDriver
from tests.faults.conftest import AgentLog
from tests.faults.harness import (
    FAILURES,
    RESUME_S,
    TIMEOUT_MS,
    Poller,
    bad,
    device,
    good,
)
from tests.faults.proxy import Fault, FaultProxy
from tests.modbus_server import ModbusTestServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def holding(name: str, address: int, unit: int = 1, **kw: Any) -> dict[str, Any]:
    return {"name": name, "unit": unit, "table": "holding", "address": address, "type": "uint16", **kw}


# --------------------------------------------------------------------------- restarts


async def start_server_process(port: int, value: int) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.faults.server_process",
        str(port),
        str(value),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        line = await proc.stdout.readline()
    if not line.startswith(b"ready "):
        await proc.wait()
        raise AssertionError(f"server process exited ({proc.returncode}) instead of serving")
    return proc, int(line.split()[1])


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.kill()
    await proc.communicate()


async def test_server_killed_with_sigkill_and_restarted_20_times(agent_log: AgentLog) -> None:
    proc, port = await start_server_process(0, 100)
    tags = [holding("v", 0, unit=1), holding("w", 0, unit=2)]
    resume: list[float] = []
    stale: list[str] = []
    try:
        async with ModbusDriver(device(port, tags, units=[1, 2])) as drv, Poller(drv) as p:
            for i in range(20):
                value = 100 + i
                t_up = time.monotonic()
                if i:
                    proc, _ = await start_server_process(port, value)

                def fresh(c: dict[str, Any], value: int = value) -> bool:
                    return good(c, "v", "w") and c["v"].value == c["w"].value == value

                resume.append(await p.until(fresh, RESUME_S + 2.0, f"incarnation {i}") - t_up)
                await kill(proc)
                t_down = time.monotonic()
                await p.until(lambda c: bad(c, "v", "w"), 1.0, f"BAD after kill {i}")
                # nothing GOOD once a request could have noticed the kill, until the restart
                stale += [
                    f"{i}: {c['v'].value}" for c in p.since(t_down + TIMEOUT_MS / 1000 + 0.1) if good(c, "v")
                ]
            p.assert_honest({"v": range(100, 120), "w": range(100, 120)})
    finally:
        if proc.returncode is None:
            await kill(proc)
    assert not stale
    # the process start is part of each resume: compare what is left of it with the cap
    assert max(resume) <= RESUME_S + 1.5, resume
    reasons = set(p.reasons("v"))
    assert all(r.startswith(("connection lost", "device unreachable")) for r in reasons), reasons
    assert any(r.startswith("device unreachable") and "next attempt in" in r for r in reasons), reasons
    # the link: "lost" once per kill, "recovered" once per restart; the units never flap
    lost = agent_log.named("lost", "plc (")
    assert len(lost) == 20
    # the cause, not only the failed reconnect after it
    assert all("the device closed the connection" in e["reason"] for e in lost), lost
    assert len(agent_log.named("recovered", "plc (")) == 19
    assert agent_log.named("lost", "plc unit") == []


# --------------------------------------------------------------------------- slow, silent


async def test_replies_later_than_the_timeout(agent_log: AgentLog) -> None:
    async with ModbusTestServer() as srv, FaultProxy(srv.port) as proxy:
        await srv.set_registers(1, 0, [11])
        await srv.set_registers(1, 50, [22])
        tags = [holding("a", 0), holding("b", 50)]  # two requests: a late reply must not cross
        # a cycle long enough for both requests: the late reply to "a" comes while "b" waits
        interval = 0.3
        dev = device(proxy.port, tags, poll_interval_ms=int(interval * 1000))
        async with ModbusDriver(dev) as drv, Poller(drv, interval) as p:
            await p.until(lambda c: good(c, "a", "b"), 2.0, "first data")
            proxy.set(down=Fault(delay_s=TIMEOUT_MS / 1000 * 1.5))
            t_slow = time.monotonic()
            # the breaker opens (logged as lost); whether a poll then finds it open ("not
            # responding") or half-open (a probe that times out) depends on where its backoff ends
            await p.until(lambda c: bad(c, "a", "b") and bool(agent_log.named("lost", "plc unit 1")), 2.0, "lost")
            await asyncio.sleep(1.0)
            slow = p.since(t_slow + 0.3)
            proxy.clear()
            t_back = time.monotonic()
            back = await p.until(lambda c: good(c, "a", "b"), RESUME_S + 0.5, "resumed")
        p.assert_honest({"a": [11], "b": [22]})  # a late reply never became the other tag's value
    assert slow and all(bad(c, "a", "b") for c in slow)
    reasons = set(p.reasons("a") + p.reasons("b"))
    assert any("later than the timeout" in r for r in reasons), reasons
    assert back - t_back <= RESUME_S + interval
    assert len(agent_log.named("lost", "plc unit 1")) == 1
    assert len(agent_log.named("recovered", "plc unit 1")) == 1
    assert agent_log.named("lost", "plc (") == []  # the link itself was fine: never closed
    assert drv.counters.per_unit["link"]["connects"] == 1


async def test_a_half_open_connection_is_closed_and_opened_again(agent_log: AgentLog) -> None:
    async with ModbusTestServer() as srv, FaultProxy(srv.port) as proxy:
        await srv.set_registers(1, 0, [5])
        async with ModbusDriver(device(proxy.port, [holding("v", 0)])) as drv, Poller(drv) as p:
            await p.until(lambda c: good(c, "v"), 2.0, "first data")
            assert proxy.freeze() == 1  # the peer goes silent; nothing closes the socket
            t_frozen = time.monotonic()
            back = await p.until(lambda c: good(c, "v"), 5.0, "data on a new connection")
            assert proxy.accepted == 2 and drv.counters.per_unit["link"]["connects"] == 2
        p.assert_honest({"v": [5]})
    # FAILURES timeouts open the unit's breaker, its first probe closes the silent link
    bound = (FAILURES + 1) * TIMEOUT_MS / 1000 + RESUME_S
    assert back - t_frozen <= bound, back - t_frozen
    reasons = p.reasons("v")
    assert any(
        f"nothing received on the connection for {FAILURES + 1} requests in a row" in r for r in reasons
    )
    events = [(e["event"], e["source"]) for e in agent_log.events if e["event"] in ("lost", "recovered")]
    assert events[0] == ("lost", "plc unit 1")  # the unit's breaker first, then the link
    assert ("lost", f"plc (127.0.0.1:{proxy.port})") in events


async def test_a_half_open_gateway_drops_no_healthy_unit_sooner_than_its_breaker(agent_log: AgentLog) -> None:
    # Unit 1 answers; units 2 and 3 are not behind the gateway (silent) and are probed in the
    # same cycles as unit 1 is asked (a cycle holds three timeouts), so their silent probes
    # count towards the link's silence too.
    interval = 0.4
    async with ModbusTestServer(units=[1]) as srv, FaultProxy(srv.port) as proxy:
        await srv.set_registers(1, 0, [7])
        tags = [holding("live", 0, unit=1), holding("gone2", 0, unit=2), holding("gone3", 0, unit=3)]
        dev = device(
            proxy.port,
            tags,
            units=[1, 2, 3],
            poll_interval_ms=int(interval * 1000),
            breaker={"failures": 3, "backoff_ms": 50, "backoff_max_ms": 100, "jitter": 0},
        )
        async with ModbusDriver(dev) as drv, Poller(drv, interval) as p:
            await asyncio.sleep(4 * interval)
            # silent units are probed, their timeouts never take the gateway's link down
            assert drv.counters.per_unit["link"]["connects"] == 1
            assert drv.counters.per_unit["2"]["requests"] >= 3
            assert all(good(c, "live") for _, c in p.cycles if "live" in c)
            proxy.freeze()
            t_frozen = time.monotonic()
            await p.until(lambda c: good(c, "live"), 12 * interval, "live again on a new connection")
        p.assert_honest({"live": [7]})
    live = [c["live"].quality.reason for c in p.since(t_frozen) if "live" in c]
    # unit 1's own breaker (3 failures) calls it lost before the link is closed under it
    assert [r.startswith("timeout") and "closed" not in r for r in live[:3]] == [True] * 3, live
    order = [e["source"] for e in agent_log.events if e["event"] == "lost"]
    assert order.index("plc unit 1") < order.index(f"plc (127.0.0.1:{proxy.port})"), order


# --------------------------------------------------------------------------- the device answers badly


async def test_exception_storms(agent_log: AgentLog) -> None:
    async with ModbusTestServer() as srv:
        await srv.set_registers(1, 0, [3])
        async with ModbusDriver(device(srv.port, [holding("v", 0)])) as drv, Poller(drv) as p:
            await p.until(lambda c: good(c, "v"), 2.0, "first data")
            for code, name in ((6, "server device busy"), (4, "server device failure")):
                srv.faults.refuse_functions[3] = code
                t0 = time.monotonic()
                await asyncio.sleep(0.5)
                storm = p.since(t0 + 0.1)
                assert storm and all(
                    c["v"].quality.reason == f"exception {code:02X} ({name}) from unit 1" for c in storm
                )
            # the unit answers, if only with exceptions: it is not lost
            assert agent_log.named("lost", "plc unit") == []
            srv.faults.refuse_functions[3] = 11  # gateway: target device failed to respond
            await p.until(lambda c: "not responding (exception 0B" in c["v"].quality.reason, 2.0, "unit lost")
            asked = len(srv.faults.requests)
            await asyncio.sleep(1.0)
            probes = len(srv.faults.requests) - asked
            del srv.faults.refuse_functions[3]
            t_back = time.monotonic()
            back = await p.until(lambda c: good(c, "v"), RESUME_S, "resumed")
        p.assert_honest({"v": [3]})
    assert 3 <= probes <= 12, probes  # probed with backoff (cap 0.2 s), not asked every cycle
    assert back - t_back <= RESUME_S
    assert len(agent_log.named("lost", "plc unit 1")) == 1
    assert len(agent_log.named("recovered", "plc unit 1")) == 1


async def test_replies_from_the_wrong_unit() -> None:
    async with ModbusTestServer(units=[1]) as srv, FaultProxy(srv.port) as proxy:
        await srv.set_registers(1, 0, [8])
        # a 3 s timeout: a wrong unit seen within the 2 s waits below is seen when its reply
        # comes, and a loaded machine does not time out a request now and then
        async with ModbusDriver(device(proxy.port, [holding("v", 0)], timeout_ms=3000)) as drv:
            async with Poller(drv) as p:
                await p.until(lambda c: good(c, "v"), 2.0, "first data")
                srv.faults.wrong_unit[1] = 9  # the server answers as unit 9
                await p.until(lambda c: bad(c, "v"), 2.0, "wrong unit")
                srv.faults.wrong_unit.clear()
                proxy.set(down=Fault(corrupt={6: 0x03}, frames=3))  # the unit id corrupted on the wire
                await asyncio.sleep(0.5)
                t_back = time.monotonic()
                back = await p.until(lambda c: good(c, "v"), RESUME_S, "resumed")
            p.assert_honest({"v": [8]})
    reasons = p.reasons("v")
    assert "reply from the wrong unit: asked 1, got 9" in reasons
    assert "reply from the wrong unit: asked 1, got 2" in reasons
    assert back - t_back <= RESUME_S
    # reported when the reply comes, not at the timeout: the poll grid held (a wrong unit seen
    # only at the timeout would time out every poll of the fault; a loaded machine may let one
    # poll overrun its deadline)
    wrong = [r for r in reasons if r.startswith("reply from the wrong unit")]
    timeouts = [r for r in reasons if r.startswith("timeout")]
    assert len(wrong) >= 2 and len(timeouts) <= 1, reasons


async def test_short_replies(agent_log: AgentLog) -> None:
    async with ModbusTestServer(size=300) as srv:
        srv.faults.table_end[1] = 100
        await srv.set_registers(1, 97, [1, 2, 3])
        tags = [
            holding("a", 97),
            holding("b", 98),
            holding("c", 99),
            holding("past", 100),
            holding("far", 104),
        ]
        dev = device(srv.port, tags, hole_fill_gap=8)
        async with ModbusDriver(dev) as drv, Poller(drv) as p:
            await asyncio.sleep(0.5)
            learning = p.cycles[0][1]
            asked, polled = len(srv.faults.requests), len(p.cycles)
            await asyncio.sleep(0.5)
            # per poll cycle actually run (a busy machine runs fewer or more than 10 in 0.5 s):
            # the reads of a..c, and of the merged span (a..far) that the short reply taught
            after = list(srv.faults.requests[asked:])
            cycles = max(1, len(p.cycles) - polled)
            per_cycle = sum(1 for r in after if r[2:] == (97, 3)) / cycles
            merged = [r for r in after if r[2] == 97 and r[3] > 3]
            # the table grows (a firmware update, a module added): found within the backoff cap
            await srv.set_registers(1, 100, [4, 0, 0, 0, 5])
            del srv.faults.table_end[1]
            t_grown = time.monotonic()
            grown = await p.until(lambda c: good(c, "past", "far"), RESUME_S, "past the old end")
            # a broken server that drops the last register of every reply of several: what does
            # come is GOOD, one tag after another is BAD, and the refusals are asked again
            srv.faults.short_reply_units.add(1)
            t_broken = time.monotonic()
            await asyncio.sleep(1.0)
            srv.faults.short_reply_units.clear()
            t_fixed = time.monotonic()
            fixed = await p.until(lambda c: good(c, "a", "b", "c", "past", "far"), RESUME_S + 0.3, "fixed")
        p.assert_honest({"a": [1], "b": [2], "c": [3], "past": [4], "far": [5]})
    # the learning cycle: the neighbours GOOD at once, only the tags past the end BAD
    assert good(learning, "a", "b", "c") and bad(learning, "past", "far")
    assert all(learning[t].quality.reason.startswith("short reply: ") for t in ("past", "far"))
    # remembered: one read of a..c a cycle (one more may straddle the count), the merged one never
    # again; the tags past the end are only probed, with backoff
    assert per_cycle <= 1.2 and not merged, (per_cycle, merged)
    assert sum(1 for r in after if r[2] >= 100) <= 8, after
    assert grown - t_grown <= RESUME_S and fixed - t_fixed <= RESUME_S + 0.3
    broken = [c[t] for c in p.since(t_broken, t_fixed) for t in ("a", "b", "c", "past", "far") if t in c]
    # each merged read loses its last tag, until each tag is read alone (this server answers
    # a single register whole): the learned splits, one at a time ("past" is read alone from
    # the start when the barrier learned at the old end of the table is still there)
    assert {s.tag for s in broken if not s.quality.is_good} in ({"b", "c", "far"}, {"b", "c", "past", "far"})
    assert all(s.quality.is_good or s.quality.reason.startswith("short reply: ") for s in broken)
    splits = agent_log.named("merged read split")
    assert splits and all(e["reason"].startswith("short reply") for e in splits)


async def test_nan_inf_and_out_of_range_values_are_bad_until_valid() -> None:
    f32 = codec.DataType.FLOAT32

    async def write(values: dict[int, float]) -> None:
        for address, value in values.items():
            # the codec refuses to encode what is not finite: the bit patterns, then
            special = {"nan": [0x7FC0, 0], "inf": [0x7F80, 0], "-inf": [0xFF80, 0]}.get(str(value))
            await srv.set_registers(1, address, special or codec.encode(value, f32, "ABCD"))

    tags = [
        {"name": f"f{a}", "table": "holding", "address": a, "type": "float32", "range": [-100, 100]}
        for a in (0, 2, 4, 6)
    ]
    async with ModbusTestServer() as srv:
        await write({0: math.nan, 2: math.inf, 4: -math.inf, 6: 1e6})
        async with ModbusDriver(device(srv.port, tags)) as drv, Poller(drv) as p:
            await p.until(lambda c: bad(c, "f0", "f2", "f4", "f6"), 1.0, "all bad")
            await write({0: 1.5, 2: -2.5, 4: 99.0, 6: -100.0})
            t_valid = time.monotonic()
            valid = await p.until(lambda c: good(c, "f0", "f2", "f4", "f6"), 1.0, "all valid")
        p.assert_honest({"f0": [1.5], "f2": [-2.5], "f4": [99.0], "f6": [-100.0]})
    first = p.cycles[0][1]
    assert first["f0"].quality.reason == "not finite: nan" and first["f0"].value is None
    assert first["f2"].quality.reason == "not finite: inf"
    assert first["f4"].quality.reason == "not finite: -inf"
    assert first["f6"].quality.reason == "out of range: 1e+06 not in [-100, 100]"
    assert valid - t_valid <= 0.2  # the next cycle


# --------------------------------------------------------------------------- the wire is bad


# (direction, what): offset in the frame → XOR mask. The request's header (up) and the
# reply's header and PDU framing (down); a request's address or count altered on the wire is
# a valid request for something else, which no Modbus TCP client can tell.
CORRUPTIONS = {
    ("down", "transaction id"): {0: 0x40},
    ("down", "transaction id, low byte"): {1: 0x01},
    ("down", "protocol id"): {2: 0x01},
    ("down", "length, larger"): {5: 0x10},
    ("down", "length, smaller"): {5: 0x04},
    ("down", "length, impossible"): {4: 0xFF},
    ("down", "unit id"): {6: 0x02},
    ("down", "function code"): {7: 0x80},
    ("down", "function code, another"): {7: 0x07},
    ("down", "byte count"): {8: 0x02},
    ("up", "transaction id"): {0: 0x40},
    ("up", "protocol id"): {3: 0x01},
    ("up", "length, larger"): {5: 0x10},
    ("up", "length, smaller"): {5: 0x04},
    ("up", "unit id"): {6: 0x02},
}


async def test_corrupted_header_bytes_give_bad_samples_with_a_reason_never_a_traceback(
    agent_log: AgentLog,
) -> None:
    async with ModbusTestServer() as srv, FaultProxy(srv.port) as proxy:
        await srv.set_registers(1, 0, [4, 2])
        tags = [holding("a", 0), holding("b", 1)]
        reasons: dict[str, str] = {}
        async with ModbusDriver(device(proxy.port, tags)) as drv, Poller(drv) as p:
            await p.until(lambda c: good(c, "a", "b"), 2.0, "first data")
            for (direction, what), corrupt in CORRUPTIONS.items():
                name = f"{what} ({direction})"
                proxy.set(**{direction: Fault(corrupt=corrupt, frames=1)})
                t0 = time.monotonic()
                await p.until(lambda c: bad(c, "a", "b"), 2.0, f"{name} noticed")
                reasons[name] = next(c["a"].quality.reason for c in p.since(t0) if bad(c, "a"))
                await p.until(lambda c: good(c, "a", "b"), RESUME_S, f"{name} recovered")
        p.assert_honest({"a": [4], "b": [2]})
    assert all(reasons.values()), reasons
    assert not [r for r in reasons.values() if "Modbus Error" in r or "Traceback" in r], reasons
    assert reasons["protocol id (down)"].startswith("corrupt reply from unit 1: protocol id 256")
    assert reasons["byte count (down)"].startswith("corrupt reply from unit 1: byte count 6")
    assert reasons["function code, another (down)"].startswith("corrupt reply from unit 1: function code 4")
    assert reasons["length, larger (down)"].startswith("incomplete reply from unit 1")
    assert reasons["unit id (down)"] == "reply from the wrong unit: asked 1, got 3"
    assert "later than the timeout, or a corrupt header" in reasons["transaction id (down)"]


async def test_truncated_dropped_and_cut_replies(agent_log: AgentLog) -> None:
    async with ModbusTestServer() as srv, FaultProxy(srv.port) as proxy:
        await srv.set_registers(1, 0, [6])
        async with ModbusDriver(device(proxy.port, [holding("v", 0)])) as drv, Poller(drv) as p:
            await p.until(lambda c: good(c, "v"), 2.0, "first data")
            expected = {
                "truncate": (
                    Fault(truncate=9, frames=1),
                    "incomplete reply from unit 1: 2 bytes of the frame missing",
                ),
                "drop": (Fault(drop=True, frames=1), "timeout: no reply from unit 1 within"),
                "cut": (Fault(cut=True, frames=1), "connection lost: "),
            }
            got: dict[str, str] = {}
            for what, (fault, _) in expected.items():
                proxy.set(down=fault)
                t0 = time.monotonic()
                await p.until(lambda c: bad(c, "v"), 2.0, what)
                got[what] = next(c["v"].quality.reason for c in p.since(t0) if bad(c, "v"))
                t_back = time.monotonic()
                back = await p.until(lambda c: good(c, "v"), RESUME_S, f"{what} recovered")
                assert back - t_back <= RESUME_S
            assert proxy.accepted == 2  # reconnected after the cut, not otherwise
            # a reset between two polls, as a crashed middlebox sends: the next poll connects
            assert proxy.cut(reset=True) == 1
            t_reset = time.monotonic()
            await p.until(lambda c: good(c, "v") and proxy.accepted == 3, RESUME_S, "reset recovered")
            after_reset = p.since(t_reset)
        p.assert_honest({"v": [6]})
    for what, (_, prefix) in expected.items():
        assert got[what].startswith(prefix), (what, got[what])
    assert all(not c["v"].quality.is_good for c in after_reset[:-1])  # nothing stale in between


async def test_a_port_that_is_not_modbus_is_named_once_then_found_when_it_is(agent_log: AgentLog) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    web = await asyncio.start_server(http, "127.0.0.1", 0)
    try:
        async with ModbusTestServer() as srv, FaultProxy(web.sockets[0].getsockname()[1]) as proxy:
            await srv.set_registers(1, 0, [9])
            async with ModbusDriver(device(proxy.port, [holding("v", 0)])) as drv, Poller(drv) as p:
                await asyncio.sleep(1.5)
                web_connections = proxy.accepted
                proxy.target = ("127.0.0.1", srv.port)  # the Modbus server is there now
                t_back = time.monotonic()
                back = await p.until(lambda c: good(c, "v"), RESUME_S, "Modbus at last")
            p.assert_honest({"v": [9]})
    finally:
        web.close()
        await web.wait_closed()
    assert all(
        r.startswith(("not a Modbus TCP server", "device unreachable (not a Modbus")) for r in p.reasons("v")
    )
    assert 3 <= web_connections <= 9, web_connections  # backoff 0.05 .. 0.2 s, not every cycle
    assert back - t_back <= RESUME_S
    link = f"plc (127.0.0.1:{proxy.port})"
    assert [e["event"] for e in agent_log.events if e.get("source") == link] == ["lost", "recovered"]
    assert agent_log.named("lost")[0]["reason"].startswith("not a Modbus TCP server: ")
