"""Quality transitions are logged once each, through a real RunningSource over a fake Source
(our seam): the first BAD with its reason, a new cause, "recovered"; a summary per period on
an injected clock; nothing per poll."""

from __future__ import annotations

import asyncio
import itertools
import timeit
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import pytest
import structlog
from structlog.testing import LogCapture, capture_logs

from agent.config import ModbusTcpDevice
from agent.drivers.modbus import ModbusDriver
from agent.running import Backoff, CircuitBreaker, QualityLog, RunningSource, same_cause
from agent.types import Quality, Sample
from tests.modbus_server import ModbusTestServer

G = Quality.good()
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _q(spec: str | None) -> Quality:
    """"" → GOOD, "U:reason" → UNCERTAIN, anything else → BAD with that reason (a new object
    every time, as drivers make them)."""
    if not spec:
        return G
    if spec.startswith("U:"):
        return Quality.uncertain(spec[2:])
    return Quality.bad(spec)


class ScriptedSource:
    """A Source whose every poll returns the next row of a script; each poll also moves the
    summary clock on by ``step_s``. ``done`` is set once the script has been played."""

    name = "plc1"

    def __init__(self, script: list[dict[str, str]], clock: list[float], step_s: float) -> None:
        self.script = script
        self.clock = clock
        self.step_s = step_s
        self.polls = 0
        self.done = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def poll(self, deadline: float) -> Sequence[Sample]:
        if self.polls >= len(self.script):
            self.done.set()
            return []
        row = self.script[self.polls]
        self.polls += 1
        self.clock[0] = self.polls * self.step_s
        structlog.get_logger("test.driver").debug("polled", n=self.polls)
        return [Sample(tag, 1.0, _q(spec), T0, float(self.polls)) for tag, spec in row.items()]


