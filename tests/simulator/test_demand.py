"""The structured demand: weekday/weekend shapes, holidays, temperature, events; seeded."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import numpy as np

from simulator import Plant, StationParams
from simulator.demand import DemandModel, DemandParams, hourly_series

EPOCH = datetime.fromisoformat("2024-01-08T00:00:00+00:00")  # a Monday, not a holiday


def _model(params: DemandParams | None = None, seed: int = 1) -> DemandModel:
    return DemandModel(params or DemandParams(), mean_m3h=120.0, epoch=EPOCH, seed=seed)


def _day(m: DemandModel, day: int) -> np.ndarray:
    return np.array([m.exact(day * 86400.0 + h * 3600.0) for h in range(24)])


def test_weekend_has_another_shape_and_a_lower_level_than_weekdays() -> None:
    flat = replace(DemandParams(), front_amplitude_c=0.0, temp_daily_amplitude_c=0.0, event_rate_per_day=0.0)
    m = _model(flat)
    monday, tuesday, saturday = _day(m, 0), _day(m, 1), _day(m, 5)
    assert np.allclose(monday, tuesday)  # no temperature or events: weekdays repeat
    assert saturday.mean() < 0.95 * monday.mean()
    assert int(np.argmax(monday)) in (7, 8) and int(np.argmax(saturday)) in (10, 11)
    assert monday[3] < 0.7 * monday.mean()  # the night minimum


def test_a_public_holiday_takes_the_weekend_shape() -> None:
    flat = replace(DemandParams(), front_amplitude_c=0.0, temp_daily_amplitude_c=0.0, event_rate_per_day=0.0)
    holiday = replace(flat, holidays=("2024-01-10",))  # a Wednesday
    m, h = _model(flat), _model(holiday)
    assert np.allclose(_day(m, 1), _day(h, 1))
    wed, hol = _day(m, 2), _day(h, 2)
    assert int(np.argmax(hol)) in (10, 11) and hol.mean() < 0.9 * wed.mean()


def test_hot_days_draw_more_than_cold_days() -> None:
    base = replace(DemandParams(), front_amplitude_c=0.0, event_rate_per_day=0.0)
    cold, hot = _model(replace(base, temp_mean_c=5.0)), _model(replace(base, temp_mean_c=28.0))
    assert _model(replace(base, temp_mean_c=28.0)).temperature(15 * 3600) > 30
    assert _day(hot, 1).mean() > 1.25 * _day(cold, 1).mean()


def test_fronts_move_the_temperature_over_days_and_the_seed_decides_them() -> None:
    m1, m1b, m2 = _model(seed=1), _model(seed=1), _model(seed=2)
    noon = [m1.temperature(d * 86400 + 12 * 3600) for d in range(30)]
    assert max(noon) - min(noon) > 8.0  # fronts, not only the daily cycle
    assert noon == [m1b.temperature(d * 86400 + 12 * 3600) for d in range(30)]
    assert noon != [m2.temperature(d * 86400 + 12 * 3600) for d in range(30)]


def test_events_add_demand_for_hours_on_some_days() -> None:
    quiet = replace(DemandParams(), event_rate_per_day=0.0)
    busy = replace(DemandParams(), event_rate_per_day=1.0)
    q, b = _model(quiet), _model(busy)
    diff = np.array([b.exact(h * 3600.0) / q.exact(h * 3600.0) - 1 for h in range(24 * 7)])
    per_day = (diff.reshape(7, 24) > 0.15).sum(axis=1)
    assert (per_day >= 1).all() and (per_day <= 5).all()


def test_the_plant_draws_the_structured_demand_and_publishes_its_temperature() -> None:
    prm = StationParams(demand=DemandParams(), noise_scale=0.0, epoch=EPOCH.isoformat())
    plant = Plant(prm, seed=4)
    model = DemandModel(prm.demand, mean_m3h=prm.demand_mean_m3h, epoch=EPOCH, seed=4)  # type: ignore[arg-type]
    plant.run(3 * 3600, dt_s=5.0)
    assert (
        abs(plant.state.demand_m3h - model.demand(plant.t - 1.0)) < 1e-9
    )  # at the last 1 s sub-step's start
    assert abs(plant.state.tags["Station.AmbientTemp"] - model.temperature(plant.t)) < 0.01
    default = Plant(StationParams(noise_scale=0.0), seed=4)  # the sine stays the default
    assert default.demand_model is None


def test_hourly_series_is_seeded_and_noisy_around_the_model() -> None:
    times, d, temp = hourly_series(_model(seed=5), 48)
    _, d2, _ = hourly_series(_model(seed=5), 48)
    assert len(times) == 48 and np.array_equal(d, d2)
    exact = np.array([_model(seed=5).exact(h * 3600.0 + 1800.0) for h in range(48)])
    rel = d / exact - 1
    assert 0.002 < np.abs(rel).mean() < 0.08 and np.isfinite(temp).all()
