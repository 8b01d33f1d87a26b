"""Consumer demand with the structure real demand has, and the outdoor temperature driving it.

:class:`DemandModel` gives, for any simulated time, the demand (m3/h, before the plant's own
short-term noise) and the outdoor temperature (°C). Deterministic from (parameters, seed): the
same time always gives the same value, in any order of evaluation, so a plant, a recording and
a benchmark's perfect-knowledge oracle all see one and the same demand.

Structure (all of it in :class:`DemandParams`, published so a bench can reason about it):

- **daily profile** by type of day: a weekday (night minimum, a sharp 07:00 morning peak, an
  evening peak) and a weekend / public holiday (a later, broader late-morning peak, a lower
  level); each profile has mean 1 over the day;
- **public holidays**: the listed dates take the weekend profile (at ``holiday_level``);
- **temperature**: a daily cycle (peak at 15:00) plus **weather fronts** (a new level every
  ``front_days`` on average, cosine-blended between fronts); demand rises by
  ``temp_coeff_hot`` per K above ``temp_ref_c`` (gardens, cooling) and falls by
  ``temp_coeff_cold`` per K below it;
- **events**: on a day with probability ``event_rate_per_day``, extra demand of
  ``event_gain`` for a few hours (a fire-fighting draw, a main being flushed, a festival).

Times are the plant's wall clock (its ``epoch`` plus simulated seconds), taken as local time.
The plant adds its Ornstein-Uhlenbeck noise on top (``StationParams.demand_noise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

__all__ = ["DemandModel", "DemandParams", "hourly_series", "minute_series", "write_recording"]

_NODE_S = 900.0  # the demand is evaluated on a 15-min grid and interpolated linearly between


def _profile(peaks: tuple[tuple[float, float, float], ...], base: float) -> tuple[float, ...]:
    """A 24-point (hourly, at hh:00) periodic profile of gaussian peaks (hour, height, width)
    on a base, scaled to mean 1 over a fine grid."""
    fine = np.arange(0.0, 24.0, 0.25)
    y = np.full_like(fine, base)
    for h, a, w in peaks:
        d = (fine - h + 12.0) % 24.0 - 12.0
        y += a * np.exp(-0.5 * (d / w) ** 2)
    y /= y.mean()
    return tuple(float(v) for v in y[::4])


WEEKDAY = _profile(((7.5, 0.95, 1.3), (12.5, 0.35, 1.5), (19.5, 0.75, 1.8)), 0.55)
WEEKEND = _profile(((10.5, 0.8, 2.4), (19.0, 0.5, 2.0)), 0.6)


@dataclass(frozen=True)
class DemandParams:
    """The structure of the demand (see the module docstring). Defaults documented there."""

    weekday_profile: tuple[float, ...] = WEEKDAY
    weekend_profile: tuple[float, ...] = WEEKEND
    weekend_level: float = 0.88  # a weekend day's mean relative to a weekday's
    holiday_level: float = 0.85
    holidays: tuple[str, ...] = (
        "2023-01-01",
        "2023-04-07",
        "2023-04-10",
        "2023-05-01",
        "2023-05-18",
        "2023-05-29",
        "2023-10-03",
        "2023-12-25",
        "2023-12-26",
        "2024-01-01",
        "2024-03-29",
        "2024-04-01",
        "2024-05-01",
        "2024-05-09",
        "2024-05-20",
        "2024-10-03",
        "2024-12-25",
        "2024-12-26",
        "2025-01-01",
        "2025-04-18",
        "2025-04-21",
        "2025-05-01",
        "2025-05-29",
        "2025-06-09",
        "2025-10-03",
        "2025-12-25",
        "2025-12-26",
    )
    temp_mean_c: float = 14.0
    temp_daily_amplitude_c: float = 5.0  # peak at 15:00
    front_amplitude_c: float = 6.0  # standard deviation of a front's offset
    front_days: float = 3.0
    temp_ref_c: float = 15.0
    temp_coeff_hot: float = 0.025  # per K of daily mean above temp_ref_c
    temp_coeff_cold: float = 0.006  # per K below it
    event_rate_per_day: float = 0.15
    event_gain: tuple[float, float] = (0.2, 0.45)
    event_hours: tuple[float, float] = (1.0, 4.0)

    def __post_init__(self) -> None:
        for name in ("weekday_profile", "weekend_profile"):
            if len(getattr(self, name)) != 24:
                raise ValueError(f"{name} needs 24 hourly values")
        for d in self.holidays:
            date.fromisoformat(d)
        if not 0 <= self.event_rate_per_day <= 1:
            raise ValueError("event_rate_per_day must be in [0, 1]")
        if self.front_days <= 0:
            raise ValueError("front_days must be > 0")


class DemandModel:
    """Demand and temperature of one plant (seeded). ``t`` is seconds since ``epoch``."""

    def __init__(self, params: DemandParams, *, mean_m3h: float, epoch: datetime, seed: int) -> None:
        self.params = params
        self.mean_m3h = float(mean_m3h)
        self.epoch = epoch
        self.seed = int(seed)
        self._holidays = frozenset(date.fromisoformat(d) for d in params.holidays)
        self._nodes: dict[int, float] = {}
        self._fronts: dict[int, float] = {}
        self._events: dict[int, tuple[float, float, float] | None] = {}

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, *key])

    def is_holiday(self, d: date) -> bool:
        return d in self._holidays

    def _front(self, k: int) -> float:
        v = self._fronts.get(k)
        if v is None:
            g = self._rng(1, k + 1_000_000)
            v = self._fronts[k] = float(g.normal(0.0, self.params.front_amplitude_c))
        return v

    def _event(self, day: int) -> tuple[float, float, float] | None:
        """(start hour, duration h, gain) of the event on ``day`` (days since the epoch), if any."""
        if day not in self._events:
            p = self.params
            g = self._rng(2, day + 1_000_000)
            u = g.random(4)
            self._events[day] = (
                (
                    6.0 + 14.0 * u[1],
                    p.event_hours[0] + (p.event_hours[1] - p.event_hours[0]) * u[2],
                    p.event_gain[0] + (p.event_gain[1] - p.event_gain[0]) * u[3],
                )
                if u[0] < p.event_rate_per_day
                else None
            )
        return self._events[day]

    def temperature(self, t: float) -> float:
        """Outdoor temperature (°C) at ``t``: daily cycle plus weather fronts."""
        p = self.params
        when = self.epoch + timedelta(seconds=t)
        h = when.hour + when.minute / 60 + when.second / 3600
        x = t / 86400.0 / p.front_days
        k = math.floor(x)
        w = 0.5 - 0.5 * math.cos(math.pi * (x - k))
        front = (1 - w) * self._front(k) + w * self._front(k + 1)
        return p.temp_mean_c + p.temp_daily_amplitude_c * math.sin(2 * math.pi * (h - 9.0) / 24.0) + front

    def _front_only(self, t: float) -> float:
        p = self.params
        x = t / 86400.0 / p.front_days
        k = math.floor(x)
        w = 0.5 - 0.5 * math.cos(math.pi * (x - k))
        return p.temp_mean_c + (1 - w) * self._front(k) + w * self._front(k + 1)

    def exact(self, t: float) -> float:
        """Demand (m3/h) at ``t`` without the grid interpolation (and without noise)."""
        p = self.params
        when = self.epoch + timedelta(seconds=t)
        h = when.hour + when.minute / 60 + when.second / 3600
        d = when.date()
        if d in self._holidays:
            prof, level = p.weekend_profile, p.holiday_level
        elif d.weekday() >= 5:
            prof, level = p.weekend_profile, p.weekend_level
        else:
            prof, level = p.weekday_profile, 1.0
        i = int(h) % 24
        f = h - int(h)
        shape = prof[i] * (1 - f) + prof[(i + 1) % 24] * f
        # the temperature acts through the day's level (fronts) and, less, the afternoon heat
        temp = 0.7 * self._front_only(t) + 0.3 * self.temperature(t)
        dt = temp - p.temp_ref_c
        tf = 1.0 + (p.temp_coeff_hot * dt if dt > 0 else p.temp_coeff_cold * dt)
        ev = 0.0
        day = (when.date() - self.epoch.date()).days
        e = self._event(day)
        if e is not None and e[0] <= h < e[0] + e[1]:
            ev = e[2]
        return self.mean_m3h * level * shape * tf * (1.0 + ev)

    def demand(self, t: float) -> float:
        """Demand (m3/h) at ``t``, from a 15-min grid (cached) interpolated linearly."""
        x = t / _NODE_S
        k = math.floor(x)
        a = self._nodes.get(k)
        if a is None:
            if len(self._nodes) > 200_000:
                self._nodes.clear()
            a = self._nodes[k] = self.exact(k * _NODE_S)
        b = self._nodes.get(k + 1)
        if b is None:
            b = self._nodes[k + 1] = self.exact((k + 1) * _NODE_S)
        f = x - k
        return a + (b - a) * f


def minute_series(
    model: DemandModel,
    minutes: int,
    *,
    noise: float = 0.04,
    noise_time_s: float = 600.0,
    start_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Demand (m3/h, with the plant's Ornstein-Uhlenbeck noise) and temperature (°C), one value
    a minute for ``minutes`` from ``start_s``: what the plant's Station.OutletFlow and
    Station.AmbientTemp show, without running the pumps (the demand does not depend on them)."""
    g = model._rng(3, int(start_s) // 60 + 1_000_000_000)  # seed keys must not be negative
    dt = 60.0
    a = math.exp(-dt / noise_time_s)
    z = g.standard_normal(minutes) * noise * math.sqrt(1 - a * a)
    ou = 0.0
    dem = np.empty(minutes)
    tmp = np.empty(minutes)
    for j in range(minutes):
        ou = ou * a + z[j]
        t = start_s + j * dt
        dem[j] = model.demand(t) * (1.0 + ou)
        tmp[j] = model.temperature(t) if j % 10 == 0 else tmp[j - 1]
    return dem, tmp


def hourly_series(
    model: DemandModel, hours: int, *, noise: float = 0.04, start_s: float = 0.0
) -> tuple[list[datetime], np.ndarray, np.ndarray]:
    """Hourly means of :func:`minute_series`: (hour start times, demand [hours], temperature)."""
    dem, tmp = minute_series(model, hours * 60, noise=noise, start_s=start_s)
    times = [model.epoch + timedelta(seconds=start_s + i * 3600.0) for i in range(hours)]
    return times, dem.reshape(hours, 60).mean(1), tmp.reshape(hours, 60).mean(1)


def write_recording(path: str | Path, model: DemandModel, hours: int, *, start_s: float = 0.0) -> Path:
    """A wide recording CSV (``timestamp,Station.OutletFlow,Station.AmbientTemp``, one row a
    minute, ISO 8601 UTC with milliseconds) of :func:`minute_series`."""
    dem, tmp = minute_series(model, hours * 60, start_s=start_s)
    p = Path(path)
    t0 = model.epoch + timedelta(seconds=start_s)
    with p.open("w", encoding="utf-8", newline="") as fh:
        fh.write("timestamp,Station.OutletFlow,Station.AmbientTemp\n")
        for j in range(len(dem)):
            ts = (t0 + timedelta(minutes=j)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            fh.write(f"{ts},{dem[j]:.3f},{tmp[j]:.2f}\n")
    return p
