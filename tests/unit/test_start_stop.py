"""Start/stop through the Guard: property tests with knock-out checks (as test_writeback.py).

A scripted pump behind a PLC's start logic (the request bit runs the motor only while the
remote-start permissive is on; the running feedback follows after a delay, or never when the
start fails), the real start/stop unit and Guard, and the real audit log (SQLite) on simulated
time. Whatever the script (recommendations, permissives, failed starts, restarts of the
agent), the pump as the PLC saw it must never be:

* started by the agent while the remote-start permissive or the station permissive was off;
* started more than ``max_starts_per_hour`` times in any hour (across agent restarts);
* stopped by the agent before ``min_run_s`` of running, or started again within ``min_stop_s``;
* sent a new request while the last one waits for its confirmation;
* sent a request that is not in the audit log first.

Each guard is shown needed: with it removed, a named script breaks an invariant.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.pipeline.guard as guard_mod
from agent.configbase import Purpose
from agent.ops.audit import AuditConfig, AuditLog
from agent.pipeline.guard import Guard, GuardConfig, StartStopTarget
from agent.types import Quality, Recommendation, Sample, Value
from agent.writeback import StartStopUnit

EPOCH = datetime(2026, 1, 5, tzinfo=UTC)
REQ, RUN, REMOTE, PERM = "Pump1.StartRequest", "Pump1.Running", "Pump1.RemoteStart", "Station.Permissive"


_RUNS = itertools.count()


class Violation(AssertionError):
    pass


@dataclass
class Step:
    dt: float = 30.0
    rec: int | None = 1
    remote: bool = True
    perm: bool = True
    fail_start: bool = False
    restart: bool = False


@dataclass
class Plc:
    """The PLC's start logic and the motor: feedback follows the request after ``delay_s``."""

    request: bool = False
    remote: bool = True
    perm: bool = True
    running: bool = False
    fail: bool = False
    delay_s: float = 4.0
    changed_at: float = -1e9
    started: list[float] = field(default_factory=list)
    stopped: list[float] = field(default_factory=list)
    writes: list[tuple[float, bool]] = field(default_factory=list)

    def advance(self, t: float) -> None:
        if not self.remote or (self.fail and self.request and not self.running):
            # out of remote, or failing to start (a latched fault), the PLC drops the request:
            # the pump never starts later on its own; a start needs a new request
            self.request = False
        want = self.request and self.remote and not self.fail
        if want != self.running and t - self.changed_at >= self.delay_s:
            self.running = want
            (self.started if want else self.stopped).append(t)


class Sink:
    def __init__(self, h: Harness) -> None:
        self.h = h

    async def write(self, tag_name: str, value: Value, *, purpose: Purpose) -> Value:
        h = self.h
        assert tag_name == REQ and purpose == "command"
        v = bool(value)
        if v and not h.plc.running and not (h.plc.remote and h.plc.perm):
            raise Violation(f"t={h.t}: start requested while remote start or permissive is off")
        # pending: the feedback has not matched the last request since it was sent (a pump that
        # ran as asked and tripped afterwards confirmed it: a new start then is no second request)
        pending = h.last_write is not None and not h.confirmed
        if pending and h.last_write is not None and h.t - h.last_write[0] <= h.target.confirm_timeout_s:
            raise Violation(f"t={h.t}: a new request while the last one waits for confirmation")
        if not v and h.plc.running and h.plc.started and h.t - h.plc.started[-1] < h.target.min_run_s:
            raise Violation(
                f"t={h.t}: stopped after {h.t - h.plc.started[-1]:g} s (min run {h.target.min_run_s:g})"
            )
        if v and not h.plc.running and h.plc.stopped and h.t - h.plc.stopped[-1] < h.target.min_stop_s:
            raise Violation(f"t={h.t}: started {h.t - h.plc.stopped[-1]:g} s after a stop")
        audited = [r for r in h.audit.query(kinds=["event"]) if r.action == "start_stop_request"]
        if not audited or audited[-1].detail.get("value") is not v or audited[-1].mono != h.t:
            raise Violation(f"t={h.t}: request {v} sent without its audit record first")
        h.plc.request = v
        h.plc.changed_at = h.t
        h.last_write = (h.t, v)
        h.confirmed = h.plc.running == v
        h.plc.writes.append((h.t, v))
        return v

    async def read(self, tag_name: str) -> Sample:
        return self.h.sample(tag_name, self.h.plc.request)


class Table:
    def __init__(self, h: Harness) -> None:
        self.h = h

    def get(self, tag: str, now: float | None = None) -> Sample:
        p = self.h.plc
        value = {RUN: p.running, REMOTE: p.remote, PERM: p.perm, REQ: p.request}[tag]
        return self.h.sample(tag, value)

    def update(self, samples: Any) -> None:
        pass