async def _play(source: ScriptedSource, quality: QualityLog) -> tuple[list[dict[str, Any]], list[Sample]]:
    got: list[Sample] = []
    runner = RunningSource(source, 0.005, got.extend, quality=quality)
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(source.done.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert runner.counters.bad_samples == sum(not s.quality.is_good for s in got)
    # the quality log's lines only (a busy machine may add an overrun warning)
    return [e for e in logs if e["event"].startswith(("tag ", "tags "))], got


def _about(logs: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("tag") == tag or tag in e.get("tags", ())]


TIMEOUT = "timeout: no reply from unit 1 within 250 ms"
SKIPPED = "unit 1 not responding (timeout: no reply from unit 1 within 250 ms); skipped until retry"
EXC02 = "exception 02 (illegal data address) from unit 1"


async def test_each_transition_is_logged_once_and_a_summary_per_period() -> None:
    script: list[dict[str, str]] = []
    for k in range(12):
        row = {"A": "", "B": "", "C": "", "D": f"device unreachable (refused); next attempt in {9 - k:.1f} s"}
        if 3 <= k < 10:
            # the driver's two forms of one timeout (asking; breaker open), then another cause
            row["A"] = EXC02 if k >= 7 else (TIMEOUT if k % 2 else SKIPPED)
        if k >= 4:
            row["C"] = "U:UncertainSensorNotAccurate"
        script.append(row)
    clock = [0.0]
    src = ScriptedSource(script, clock, step_s=60.0)  # one poll = one minute on the summary clock
    logs, _ = await _play(src, QualityLog("plc1", summary_every_s=300.0, clock=lambda: clock[0]))

    a = _about(logs, "A")
    assert [(e["event"], e.get("reason"), e["was"]) for e in a] == [
        ("tag BAD", TIMEOUT, "GOOD"),  # then its "skipped" form, the same cause: not logged
        ("tag BAD", EXC02, f"BAD ({TIMEOUT})"),  # a new cause is a transition ...
        ("tag recovered", None, f"BAD ({EXC02})"),  # ... and recovery is logged once
    ]
    assert all(e["device"] == "plc1" for e in a)
    assert a[0]["log_level"] == "warning" and a[2]["log_level"] == "info"
    assert a[2]["after_s"] == 7 * 60.0  # not GOOD from poll 4 to poll 11 (one minute each)
    assert _about(logs, "B") == []
    c = _about(logs, "C")
    assert [(e["event"], e["reason"]) for e in c] == [("tag UNCERTAIN", "UncertainSensorNotAccurate")]
    # BAD from the first poll, its countdown changing every poll: one line
    d = _about(logs, "D")
    assert [(e["event"], e["was"]) for e in d] == [("tag BAD", "no value yet")]
    # the summary: 300 s after the first poll and 300 s after that, not every poll
    summaries = [e for e in logs if e["event"] == "tags not GOOD"]
    assert [(s["count"], s["bad"], s["uncertain"]) for s in summaries] == [(3, 2, 1), (2, 1, 1)]
    assert summaries[0]["first"] == [
        "D: BAD (device unreachable (refused); next attempt in 4.0 s)",  # oldest first, as now
        f"A: BAD ({TIMEOUT})",
        "C: UNCERTAIN (UncertainSensorNotAccurate)",
    ]
    assert summaries[0]["oldest_s"] == 300.0
    assert len(logs) == len(a) + len(c) + len(d) + len(summaries)


async def test_a_lost_device_is_one_line_and_its_return_one_more() -> None:
    tags = [f"T{i:03d}" for i in range(200)]
    down = "device unreachable: connect failed: [Errno 111] Connection refused"
    script = [dict.fromkeys(tags, "")] * 3 + [dict.fromkeys(tags, down)] * 50 + [dict.fromkeys(tags, "")] * 3
    clock = [0.0]
    src = ScriptedSource(script, clock, step_s=0.5)
    logs, got = await _play(src, QualityLog("plc1", summary_every_s=300.0, clock=lambda: clock[0]))
    assert [(e["event"], e["count"], e["tags"]) for e in logs] == [
        ("tags BAD", 200, tags[:10]),
        ("tags recovered", 200, tags[:10]),
    ]
    assert logs[0]["reason"] == down and logs[1]["after_s"] == 25.0
    assert len(got) == 56 * 200


def test_context_per_tag_and_a_summary_only_while_something_is_bad() -> None:
    now = [0.0]
    ql = QualityLog(
        "plc1", summary_every_s=10.0, clock=lambda: now[0], tag_context={"A": {"unit": 3}, "B": {"unit": 3}}
    )
    with capture_logs() as logs:
        ql.observe([Sample("A", 1, _q("x failed"), T0, 0.0), Sample("B", 1, G, T0, 0.0)])
        now[0] = 10.0
        ql.observe([Sample("A", 1, G, T0, 0.0), Sample("B", 1, G, T0, 0.0)])
        now[0] = 15.0
        ql.observe([Sample("A", 1, _q("y failed"), T0, 0.0), Sample("B", 1, _q("y failed"), T0, 0.0)])
    assert [(e["event"], e.get("unit"), e.get("tag")) for e in logs] == [
        ("tag BAD", 3, "A"),
        ("tag recovered", 3, "A"),  # the summary at 10 s found nothing bad: no line
        ("tags BAD", 3, None),  # a group shares the unit of all its tags
    ]
    assert ql.not_good == {"A": Quality.bad("y failed"), "B": Quality.bad("y failed")}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (TIMEOUT, SKIPPED, True),
        (TIMEOUT, TIMEOUT.replace("250", "180"), True),  # the time left in the cycle
        ("out of range: 105 not in [0, 100]", "out of range: 117.5 not in [0, 100]", True),
        (TIMEOUT, EXC02, False),
        (EXC02, "exception 04 (server device failure) from unit 1", False),
        ("BadCommunicationError", "BadNodeIdUnknown", False),
        ("", "anything", False),
    ],
)
def test_same_cause(a: str, b: str, same: bool) -> None:
    assert same_cause(a, b) is same and same_cause(b, a) is same


def test_breaker_logs_its_context() -> None:
    br = CircuitBreaker(
        "plc1 unit 3", threshold=1, backoff=Backoff(1.0, 1.0, jitter=0.0), context={"device": "plc1", "unit": 3}
    )
    with capture_logs() as logs:
        br.record_failure("timeout")
        br.record_failure("timeout")
        br.record_success()
    assert [(e["event"], e["device"], e["unit"]) for e in logs] == [
        ("lost", "plc1", 3),
        ("recovered", "plc1", 3),
    ]


