"""The Guard: the only way a value reaches a PLC, decided purely from its inputs.

The Guard performs no I/O and reads no clock: the caller hands it everything it needs in a
:class:`GuardInputs` (the recommendation, the permissive, the setpoint as last read back, the
qualities of the model's inputs, health flags and the monotonic time ``now``), and it answers
with a :class:`GuardDecision`: the core :class:`~agent.types.Decision` plus the tag to write
(``write_tag``), which is the setpoint in ``auto`` mode and the target's
``recommendation_tag`` in ``advise`` mode, and ``None`` whenever nothing is to be written.

A value is written only if all of these hold (see "Safety of write-back" in ARCHITECTURE.md):

- writes are enabled globally, the mode is ``advise`` or ``auto``, and the tag written is on the
  allow-list (and is not the permissive);
- the agent is not stopping, the audit log is healthy, the last write's read-back matched;
- the permissive sample is for the configured tag, GOOD, true and fresh;
- the model is healthy, every input it used was GOOD, and its inputs are fresh;
- the recommendation is finite, for this target, and within its TTL (the earlier of its own
  ``expires_mono`` and ``created_mono + ttl_s``);
- the setpoint's read-back is GOOD, numeric, fresh, and newer than our last write.

The value applied is the recommendation clamped to ``[min, max]`` and limited to
``min(rate_per_min × min(elapsed, 60 s) / 60 s, max_step)`` away from the *origin* (bumpless
after a restart or a manual change), and as far from every value the PLC may possibly hold
(``also_possible``: a write that timed out may still have been applied). ``elapsed`` runs from
``last_write_at``, the start of the rate credit, which the write-back unit
(:mod:`agent.writeback`) sets to the previous write's reply, and at start-up to the later of
process start and the last audited send of this boot. The origin is what the PLC verifiably
holds, never a bare poll sample: the write-back unit hands it in as ``readback``. The value is
then moved onto the setpoint register's :class:`~agent.pipeline.quantize.Grid` (a ``uint16 ×
0.1`` drive cannot take 45.15), inside the same bounds. A change no larger than the deadband is
not written.

Every time check fails closed: a NaN or infinite time makes a sample stale and a recommendation
expired, and a non-finite ``now`` holds everything. Before returning a write the Guard checks the
applied value once more against [min, max] and the rate limit rather than trust the arithmetic.

Every reason string starts with a :class:`Reason` value (optionally followed by ``": detail"``),
so that a status word can map reasons to codes. Reasons hold no continuously varying numbers:
a steady HOLD yields identical decisions, which :class:`HoldTracker` uses to audit changes only.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from agent.configbase import FrozenModel, Loc, LocatedError
from agent.pipeline.quantize import CONTINUOUS, Grid
from agent.types import Action, Decision, Quality, QualityCode, Recommendation, Sample

__all__ = [
    "RATE_WINDOW_S",
    "Guard",
    "GuardConfig",
    "GuardDecision",
    "GuardInputs",
    "HoldTracker",
    "Mode",
    "Reason",
    "SetpointTarget",
    "StartStopInputs",
    "StartStopTarget",
    "max_step",
    "permissive_on",
    "starts_in_last_hour",
]

RATE_WINDOW_S = 60.0
"""The most elapsed time one write may take credit for in the rate limit (one minute)."""

Mode = Literal["shadow", "advise", "auto"]

_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Tag = Annotated[str, Field(min_length=1, max_length=256)]


# --------------------------------------------------------------------------- configuration


class SetpointTarget(FrozenModel):
    """One setpoint the agent may drive, with its limits (PLC engineering units)."""

    tag: _Tag
    """The setpoint tag written in ``auto`` mode (and read back as the rate limit's origin)."""
    recommendation_tag: _Tag | None = None
    """The tag written in ``advise`` mode (an HMI display tag); required in ``advise`` mode."""
    min: _Finite
    max: _Finite
    rate_per_min: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    """Largest change per minute, measured from the origin (what the PLC verifiably holds)."""
    max_step: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Largest change of one write, whatever the time since the last (default: ``rate_per_min``).
    The config refuses one smaller than the tag's register step."""
    deadband: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    """A change no larger than this is not written."""
    ttl_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0
    """A recommendation older than this (monotonic) is dropped, not applied late."""
    max_input_age_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    """Inputs, permissive and read-back older than this (monotonic) are stale."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if self.recommendation_tag is not None and self.recommendation_tag == self.tag:
            raise ValueError(
                f"recommendation_tag must differ from tag ({self.tag!r}): advise mode must never "
                "write the setpoint itself"
            )
        return self

    @property
    def step_limit(self) -> float:
        """The largest change one write may make: ``max_step``, or ``rate_per_min`` without it."""
        return self.max_step if self.max_step is not None else self.rate_per_min


class StartStopTarget(FrozenModel):
    """A pump the agent may start and stop, through a request bit of the PLC's logic.

    ``tag`` is a *request* (config purpose ``command``) that the PLC's own start logic obeys only
    while ``remote_start_tag`` (the PLC's remote-start permissive: local/remote switch, no trip,
    interlocks made) is true; never the motor's run coil, and never the running feedback. A
    start or stop is confirmed by ``running_tag`` within ``confirm_timeout_s``; a pump runs at
    least ``min_run_s`` before the agent stops it and rests ``min_stop_s`` before it starts it
    again, and starts at most ``max_starts_per_hour`` times in any hour (counted from the audit
    log, so a restart of the agent does not reset the count).
    """

    tag: _Tag
    asset: _Tag
    running_tag: _Tag
    remote_start_tag: _Tag
    confirm_timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 15.0
    min_run_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 900.0
    min_stop_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 300.0
    max_starts_per_hour: Annotated[int, Field(ge=1, le=60)] = 4
    ttl_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0
    max_input_age_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if self.tag == self.running_tag:
            raise ValueError(
                f"tag {self.tag!r} is the running feedback: the agent writes a start request, "
                "never the motor's own run coil or its feedback"
            )
        if self.tag == self.remote_start_tag or self.running_tag == self.remote_start_tag:
            raise ValueError("tag, running_tag and remote_start_tag must be three different tags")
        return self


class GuardConfig(FrozenModel):
    """Write-back policy: one global switch, a mode, an allow-list, a permissive, targets."""

    writes_enabled: bool = False
    """The single global switch; off by default."""
    mode: Mode = "shadow"
    """``shadow`` never writes; ``advise`` writes recommendation tags only; ``auto`` setpoints."""
    allow_list: list[_Tag] = []
    """Every tag the agent may ever write; anything else is refused."""
    permissive_tag: _Tag
    """The operator's remote-enable; writes happen only while it is GOOD, true and fresh."""
    targets: list[SetpointTarget] = []
    start_stop: list[StartStopTarget] = []
    """Pumps the agent may start and stop (auto mode only)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        allowed = set(self.allow_list)
        setpoints = {t.tag for t in self.targets}
        for i, ss in enumerate(self.start_stop):
            if ss.tag not in allowed:
                raise ValueError(f"start_stop[{i}].tag {ss.tag!r} is not on allow_list: add it there")
            if (
                self.permissive_tag in (ss.tag, ss.running_tag, ss.remote_start_tag)
                and ss.tag == self.permissive_tag
            ):
                raise ValueError(f"start_stop[{i}].tag writes the permissive tag {self.permissive_tag!r}")
            if ss.running_tag in allowed or ss.remote_start_tag in allowed:
                raise ValueError(
                    f"start_stop[{i}]: the running feedback and the remote-start permissive are the PLC's; "
                    "they must not be on allow_list"
                )
            if ss.tag in setpoints:
                raise ValueError(f"start_stop[{i}].tag {ss.tag!r} is also a setpoint target")
        if self.permissive_tag in allowed:
            raise ValueError(
                f"permissive_tag {self.permissive_tag!r} must not be on allow_list: "
                "the agent must never write its own permissive"
            )
        seen: set[str] = set()
        for i, t in enumerate(self.targets):
            if t.tag in seen:
                raise ValueError(f"targets[{i}].tag {t.tag!r} is configured twice")
            seen.add(t.tag)
            if t.tag not in allowed:
                raise ValueError(
                    f"targets[{i}].tag {t.tag!r} is not on allow_list: add it there to let the agent write it"
                )
            if t.recommendation_tag is not None and t.recommendation_tag not in allowed:
                raise ValueError(
                    f"targets[{i}].recommendation_tag {t.recommendation_tag!r} is not on allow_list: "
                    "add it there to let the agent write it"
                )
            if self.mode == "advise" and t.recommendation_tag is None:
                raise ValueError(f"targets[{i}] ({t.tag!r}) needs recommendation_tag in advise mode")
            if t.tag == self.permissive_tag or t.recommendation_tag == self.permissive_tag:
                raise ValueError(f"targets[{i}] writes the permissive tag {self.permissive_tag!r}")
        # A recommendation tag is written outside the rate limit of any other target: it must be
        # neither another target's setpoint nor another target's recommendation tag.
        problems: list[tuple[Loc, str]] = []
        for i, t in enumerate(self.targets):
            if t.recommendation_tag is None:
                continue
            for j, other in enumerate(self.targets):
                if j == i:
                    continue
                if t.recommendation_tag == other.tag:
                    problems.append(
                        (
                            ("targets", i, "recommendation_tag"),
                            f"{t.recommendation_tag!r} is the setpoint of targets[{j}]: advise mode would "
                            "write it without that target's limits",
                        )
                    )
                elif t.recommendation_tag == other.recommendation_tag and j < i:
                    problems.append(
                        (
                            ("targets", i, "recommendation_tag"),
                            f"{t.recommendation_tag!r} is also the recommendation_tag of targets[{j}]",
                        )
                    )
        if problems:
            raise LocatedError.many(problems)
        return self


# --------------------------------------------------------------------------- inputs and outputs


class Reason(enum.StrEnum):
    """The stable head of every reason string (``"<head>"`` or ``"<head>: <detail>"``)."""

    # REJECT: the recommendation itself is invalid
    UNKNOWN_TARGET = "unknown target"
    WRONG_TARGET = "wrong target"
    NOT_ALLOWED = "not on allow-list"
    NOT_FINITE = "value not finite"
    # HOLD: nothing written
    NO_RECOMMENDATION = "no recommendation"
    CLOCK_INVALID = "time not finite"
    WRITES_DISABLED = "writes disabled"
    MODE_SHADOW = "mode shadow"
    NO_RECOMMENDATION_TAG = "no recommendation_tag"
    STOPPING = "stopping"
    AUDIT_UNAVAILABLE = "audit unavailable"
    PERMISSIVE_OFF = "permissive off"
    MODEL_UNHEALTHY = "model unhealthy"
    INPUTS_UNKNOWN = "input qualities unknown"
    INPUT_BAD = "input BAD"
    INPUT_UNCERTAIN = "input UNCERTAIN"
    INPUTS_NOT_GOOD = "inputs not GOOD"
    INPUTS_STALE = "inputs stale"
    EXPIRED = "recommendation expired"
    READBACK_UNAVAILABLE = "read-back unavailable"
    READBACK_PENDING = "read-back pending"
    READBACK_MISMATCH = "read-back mismatch"
    READBACK_UNCONFIRMED = "read-back unconfirmed"
    NOT_SETTLED = "not settled"
    MOVED_BY_OTHER = "moved by another writer"
    DEADBAND = "inside deadband"
    RATE_WAIT = "rate limit allows no change yet"
    OUT_OF_REACH = "read-back outside limits"
    # CLAMP: what changed the value
    CLAMPED_MIN = "clamped to min"
    CLAMPED_MAX = "clamped to max"
    RATE_LIMITED = "rate limited"
    QUANTIZED = "quantized to the register resolution"

    @classmethod
    def of(cls, reason: str) -> Reason:
        """The :class:`Reason` a reason string starts with (ValueError if none)."""
        head = reason.split(": ", 1)[0]
        member = cls._value2member_map_.get(head)  # what cls(head) looks up, without its call
        return member if isinstance(member, Reason) else cls(head)


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardInputs:
    """Everything the Guard decides from, for one target at one instant.

    All times are monotonic seconds (``time.monotonic()``), ``now`` included.
    """

    now: float
    recommendation: Recommendation | None
    """The latest recommendation for the target, or None."""
    permissive: Sample | None
    """The permissive tag's latest sample; on only if GOOD, true and fresh."""
    readback: Sample | None
    """The setpoint (``SetpointTarget.tag``) as last read from the PLC: the rate limit's origin."""
    input_qualities: Mapping[str, Quality]
    """Tag → quality of every input the model used for this recommendation."""
    inputs_mono: float | None
    """When the model's inputs were sampled (e.g. ``Frame.end_mono``); None if unknown."""
    model_healthy: bool
    audit_ok: bool
    """The audit log is writable (``AuditLog.healthy``)."""
    stopping: bool
    last_verify_ok: bool
    """The verifying read after the last write to this target matched what was written."""
    last_write_at: float | None = None
    """When the rate credit starts (monotonic): the previous write's reply or failure; at
    start-up the later of process start and the last audited send of this boot. None grants one
    full ``max_step`` (for callers without history; the write-back unit always sets it)."""
    also_possible: tuple[float, ...] = ()
    """Other values the PLC may hold (writes that timed out): the step is limited from each."""
    origin_hold: str | None = None
    """Why the caller has no origin it can vouch for (a :class:`Reason`-headed string): the
    target holds with it, whatever ``readback`` says."""


@dataclass(frozen=True, slots=True)
class GuardDecision:
    """A Guard decision for one target: the core :class:`Decision` plus where it goes.

    ``write_tag`` is the tag to write ``decision.applied_value`` to (the setpoint in ``auto``,
    the target's ``recommendation_tag`` in ``advise``), and ``None`` exactly when
    ``decision.writes`` is False. ``proposed`` is the clamped and rate-limited value the Guard
    would apply were it not held for another reason (None when it cannot be computed: no valid
    recommendation or read-back); it is for shadow-mode comparison and is never written.
    """

    target: str
    decision: Decision
    write_tag: str | None = None
    proposed: float | None = None

    @property
    def action(self) -> Action:
        return self.decision.action

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.decision.reasons

    @property
    def applied_value(self) -> float | None:
        return self.decision.applied_value

    @property
    def writes(self) -> bool:
        return self.decision.writes


@dataclass(frozen=True, slots=True, kw_only=True)
class StartStopInputs:
    """Everything :meth:`Guard.decide_start_stop` decides from (monotonic ``now``; the start
    history in UTC seconds, from the audit log, so that it survives a restart)."""

    now: float
    now_utc_s: float
    recommendation: Recommendation | None
    permissive: Sample | None
    remote_start: Sample | None
    running: Sample | None
    starts_utc_s: tuple[float, ...]
    """Confirmed starts (UTC seconds), at least those of the last hour."""
    started_at_utc_s: float | None
    """When the running pump was last started (None: unknown, so it is never stopped early)."""
    stopped_at_utc_s: float | None
    pending_since: float | None
    """A request sent and not yet confirmed by the running feedback (monotonic)."""
    last_confirm_ok: bool
    model_healthy: bool
    audit_ok: bool
    stopping: bool


# --------------------------------------------------------------------------- helpers


def starts_in_last_hour(starts_utc_s: tuple[float, ...], now_utc_s: float) -> int:
    """Starts within the hour before ``now_utc_s`` (a start in the future counts: fail closed)."""
    return sum(1 for s in starts_utc_s if not s <= now_utc_s - 3600.0)


def _start_holds(t: StartStopTarget, inputs: StartStopInputs) -> list[str]:
    """Why a stopped pump may not be started now: remote start, starts per hour, rest time."""
    holds = []
    if permissive_on(inputs.remote_start, t.remote_start_tag, t.max_input_age_s, inputs.now) is not None:
        holds.append(f"{Reason.PERMISSIVE_OFF}: remote start not available ({t.remote_start_tag})")
    starts = starts_in_last_hour(inputs.starts_utc_s, inputs.now_utc_s)
    if starts >= t.max_starts_per_hour:
        holds.append(f"{Reason.RATE_WAIT}: {starts} starts in the last hour (max {t.max_starts_per_hour})")
    if inputs.stopped_at_utc_s is not None and not inputs.now_utc_s - inputs.stopped_at_utc_s >= t.min_stop_s:
        holds.append(f"{Reason.RATE_WAIT}: stopped less than {t.min_stop_s:g} s ago")
    return holds


def _stop_holds(t: StartStopTarget, inputs: StartStopInputs) -> list[str]:
    """Why a running pump may not be stopped now: its minimum run time (unknown start: never)."""
    started = inputs.started_at_utc_s
    if started is None or not inputs.now_utc_s - started >= t.min_run_s:
        return [f"{Reason.RATE_WAIT}: minimum run time {t.min_run_s:g} s not reached"]
    return []


def _bool_of(sample: Sample | None, tag: str, max_age_s: float, now: float) -> bool | None:
    """A GOOD, fresh boolean sample of ``tag``, else None."""
    if (
        sample is None
        or sample.tag != tag
        or not sample.quality.is_good
        or not _fresh(sample.mono, max_age_s, now)
    ):
        return None
    v = sample.value
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and math.isfinite(v):
        return v != 0
    return None


def permissive_on(sample: Sample | None, tag: str, max_age_s: float, now: float) -> str | None:
    """None when the permissive is on; otherwise the reason it is off."""
    if sample is None:
        return f"{Reason.PERMISSIVE_OFF}: no sample"
    if sample.tag != tag:
        return f"{Reason.PERMISSIVE_OFF}: sample is for tag {sample.tag!r}, not {tag!r}"
    if not sample.quality.is_good:
        return f"{Reason.PERMISSIVE_OFF}: {sample.quality}"
    if not _fresh(sample.mono, max_age_s, now):
        return f"{Reason.PERMISSIVE_OFF}: stale"
    v = sample.value
    if isinstance(v, bool):
        on = v
    elif isinstance(v, int):
        on = v != 0
    elif isinstance(v, float):
        on = math.isfinite(v) and v != 0.0
    else:
        return f"{Reason.PERMISSIVE_OFF}: value is not boolean"
    return None if on else str(Reason.PERMISSIVE_OFF)


def _fresh(mono: float, max_age_s: float, now: float) -> bool:
    """``now - mono <= max_age_s`` with both times finite: time checks fail closed."""
    return math.isfinite(mono) and math.isfinite(now) and now - mono <= max_age_s


def _expired(rec: Recommendation, ttl_s: float, now: float) -> bool:
    """Past its own expiry or its creation + ``ttl_s``; any non-finite time counts as expired."""
    created_ok = math.isfinite(rec.created_mono) and now < rec.created_mono + ttl_s
    return not (created_ok and now < rec.expires_mono)


def max_step(rate_per_min: float, last_write_at: float | None, now: float, cap: float | None = None) -> float:
    """The largest change allowed now: ``rate × min(elapsed, 60 s)/60 s`` (a minute if never),
    and never more than ``cap`` (a target's ``max_step``)."""
    elapsed = RATE_WINDOW_S if last_write_at is None else now - last_write_at
    if math.isnan(elapsed):
        return 0.0
    step = rate_per_min * min(max(elapsed, 0.0), RATE_WINDOW_S) / RATE_WINDOW_S
    return step if cap is None else min(step, cap)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _limit(
    target: SetpointTarget,
    value: float,
    origin: float,
    step: float,
    also: tuple[float, ...] = (),
    grid: Grid = CONTINUOUS,
) -> tuple[float | None, tuple[str, ...]]:
    """Clamp ``value`` to [min, max], to ``origin ± step`` and to ``p ± step`` for every ``p`` in
    ``also``, then onto ``grid`` inside the same bounds.

    Returns (value to apply, CLAMP reasons), or (None, HOLD reasons) when nothing may be written.
    """
    lo_limit, hi_limit = target.min, target.max
    wanted = min(max(value, lo_limit), hi_limit)
    if abs(wanted - origin) <= target.deadband:
        return None, (str(Reason.DEADBAND),)
    origins = (origin, *also)
    if not all(math.isfinite(o) for o in origins):
        return None, (f"{Reason.OUT_OF_REACH}: a possible PLC value is not finite",)
    lo = max(lo_limit, *(o - step for o in origins))
    hi = min(hi_limit, *(o + step for o in origins))
    if lo > hi:
        return None, (f"{Reason.OUT_OF_REACH}: [{_fmt(lo_limit)}, {_fmt(hi_limit)}] beyond the rate limit",)
    applied = min(max(value, lo), hi)
    # o ± step is rounded: step back by an ulp or two so that |applied - o| <= step holds
    # exactly for every origin, and check the bounds again rather than trust the arithmetic.
    for _ in range(8):
        far = [o for o in origins if abs(applied - o) > step]
        if not far:
            break
        applied = math.nextafter(applied, far[0])
    snapped = grid.snap(applied, lo, hi)
    if snapped is None:
        return None, (f"{Reason.RATE_WAIT}: the register cannot move by less than {_fmt(grid.resolution)}",)
    applied = snapped
    in_reach = all(abs(applied - o) <= step for o in origins)
    if not (lo_limit <= applied <= hi_limit and in_reach and math.isfinite(applied)):
        return None, (f"{Reason.OUT_OF_REACH}: [{_fmt(lo_limit)}, {_fmt(hi_limit)}] beyond the rate limit",)
    if applied == origin or grid.same(applied, origin):
        return None, (str(Reason.RATE_WAIT),)
    reasons: list[str] = []
    if value > hi_limit:
        reasons.append(f"{Reason.CLAMPED_MAX}: {_fmt(hi_limit)}")
    elif value < lo_limit:
        reasons.append(f"{Reason.CLAMPED_MIN}: {_fmt(lo_limit)}")
    if applied != wanted:
        if grid.resolution and grid.same(applied, wanted):
            reasons.append(f"{Reason.QUANTIZED}: {_fmt(grid.resolution)}")
        else:
            reasons.append(f"{Reason.RATE_LIMITED}: {_fmt(target.rate_per_min)}/min")
    return applied, tuple(reasons)


# --------------------------------------------------------------------------- the Guard


class Guard:
    """Decides, purely, whether and what to write for each configured target.

    Stateless apart from its frozen config: safe to call from any thread or task.
    """

    def __init__(self, config: GuardConfig, grids: Mapping[str, Grid] | None = None) -> None:
        """``grids`` maps a written tag to the values its register can hold (default: any)."""
        self._config = config
        self._grids = dict(grids or {})
        self._targets = {t.tag: t for t in config.targets}
        self._allowed = frozenset(config.allow_list) - {config.permissive_tag}

    @property
    def config(self) -> GuardConfig:
        return self._config

    @property
    def targets(self) -> Mapping[str, SetpointTarget]:
        """Configured targets by setpoint tag."""
        return dict(self._targets)

    def write_tag(self, target: SetpointTarget) -> str | None:
        """The tag a write for ``target`` goes to in the configured mode (None in shadow)."""
        mode = self._config.mode
        if mode == "auto":
            return target.tag
        if mode == "advise":
            return target.recommendation_tag
        return None

    def decide(self, target: str, inputs: GuardInputs) -> GuardDecision:
        """Decide for the setpoint tag ``target``. Never raises for any input values."""
        rec = inputs.recommendation
        cfg = self._config
        t = self._targets.get(target)
        if t is None:
            return self._reject(target, rec, (f"{Reason.UNKNOWN_TARGET}: {target!r} is not configured",))

        # REJECT: the recommendation itself is invalid.
        if rec is not None:
            bad: list[str] = []
            if rec.target_tag not in self._allowed:
                bad.append(f"{Reason.NOT_ALLOWED}: {rec.target_tag!r}")
            if rec.target_tag != t.tag:
                bad.append(f"{Reason.WRONG_TARGET}: for {rec.target_tag!r}, not {t.tag!r}")
            value = rec.value
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                bad.append(f"{Reason.NOT_FINITE}: {value!r}")
            if bad:
                return self._reject(target, rec, tuple(bad))
        write_tag = self.write_tag(t)
        if write_tag is not None and write_tag not in self._allowed:
            return self._reject(target, rec, (f"{Reason.NOT_ALLOWED}: {write_tag!r}",))

        # HOLD: collect every reason, in a fixed order, so the status shows all of them.
        holds: list[str] = []
        now = inputs.now
        if not math.isfinite(now):
            holds.append(f"{Reason.CLOCK_INVALID}: now={now!r}")
        if rec is None:
            holds.append(str(Reason.NO_RECOMMENDATION))
        if not cfg.writes_enabled:
            holds.append(str(Reason.WRITES_DISABLED))
        if cfg.mode == "shadow":
            holds.append(str(Reason.MODE_SHADOW))
        elif write_tag is None:
            holds.append(f"{Reason.NO_RECOMMENDATION_TAG}: {t.tag!r} has none for advise mode")
        if inputs.stopping:
            holds.append(str(Reason.STOPPING))
        if not inputs.audit_ok:
            holds.append(str(Reason.AUDIT_UNAVAILABLE))
        if not inputs.last_verify_ok:
            holds.append(str(Reason.READBACK_MISMATCH))
        off = permissive_on(inputs.permissive, cfg.permissive_tag, t.max_input_age_s, now)
        if off is not None:
            holds.append(off)
        if not inputs.model_healthy:
            holds.append(str(Reason.MODEL_UNHEALTHY))
        if rec is not None:
            if not inputs.input_qualities:
                holds.append(str(Reason.INPUTS_UNKNOWN))
            for tag in sorted(inputs.input_qualities):
                q = inputs.input_qualities[tag]
                if q.code is QualityCode.GOOD:
                    continue
                head = Reason.INPUT_BAD if q.code is QualityCode.BAD else Reason.INPUT_UNCERTAIN
                holds.append(f"{head}: {q.reason or 'no reason'} ({tag})")
            if not rec.inputs_good:
                holds.append(str(Reason.INPUTS_NOT_GOOD))
            if inputs.inputs_mono is None or not _fresh(inputs.inputs_mono, t.max_input_age_s, now):
                holds.append(str(Reason.INPUTS_STALE))
            if _expired(rec, t.ttl_s, now):
                holds.append(str(Reason.EXPIRED))

        origin, why = self._origin(t, inputs)
        if inputs.origin_hold is not None:
            origin, why = None, inputs.origin_hold
        if why is not None:
            holds.append(why)

        proposed: float | None = None
        limit_reasons: tuple[str, ...] = ()
        if rec is not None and origin is not None:
            step = max_step(t.rate_per_min, inputs.last_write_at, now, t.max_step)
            grid = self._grids.get(write_tag or t.tag, CONTINUOUS)
            proposed, limit_reasons = _limit(t, float(rec.value), origin, step, inputs.also_possible, grid)
        if holds or proposed is None:
            reasons = tuple(holds) if holds else limit_reasons
            return GuardDecision(target, Decision(rec, Action.HOLD, None, reasons), None, proposed)

        assert rec is not None and write_tag is not None  # for mypy: both checked above
        action = Action.WRITE if proposed == rec.value else Action.CLAMP
        return GuardDecision(target, Decision(rec, action, proposed, limit_reasons), write_tag, proposed)

    @property
    def start_stop(self) -> Mapping[str, StartStopTarget]:
        """Configured start/stop targets by request tag."""
        return {t.tag: t for t in self._config.start_stop}

    def decide_start_stop(self, target: str, inputs: StartStopInputs) -> GuardDecision:
        """Decide whether to set (start) or clear (stop) the request bit ``target``.

        Recommendation value 1 asks the pump to run, 0 to stop. Never raises for any inputs.
        """
        rec = inputs.recommendation
        cfg = self._config
        t = self.start_stop.get(target)
        if t is None:
            return self._reject(target, rec, (f"{Reason.UNKNOWN_TARGET}: {target!r} is not configured",))
        if rec is not None:
            bad: list[str] = []
            if rec.target_tag != t.tag:
                bad.append(f"{Reason.WRONG_TARGET}: for {rec.target_tag!r}, not {t.tag!r}")
            if t.tag not in self._allowed:
                bad.append(f"{Reason.NOT_ALLOWED}: {t.tag!r}")
            if not isinstance(rec.value, (int, float)) or rec.value not in (0, 1):
                bad.append(f"{Reason.NOT_FINITE}: a start/stop request is 0 or 1, got {rec.value!r}")
            if bad:
                return self._reject(target, rec, tuple(bad))
        holds: list[str] = []
        now = inputs.now
        if not (math.isfinite(now) and math.isfinite(inputs.now_utc_s)):
            holds.append(f"{Reason.CLOCK_INVALID}: now={now!r}")
        if rec is None:
            holds.append(str(Reason.NO_RECOMMENDATION))
        if not cfg.writes_enabled:
            holds.append(str(Reason.WRITES_DISABLED))
        if cfg.mode != "auto":
            holds.append(f"{Reason.MODE_SHADOW}: start/stop is written in auto mode only")
        if inputs.stopping:
            holds.append(str(Reason.STOPPING))
        if not inputs.audit_ok:
            holds.append(str(Reason.AUDIT_UNAVAILABLE))
        if not inputs.last_confirm_ok:
            holds.append(
                f"{Reason.READBACK_MISMATCH}: the last start/stop was not confirmed by {t.running_tag}"
            )
        off = permissive_on(inputs.permissive, cfg.permissive_tag, t.max_input_age_s, now)
        if off is not None:
            holds.append(off)
        if not inputs.model_healthy:
            holds.append(str(Reason.MODEL_UNHEALTHY))
        if rec is not None and (not rec.inputs_good or _expired(rec, t.ttl_s, now)):
            holds.append(str(Reason.EXPIRED) if rec.inputs_good else str(Reason.INPUTS_NOT_GOOD))
        running = _bool_of(inputs.running, t.running_tag, t.max_input_age_s, now)
        if running is None:
            holds.append(
                f"{Reason.READBACK_UNAVAILABLE}: running feedback {t.running_tag} not GOOD and fresh"
            )
        if inputs.pending_since is not None:
            holds.append(f"{Reason.READBACK_PENDING}: waiting for {t.running_tag} to confirm")
        want = None if rec is None else bool(rec.value)
        if want is True and running is False:
            holds += _start_holds(t, inputs)
        elif want is False and running is True:
            holds += _stop_holds(t, inputs)
        elif want is not None and running is not None:
            holds.append(str(Reason.DEADBAND))  # already as asked
        if holds or rec is None:
            return GuardDecision(target, Decision(rec, Action.HOLD, None, tuple(holds)), None, None)
        value = 1.0 if want else 0.0
        return GuardDecision(target, Decision(rec, Action.WRITE, value, ()), t.tag, value)

    @staticmethod
    def _origin(t: SetpointTarget, inputs: GuardInputs) -> tuple[float | None, str | None]:
        """The read-back value to rate-limit from, or None and why it cannot be used."""
        rb = inputs.readback
        if rb is None:
            return None, f"{Reason.READBACK_UNAVAILABLE}: no sample"
        if rb.tag != t.tag:
            return None, f"{Reason.READBACK_UNAVAILABLE}: sample is for tag {rb.tag!r}, not {t.tag!r}"
        if not rb.quality.is_good:
            return None, f"{Reason.READBACK_UNAVAILABLE}: {rb.quality}"
        if not _fresh(rb.mono, t.max_input_age_s, inputs.now):
            return None, f"{Reason.READBACK_UNAVAILABLE}: stale"
        v = rb.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None, f"{Reason.READBACK_UNAVAILABLE}: not a finite number"
        if inputs.last_write_at is not None and not rb.mono >= inputs.last_write_at:
            return None, str(Reason.READBACK_PENDING)
        return float(v), None

    @staticmethod
    def _reject(target: str, rec: Recommendation | None, reasons: tuple[str, ...]) -> GuardDecision:
        return GuardDecision(target, Decision(rec, Action.REJECT, None, reasons))


# --------------------------------------------------------------------------- audit filter


class HoldTracker:
    """Tells which decisions are changes worth auditing, per target.

    Every WRITE, CLAMP and REJECT is a change; so is entering HOLD, a HOLD whose reason *codes*
    (the :class:`Reason` heads, not the text: a detail such as "next attempt in 0.6 s" must not
    make a steady hold look new) differ from the last recorded HOLD's, and (being a
    WRITE/CLAMP/REJECT) leaving HOLD. A HOLD repeating the previous one is not.

    :meth:`changed` asks without remembering; :meth:`remember` is called once the record is
    committed, so a HOLD whose audit insert failed is offered again (and its insert is the
    probe that tells when the audit log is back). :meth:`observe` does both at once. Not
    thread-safe: one owner (the write-back unit).
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[Reason, ...] | None] = {}
        self._reasons: dict[str, tuple[str, ...]] = {}

    @staticmethod
    def _codes(reasons: tuple[str, ...]) -> tuple[Reason, ...]:
        out: list[Reason] = []
        for r in reasons:
            try:
                out.append(Reason.of(r))
            except ValueError:  # a reason without a known head: compare it whole
                out.append(r)  # type: ignore[arg-type]
        return tuple(out)

    def changed(self, decision: GuardDecision) -> bool:
        """True if ``decision`` should be audited (nothing is remembered)."""
        if decision.action is not Action.HOLD:
            return True
        known = decision.target in self._held
        return not known or self._held[decision.target] != self._codes(decision.reasons)

    def remember(self, decision: GuardDecision) -> None:
        """Record that ``decision`` was audited."""
        if decision.action is Action.HOLD:
            self._held[decision.target] = self._codes(decision.reasons)
            self._reasons[decision.target] = decision.reasons
        else:
            self._held[decision.target] = None
            self._reasons.pop(decision.target, None)

    def observe(self, decision: GuardDecision) -> bool:
        """:meth:`changed`, then :meth:`remember`: True if ``decision`` should be audited."""
        changed = self.changed(decision)
        self.remember(decision)
        return changed

    def holding(self, target: str) -> tuple[str, ...] | None:
        """The reasons ``target`` was last recorded held for, or None if it is not held."""
        return self._reasons.get(target) if self._held.get(target) is not None else None

    def forget(self, target: str | None = None) -> None:
        """Forget one target (or all): its next decision counts as a change."""
        if target is None:
            self._held.clear()
            self._reasons.clear()
        else:
            self._held.pop(target, None)
            self._reasons.pop(target, None)
