"""The alarm engine: limits and classifier outputs in, ISA-18.2 / IEC 62682 transitions out.

Pure: no I/O and no clock reads. Every call takes the monotonic time (``now_mono``, for delays
and shelve expiry) and the UTC time (``now_utc``, for the records and for shelve expiry across
a restart). The engine returns only *transitions*: a state that holds is never reported twice.

Vocabulary
----------
An **alarm** (``kind: alarm``) has a defined operator response and must be acknowledged. An
**alert** (``kind: alert``, e.g. an anomaly score) is a notification without one: it can be
acknowledged but need not be, it never shows as returned-unacknowledged, and it is kept apart
on the HMI (``alert_word``; not in ``active_count``, ``unacked_word``, ``highest_severity`` or
the first-out code). A **bad-PV alarm** (``kind: bad_pv``) is an instrument diagnostic alarm: it
is active while its source's input is not GOOD (a transmitter failed, a device lost, a value out
of its range or stale) and its text names the tag and the quality reason. It is an alarm on the
HMI like any other (the operator checks the instrument or the link), so a BAD input is
annunciated as such instead of reaching a model as a frozen or missing value.

States (:class:`agent.types.AlarmState`)::

    NORMAL ──condition──▶ UNACK ──ack──▶ ACKED ──clears──▶ NORMAL
                            │
                            └──clears──▶ RTN_UNACK ──ack──▶ NORMAL
                                             └──condition again──▶ UNACK

* ``latch``: an unacknowledged alarm stays active (UNACK, its bit held in ``alarm_word``) after
  the condition clears, until acknowledged; acknowledging then returns it to NORMAL. An alarm
  acknowledged while its condition is still present returns to NORMAL when it clears.
* Escalation (e.g. HIGH → HIGH_HIGH while active) raises the severity and asks for a new
  acknowledgement (ACKED → UNACK); de-escalation lowers it and is reported without asking for
  one (a latched alarm keeps its highest severity until it returns to NORMAL).
* SHELVED (by the operator, for at most ``max_shelve_s``) and OUT_OF_SERVICE (by maintenance,
  or ``enabled: false`` in the config) take an alarm away from the operator on purpose: they are
  reported as transitions and shown in ``shelved_word`` / ``out_of_service_word``, never hidden.
  While suppressed the condition is still tracked; when the alarm comes back it is re-evaluated
  and an active condition is annunciated anew (UNACK).

Conditions
----------
A limit alarm is active while the value is beyond a limit: above ``high``/``high_high`` (strictly
greater), below ``low``/``low_low``; it clears only once the value is back inside by ``deadband``
(absolute, in the value's units). Each limit has its own severity; the alarm's severity is the
highest of its active limits. A classifier alarm is active while the output equals ``equals`` or
is one of ``in_classes``. A bad-PV alarm reads ``values[bad_key(source)]`` (1 while the input is
not GOOD, 0 while it is; :mod:`agent.pipeline.sources` gives it) and the reason text from the
``reasons`` the caller passes (source → ``"<tag> BAD (<reason>)"``). ``on_delay_s``: the
condition must hold that long (on consecutive good samples) before the alarm goes active (a
limit may have its own: ``high_high: {value: 3, severity: 2, on_delay_s: 30}`` beside the
alarm's 70 s raises it after 30 s far beyond its ``high``, after 70 s just beyond it);
``off_delay_s``: it must be gone that long before it clears. A ``None`` or non-finite value
is BAD input: the alarm holds its state and any pending delay is cancelled (it restarts on the
next good sample), so garbage never raises or clears anything. A source missing from
``values`` is simply not updated.

Persistence
-----------
:meth:`AlarmEngine.state_dict` is JSON-serialisable; :meth:`AlarmEngine.restore` puts it back
after a restart. Shelve expiry is stored in UTC (monotonic time does not survive a restart) and
clamped to ``max_shelve_s`` on restore, so a wrong clock at boot can end shelving early but never
extend it. Pending delay timers restart.

Thread-safety: none; one task owns an engine.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import Field, model_validator

from agent.configbase import FrozenModel
from agent.errors import AlarmError
from agent.types import Alarm, AlarmState

__all__ = [
    "ALARM_KINDS",
    "STATE_VERSION",
    "AlarmDef",
    "AlarmEngine",
    "AlarmError",
    "AlarmKind",
    "AlarmsConfig",
    "HmiBlock",
    "Limit",
    "bad_key",
]

STATE_VERSION = 1
"""Version of the :meth:`AlarmEngine.state_dict` format."""

AlarmKind = Literal["alarm", "alert", "bad_pv"]
"""``alarm`` (an operator response), ``alert`` (none: a notification), ``bad_pv`` (an
instrument diagnostic alarm on the quality of its source's input)."""
ALARM_KINDS: tuple[AlarmKind, ...] = get_args(AlarmKind)

Severity = Annotated[int, Field(ge=1, le=4)]
"""1 low, 2 medium, 3 high, 4 critical."""

_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
_LIMIT_NAMES: tuple[str, ...] = ("high_high", "high", "low", "low_low")
_ACTIVE_STATES = (AlarmState.UNACK, AlarmState.ACKED)
_EPISODE_STATES = (AlarmState.UNACK, AlarmState.ACKED, AlarmState.RTN_UNACK)
_SUPPRESSED_STATES = (AlarmState.SHELVED, AlarmState.OUT_OF_SERVICE)
# _Slot.key() of the states without a severity
_KEY_OUT_OF_SERVICE = (AlarmState.OUT_OF_SERVICE, 0)
_KEY_SHELVED = (AlarmState.SHELVED, 0)
_KEY_NORMAL = (AlarmState.NORMAL, 0)
_KEY_RTN_UNACK = (AlarmState.RTN_UNACK, 0)


def bad_key(source: str) -> str:
    """The key under which a bad-PV alarm reads whether ``source``'s input is not GOOD (1) or
    GOOD (0). The ``:`` cannot occur in a value, detector or model output name."""
    return f"bad:{source}"


# --------------------------------------------------------------------------- configuration


class Limit(FrozenModel):
    """One limit of a limit alarm: the threshold and the severity while it is exceeded, and
    optionally an on-delay of its own (default: the alarm's ``on_delay_s``)."""

    value: Annotated[float, Field(allow_inf_nan=False)]
    severity: Severity
    on_delay_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """How long this limit must be exceeded before it counts; e.g. a ``high_high`` far above a
    model score's threshold with a shorter delay than the alarm's: an exceedance that large is
    no transient, so it annunciates sooner (at the higher severity)."""


class AlarmDef(FrozenModel):
    """One alarm or alert on one source, for every asset of the engine.

    Give either limits (any of ``high``, ``high_high``, ``low``, ``low_low``) or a classifier
    condition (``equals`` or ``in_classes``, with ``severity``). A ``kind: bad_pv`` alarm takes
    neither: only ``severity``, a ``response`` and its delays; its ``source`` names one of the
    asset's ``values`` (that tag) or a model binding (any tag the model reads for the asset).
    """

    name: Annotated[str, Field(pattern=_NAME_PATTERN, max_length=64)]
    code: Annotated[int, Field(ge=1, le=16)]
    """1..16; the alarm's bit in the HMI words is ``code - 1``."""
    kind: AlarmKind = "alarm"
    """``alarm`` (an operator response), ``alert`` (none: a notification), ``bad_pv`` (an
    instrument diagnostic alarm on the quality of its source's input)."""
    response: str = ""
    """The operator's defined response; required for an alarm."""
    source: Annotated[str, Field(min_length=1, max_length=128)]
    """A score output (``anomaly.t2``, ``fault_class``) or a tag role; for ``bad_pv`` a value
    name or a model binding name."""
    high_high: Limit | None = None
    high: Limit | None = None
    low: Limit | None = None
    low_low: Limit | None = None
    equals: int | None = None
    in_classes: tuple[int, ...] | None = None
    severity: Severity | None = None
    """Severity of a classifier alarm (limit alarms take it from each limit)."""
    deadband: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    on_delay_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    off_delay_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    latch: bool = False
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind != "alert" and not self.response.strip():
            raise ValueError(
                "an alarm needs a defined operator response (response: ...); "
                "a notification without one is kind: alert"
            )
        limits = self.limits()
        if self.kind == "bad_pv":
            given = [n for n in (*_LIMIT_NAMES, "equals", "in_classes") if getattr(self, n) is not None]
            if self.deadband:
                given.append("deadband")
            if given:
                raise ValueError(
                    f"a bad_pv alarm is active while its input is not GOOD: it takes no {', '.join(given)}"
                )
            if self.severity is None:
                raise ValueError("a bad_pv alarm needs severity: 1..4")
            return self
        classifier = self.equals is not None or self.in_classes is not None
        if self.equals is not None and self.in_classes is not None:
            raise ValueError("give equals or in_classes, not both")
        if self.in_classes is not None and not self.in_classes:
            raise ValueError("in_classes must name at least one class")
        if limits and classifier:
            raise ValueError("give limits (high, high_high, low, low_low) or a class condition, not both")
        if not limits and not classifier:
            raise ValueError("give at least one limit (high, high_high, low, low_low) or equals / in_classes")
        if classifier:
            if self.severity is None:
                raise ValueError("a class condition (equals / in_classes) needs severity: 1..4")
            if self.deadband:
                raise ValueError("deadband applies to limits only")
        elif self.severity is not None:
            raise ValueError("severity is given per limit (high: {value: ..., severity: ...})")
        ordered = [lim for lim in (self.low_low, self.low, self.high, self.high_high) if lim is not None]
        for a, b in itertools.pairwise(ordered):
            if not a.value < b.value:
                raise ValueError("limits must be ordered low_low < low < high < high_high")
        highs = [lim.value for lim in (self.high, self.high_high) if lim is not None]
        lows = [lim.value for lim in (self.low, self.low_low) if lim is not None]
        if highs and lows and not self.deadband < min(highs) - max(lows):
            raise ValueError(
                "deadband must be smaller than the gap between the highest low and the lowest high"
            )
        return self

    def limits(self) -> dict[str, Limit]:
        """The limits given, most severe direction first (``high_high``, ``high``, ``low``, ``low_low``)."""
        found = {name: getattr(self, name) for name in _LIMIT_NAMES}
        return {name: lim for name, lim in found.items() if lim is not None}

    @property
    def input_key(self) -> str:
        """The key this definition reads from the values fed to the engine."""
        return bad_key(self.source) if self.kind == "bad_pv" else self.source

    def classes(self) -> frozenset[int]:
        """The class codes that raise a classifier alarm (empty for a limit alarm)."""
        if self.equals is not None:
            return frozenset((self.equals,))
        return frozenset(self.in_classes or ())

    @property
    def nominal_severity(self) -> int:
        """The highest severity this alarm can take."""
        if self.severity is not None:
            return self.severity
        return max(lim.severity for lim in self.limits().values())


class AlarmsConfig(FrozenModel):
    """The ``alarms:`` section: definitions plus the operator's acknowledge and shelve rules."""

    defs: tuple[AlarmDef, ...] = ()
    ack_tag: str | None = None
    """The tag role of the operator's acknowledge pushbutton (a rising edge acknowledges all)."""
    max_shelve_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 8 * 3600.0
    """Longest shelve an operator may ask for (ISA-18.2: shelving is always time-limited)."""

    @model_validator(mode="after")
    def _unique(self) -> Self:
        codes = [d.code for d in self.defs]
        names = [d.name for d in self.defs]
        dup_codes = sorted({c for c in codes if codes.count(c) > 1})
        dup_names = sorted({n for n in names if names.count(n) > 1})
        if dup_codes:
            raise ValueError(f"alarm codes must be unique (alarms and alerts share 1..16): {dup_codes}")
        if dup_names:
            raise ValueError(f"alarm names must be unique: {dup_names}")
        return self


# --------------------------------------------------------------------------- HMI view


@dataclass(frozen=True, slots=True)
class HmiBlock:
    """One asset's alarm summary for the HMI tags; bit ``code - 1`` in every word.

    ``fault_class`` and ``rul`` are not the engine's: it leaves them at their defaults and the
    runtime fills them in (``dataclasses.replace``) from the latest scores.
    """

    alarm_word: int
    """Active alarms (UNACK or ACKED, latched ones included); shelved / out of service excluded."""
    unacked_word: int
    """Alarms waiting for acknowledgement (UNACK or RTN_UNACK)."""
    shelved_word: int
    """Alarms and alerts taken away on purpose: shelved or out of service."""
    out_of_service_word: int
    """The out-of-service part of ``shelved_word``."""
    alert_word: int
    """Active alerts (kept apart from alarms)."""
    highest_severity: int
    """Highest severity among active alarms; 0 when none."""
    active_count: int
    """Number of active alarms (alerts not counted)."""
    first_out_code: int
    """The first alarm to go active in the current episode; 0 once all are clear and acknowledged."""
    fault_class: int = 0
    """The classifier's current class code (0 = no fault); filled by the runtime."""
    rul: float | None = None
    """Remaining useful life in the model's output unit; filled by the runtime (None = unknown)."""


# --------------------------------------------------------------------------- engine state


@dataclass(slots=True)
class _Condition:
    """One limit (or the class condition) with its hysteresis and delay timers."""

    name: str  # "high_high" | "high" | "low" | "low_low" | "class" | "bad"
    threshold: float
    severity: int
    on_delay_s: float | None = None  # the limit's own on-delay (None: the alarm's)
    raw: bool = False  # instantaneous (hysteresis applied), before delays
    since: float = 0.0  # monotonic time ``raw`` last changed
    active: bool = False  # after on/off delays


@dataclass(slots=True)
class _Slot:
    """One alarm definition on one asset."""

    d: AlarmDef
    conditions: list[_Condition]
    classes: frozenset[int]
    active: bool = False  # annunciated active (includes a latched alarm whose condition cleared)
    acked: bool = True
    severity: int = 0  # severity of the current (or last) episode
    value: float | None = None  # last good value
    reason: str = ""  # bad_pv: why the input is not GOOD (the last reason given while it was not)
    shelved_until_mono: float | None = None
    shelved_until_utc: datetime | None = None
    out_of_service: bool = False
    reported: tuple[AlarmState, int] = (AlarmState.NORMAL, 0)
    is_alert: bool = False  # d.kind == "alert" (kept: the engine asks every cycle)
    input_key: str = ""  # d.input_key (kept: the engine asks every cycle)

    @property
    def condition(self) -> bool:
        return any(c.active for c in self.conditions)

    @property
    def condition_severity(self) -> int:
        return max((c.severity for c in self.conditions if c.active), default=0)

    @property
    def suppressed(self) -> bool:
        return not self.d.enabled or self.out_of_service or self.shelved_until_mono is not None

    def state(self) -> AlarmState:
        if not self.d.enabled or self.out_of_service:
            return AlarmState.OUT_OF_SERVICE
        if self.shelved_until_mono is not None:
            return AlarmState.SHELVED
        if self.active:
            return AlarmState.ACKED if self.acked else AlarmState.UNACK
        return AlarmState.NORMAL if self.acked else AlarmState.RTN_UNACK

    def key(self) -> tuple[AlarmState, int]:
        """What a transition is judged on: the state, and the severity while active
        (:meth:`state` inlined: every slot is asked every cycle)."""
        if self.out_of_service or not self.d.enabled:
            return _KEY_OUT_OF_SERVICE
        if self.shelved_until_mono is not None:
            return _KEY_SHELVED
        if self.active:
            return (AlarmState.ACKED if self.acked else AlarmState.UNACK), self.severity
        return _KEY_NORMAL if self.acked else _KEY_RTN_UNACK

    def reported_severity(self, state: AlarmState) -> int:
        if state in _SUPPRESSED_STATES or not self.severity:
            return self.d.nominal_severity
        return self.severity


@dataclass(slots=True)
class _Asset:
    slots: dict[int, _Slot]
    first_out: int = 0
    ack_level: bool | None = None  # last good value of the ack tag; None = unknown


def _new_slot(d: AlarmDef) -> _Slot:
    if d.kind == "bad_pv" and d.severity is not None:
        conds = [_Condition("bad", math.nan, d.severity)]
    elif d.severity is not None:
        conds = [_Condition("class", math.nan, d.severity)]
    else:
        conds = [
            _Condition(name, lim.value, lim.severity, lim.on_delay_s) for name, lim in d.limits().items()
        ]
    slot = _Slot(
        d=d, conditions=conds, classes=d.classes(), is_alert=d.kind == "alert", input_key=d.input_key
    )
    slot.reported = slot.key()
    return slot


def _raw(slot: _Slot, cond: _Condition, x: float) -> bool:
    """The condition right now, with the deadband on the return side."""
    if cond.name == "bad":
        return x != 0.0
    if cond.name == "class":
        r = round(x)
        return r == x and r in slot.classes
    db = slot.d.deadband
    if cond.name in ("high", "high_high"):
        return x >= cond.threshold - db if cond.raw else x > cond.threshold
    return x <= cond.threshold + db if cond.raw else x < cond.threshold


def _require_aware(now_utc: datetime) -> None:
    if now_utc.tzinfo is None or now_utc.utcoffset() is None:
        raise AlarmError("now_utc must be timezone-aware (UTC)")


# --------------------------------------------------------------------------- the engine


class AlarmEngine:
    """Alarm state for every (asset, definition); see the module docstring for the rules.

    Every method that can change a state returns the transitions it caused, in definition
    order, each once. Unknown assets or codes raise :class:`AlarmError`.
    """

    def __init__(self, config: AlarmsConfig, assets: Sequence[str]) -> None:
        if len(set(assets)) != len(assets):
            raise AlarmError(f"duplicate asset names: {sorted(assets)}")
        self.config = config
        self._assets: dict[str, _Asset] = {
            asset: _Asset({d.code: _new_slot(d) for d in config.defs}) for asset in assets
        }

    # ------------------------------------------------------------------ inputs

    def evaluate(
        self,
        asset: str,
        values: Mapping[str, float | None],
        now_mono: float,
        now_utc: datetime,
        reasons: Mapping[str, str] | None = None,
    ) -> list[Alarm]:
        """Feed the latest values of one asset (by source name) and return the transitions.

        ``None`` or a non-finite value is BAD input: the alarm holds its state and any pending
        on/off delay is cancelled. Sources absent from ``values`` are not updated; an empty
        mapping only lets shelves expire. Bad-PV alarms read ``values[bad_key(source)]`` and
        take their text from ``reasons[source]`` (absent: "not GOOD").
        """
        a = self._asset(asset)
        _require_aware(now_utc)
        updated: list[_Slot] = []
        for slot in a.slots.values():
            key = slot.input_key
            if key not in values or not slot.d.enabled:
                continue
            x = values[key]
            if x is None or not math.isfinite(x):
                for cond in slot.conditions:
                    cond.raw = cond.active  # cancel whatever was pending
                continue
            x = float(x)
            slot.value = x
            if slot.d.kind == "bad_pv" and x != 0.0:
                slot.reason = (reasons or {}).get(slot.d.source, "") or f"{slot.d.source}: not GOOD"
            for cond in slot.conditions:
                raw = _raw(slot, cond, x)
                if raw != cond.raw:
                    cond.raw, cond.since = raw, now_mono
                if raw != cond.active:
                    if not raw:
                        delay = slot.d.off_delay_s
                    elif cond.on_delay_s is None:
                        delay = slot.d.on_delay_s
                    else:
                        delay = cond.on_delay_s
                    if now_mono - cond.since >= delay:
                        cond.active = raw
            updated.append(slot)
        self._expire(a, now_mono)  # after the update: an expiring shelve sees the fresh condition
        for slot in updated:
            if not slot.suppressed:
                self._annunciate(slot)
        return self._collect(asset, a, now_utc)

    def on_ack_tag(
        self,
        asset: str,
        value: float | bool | None,
        now_mono: float,
        now_utc: datetime,
    ) -> list[Alarm]:
        """Feed the operator's acknowledge tag; a rising edge (0 → non-zero) acknowledges all.

        The first value seen, and the first after a BAD one (``None`` or non-finite), only
        arm the edge detector: a button stuck on at start-up, or garbage, acknowledges nothing.
        """
        a = self._asset(asset)
        _require_aware(now_utc)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            a.ack_level = None
            return self._tick(asset, a, now_mono, now_utc)
        level = bool(value)
        previous, a.ack_level = a.ack_level, level
        if previous is False and level:
            return self.acknowledge(asset, None, now_mono, now_utc)
        return self._tick(asset, a, now_mono, now_utc)

    # ------------------------------------------------------------------ operator commands

    def acknowledge(
        self,
        asset: str,
        code: int | None,
        now_mono: float,
        now_utc: datetime,
    ) -> list[Alarm]:
        """Acknowledge one alarm (or alert), or all of the asset's when ``code`` is None.

        UNACK → ACKED, RTN_UNACK → NORMAL, a latched alarm whose condition has cleared →
        NORMAL. Shelved and out-of-service alarms are not affected.
        """
        a = self._asset(asset)
        _require_aware(now_utc)
        targets = a.slots.values() if code is None else [self._slot(a, asset, code)]
        out = self._tick(asset, a, now_mono, now_utc)
        for slot in targets:
            if slot.suppressed:
                continue
            slot.acked = True
            if slot.active and not slot.condition:
                slot.active = False  # latched: reset once acknowledged after the return
        return out + self._collect(asset, a, now_utc)

    def shelve(
        self,
        asset: str,
        code: int,
        duration_s: float,
        now_mono: float,
        now_utc: datetime,
    ) -> list[Alarm]:
        """Shelve an alarm for ``duration_s`` (0 < duration ≤ ``max_shelve_s``).

        Shelving again while shelved sets a new expiry. Raises :class:`AlarmError` for an
        out-of-service alarm or a duration out of range.
        """
        a = self._asset(asset)
        _require_aware(now_utc)
        slot = self._slot(a, asset, code)
        if not (math.isfinite(duration_s) and 0 < duration_s <= self.config.max_shelve_s):
            raise AlarmError(
                f"shelve duration {duration_s:g} s out of range (0, {self.config.max_shelve_s:g}] s "
                f"for {slot.d.name} on {asset}"
            )
        if not slot.d.enabled or slot.out_of_service:
            raise AlarmError(f"{slot.d.name} on {asset} is out of service and cannot be shelved")
        out = self._tick(asset, a, now_mono, now_utc)
        slot.shelved_until_mono = now_mono + duration_s
        slot.shelved_until_utc = now_utc + timedelta(seconds=duration_s)
        self._suppress(slot)
        return out + self._collect(asset, a, now_utc)

    def unshelve(self, asset: str, code: int, now_mono: float, now_utc: datetime) -> list[Alarm]:
        """End shelving now; an active condition is annunciated anew. No-op when not shelved."""
        a = self._asset(asset)
        _require_aware(now_utc)
        slot = self._slot(a, asset, code)
        out = self._tick(asset, a, now_mono, now_utc)
        if slot.shelved_until_mono is not None:
            self._end_shelve(slot)
        return out + self._collect(asset, a, now_utc)

    def set_out_of_service(
        self,
        asset: str,
        code: int,
        out_of_service: bool,
        now_mono: float,
        now_utc: datetime,
    ) -> list[Alarm]:
        """Take an alarm out of service (ends any shelving) or put it back in service.

        Putting back an alarm that is ``enabled: false`` in the config raises :class:`AlarmError`.
        """
        a = self._asset(asset)
        _require_aware(now_utc)
        slot = self._slot(a, asset, code)
        if not out_of_service and not slot.d.enabled:
            raise AlarmError(f"{slot.d.name} is disabled in the configuration (enabled: false)")
        out = self._tick(asset, a, now_mono, now_utc)
        if out_of_service:
            slot.out_of_service = True
            slot.shelved_until_mono = slot.shelved_until_utc = None
            self._suppress(slot)
        elif slot.out_of_service:
            slot.out_of_service = False
            self._reinstate(slot)
        return out + self._collect(asset, a, now_utc)

    # ------------------------------------------------------------------ views

    def state(self, asset: str, code: int) -> AlarmState:
        """The current state of one alarm."""
        a = self._asset(asset)
        return self._slot(a, asset, code).state()

    def hmi_block(self, asset: str) -> HmiBlock:
        """The asset's HMI summary (``fault_class`` and ``rul`` left for the runtime)."""
        a = self._asset(asset)
        alarm_word = unacked_word = shelved_word = oos_word = alert_word = 0
        highest = count = 0
        for code, slot in a.slots.items():
            bit = 1 << (code - 1)
            state = slot.state()
            if state is AlarmState.OUT_OF_SERVICE:
                shelved_word |= bit
                oos_word |= bit
            elif state is AlarmState.SHELVED:
                shelved_word |= bit
            elif slot.is_alert:
                if state in _ACTIVE_STATES:
                    alert_word |= bit
            else:
                if state in _ACTIVE_STATES:
                    alarm_word |= bit
                    count += 1
                    highest = max(highest, slot.severity)
                if state in (AlarmState.UNACK, AlarmState.RTN_UNACK):
                    unacked_word |= bit
        return HmiBlock(
            alarm_word=alarm_word,
            unacked_word=unacked_word,
            shelved_word=shelved_word,
            out_of_service_word=oos_word,
            alert_word=alert_word,
            highest_severity=highest,
            active_count=count,
            first_out_code=a.first_out,
        )

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """The engine's state as plain JSON-serialisable data (see :meth:`restore`)."""
        assets: dict[str, Any] = {}
        for asset, a in self._assets.items():
            alarms: dict[str, Any] = {}
            for code, slot in a.slots.items():
                until = slot.shelved_until_utc
                alarms[str(code)] = {
                    "name": slot.d.name,
                    "active": slot.active,
                    "acked": slot.acked,
                    "severity": slot.severity,
                    "conditions": [c.name for c in slot.conditions if c.active],
                    "value": slot.value,
                    "out_of_service": slot.out_of_service,
                    "shelved_until": until.isoformat() if until is not None else None,
                }
            assets[asset] = {"first_out": a.first_out, "alarms": alarms}
        return {"version": STATE_VERSION, "assets": assets}

    def restore(self, d: Mapping[str, Any], now_mono: float, now_utc: datetime) -> list[Alarm]:
        """Load :meth:`state_dict` output into a freshly built engine.

        Assets and codes no longer configured (or whose name changed) are skipped. Restored
        states are not reported again; shelves that expired while the agent was down are, as
        transitions. Pending delay timers restart. Raises :class:`AlarmError` for an unknown
        version or malformed data.
        """
        _require_aware(now_utc)
        if not isinstance(d, Mapping) or d.get("version") != STATE_VERSION:
            version = d.get("version") if isinstance(d, Mapping) else None
            raise AlarmError(f"unsupported alarm state version {version!r} (expected {STATE_VERSION})")
        try:
            return self._restore(d["assets"], now_mono, now_utc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AlarmError(f"malformed alarm state: {exc!r}") from None

    # ------------------------------------------------------------------ internals

    def _asset(self, asset: str) -> _Asset:
        try:
            return self._assets[asset]
        except KeyError:
            raise AlarmError(f"unknown asset {asset!r}") from None

    @staticmethod
    def _slot(a: _Asset, asset: str, code: int) -> _Slot:
        try:
            return a.slots[code]
        except KeyError:
            raise AlarmError(f"no alarm with code {code} on {asset}") from None

    @staticmethod
    def _annunciate(slot: _Slot) -> None:
        """Move the annunciated state after the condition (the slot is not suppressed)."""
        if slot.condition:
            sev = slot.condition_severity
            if not slot.active:
                slot.active, slot.acked, slot.severity = True, False, sev
            elif sev > slot.severity:
                slot.severity, slot.acked = sev, False  # escalation asks for a new acknowledgement
            elif sev < slot.severity and not slot.d.latch:
                slot.severity = sev
        elif slot.active and not (slot.d.latch and not slot.acked):
            slot.active = False
            if slot.is_alert:
                slot.acked = True  # an alert never waits for acknowledgement once it is gone

    @staticmethod
    def _suppress(slot: _Slot) -> None:
        slot.active, slot.acked, slot.severity = False, True, 0

    @staticmethod
    def _reinstate(slot: _Slot) -> None:
        """Back from shelved / out of service: re-evaluate, annunciating an active condition anew."""
        cond = slot.condition
        slot.active, slot.acked = cond, not cond
        slot.severity = slot.condition_severity if cond else 0

    def _end_shelve(self, slot: _Slot) -> None:
        slot.shelved_until_mono = slot.shelved_until_utc = None
        if not slot.suppressed:
            self._reinstate(slot)

    def _expire(self, a: _Asset, now_mono: float) -> None:
        for slot in a.slots.values():
            if slot.shelved_until_mono is not None and now_mono >= slot.shelved_until_mono:
                self._end_shelve(slot)

    def _tick(self, asset: str, a: _Asset, now_mono: float, now_utc: datetime) -> list[Alarm]:
        """Let shelves expire and report it, before a command acts (two moments, two reports)."""
        self._expire(a, now_mono)
        return self._collect(asset, a, now_utc)

    def _collect(self, asset: str, a: _Asset, now_utc: datetime) -> list[Alarm]:
        """Report every slot whose (state, severity) changed, and keep the first-out code."""
        out: list[Alarm] = []
        for code, slot in a.slots.items():
            key = slot.key()
            if key == slot.reported:
                continue
            before, state = slot.reported[0], key[0]
            slot.reported = key
            if (
                not slot.is_alert
                and a.first_out == 0
                and state in _EPISODE_STATES
                and before not in _EPISODE_STATES
            ):
                a.first_out = code
            out.append(
                Alarm(
                    code=code,
                    name=slot.d.name,
                    asset=asset,
                    severity=slot.reported_severity(state),
                    state=state,
                    message=_message(slot, before, state),
                    at=now_utc,
                    is_alert=slot.is_alert,
                    value=slot.value,
                )
            )
        if a.first_out and not any(not s.is_alert and s.state() in _EPISODE_STATES for s in a.slots.values()):
            a.first_out = 0
        return out

    def _restore(self, assets: Mapping[str, Any], now_mono: float, now_utc: datetime) -> list[Alarm]:
        max_s = self.config.max_shelve_s
        touched: list[tuple[str, _Asset]] = []
        for asset, saved in assets.items():
            a = self._assets.get(asset)
            if a is None:
                continue
            touched.append((asset, a))
            for code_s, s in saved["alarms"].items():
                slot = a.slots.get(int(code_s))
                if slot is None or s["name"] != slot.d.name:
                    continue
                names = set(s["conditions"])
                for cond in slot.conditions:
                    cond.active = cond.raw = cond.name in names
                    cond.since = now_mono
                slot.active, slot.acked = bool(s["active"]), bool(s["acked"])
                slot.severity = int(s["severity"])
                value = s.get("value")
                slot.value = float(value) if value is not None else None
                slot.out_of_service = bool(s["out_of_service"]) and slot.d.enabled
                until_s = s["shelved_until"]
                if until_s is not None and not slot.out_of_service and slot.d.enabled:
                    until = datetime.fromisoformat(until_s)
                    remaining = min((until - now_utc).total_seconds(), max_s)
                    slot.shelved_until_mono = now_mono + remaining
                    slot.shelved_until_utc = now_utc + timedelta(seconds=remaining)
                else:
                    slot.shelved_until_mono = slot.shelved_until_utc = None
                if slot.suppressed:
                    self._suppress(slot)
                slot.reported = slot.key()
            a.first_out = int(saved["first_out"])
            if a.first_out not in a.slots or a.slots[a.first_out].is_alert:
                a.first_out = 0
        out: list[Alarm] = []
        for asset, a in touched:
            self._expire(a, now_mono)
            out.extend(self._collect(asset, a, now_utc))
        return out


def _message(slot: _Slot, before: AlarmState, state: AlarmState) -> str:
    """Operator text for a transition."""
    d = slot.d
    if state is AlarmState.SHELVED:
        until = slot.shelved_until_utc
        return f"{d.name}: shelved until {until.isoformat() if until else '?'}"
    if state is AlarmState.OUT_OF_SERVICE:
        return f"{d.name}: out of service" + ("" if d.enabled else " (disabled in configuration)")
    if state is AlarmState.RTN_UNACK:
        return f"{d.name}: returned to normal, not yet acknowledged"
    if state is AlarmState.NORMAL:
        if before in _SUPPRESSED_STATES:
            return f"{d.name}: back in service, normal"
        if before is AlarmState.ACKED or (slot.is_alert and not slot.condition and not d.latch):
            return f"{d.name}: returned to normal"
        return f"{d.name}: acknowledged, normal"
    if state is AlarmState.ACKED and before is AlarmState.UNACK:
        return f"{d.name}: acknowledged"
    active = [c for c in slot.conditions if c.active]
    if active and active[0].name == "bad":
        text = f"{d.name}: {slot.reason or d.source + ': not GOOD'}"
    elif not active or slot.value is None:
        text = f"{d.name}: latched, condition cleared" if not active else f"{d.name}: active"
    elif active[0].name == "class":
        text = f"{d.name}: {d.source} = class {slot.value:g}"
    else:
        worst = max(active, key=lambda c: c.severity)
        text = f"{d.name}: {d.source} = {slot.value:.6g}, {worst.name.upper()} limit {worst.threshold:.6g}"
    if d.response and state is AlarmState.UNACK:
        text += f"; response: {d.response}"
    return text