async def test_everything_logged_while_polling_carries_the_device() -> None:
    cap = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, cap])
    me = asyncio.current_task()
    assert me is not None
    clock = [0.0]
    src = ScriptedSource([{"A": ""}, {"A": "gone"}], clock, step_s=1.0)

    async def stop_when_played() -> None:
        await src.done.wait()
        me.cancel()

    try:
        runner = RunningSource(src, 0.002, lambda s: None, quality=QualityLog("plc1", clock=lambda: clock[0]))
        stopper = asyncio.create_task(stop_when_played())
        with pytest.raises(asyncio.CancelledError):
            await runner.run()  # in this very task: its binding must not outlive the loop
        me.uncancel()
        await stopper
        structlog.get_logger().info("after the loop")
    finally:
        structlog.reset_defaults()
    polled = [e for e in cap.entries if e["event"] == "polled"]
    assert len(polled) == 2 and all(e["device"] == "plc1" for e in polled)  # the driver's own lines
    assert [e.get("device") for e in cap.entries if e["event"] == "after the loop"] == [None]


def _per_tag_cost(ql: QualityLog, polls: list[list[Sample]]) -> float:
    turns = itertools.cycle(polls)
    best = min(timeit.repeat(lambda: ql.observe(next(turns)), number=50, repeat=5))
    return best / 50 / len(polls[0])


def test_the_hot_path_costs_well_under_a_microsecond_per_tag() -> None:
    """A thousand tags a poll, nothing changing: GOOD (the same object every poll), and BAD with
    a new Quality object per tag per poll (as the drivers make them). Minimum of repeats, so a
    busy machine does not make it fail; the bound is 20× what it measures on a gateway."""
    n = 1000
    good = [Sample(f"t{i}", 1.0, G, T0, 0.0) for i in range(n)]
    reason = "timeout: no reply from unit 3 within 250 ms"
    bad = [[Sample(f"t{i}", None, Quality.bad(reason), T0, 0.0) for i in range(n)] for _ in range(2)]
    for polls in ([good, good], bad):
        ql = QualityLog("plc1", summary_every_s=1e9, clock=lambda: 0.0)
        with capture_logs() as logs:
            ql.observe(polls[0])
            best = _per_tag_cost(ql, polls)
        assert len(logs) == (0 if polls[0] is good else 1)
        assert best < 1e-6, f"{best * 1e9:.0f} ns per tag"


async def test_the_modbus_driver_s_reasons_make_one_line_per_cause() -> None:
    """The real driver against a real server: a unit that goes silent (timeouts, then its
    breaker skipping it and probing it, each with its own text), comes back, then the whole
    device going away (reconnect attempts with a countdown in the reason). Every poll has a
    reason; the log has a line per change of cause."""
    seen: list[dict[str, str]] = []

    def sink(samples: Sequence[Sample]) -> None:
        seen.append({s.tag: s.quality.reason for s in samples})

    with capture_logs() as logs:
        async with ModbusTestServer(units=[1, 2]) as srv:
            dev = ModbusTcpDevice.model_validate(
                {
                    "name": "plc1",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": srv.port,
                    "units": [1, 2],
                    "timeout_ms": 60,
                    "poll_interval_ms": 100,
                    "breaker": {"failures": 2, "backoff_ms": 150, "backoff_max_ms": 300},
                    "tags": [
                        {"name": "u1", "unit": 1, "table": "holding", "address": 0, "type": "uint16"},
                        {"name": "u2", "unit": 2, "table": "holding", "address": 0, "type": "uint16"},
                    ],
                }
            )
            async with ModbusDriver(dev) as drv:
                runner = RunningSource(drv, 0.1, sink)
                task = asyncio.create_task(runner.run())
                await asyncio.sleep(0.3)
                srv.faults.silent_units.add(2)
                await asyncio.sleep(2.0)
                srv.faults.silent_units.discard(2)
                await asyncio.sleep(0.6)
                await srv.stop()
                await asyncio.sleep(2.0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    lines = [e for e in logs if e["event"].startswith(("tag ", "tags "))]
    u2_reasons = {r["u2"] for r in seen if r.get("u2")}
    assert any("timeout" in r for r in u2_reasons) and any("skipped until retry" in r for r in u2_reasons)
    assert sum("next attempt in" in r.get("u1", "") for r in seen) >= 5  # a countdown, poll after poll
    u2 = [(e["event"], e.get("reason", "")) for e in _about(lines, "u2")]
    assert u2[0][0] == "tag BAD" and "timeout" in u2[0][1]
    assert u2[1][0] == "tag recovered"
    u1 = [(e["event"], e.get("reason", "")) for e in _about(lines, "u1")]
    # the device going away: the connection lost, then refused (another cause) at most
    assert 1 <= len(u1) <= 2 and all(event.endswith("BAD") for event, _ in u1)
    assert 2 <= len(u2) <= 4
    for a, b in itertools.pairwise(u1):
        assert not same_cause(a[1], b[1])
