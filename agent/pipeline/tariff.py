"""Time-of-use electricity prices: a weekly table, a price tag from the PLC, or both
(config ``recommender.tariff``).

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

``price_tag``: a tag the PLC provides with the price now (per kWh, in ``currency``). The planner
prices the current step with it and the future from the weekly table, or, without one, from
the weekly profile it learned from the tag (:class:`PriceProfile`: the mean price of each hour
of the week, persisted in ``state_dir``). While the tag is not GOOD the table (or the profile)
prices the current step too, and the plan says so. At least one of the two is required.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from agent.configbase import FrozenModel, LocatedError

__all__ = ["PriceProfile", "TariffBand", "TariffConfig"]

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
    """The weekly time-of-use table and/or the PLC's price tag (see the module docstring)."""

    currency: Annotated[str, Field(min_length=1, max_length=8)] = "EUR"
    timezone: str = "UTC"
    weekly: Annotated[list[TariffBand], Field(min_length=1)] | None = None
    price_tag: str | None = None
    """A tag with the price now (per kWh): the current step's price; the future from ``weekly``
    (or the profile learned from this tag)."""

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
        if self.weekly is None:
            if self.price_tag is None:
                raise ValueError("a tariff needs a weekly table, a price_tag, or both")
            return self
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
        """Price per kWh at ``when`` (aware; naive is taken as UTC) from the weekly table
        (ValueError without one)."""
        if self.weekly is None:
            raise ValueError("no weekly table: the prices come from the price tag")
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


class PriceProfile:
    """The weekly price profile learned from a price tag: the mean price of each hour of the
    week (local time of the tariff's zone), each hour's mean folded into its bin with a weight
    of at least 1/``weeks`` (recent weeks count more). Pure apart from :meth:`to_json` /
    :meth:`from_json`, which the planner persists."""

    def __init__(self, tz: tzinfo, weeks: int = 4) -> None:
        self.tz = tz
        self.weeks = weeks
        self.bins: list[float | None] = [None] * 168
        self.counts = [0] * 168
        self._hour: int | None = None  # the hour being averaged (hours since the epoch, UTC)
        self._sum = 0.0
        self._n = 0

    def _bin(self, when: datetime) -> int:
        loc = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(self.tz)
        return loc.weekday() * 24 + loc.hour

    def observe(self, when: datetime, price: float) -> bool:
        """Add a GOOD price seen at ``when``; True when an hour was closed into its bin."""
        hour = int(when.timestamp() // 3600)
        closed = False
        if self._hour is not None and hour != self._hour and self._n:
            k = self._bin(datetime.fromtimestamp(self._hour * 3600, UTC))
            mean = self._sum / self._n
            old = self.bins[k]
            self.counts[k] += 1
            w = 1.0 / min(self.counts[k], self.weeks)
            self.bins[k] = mean if old is None else old + w * (mean - old)
            closed = True
        if hour != self._hour:
            self._hour, self._sum, self._n = hour, 0.0, 0
        if math.isfinite(price):
            self._sum += price
            self._n += 1
        return closed

    @property
    def known(self) -> int:
        """Hours of the week with a learned price."""
        return sum(b is not None for b in self.bins)

    def prices(self, start: datetime, steps: int, step_h: float = 1.0) -> list[float] | None:
        """The learned price of each step (an hour not learned yet: the mean of those that
        are), or None before any hour was learned."""
        known = [b for b in self.bins if b is not None]
        if not known:
            return None
        mean = sum(known) / len(known)
        out = []
        for k in range(steps):
            b = self.bins[self._bin(start + timedelta(hours=k * step_h))]
            out.append(mean if b is None else b)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "bins": self.bins, "counts": self.counts}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], tz: tzinfo, weeks: int = 4) -> PriceProfile:
        """A profile from :meth:`to_json` (ValueError when it is not one)."""
        bins, counts = doc.get("bins"), doc.get("counts")
        if (
            not isinstance(bins, list)
            or not isinstance(counts, list)
            or len(bins) != 168
            or len(counts) != 168
        ):
            raise ValueError("not a price profile (168 hourly bins and counts)")
        out = cls(tz, weeks)
        for i, (b, c) in enumerate(zip(bins, counts, strict=True)):
            if b is not None and not (isinstance(b, int | float) and math.isfinite(b)):
                raise ValueError(f"bin {i}: {b!r} is not a price")
            out.bins[i] = None if b is None else float(b)
            out.counts[i] = int(c) if isinstance(c, int) and c >= 0 else 0
        return out