class Harness:
    def __init__(self, target: StartStopTarget, audit_path: Path) -> None:
        self.target = target
        self.t = 0.0
        self.plc = Plc()
        self.last_write: tuple[float, bool] | None = None
        self.confirmed = True  # the running feedback has matched the last request since it was sent
        self.guard = Guard(
            GuardConfig(
                writes_enabled=True, mode="auto", permissive_tag=PERM, allow_list=[REQ], start_stop=[target]
            )
        )
        self.audit = AuditLog(AuditConfig(path=audit_path), clock=self.utc, monotonic=lambda: self.t)
        self.audit.open()
        self.unit = self.new_unit()

    def utc(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)

    def new_unit(self) -> StartStopUnit:
        return StartStopUnit(self.guard, {REQ: Sink(self)}, self.audit, clock_utc=self.utc)

    def sample(self, tag: str, value: bool) -> Sample:
        return Sample(tag, value, Quality.good(), self.utc(), self.t)

    async def step(self, s: Step) -> None:
        self.t += s.dt
        self.plc.remote, self.plc.perm, self.plc.fail = s.remote, s.perm, s.fail_start
        self.advance()
        if s.restart:
            self.unit = self.new_unit()
        recs = {}
        if s.rec is not None:
            recs[REQ] = Recommendation(REQ, float(s.rec), "test", "test", self.t, self.t + 10)
        await self.unit.step(recs, Table(self), self.t)
        self.advance()

    def advance(self) -> None:
        self.plc.advance(self.t)
        if self.last_write is not None and self.plc.running == self.last_write[1]:
            self.confirmed = True

    def check_starts(self) -> None:
        starts = self.plc.started
        for i, s in enumerate(starts):
            within = [x for x in starts[i:] if x < s + 3600.0]
            if len(within) > self.target.max_starts_per_hour:
                raise Violation(f"{len(within)} starts within an hour from t={s}")


def make_target(**kw: Any) -> StartStopTarget:
    base: dict[str, Any] = dict(
        tag=REQ,
        asset="pump1",
        running_tag=RUN,
        remote_start_tag=REMOTE,
        confirm_timeout_s=15.0,
        min_run_s=600.0,
        min_stop_s=300.0,
        max_starts_per_hour=3,
        max_input_age_s=5.0,
    )
    return StartStopTarget(**(base | kw))


def run(script: list[Step], tmp: Path, target: StartStopTarget | None = None) -> Harness:
    h = Harness(target or make_target(), tmp / f"audit-{next(_RUNS)}.sqlite")

    async def go() -> None:
        for s in script:
            await h.step(s)
            h.check_starts()

    try:
        asyncio.run(go())
    finally:
        h.audit.close()
    return h


def cycles(n: int, run_s: float, stop_s: float, dt: float = 5.0, **kw: Any) -> list[Step]:
    """Ask for ``n`` start/stop cycles of ``run_s`` running and ``stop_s`` stopped."""
    out: list[Step] = []
    for _ in range(n):
        out += [Step(dt=dt, rec=1, **kw) for _ in range(int(run_s / dt))]
        out += [Step(dt=dt, rec=0, **kw) for _ in range(int(stop_s / dt))]
    return out


# --------------------------------------------------------------------------- the basics


def test_start_confirm_run_and_stop_after_the_minimum_run_time(tmp_path: Path) -> None:
    h = run([Step(dt=5.0, rec=1)] * 70 + [Step(dt=5.0, rec=0)] * 200, tmp_path)
    # found stopped, its rest counts from then (its stop time is unknown): started after 300 s
    assert len(h.plc.started) == 1 and 305.0 <= h.plc.started[0] <= 315.0 and len(h.plc.stopped) == 1
    assert h.plc.stopped[0] >= h.plc.started[0] + 600.0  # not before its minimum run time
    kinds = [r.action for r in h.audit.query(kinds=["event"])]
    assert kinds.count("start_stop_request") == 2 and kinds.count("start_stop_confirmed") == 2


def test_a_pump_that_tripped_after_a_confirmed_start_may_be_started_again(tmp_path: Path) -> None:
    """Found by the property below: the start at t=7 is confirmed at t=12, the motor trips at
    t=13 (the PLC drops the request), and at t=14 a new start is a new request, not a second
    one in flight. Without rests (FAST) the unit asks again at once; the hour's limit holds."""
    script = [Step(dt=1.0, rec=0)] * 6 + [
        Step(dt=1.0, rec=1),
        Step(dt=5.0, rec=1),
        Step(dt=1.0, rec=0, fail_start=True),
        Step(dt=1.0, rec=1),
    ]
    h = run(script, tmp_path, make_target(**FAST))
    assert h.plc.started == [12.0] and h.plc.stopped == [13.0]
    assert h.plc.writes == [(7.0, True), (14.0, True)]


def test_a_start_the_feedback_never_confirms_holds_the_pump(tmp_path: Path) -> None:
    h = run([Step(dt=5.0, rec=1, fail_start=True)] * 400, tmp_path)
    # failed attempts count as starts: no more than the hour allows, none in flight at once
    assert h.plc.started == [] and len(h.plc.writes) == h.target.max_starts_per_hour
    assert "start_stop_unconfirmed" in [r.action for r in h.audit.query(kinds=["event"])]


