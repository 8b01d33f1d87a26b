"""The write-back unit: the one path from a recommendation to a PLC setpoint.

Per target, every cycle::

    origin (what the PLC verifiably holds) ─▶ Guard.decide (pure) ─▶ audit (committed)
        ─▶ recheck at the moment of sending (TTL, permissive, inputs, stopping, audit)
        ─▶ send ─▶ verify (the read issued after the write's reply) ─▶ tag table

**The origin** of the rate limit is never a bare poll or subscription sample (a reply that
lands between the start of a cycle and the send, or an OPC UA keep-alive that re-stamps an
unchanged value, would pass the pre-write value off as the post-write one). It is the last
value the PLC verifiably holds: the read-back of the last verified write, or, where the PLC or
the operator moved the setpoint, two reads at least half a poll interval apart that agree within
the register's resolution. A read that jumps away from the origin is a *candidate*: the target
holds ("read-back unconfirmed") until a second read confirms it or a read agrees with the origin
again, and after ``settle_polls`` reads without agreement it holds as "not settled" (on the HMI
status and in the audit, never silently). One corrupted reply therefore never becomes the
origin of the next step.

**Another writer** (an operator on the HMI, the PLC's own logic, or a link that consistently
corrupts the value, which no reader can tell apart) moving the setpoint away from the value the
agent last verified, while the agent had control all along (the permissive read GOOD and on in
every cycle since), makes the target hold ("moved by another writer"), as an APC controller
sheds control on an operator's change: the agent never continues from a value it did not put
there while it believed it was in charge. The operator hands control back by cycling the
permissive; a read that returns to the verified value ends the hold by itself. A change while
the permissive was off or unknown (the PLC's setpoint tracking, a bumpless restart) is the new
origin as before. A spell in which the agent could not *see* the permissive (a dead link) is not
proof that it lost control: once the permissive reads on again and the PLC still holds the value
the agent last verified, that value is the agent's again (re-anchored), so a link that starts to
lie after the spell is caught as another writer too. Only a PLC that moved the setpoint during
the spell leaves the agent without an anchor until its next verified write (a consistent lie in
that window is the PLC's tracking to any reader).

**Writes that did not verify** count: a write whose reply never came (``WriteUnconfirmed``) or
whose read-back failed (``ReadBackFailed``) is *possibly applied*: its value joins
``also_possible`` (the next step is limited from it as well as from the origin), and the next
decision waits for a fresh explicit read. Every write, verified or not, restarts the rate credit
at its reply (or failure).

**Rate credit across restarts** runs from the later of process start and the last audited send
of the same boot (the decision rows carry the kernel's boot id; ``time.monotonic()`` compares
only within one boot), so a crash loop under ``Restart=on-failure`` earns no fresh allowance;
that last audited value counts as possibly applied (a kill may have hidden its outcome). An
audit log that cannot be read gives zero credit at start, not a permanent hold.

**Audit**: every decision that changes something is committed before the write is sent (its
row carries the origin, the credit start, the step allowed and the boot id); the outcome
(verified, mismatch, timed_out, unverified, refused, failed, not_sent) follows as its own row
with the value sent and read back. Holds are de-duplicated by reason code; a hold whose insert
failed is offered again on the next cycle, which is also how a recovered audit log is noticed.

Not thread-safe: one owner (the agent's cycle task) calls :meth:`WriteBack.step`.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from agent.config import AnyTag, ModbusTag
from agent.configbase import Purpose
from agent.drivers.modbus_codec import DataType
from agent.errors import AuditError, DriverError, ReadBackFailed, WriteRefused, WriteUnconfirmed
from agent.pipeline.guard import (
    Guard,
    GuardDecision,
    GuardInputs,
    HoldTracker,
    Reason,
    SetpointTarget,
    StartStopInputs,
    max_step,
    permissive_on,
)
from agent.pipeline.quantize import CONTINUOUS, Grid
from agent.types import Action, Decision, Quality, Recommendation, Sample, Value, utcnow

__all__ = [
    "START_STOP_CONFIRMED",
    "DecisionLog",
    "Outcome",
    "SetpointSink",
    "StartStopLog",
    "StartStopUnit",
    "TableView",
    "WriteBack",
    "WriteInputs",
    "grid_for",
]

log = structlog.get_logger("agent.writeback")

_BACKOFF_FIRST_S = 5.0
_BACKOFF_MAX_S = 300.0


class SetpointSink(Protocol):
    """What the write-back unit needs of a driver (``ModbusDriver``, ``OpcUaDriver``)."""

    async def write(self, tag_name: str, value: Value, *, purpose: Purpose) -> Value:
        """Write, then read back with a read issued after the write's reply; return that value.
        Raises WriteRefused (not applied), WriteUnconfirmed (possibly applied), ReadBackFailed
        (applied, not verified) or another DriverError."""
        ...

    async def read(self, tag_name: str) -> Sample:
        """One explicit read issued now (BAD with a reason on failure)."""
        ...


class DecisionLog(Protocol):
    """What the write-back unit needs of the audit log (:class:`agent.ops.audit.AuditLog`)."""

    @property
    def healthy(self) -> bool: ...

    def record_decision(
        self,
        decision: Decision,
        *,
        target: str,
        tag: str | None = None,
        qualities: Mapping[str, Quality] | None = None,
        mono: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int: ...

    def record_outcome(
        self,
        outcome: str,
        *,
        target: str,
        tag: str,
        sent: float | None,
        read_back: Value = None,
        decision_id: int | None = None,
        message: str = "",
        mono: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int: ...

    def last_sends(self, boot_id: str) -> dict[str, tuple[float, float | None]]: ...


class TableView(Protocol):
    """The tag table as the write-back unit uses it."""

    def get(self, tag: str, now: float | None = None) -> Sample: ...

    def update(self, samples: Sequence[Sample]) -> None: ...


class Outcome(enum.StrEnum):
    """What became of a write (the ``action`` of an audit ``outcome`` row)."""

    VERIFIED = "verified"
    MISMATCH = "mismatch"
    TIMED_OUT = "timed_out"  # no reply: possibly applied
    UNVERIFIED = "unverified"  # acknowledged, read-back failed: applied, not verified
    REFUSED = "refused"  # the device or the driver refused it: not applied
    FAILED = "failed"  # another driver error: treated as possibly applied
    NOT_SENT = "not_sent"  # the recheck at the moment of sending stopped it


@dataclass(frozen=True, slots=True)
class WriteInputs:
    """What the recommender stage hands the write-back unit each cycle."""

    recommendations: Mapping[str, Recommendation]
    """By target (setpoint tag)."""
    qualities: Mapping[str, Quality]
    """Tag → quality of every input the recommendations used (re-read at the send)."""
    inputs_mono: float | None
    model_healthy: bool


@dataclass
class _State:
    cfg: SetpointTarget
    grid: Grid
    gap_s: float  # two reads confirm a value only this far apart (half a poll interval)
    credit_from: float
    origin: float | None = None
    origin_mono: float = -math.inf
    candidate: tuple[float, float] | None = None  # (value, mono) of a read that disagrees
    unsettled: int = 0
    moved: bool = False  # reads changed while no origin was confirmed yet
    anchor: float | None = None  # the last value the agent verified, while it keeps control
    verified: float | None = None  # the last value the agent verified (kept across losses)
    control: bool = False  # the permissive read GOOD and on at the start of this cycle
    overridden: float | None = None  # a confirmed value another writer put there (holds)
    last_sent: float | None = None  # the last value this boot's audit shows sent (at start-up)
    seen_mono: float = -math.inf  # reads at or before this are not evidence (already used)
    possible: list[tuple[float, float]] = field(default_factory=list)  # (value, sent mono)
    fresh_read: bool = False  # the next decision waits for an explicit read
    verify_ok: bool = True
    retry_at: float = -math.inf
    backoff_s: float = _BACKOFF_FIRST_S / 2


class WriteBack:
    """The write-back unit for every Guard target of one agent (see the module docstring)."""

    def __init__(
        self,
        guard: Guard,
        sinks: Mapping[str, SetpointSink],
        table: TableView,
        audit: DecisionLog,
        *,
        grids: Mapping[str, Grid] | None = None,
        poll_s: Mapping[str, float] | None = None,
        clock: Callable[[], float],
        boot_id: str = "",
        settle_polls: int = 5,
    ) -> None:
        """``sinks`` maps every tag the Guard may write (setpoints and recommendation tags) to
        the driver that writes it; ``grids`` the register grid of each; ``poll_s`` the poll
        interval of each setpoint tag (two confirming reads are half of it apart)."""
        self.guard = guard
        self._sinks = dict(sinks)
        self._table = table
        self._audit = audit
        self._clock = clock
        self._boot_id = boot_id
        self._settle = settle_polls
        self._grids = dict(grids or {})
        start = self._initial_credit(clock())
        self._states: dict[str, _State] = {
            tag: _State(
                cfg=t,
                grid=self._grids.get(tag, CONTINUOUS),
                gap_s=(poll_s or {}).get(tag, 1.0) / 2,
                credit_from=start,
            )
            for tag, t in guard.targets.items()
        }
        self.holds = HoldTracker()
        self.stopping = False
        self.decisions: dict[str, GuardDecision] = {}
        self.outcomes: Counter[str] = Counter()
        self.actions: Counter[tuple[str, str]] = Counter()  # (action, first reason code)

    # ------------------------------------------------------------------ start-up

    @staticmethod
    def _initial_credit(start: float) -> float:
        """Rate credit at construction starts at process start: a restart earns nothing."""
        return start

    @staticmethod
    def _first_credit(st: _State, value: float, first_read: float) -> float:
        """Where the credit starts once the first origin since start-up is confirmed: as
        restored (process start, or this boot's last audited send) if the PLC holds what this
        agent last sent; otherwise someone moved it, at the latest by the first read."""
        ours = not st.moved and st.last_sent is not None and st.grid.same(value, st.last_sent)
        return st.credit_from if ours else max(st.credit_from, first_read)

    def restore_credit(self) -> None:
        """Start each target's rate credit no earlier than its last audited send of this boot
        (call once the audit log is open). An unreadable log leaves the credit at process start:
        zero credit now, growing from here."""
        start = self._clock()
        if not self._boot_id:
            return
        try:
            sends = self._audit.last_sends(self._boot_id)
        except AuditError as exc:
            log.error("audit unreadable: rate credit starts now", error=str(exc))
            for st in self._states.values():
                st.credit_from = max(st.credit_from, start)
            return
        for tag, st in self._states.items():
            if tag in sends:
                mono, value = sends[tag]
                if math.isfinite(mono):
                    st.credit_from = max(st.credit_from, mono)
                st.last_sent = value
                if value is not None and math.isfinite(value) and math.isfinite(mono):
                    # Its outcome may never have been seen (killed mid-write): it may have landed.
                    st.possible.append((value, mono))

    # ------------------------------------------------------------------ per cycle

    async def step(
        self, inputs: WriteInputs, *, after: asyncio.Future[Any] | None = None
    ) -> dict[str, GuardDecision]:
        """Decide (and write where allowed) for every target; returns the decisions.

        ``after``: what must be done before any write of this step (the cycle's heartbeat:
        the PLC applies a setpoint only while the agent is alive). A decision to write waits
        for it, then is audited and sent; the rest of the step (origins, decisions, holds)
        runs while it is under way. Its error, or its cancellation, ends the step there.
        """
        for tag, st in self._states.items():
            await self._refresh_origin(tag, st)
            now = self._clock()
            decision = self.guard.decide(tag, self._guard_inputs(tag, st, inputs, now))
            if decision.writes and after is not None and not after.done():
                await after
                now = self._clock()
                decision = self.guard.decide(tag, self._guard_inputs(tag, st, inputs, now))
            elif decision.writes and after is not None:
                after.result()  # raises its error: no write after a failed or cancelled beat
            self.decisions[tag] = decision
            self.actions[(str(decision.action), _code(decision))] += 1
            await self._apply(tag, st, decision, inputs, now)
        return dict(self.decisions)

    def holding(self) -> dict[str, tuple[str, ...]]:
        """Targets currently held, with their reasons (for the status word and the console)."""
        return {t: d.reasons for t, d in self.decisions.items() if d.action is Action.HOLD}

    def anchored(self, target: str) -> bool:
        """Whether the agent holds, on ``target``, a value it verified since it last had control
        (a change away from it then reads as another writer's)."""
        return self._states[target].anchor is not None

    def origin(self, target: str) -> float | None:
        """The value the PLC verifiably holds for ``target`` (None while unknown)."""
        return self._states[target].origin

    # ------------------------------------------------------------------ the origin

    def _accept_read(self, st: _State, value: float, mono: float) -> None:
        """Fold one read of the setpoint (poll or explicit) into the origin."""
        if st.origin is not None and st.grid.same(value, st.origin):
            st.origin_mono = max(st.origin_mono, mono)
            st.candidate, st.unsettled, st.overridden = None, 0, None
            self._reanchor(st, value)
            return
        cand = st.candidate
        if cand is not None and st.grid.same(value, cand[0]) and mono - cand[1] >= st.gap_s:
            if self._moved_by_other(st, value):
                st.overridden = value
                st.candidate, st.unsettled = None, 0
                return
            # Two reads a poll apart agree: the PLC (or the operator) holds this value. Unless it
            # is the value this agent last sent (the credit then runs as restored at start-up),
            # someone moved it, at the latest by the first of the two reads: the next step's
            # credit starts there at the earliest.
            if st.origin is not None:
                st.credit_from = max(st.credit_from, cand[1])
            else:
                st.credit_from = self._first_credit(st, value, cand[1])
            st.origin, st.origin_mono, st.moved = value, mono, False
            st.candidate, st.unsettled = None, 0
            self._reanchor(st, value)
            # A possibly-applied write now seen: those sent before it no longer matter, a later
            # one may still land. Without such a match they all may still land (a PLC or gateway
            # that queued one runs it when it resumes, however long that takes): they keep
            # limiting the next step until one is seen or a write of ours is verified.
            seen = [t for p, t in st.possible if st.grid.same(value, p)]
            if seen:
                st.possible = [(p, t) for p, t in st.possible if t > max(seen)]
            return
        if cand is None or not st.grid.same(value, cand[0]):
            st.moved = st.moved or cand is not None  # seen to change before any confirmation
            st.candidate = (value, mono)
        st.unsettled += 1

    def _moved_by_other(self, st: _State, value: float) -> bool:
        """A confirmed value the agent did not put there while it kept control."""
        if st.anchor is None or st.grid.same(value, st.anchor):
            return False
        return not any(st.grid.same(value, p) for p, _ in st.possible)  # not a late write of ours

    @staticmethod
    def _reanchor(st: _State, value: float) -> None:
        """Control is back (the permissive reads on) and the PLC holds the value the agent last
        verified: it is the agent's own value again, and a change away from it is another
        writer's. Only ever adds holds: an anchor never lends credit."""
        if st.anchor is None and st.control and st.verified is not None and st.grid.same(value, st.verified):
            st.anchor = st.verified

    def _keep_control(self, st: _State) -> None:
        """Control is the agent's only while the permissive reads GOOD and on; once it is not,
        whatever the PLC holds next is the PLC's (tracking) or the operator's, not a lie, and
        the rate credit starts again when control comes back (no jump at the hand-back)."""
        now = self._clock()
        perm = self._table.get(self.guard.config.permissive_tag, now)
        st.control = perm.quality.is_good and perm.value is True
        if not st.control:
            st.anchor, st.overridden = None, None
            st.credit_from = max(st.credit_from, now)

    async def _refresh_origin(self, tag: str, st: _State) -> None:
        self._keep_control(st)
        if st.fresh_read and (sink := self._sinks.get(tag)) is not None:
            s = await sink.read(tag)
            self._table.update([s])
            v = _number(s)
            if v is not None:
                st.fresh_read = False
                st.seen_mono = max(st.seen_mono, s.mono)
                match = [t for p, t in st.possible if st.grid.same(v, p)]
                if match:  # the possibly-applied write landed: this read verifies it
                    st.origin, st.origin_mono, st.candidate, st.unsettled = v, s.mono, None, 0
                    st.anchor, st.verified, st.overridden = v, v, None
                    st.possible = [(p, t) for p, t in st.possible if t > max(match)]
                else:
                    self._accept_read(st, v, s.mono)
        s = self._table.get(tag, self._clock())
        v = _number(s)
        if v is not None and s.mono > st.seen_mono:
            st.seen_mono = s.mono
            self._accept_read(st, v, s.mono)

    def _origin_hold(self, st: _State) -> str | None:
        if st.fresh_read:
            return f"{Reason.READBACK_PENDING}: waiting for a fresh read after an unconfirmed write"
        if st.overridden is not None:
            return (
                f"{Reason.MOVED_BY_OTHER}: the PLC holds {st.overridden:g}, the agent verified "
                f"{st.anchor:g}; cycle the permissive to hand control back"
            )
        if st.candidate is not None:
            head = Reason.NOT_SETTLED if st.unsettled >= self._settle else Reason.READBACK_UNCONFIRMED
            was = "unknown" if st.origin is None else f"{st.origin:g}"
            return f"{head}: read {st.candidate[0]:g}, the PLC verifiably held {was}"
        if st.origin is None:
            return f"{Reason.READBACK_UNAVAILABLE}: no confirmed read yet"
        return None

    def _guard_inputs(self, tag: str, st: _State, inputs: WriteInputs, now: float) -> GuardInputs:
        why = self._origin_hold(st)
        origin = None
        if why is None and st.origin is not None:
            origin = Sample(tag, st.origin, Quality.good(), utcnow(), st.origin_mono)
        return GuardInputs(
            now=now,
            recommendation=inputs.recommendations.get(tag),
            permissive=self._table.get(self.guard.config.permissive_tag, now),
            readback=origin,
            input_qualities=inputs.qualities,
            inputs_mono=inputs.inputs_mono,
            model_healthy=inputs.model_healthy,
            audit_ok=self._audit.healthy,
            stopping=self.stopping,
            last_verify_ok=st.verify_ok or now >= st.retry_at,
            last_write_at=st.credit_from,
            also_possible=tuple(p for p, _ in st.possible),
            origin_hold=why,
        )

    # ------------------------------------------------------------------ decide → audit → send

    async def _apply(self, tag: str, st: _State, d: GuardDecision, inputs: WriteInputs, now: float) -> None:
        decision_id: int | None = None
        if self.holds.changed(d):
            extra = {
                "boot_id": self._boot_id,
                "origin": st.origin,
                "origin_mono": st.origin_mono if math.isfinite(st.origin_mono) else None,
                "also_possible": [p for p, _ in st.possible],
                "credit_from": st.credit_from,
                "step_allowed": max_step(st.cfg.rate_per_min, st.credit_from, now, st.cfg.max_step),
            }
            try:
                # Committed before the write is sent (the write waits for this to return).
                decision_id = await asyncio.to_thread(
                    self._audit.record_decision,
                    d.decision,
                    target=tag,
                    tag=d.write_tag,
                    qualities=inputs.qualities,
                    mono=now,
                    extra=extra,
                )
            except AuditError as exc:
                log.error("audit unavailable: automatic writes stop", target=tag, error=str(exc))
                return
            self.holds.remember(d)
            if d.action is Action.HOLD:
                log.info("hold", target=tag, reasons=list(d.reasons))
        if not d.writes or d.write_tag is None or d.applied_value is None or decision_id is None:
            return
        write_tag, value = d.write_tag, d.applied_value
        sent_at = self._clock()
        why = self._recheck(d, inputs, sent_at)
        if why is not None:
            log.warning("write not sent", target=tag, reason=why)
            self.holds.forget(tag)  # the next decision is audited whatever it is
            self._outcome(Outcome.NOT_SENT, tag, write_tag, value, None, decision_id, why, sent_at)
            return
        sink = self._sinks[write_tag]
        purpose: Purpose = "setpoint" if write_tag == tag else "recommendation"
        on_setpoint = write_tag == tag
        try:
            back = await sink.write(write_tag, value, purpose=purpose)
        except DriverError as exc:
            st.credit_from = self._write_time(now, sent_at, self._clock())
            if isinstance(exc, WriteRefused):
                kind = Outcome.REFUSED
            else:  # no reply, or no verifying read: the value may be in the PLC
                kind = (
                    Outcome.TIMED_OUT
                    if isinstance(exc, WriteUnconfirmed)
                    else Outcome.UNVERIFIED
                    if isinstance(exc, ReadBackFailed)
                    else Outcome.FAILED
                )
                if on_setpoint:
                    self._possibly_applied(st, value, sent_at)
            self._failed(st, tag, kind, write_tag, value, None, decision_id, str(exc))
            return
        reply_at = self._clock()
        st.credit_from = self._write_time(now, sent_at, reply_at)
        back = self._verifying_value(write_tag, back)
        self._table.update([Sample(write_tag, back, Quality.good(), utcnow(), reply_at)])
        got = _finite(back)
        grid = self._grids.get(write_tag, CONTINUOUS)
        if got is not None and grid.same(got, value):
            if on_setpoint:
                st.origin, st.origin_mono = got, reply_at
                st.candidate, st.unsettled, st.possible = None, 0, []
                st.anchor, st.verified, st.overridden = got, got, None
                st.seen_mono = max(st.seen_mono, reply_at)
            st.verify_ok, st.backoff_s = True, _BACKOFF_FIRST_S / 2
            self._outcome(Outcome.VERIFIED, tag, write_tag, value, back, decision_id, "", reply_at)
            return
        if on_setpoint:
            # The read says the value did not land; a read is evidence, not truth: the value
            # stays possible, and the read is only a candidate origin until a second confirms it.
            self._possibly_applied(st, value, sent_at)
            st.fresh_read = got is None
            st.seen_mono = max(st.seen_mono, reply_at)
            if got is not None:
                self._accept_read(st, got, reply_at)
        message = f"wrote {value:g}, read back {back!r}"
        self._failed(st, tag, Outcome.MISMATCH, write_tag, value, back, decision_id, message)

    # The safety steps below are methods of their own so that the proof (tests/unit/
    # test_writeback.py) can show that each one is needed: removing any fails the property.

    @staticmethod
    def _write_time(decided_at: float, sent_at: float, reply_at: float) -> float:
        """Where the next write's rate credit starts: this write's reply (or failure), never
        the start of the cycle that decided it."""
        return reply_at

    def _verifying_value(self, write_tag: str, back: Value) -> Value:
        """What verifies a write: the read the driver issued after the write's reply."""
        return back

    @staticmethod
    def _possibly_applied(st: _State, value: float, sent_at: float) -> None:
        """A write that may have landed: limit the next step from it too, and read afresh."""
        st.possible.append((value, sent_at))
        st.fresh_read = True

    def _recheck(self, d: GuardDecision, inputs: WriteInputs, now: float) -> str | None:
        """Why a write decided a moment ago must not be sent now (None: send it)."""
        if self.stopping:
            return str(Reason.STOPPING)
        if not self._audit.healthy:
            return str(Reason.AUDIT_UNAVAILABLE)
        for name in inputs.qualities:
            s = self._table.get(name, now)
            if not s.quality.is_good:
                return f"{Reason.INPUT_BAD}: {s.quality.reason or 'no reason'} ({name})"
        return self._recheck_ttl(d, now) or self._recheck_permissive(d, now)

    def _recheck_ttl(self, d: GuardDecision, now: float) -> str | None:
        """The recommendation is still within its TTL at the moment of sending."""
        rec = d.decision.recommendation
        ttl = self._states[d.target].cfg.ttl_s
        if rec is None or not (now < rec.expires_mono and now < rec.created_mono + ttl):
            return str(Reason.EXPIRED)
        return None

    def _recheck_permissive(self, d: GuardDecision, now: float) -> str | None:
        """The operator's permissive is still on at the moment of sending."""
        tag = self.guard.config.permissive_tag
        age = self._states[d.target].cfg.max_input_age_s
        return permissive_on(self._table.get(tag, now), tag, age, now)

    def _failed(
        self,
        st: _State,
        target: str,
        outcome: Outcome,
        tag: str,
        sent: float,
        back: Value,
        decision_id: int,
        message: str,
    ) -> None:
        """Hold the target; one retry after a backoff that doubles per failure (5 s .. 5 min).

        The PLC is the authority: it may refuse an external setpoint (permissive just dropped,
        heartbeat not yet seen, its own clamp). Holding until a retry keeps the agent from
        fighting it, and lets it resume once the PLC accepts again."""
        now = self._clock()
        st.backoff_s = min(_BACKOFF_MAX_S, st.backoff_s * 2)
        st.verify_ok, st.retry_at = False, now + st.backoff_s
        log.warning(
            "setpoint write not verified: holding",
            target=target,
            tag=tag,
            outcome=str(outcome),
            sent=sent,
            read_back=back,
            retry_in_s=st.backoff_s,
            error=message,
        )
        self._outcome(outcome, target, tag, sent, back, decision_id, message, now)

    def _outcome(
        self,
        outcome: Outcome,
        target: str,
        tag: str,
        sent: float,
        back: Value,
        decision_id: int,
        message: str,
        mono: float,
    ) -> None:
        self.outcomes[str(outcome)] += 1
        try:
            self._audit.record_outcome(
                str(outcome),
                target=target,
                tag=tag,
                sent=sent,
                read_back=back,
                decision_id=decision_id,
                message=message,
                mono=mono,
                extra={"boot_id": self._boot_id},
            )
        except AuditError as exc:
            # The write's decision row is committed; its outcome is lost with the disk. Writes
            # stop (the audit is unhealthy) until the log records again.
            log.error("audit unavailable: write outcome not recorded", target=target, error=str(exc))


def grid_for(tag: AnyTag) -> Grid:
    """The values ``tag``'s register can hold: its scale's steps for an integer register, the
    float32 numbers for an unscaled single-precision one, any float otherwise."""
    if not isinstance(tag, ModbusTag):
        return CONTINUOUS
    if tag.resolution is not None:
        return Grid(step=tag.resolution, offset=tag.offset)
    if tag.type is DataType.FLOAT32 and tag.scale == 1.0 and tag.offset == 0.0:
        return Grid(float32=True)
    return CONTINUOUS


def _finite(v: Value) -> float | None:
    """``v`` as a finite float if it is a number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _number(s: Sample) -> float | None:
    """The sample's value as a finite float if it is GOOD and numeric, else None."""
    return _finite(s.value) if s.quality.is_good else None


def _code(d: GuardDecision) -> str:
    """The first reason's code ("" when there is none), for counters."""
    if not d.reasons:
        return ""
    try:
        return str(Reason.of(d.reasons[0]))
    except ValueError:
        return "other"


# --------------------------------------------------------------------------- start / stop

START_STOP_CONFIRMED = "start_stop_confirmed"
"""Audit event of a start or stop the running feedback confirmed (``detail``: target, running)."""
RUNNING_CHANGED = "running_changed"
"""Audit event of a start or stop the agent did not ask for (the operator's, a trip), as the
running feedback showed it: the rest and run times count from it too."""
RUNNING_SEEN = "running_seen"
"""Audit event of the running state first seen with no audited history: a pump found running
counts its run from here (at least this long), one found stopped its rest."""
_START_STOP_EVENTS = (
    "start_stop_request",
    START_STOP_CONFIRMED,
    "start_stop_unconfirmed",
    "start_stop_mismatch",
)


class StartStopLog(Protocol):
    """The audit log, as the start/stop unit uses it (:class:`agent.ops.audit.AuditLog`)."""

    @property
    def healthy(self) -> bool: ...

    def record_event(
        self, kind: str, message: str, *, mono: float | None = None, extra: Mapping[str, Any] | None = None
    ) -> int: ...

    def query(
        self, since: datetime | None = None, kinds: Any = None, limit: int | None = None
    ) -> list[Any]: ...


@dataclass
class _Pending:
    value: bool
    since: float


class StartStopUnit:
    """Starts and stops pumps through their request bits, with the Guard's proof.

    Per start/stop target, every cycle: the running feedback confirms (or, after
    ``confirm_timeout_s``, fails to confirm) a request sent before; the start history (confirmed
    starts, last start and stop) is read from the audit log, so minimum run time and starts per
    hour hold across restarts; :meth:`Guard.decide_start_stop` decides; the decision is committed
    to the audit log before the request bit is written, and the bit is read back after. A request
    the feedback did not confirm holds the target until the feedback agrees with the request
    again (an operator's doing).
    """

    def __init__(
        self,
        guard: Guard,
        sinks: Mapping[str, SetpointSink],
        audit: StartStopLog,
        clock_utc: Callable[[], datetime] = utcnow,
    ) -> None:
        """``sinks`` maps each request tag to the driver that writes it."""
        self.guard = guard
        self.sinks = dict(sinks)
        self.audit = audit
        self._utc = clock_utc
        self._pending: dict[str, _Pending] = {}
        self._confirm_ok: dict[str, bool] = {t: True for t in guard.start_stop}
        self._seen: dict[str, bool] = {}  # running feedback last cycle
        self._restored: set[str] = set()
        self.histories: dict[str, tuple[tuple[float, ...], float | None, float | None]] = {}
        """Per request tag, the start history the last :meth:`step` read (for planning)."""

    def _rows(self, tag: str, now_utc: datetime) -> list[Any]:
        rows = self.audit.query(since=now_utc - timedelta(days=1), kinds=["event"])
        return [r for r in rows if r.detail.get("target") == tag]

    def history(self, tag: str, now_utc: datetime) -> tuple[tuple[float, ...], float | None, float | None]:
        """(starts of the last hour, last start, last stop) in UTC seconds, from the audit log:
        every start the agent asked for (failed ones included) and those the running feedback
        showed without it."""
        starts: list[float] = []
        started = stopped = None
        for r in self._rows(tag, now_utc):
            t = r.utc.timestamp()
            if r.action == "start_stop_request" and r.detail.get("value"):
                starts.append(t)  # every attempt heats the motor: a failed start counts too
            if r.action not in (START_STOP_CONFIRMED, RUNNING_CHANGED, RUNNING_SEEN):
                continue
            if r.detail.get("running"):
                if r.action == RUNNING_CHANGED:
                    starts.append(t)
                started = t
            else:
                stopped = t
        return tuple(s for s in starts if s > now_utc.timestamp() - 3600.0), started, stopped

    def _restore(self, tag: str, now: float, now_utc: datetime) -> None:
        """After a restart: a request audited and neither confirmed nor failed is still pending,
        and the running state last audited is what the feedback is compared with."""
        self._restored.add(tag)
        last = None
        for r in self._rows(tag, now_utc):
            if r.action in _START_STOP_EVENTS:
                last = r
            if r.action in (START_STOP_CONFIRMED, RUNNING_CHANGED, RUNNING_SEEN):
                self._seen[tag] = bool(r.detail.get("running"))
        if last is not None and last.action == "start_stop_request":
            age = now_utc.timestamp() - last.utc.timestamp()
            self._pending[tag] = _Pending(bool(last.detail.get("value")), now - max(age, 0.0))

    async def step(
        self,
        recommendations: Mapping[str, Recommendation],
        table: TableView,
        now: float,
        *,
        model_healthy: bool = True,
        stopping: bool = False,
    ) -> dict[str, GuardDecision]:
        """One cycle over every start/stop target; the decisions by request tag."""
        out: dict[str, GuardDecision] = {}
        now_utc = self._utc()
        for tag, t in self.guard.start_stop.items():
            if tag not in self._restored:
                try:
                    self._restore(tag, now, now_utc)
                except (AuditError, OSError):
                    self._restored.discard(tag)
            running = table.get(t.running_tag, now)
            fb = running.value if running.quality.is_good else None
            pend = self._pending.get(tag)
            if pend is not None and fb is not None and bool(fb) == pend.value:
                await self._confirmed(tag, pend.value, now)
            elif fb is not None and tag in self._seen and bool(fb) != self._seen[tag] and pend is None:
                word = "started" if fb else "stopped"
                await self._event(
                    RUNNING_CHANGED, f"{tag}: {t.asset} {word}, not by the agent", tag, now, running=bool(fb)
                )
            elif pend is not None and not now - pend.since <= t.confirm_timeout_s:
                self._pending.pop(tag)
                self._confirm_ok[tag] = False
                await self._event(
                    "start_stop_unconfirmed", f"{tag}: {t.running_tag} did not confirm", tag, now
                )
            elif pend is None and not self._confirm_ok[tag] and fb is not None:
                back = await self._read(tag)
                if back is not None and bool(fb) == back:  # feedback and request agree again
                    self._confirm_ok[tag] = True
            if fb is not None and tag not in self._seen and pend is None:
                word = "running" if fb else "stopped"
                await self._event(RUNNING_SEEN, f"{tag}: {t.asset} found {word}", tag, now, running=bool(fb))
            if fb is not None:
                self._seen[tag] = bool(fb)
            audit_ok = self.audit.healthy
            try:
                starts, started, stopped = self.history(tag, now_utc)
                self.histories[tag] = (starts, started, stopped)
            except (AuditError, OSError):
                starts, started, stopped, audit_ok = (), None, None, False
                self.histories.pop(tag, None)
            pend = self._pending.get(tag)
            d = self.guard.decide_start_stop(
                tag,
                StartStopInputs(
                    now=now,
                    now_utc_s=now_utc.timestamp(),
                    recommendation=recommendations.get(tag),
                    permissive=table.get(self.guard.config.permissive_tag, now),
                    remote_start=table.get(t.remote_start_tag, now),
                    running=running,
                    starts_utc_s=starts,
                    started_at_utc_s=started,
                    stopped_at_utc_s=stopped,
                    pending_since=None if pend is None else pend.since,
                    last_confirm_ok=self._confirm_ok[tag],
                    model_healthy=model_healthy,
                    audit_ok=audit_ok,
                    stopping=stopping,
                ),
            )
            out[tag] = d
            if not d.writes or d.applied_value is None:
                continue
            value = bool(d.applied_value)
            rec = d.decision.recommendation
            try:  # audited before it is sent
                self.audit.record_event(
                    "start_stop_request",
                    f"{tag}: {'start' if value else 'stop'} {t.asset}"
                    + (f" ({rec.reason})" if rec is not None else ""),
                    mono=now,
                    extra={"target": tag, "value": value},
                )
            except AuditError:
                continue
            self._pending[tag] = _Pending(value, now)
            try:
                await self.sinks[tag].write(tag, value, purpose="command")
            except DriverError as exc:
                await self._event("start_stop_failed", f"{tag}: {exc}", tag, now)
                continue
            back = await self._read(tag)
            if back is not value:
                self._pending.pop(tag, None)
                self._confirm_ok[tag] = False
                await self._event("start_stop_mismatch", f"{tag}: wrote {value}, read back {back}", tag, now)
        return out

    async def _read(self, tag: str) -> bool | None:
        try:
            s = await self.sinks[tag].read(tag)
        except DriverError:
            return None
        return bool(s.value) if s.quality.is_good and isinstance(s.value, (bool, int, float)) else None

    async def _confirmed(self, tag: str, value: bool, now: float) -> None:
        self._pending.pop(tag, None)
        self._confirm_ok[tag] = True
        word = "started" if value else "stopped"
        await self._event(START_STOP_CONFIRMED, f"{tag}: {word}, confirmed", tag, now, running=value)

    async def _event(self, kind: str, message: str, tag: str, now: float, **extra: Any) -> None:
        try:
            self.audit.record_event(kind, message, mono=now, extra={"target": tag, **extra})
        except AuditError:
            log.error("start/stop event not audited", kind=kind, target=tag)
