"""Time-of-use electricity prices: a weekly table (config ``recommender.tariff``).

::

    tariff:
      currency: EUR
      weekly:                                   # the first band covering an hour sets its price
        - {days: weekdays, from: "07:00", to: "22:00", price: 0.31}
        - {days: all, from: "00:00", to: "24:00", price: 0.12}

``days``: ``all``, ``weekdays``, ``weekend`` or a list of ``mon`` … ``sun``; ``from``/``to``:
``HH:MM`` local time (``to`` after ``from``; ``24:00`` is the end of the day); ``price`` per
kWh. Every hour of the week must be covered (checked at load, naming the first hour that is
not). Prices are looked up at the local time of ``timezone``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from agent.configbase import FrozenModel, LocatedError

__all__ = ["TariffBand", "TariffConfig"]

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _minutes(value: str) -> int:
    m = _HHMM.match(value)
    if m is None or (m.group(1) == "24" and m.group(2) != "00"):
        raise ValueError(f"{value!r} is not a time HH:MM (00:00 to 24:00)")
    return int(m.group(1)) * 60 + int(m.group(2))


class TariffBand(FrozenModel):
    """One price on some days between two times of day."""

    days: Literal["all", "weekdays", "weekend"] | Annotated[list[Day], Field(min_length=1)] = "all"
    from_: Annotated[str, Field(alias="from")]
    to: str
    price: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    @field_validator("from_", "to")
    @classmethod
    def _time(cls, value: str) -> str:
        _minutes(value)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if _minutes(self.to) <= _minutes(self.from_):
            raise LocatedError(("to",), f"{self.to!r} must be after from {self.from_!r}")
        return self

    @property
    def weekdays(self) -> frozenset[int]:
        if self.days == "all":
            return frozenset(range(7))
        if self.days == "weekdays":
            return frozenset(range(5))
        if self.days == "weekend":
            return frozenset((5, 6))
        return frozenset(_DAY_NAMES.index(d) for d in self.days)

    def covers(self, weekday: int, minute: int) -> bool:
        return weekday in self.weekdays and _minutes(self.from_) <= minute < _minutes(self.to)


class TariffConfig(FrozenModel):
    """The weekly time-of-use table (see the module docstring)."""

    currency: Annotated[str, Field(min_length=1, max_length=8)] = "EUR"
    timezone: str = "UTC"
    weekly: Annotated[list[TariffBand], Field(min_length=1)]

    @field_validator("timezone")
    @classmethod
    def check_zone(cls, value: str) -> str:
        """``value`` if it names an IANA time zone (ValueError otherwise)."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _whole_week(self) -> Self:
        for wd in range(7):
            for minute in range(0, 24 * 60, 15):
                if not any(b.covers(wd, minute) for b in self.weekly):
                    raise LocatedError(
                        ("weekly",),
                        f"{_DAY_NAMES[wd]} {minute // 60:02d}:{minute % 60:02d} has no price: "
                        "every hour of the week needs a band (add a last band for all days, 00:00-24:00)",
                    )
        return self

    @property
    def tz(self) -> tzinfo:
        return ZoneInfo(self.timezone)

    def price_at(self, when: datetime) -> float:
        """Price per kWh at ``when`` (aware; naive is taken as UTC)."""
        loc = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(self.tz)
        minute = loc.hour * 60 + loc.minute
        for b in self.weekly:
            if b.covers(loc.weekday(), minute):
                return b.price
        raise AssertionError("the validator ensures a whole week")  # pragma: no cover

    def prices(self, start: datetime, steps: int, step_h: float = 1.0) -> list[float]:
        """The mean price of each step of ``step_h`` hours from ``start`` (15-min resolution)."""
        out: list[float] = []
        n = max(1, round(step_h * 4))
        for k in range(steps):
            t0 = start + timedelta(hours=k * step_h)
            out.append(sum(self.price_at(t0 + timedelta(minutes=15 * i)) for i in range(n)) / n)
        return out