def test_config_refuses_the_running_feedback_as_the_request_tag() -> None:
    with pytest.raises(ValueError, match="running feedback"):
        make_target(tag=RUN)
    with pytest.raises(ValueError, match="not on allow_list"):
        GuardConfig(
            writes_enabled=True, mode="auto", permissive_tag=PERM, allow_list=[], start_stop=[make_target()]
        )
    with pytest.raises(ValueError, match="must not be on allow_list"):
        GuardConfig(mode="auto", permissive_tag=PERM, allow_list=[REQ, RUN], start_stop=[make_target()])


# --------------------------------------------------------------------------- knock-outs

FAST = dict(min_run_s=0.0, min_stop_s=0.0, max_starts_per_hour=3)
# found stopped, a pump rests min_stop_s from then: scripts with the default rest start with it
REST = [Step(dt=1.0, rec=0), Step(dt=310.0, rec=0)]


def _ko_starts(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(guard_mod, "starts_in_last_hour", lambda starts, now: 0)


def _ko_audit_history(mp: pytest.MonkeyPatch) -> None:
    # what counting in memory would do: every restart forgets the starts before it
    real = StartStopUnit.history

    def history(self: StartStopUnit, tag: str, now_utc: datetime) -> Any:
        starts, started, stopped = real(self, tag, now_utc)
        born = getattr(self, "_born", None) or now_utc
        self._born = born  # type: ignore[attr-defined]
        return tuple(s for s in starts if s >= born.timestamp()), started, stopped

    mp.setattr(StartStopUnit, "history", history)


def _ko_min_run(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(guard_mod, "_stop_holds", lambda t, inputs: [])


def _ko_start_holds(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(guard_mod, "_start_holds", lambda t, inputs: [])


def _ko_permissive(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(guard_mod, "permissive_on", lambda sample, tag, age, now: None)


def _ko_pending(mp: pytest.MonkeyPatch) -> None:
    real = guard_mod.Guard.decide_start_stop

    def decide(self: Guard, target: str, inputs: Any) -> Any:
        from dataclasses import replace

        return real(self, target, replace(inputs, pending_since=None))

    mp.setattr(guard_mod.Guard, "decide_start_stop", decide)


GUARDS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], list[Step], dict[str, Any]]] = {
    "starts per hour": (_ko_starts, cycles(5, 30, 30), FAST),
    "counted from the audit log": (
        _ko_audit_history,
        [s for k in range(5) for s in [Step(dt=5.0, rec=1, restart=True), *cycles(1, 30, 30)[1:]]],
        FAST,
    ),
    "minimum run time": (_ko_min_run, REST + cycles(1, 60, 60), {}),
    "minimum stop time": (_ko_start_holds, REST + cycles(2, 700, 30), {}),
    "remote-start permissive": (_ko_start_holds, REST + [Step(dt=5.0, rec=1, remote=False)] * 3, {}),
    "station permissive": (_ko_permissive, REST + [Step(dt=5.0, rec=1, perm=False)] * 3, {}),
    "confirmation pending": (_ko_pending, [Step(dt=1.0, rec=1), Step(dt=1.0, rec=0)] * 5, FAST),
}


def _outcome(script: list[Step], kw: dict[str, Any], tmp: Path) -> str:
    try:
        run(script, tmp, make_target(**kw))
    except Violation as exc:
        return f"violation: {exc}"
    return "safe"


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_each_start_stop_guard_is_needed(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    knock_out, script, kw = GUARDS[name]
    assert _outcome(script, kw, tmp_path) == "safe", f"{name}: the intact unit must pass this script"
    knock_out(monkeypatch)
    assert _outcome(script, kw, tmp_path).startswith("violation"), (
        f"{name}: removing it must break an invariant"
    )


# --------------------------------------------------------------------------- the property

STEPS = st.builds(
    Step,
    dt=st.sampled_from([1.0, 5.0, 30.0, 120.0]),
    rec=st.sampled_from([0, 1, 1, None]),
    remote=st.integers(0, 7).map(lambda i: i != 3),
    perm=st.integers(0, 7).map(lambda i: i != 3),
    fail_start=st.integers(0, 11).map(lambda i: i == 5),
    restart=st.integers(0, 11).map(lambda i: i == 5),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    script=st.lists(STEPS, min_size=1, max_size=40),
    fast=st.booleans(),
)
def test_no_sequence_starts_or_stops_the_pump_unsafely(
    script: list[Step], fast: bool, tmp_path: Path
) -> None:
    target = make_target(**(FAST if fast else {}))
    h = run(script, tmp_path, target)  # raises Violation on any unsafe move
    assert len(h.plc.writes) <= len([s for s in script if s.rec is not None])


def test_the_property_starts_pumps(tmp_path: Path) -> None:
    """Against a vacuous property: its scripts start and stop the pump."""
    starts = stops = 0

    @settings(max_examples=40, deadline=None, database=None)
    @given(script=st.lists(STEPS, min_size=20, max_size=60))
    def go(script: list[Step]) -> None:
        nonlocal starts, stops
        h = run(script, tmp_path, make_target(**FAST))
        starts += len(h.plc.started)
        stops += len(h.plc.stopped)

    go()
    assert starts > 20 and stops > 10
