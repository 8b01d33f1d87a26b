"""The agent's demand history and forecast fallbacks (no bundle), and the calendar features."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from agent.pipeline.forecast import (
    CALENDAR_ROLES,
    DemandForecaster,
    HourlyHistory,
    calendar_features,
    forecast_window,
)

T0 = datetime(2024, 1, 8, tzinfo=UTC)  # a Monday


def _feed(
    h: HourlyHistory, start: datetime, minutes: int, demand: float | None, step_s: int = 60
) -> datetime:
    t = start
    for _ in range(minutes * 60 // step_s):
        h.add(t, demand, 10.0)
        t += timedelta(seconds=step_s)
    return t


def test_hourly_means_gaps_and_partial_hours() -> None:
    h = HourlyHistory(48)
    t = _feed(h, T0 + timedelta(minutes=40), 20, 50.0)  # watched 20 min only: a gap
    t = _feed(h, t, 60, 100.0)
    t = _feed(h, t, 30, 200.0)
    t = _feed(h, t, 30, None)  # half GOOD: still a mean of the GOOD half
    t = _feed(h, t + timedelta(hours=3), 60, 80.0)  # three hours without a cycle
    h.add(t, 80.0, 10.0)  # opens the next hour: the previous one is closed
    starts, d, temp = h.latest(48)
    assert [s - T0 for s in starts] == [timedelta(hours=k) for k in range(7)]
    assert math.isnan(d[0]) and d[1] == 100.0 and d[2] == 200.0
    assert np.isnan(d[3:6]).all() and d[6] == 80.0 and temp[1] == 10.0
    assert h.complete == 1


def test_a_clock_stepping_back_voids_the_history() -> None:
    h = HourlyHistory(48)
    t = _feed(h, T0, 120, 100.0)
    h.add(t, 1.0, 1.0)
    assert h.complete == 2
    h.add(T0 - timedelta(hours=5), 1.0, 1.0)
    assert h.latest(48)[0] == [] and h.complete == 0


def test_fallbacks_say_what_they_are() -> None:
    f = DemandForecaster(None, [], horizon_h=6)
    h = HourlyHistory(168)
    now = T0 + timedelta(hours=30, minutes=10)
    fc = f.forecast(h, now, 123.0)
    assert fc.source == "persistence (history 0 h)" and fc.values == (123.0,) * 6
    starts = [T0 + timedelta(hours=k) for k in range(30)]
    h.extend(starts, [float(k) for k in range(30)], [5.0] * 30)
    fc = f.forecast(h, now, 123.0)
    # hour 30 is 24 h after hour 6: seasonal-naive
    assert fc.source == "seasonal-naive (history 30 h)" and fc.values == (6.0, 7.0, 8.0, 9.0, 10.0, 11.0)
    assert fc.start == T0 + timedelta(hours=30)


def test_calendar_roles() -> None:
    hol = {date(2024, 1, 10)}
    starts = [T0 + timedelta(days=d, hours=12) for d in range(7)]
    cal = calendar_features(starts, hol)
    day_off = cal[:, CALENDAR_ROLES.index("day_off")]
    assert list(day_off) == [0, 0, 1, 0, 0, 1, 1]
    assert list(cal[:, CALENDAR_ROLES.index("day_off_next_week")]) == [0, 0, 0, 0, 0, 1, 1]
    assert np.allclose(cal[:, 0] ** 2 + cal[:, 1] ** 2, 1)
    with pytest.raises(ValueError, match="temperature history"):
        forecast_window(("demand", "temperature"), [1.0] * 7, None, starts, hol)
    with pytest.raises(ValueError, match="unknown forecast role 'rain'"):
        forecast_window(("rain",), [1.0] * 7, None, starts, hol)
