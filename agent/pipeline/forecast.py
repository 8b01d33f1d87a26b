"""Demand forecast: hourly history, calendar features and the forecast bundle's call.

The one feature path (export/forecast.py imports it): :func:`forecast_window` turns the last
``L`` hours (hourly mean demand and temperature, each hour's start time) into the raw window
``[L, R]`` of the manifest's roles, in manifest order; the bundle's own normalisation and
``flatten`` spec (:func:`agent.pipeline.features.window_to_input`) make it the model input.
Calendar roles are computed here from the hour's local time, never read from a tag:

========================  ====================================================
``demand``                hourly mean demand (m³/h)
``temperature``           hourly mean outdoor temperature (°C), when the bundle has it
``hour_sin/hour_cos``     time of day on the unit circle
``dow_sin/dow_cos``       day of week on the unit circle
``day_off``               1 on a weekend day or public holiday
``day_off_next_week``     the same, one week later: the horizon's holidays are in the window
========================  ====================================================

The model's output ``demand`` ``[batch, H]`` is the hourly mean demand (m³/h) of the H hours
after the window's last hour: in the agent, from the hour in progress on.

:class:`HourlyHistory` accumulates hourly means from the tag table (an hour with less than half
its cycles GOOD is a gap). :class:`DemandForecaster` runs the bundle once its window is whole;
until then (a fresh start, a gap) it falls back to the seasonal-naive forecast (the same hour
yesterday) or, with less than a day, persistence of the last hour — and says so.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

import numpy as np
import numpy.typing as npt

from agent.errors import ModelError
from agent.modelstore.bundle import Bundle
from agent.pipeline.features import window_to_input

__all__ = [
    "CALENDAR_ROLES",
    "FORECAST_ROLES",
    "DemandForecaster",
    "Forecast",
    "HourlyHistory",
    "calendar_features",
    "check_forecast_bundle",
    "forecast_window",
]

FloatArray = npt.NDArray[np.float64]

CALENDAR_ROLES = ("hour_sin", "hour_cos", "dow_sin", "dow_cos", "day_off", "day_off_next_week")
FORECAST_ROLES = ("demand", "temperature", *CALENDAR_ROLES)
"""Every role a forecast bundle may have; ``demand`` and the calendar roles are required."""


def _day_off(d: date, holidays: Collection[date]) -> float:
    return 1.0 if d.weekday() >= 5 or d in holidays else 0.0


def calendar_features(
    hour_starts: Sequence[datetime], holidays: Collection[date], tz: tzinfo = UTC
) -> FloatArray:
    """``[T, 6]`` calendar roles (:data:`CALENDAR_ROLES` order) at each hour's local time."""
    out = np.empty((len(hour_starts), len(CALENDAR_ROLES)))
    for i, t in enumerate(hour_starts):
        loc = t.astimezone(tz)
        h = loc.hour + loc.minute / 60 + 0.5  # the middle of the hour
        dow = loc.weekday() + h / 24
        out[i] = (
            math.sin(2 * math.pi * h / 24),
            math.cos(2 * math.pi * h / 24),
            math.sin(2 * math.pi * dow / 7),
            math.cos(2 * math.pi * dow / 7),
            _day_off(loc.date(), holidays),
            _day_off((loc + timedelta(days=7)).date(), holidays),
        )
    return out


def forecast_window(
    roles: Sequence[str],
    demand: npt.ArrayLike,
    temperature: npt.ArrayLike | None,
    hour_starts: Sequence[datetime],
    holidays: Collection[date],
    tz: tzinfo = UTC,
) -> FloatArray:
    """The raw window ``[T, len(roles)]`` for the given roles (manifest order)."""
    cal = calendar_features(hour_starts, holidays, tz)
    cols: list[FloatArray] = []
    for r in roles:
        if r == "demand":
            cols.append(np.asarray(demand, dtype=np.float64))
        elif r == "temperature":
            if temperature is None:
                raise ValueError("the forecast needs a temperature history (role temperature)")
            cols.append(np.asarray(temperature, dtype=np.float64))
        elif r in CALENDAR_ROLES:
            cols.append(cal[:, CALENDAR_ROLES.index(r)])
        else:
            raise ValueError(f"unknown forecast role {r!r} (known: {', '.join(FORECAST_ROLES)})")
    return np.stack(cols, axis=-1)


