"""Core data types shared by every stage: frozen, typed, free of I/O.

Everything that moves through the pipeline (sources → pure stages → sinks) is one of these.
Durations are measured on the monotonic clock (``mono`` fields, seconds from
:func:`time.monotonic`); records carry UTC wall-clock times for people and logs.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import NamedTuple

__all__ = [
    "Action",
    "Alarm",
    "AlarmState",
    "Decision",
    "Frame",
    "Quality",
    "QualityCode",
    "Recommendation",
    "Sample",
    "Score",
    "Value",
    "utcnow",
]

Value = bool | int | float | str | None


_wall_clock: Callable[[], datetime] = partial(datetime.now, UTC)
"""The one source of wall-clock time in the agent (a seam: tests make it jump)."""


def utcnow() -> datetime:
    """The current wall-clock time in UTC (for records, never for durations)."""
    return _wall_clock()


class QualityCode(enum.IntEnum):
    """OPC-style quality, ordered so that ``min()`` of several qualities is the worst."""

    BAD = 0
    UNCERTAIN = 1
    GOOD = 2


@dataclass(frozen=True, slots=True)
class Quality:
    """A quality code with the reason a value is not GOOD (empty when it is)."""

    code: QualityCode
    reason: str = ""

    @classmethod
    def good(cls) -> Quality:
        return _GOOD

    @classmethod
    def bad(cls, reason: str) -> Quality:
        return cls(QualityCode.BAD, reason)

    @classmethod
    def uncertain(cls, reason: str) -> Quality:
        return cls(QualityCode.UNCERTAIN, reason)

    @property
    def is_good(self) -> bool:
        return self.code is QualityCode.GOOD

    def __str__(self) -> str:
        return self.code.name if not self.reason else f"{self.code.name} ({self.reason})"


_GOOD = Quality(QualityCode.GOOD)
_REAL = (int, float)  # bool is an int


class Sample(NamedTuple):
    """One value of one tag as read from (or written to) a device.

    ``source_time`` is the device's own timestamp when the protocol has one (OPC UA),
    ``received_at`` the UTC time the agent received it, ``mono`` the monotonic stamp every
    freshness decision is made on.

    Immutable like every core type; a NamedTuple rather than a frozen dataclass because a
    poll creates one per tag (a thousand a cycle) and this is three times cheaper to build.
    """

    tag: str
    value: Value
    quality: Quality
    received_at: datetime
    mono: float
    source_time: datetime | None = None

    @classmethod
    def now(
        cls,
        tag: str,
        value: Value,
        quality: Quality,
        source_time: datetime | None = None,
    ) -> Sample:
        return cls(tag, value, quality, utcnow(), time.monotonic(), source_time)

    def stale(self, limit_s: float, now_mono: float) -> bool:
        """Older than ``limit_s``; a NaN time counts as stale (fail closed)."""
        return not now_mono - self.mono <= limit_s

    def as_float(self) -> float:
        """The value as a float (NaN when it has none); callers check quality first."""
        v = self.value
        if type(v) is float:  # the common case first; a union in isinstance is built per call
            return v
        if isinstance(v, _REAL):
            return float(v)
        return math.nan


@dataclass(frozen=True, slots=True)
class Frame:
    """One model's aligned window for one or more assets.

    ``values`` has shape (assets, window, inputs) in engineering units (the scorer turns them
    into model input with :func:`agent.pipeline.features.window_to_input`); ``good_mask`` the
    same shape, True only where the input was GOOD and fresh. A value held under the
    bad-input policy is False there, so the Guard can refuse to act on held inputs.
    """

    model: str
    end: datetime
    end_mono: float
    assets: tuple[str, ...]
    roles: tuple[str, ...]
    values: object  # numpy.ndarray; typed loosely so that types.py stays import-light
    good_mask: object


@dataclass(frozen=True, slots=True)
class Score:
    """A model's (or detector's) outputs for one asset and one frame."""

    model: str
    version: str
    asset: str
    frame_end: datetime
    outputs: dict[str, float]
    latency_s: float
    label: str | None = None


class AlarmState(enum.StrEnum):
    """ISA-18.2 alarm states (plus the states that take an alarm away on purpose)."""

    NORMAL = "normal"
    UNACK = "active_unacknowledged"
    ACKED = "active_acknowledged"
    RTN_UNACK = "returned_unacknowledged"
    SHELVED = "shelved"
    OUT_OF_SERVICE = "out_of_service"


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm (or alert) transition as the engine reports it."""

    code: int
    name: str
    asset: str
    severity: int
    state: AlarmState
    message: str
    at: datetime
    is_alert: bool = False
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A setpoint recommendation with a TTL on the monotonic clock."""

    target_tag: str
    value: float
    reason: str
    model: str
    created_mono: float
    expires_mono: float
    created_at: datetime = field(default_factory=utcnow)
    inputs_good: bool = True

    def expired(self, now_mono: float) -> bool:
        """Past its TTL; a NaN time counts as expired (fail closed)."""
        return not now_mono < self.expires_mono


class Action(enum.StrEnum):
    WRITE = "WRITE"
    CLAMP = "CLAMP"
    HOLD = "HOLD"
    REJECT = "REJECT"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the Guard decided for a recommendation, and why."""

    recommendation: Recommendation | None
    action: Action
    applied_value: float | None
    reasons: tuple[str, ...] = ()

    @property
    def writes(self) -> bool:
        return self.action in (Action.WRITE, Action.CLAMP)