def check_forecast_bundle(bundle: Bundle) -> int:
    """The bundle's horizon (hours); ModelError naming the bundle when it is no demand forecast."""
    m = bundle.manifest
    who = f"model {m.ident} ({bundle.path})"
    missing = [r for r in ("demand", *CALENDAR_ROLES) if r not in m.roles]
    unknown = [r for r in m.roles if r not in FORECAST_ROLES]
    if m.task != "forecast" or missing or unknown:
        raise ModelError(
            f"{who} is not a demand forecast: task {m.task}, roles {list(m.roles)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    if m.window.sample_period_s != 3600 or m.features.kind != "flatten":
        raise ModelError(f"{who}: a demand forecast needs window.sample_period_s 3600 and features flatten")
    out = m.outputs[0]
    if out.name != "demand" or len(out.shape) != 2 or not isinstance(out.shape[1], int):
        raise ModelError(f"{who}: the first output must be demand [batch, H]")
    return out.shape[1]


@dataclass(frozen=True, slots=True)
class Forecast:
    """Hourly mean demand (m³/h) for the hours starting at ``start`` (UTC), and its source."""

    start: datetime
    values: tuple[float, ...]
    source: str  # "model name vX", "seasonal-naive (…)", "persistence (…)"


class HourlyHistory:
    """Hourly means of demand and temperature, the last ``hours`` complete hours.

    ``add`` once per cycle with the cycle's UTC time and the GOOD values (None otherwise). An
    hour watched for less than 30 minutes, or whose GOOD demand count is below half of its
    cycles, is a gap (NaN); so is an hour without a single cycle.
    """

    def __init__(self, hours: int) -> None:
        self.hours = hours
        self._starts: deque[datetime] = deque(maxlen=hours)
        self._demand: deque[float] = deque(maxlen=hours)
        self._temp: deque[float] = deque(maxlen=hours)
        self._cur: datetime | None = None
        self._first = self._last = datetime.min.replace(tzinfo=UTC)
        self._sum = [0.0, 0.0]
        self._n = [0, 0]
        self._seen = 0

    def add(self, now_utc: datetime, demand: float | None, temperature: float | None) -> None:
        hour = now_utc.replace(minute=0, second=0, microsecond=0)
        if self._cur is not None and hour < self._cur:  # the wall clock stepped back: start again
            self._cur = None
        if self._cur is not None and hour != self._cur:
            self._close()
        if self._cur is None:
            self._fill_to(hour)
            self._cur = hour
            self._sum, self._n, self._seen = [0.0, 0.0], [0, 0], 0
            self._first = now_utc
        self._last = now_utc
        self._seen += 1
        for i, v in enumerate((demand, temperature)):
            if v is not None and math.isfinite(v):
                self._sum[i] += v
                self._n[i] += 1

    def _close(self) -> None:
        assert self._cur is not None
        # an hour watched for less than half of it (start-up, an outage) is no hour's mean
        half = max(1, self._seen / 2) if self._last - self._first >= timedelta(minutes=30) else math.inf
        self._push(
            self._cur,
            self._sum[0] / self._n[0] if self._n[0] >= half else math.nan,
            self._sum[1] / self._n[1] if self._n[1] >= half else math.nan,
        )
        self._cur = None

    def _fill_to(self, hour: datetime) -> None:
        """Hours without a single cycle between the last held hour and ``hour`` are gaps."""
        if not self._starts or self._starts[-1] >= hour:
            if self._starts and self._starts[-1] >= hour:  # a clock step back: old hours are void
                self._starts.clear()
                self._demand.clear()
                self._temp.clear()
            return
        t = max(self._starts[-1] + timedelta(hours=1), hour - timedelta(hours=self.hours))
        while t < hour:
            self._push(t, math.nan, math.nan)
            t += timedelta(hours=1)

    def _push(self, start: datetime, demand: float, temp: float) -> None:
        self._starts.append(start)
        self._demand.append(demand)
        self._temp.append(temp)

    def extend(
        self, starts: Sequence[datetime], demand: Sequence[float], temperature: Sequence[float]
    ) -> None:
        """Prefill complete hours (a historian's export, a bench's warm-up), oldest first."""
        self._cur = None
        for s, d, t in zip(starts, demand, temperature, strict=True):
            self._push(s, float(d), float(t))

    @property
    def complete(self) -> int:
        """How many of the latest hours are complete without a gap."""
        n = 0
        for v in reversed(self._demand):
            if not math.isfinite(v):
                break
            n += 1
        return n

    def latest(self, n: int) -> tuple[list[datetime], FloatArray, FloatArray]:
        """The last ``n`` hours (fewer if not yet held): starts, demand, temperature."""
        k = min(n, len(self._starts))
        starts = list(self._starts)[-k:] if k else []
        return (
            starts,
            np.array(list(self._demand)[-k:] if k else []),
            np.array(list(self._temp)[-k:] if k else []),
        )


class DemandForecaster:
    """Forecasts from the bundle (or the fallbacks, see the module docstring)."""

    def __init__(
        self,
        bundle: Bundle | None,
        holidays: Collection[date],
        *,
        horizon_h: int = 24,
        tz: tzinfo = UTC,
    ) -> None:
        self.bundle = bundle
        self.holidays = frozenset(holidays)
        self.tz = tz
        self.horizon_h = check_forecast_bundle(bundle) if bundle is not None else horizon_h
        self.length = bundle.manifest.window.length if bundle is not None else 168

    def forecast(self, history: HourlyHistory, now_utc: datetime, current_m3h: float) -> Forecast:
        """``horizon_h`` hours from the start of the hour in progress."""
        start = now_utc.replace(minute=0, second=0, microsecond=0)
        starts, dem, temp = history.latest(self.length)
        whole = history.complete >= self.length and starts[-1] == start - timedelta(hours=1)
        if self.bundle is not None and whole:
            m = self.bundle.manifest
            temps = temp if np.isfinite(temp).all() else None
            if "temperature" not in m.roles or temps is not None:
                raw = forecast_window(m.roles, dem, temps, starts, self.holidays, self.tz)
                x = window_to_input(raw[None], m)
                y = self.bundle.run({m.model_input.name: x})[0][0]
                return Forecast(start, tuple(max(0.0, float(v)) for v in y[: self.horizon_h]), m.ident)
        h = self.horizon_h
        if history.complete >= 24:
            day = dem[-24:]  # day[0] is the hour start - 24 h
            vals = [float(day[k % 24]) for k in range(h)]
            return Forecast(start, tuple(vals), f"seasonal-naive (history {history.complete} h)")
        last = float(dem[-1]) if len(dem) and math.isfinite(dem[-1]) else current_m3h
        return Forecast(start, (max(0.0, last),) * h, f"persistence (history {history.complete} h)")
