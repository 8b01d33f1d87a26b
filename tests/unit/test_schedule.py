"""The tariff scheduler on synthetic cases, and the tariff table's config errors."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from agent.config import parse_config
from agent.energyplan import rule_power
from agent.errors import ConfigError
from agent.pipeline.policy import PumpEnergyRule, RecommenderConfig
from agent.pipeline.schedule import PowerTable, TankBand, plan
from agent.pipeline.tariff import TariffConfig

RULE = PumpEnergyRule(
    RecommenderConfig.model_validate(
        {
            "station": {"tank_area_m2": 400},
            "level_tag": "L",
            "demand_tag": "D",
            "pumps": [{"asset": "p1", "target": "S1"}, {"asset": "p2", "target": "S2"}],
        }
    )
)
TANK = TankBand(400, 2.0, 4.0, reserve_m=0.4, margin_m=0.1)
TABLE = PowerTable.build(rule_power(RULE), 250, np.linspace(TANK.lowest, TANK.highest, 121))
CHEAP = {0, 1, 2, 3, 4, 5, 22, 23}
TWO_RATE = [0.10 if h in CHEAP else 0.30 for h in range(24)]
DEMAND = [80 + 60 * np.sin(np.pi * h / 24) for h in range(24)]


def test_a_two_rate_tariff_fills_the_tank_in_cheap_hours_and_keeps_the_band() -> None:
    pl = plan(DEMAND, TWO_RATE, 3.0, TANK, TABLE)
    assert pl.feasible
    cheap = [q - d for h, (q, d) in enumerate(zip(pl.flows_m3h, DEMAND, strict=True)) if h in CHEAP]
    dear = [q - d for h, (q, d) in enumerate(zip(pl.flows_m3h, DEMAND, strict=True)) if h not in CHEAP]
    assert np.mean(cheap) > 20 > -20 > np.mean(dear)  # fill when cheap, draw down when dear
    assert min(pl.levels_m) >= TANK.lowest - 1e-9 and max(pl.levels_m) <= TANK.highest + 1e-9
    assert pl.levels_m[-1] >= 3.0 - 0.02  # ends where it started: tomorrow's storage is not sold
    assert min(pl.levels_m) < 2.6 and max(pl.levels_m) > 3.7  # the storage is used
    follow = plan(DEMAND, TWO_RATE, 3.0, TANK, _follow_demand_table())  # no room: Q = D
    assert follow.flows_m3h == pytest.approx(DEMAND)
    assert pl.cost < 0.9 * follow.cost  # 600 m³ of usable storage against 2,800 m³ a day


def _follow_demand_table() -> PowerTable:
    # the same station when the tank has no room: the level grid is a single point
    return PowerTable.build(rule_power(RULE), 250, [3.0])


def test_the_reserve_is_never_used_even_when_it_would_pay() -> None:
    dear_first = [0.5] * 12 + [0.1] * 12  # draw down now, refill later: down to the reserve
    pl = plan([150.0] * 24, dear_first, 3.0, TANK, TABLE)
    assert TANK.lowest - 1e-9 <= min(pl.levels_m) < TANK.lowest + 0.05
    no_reserve = TankBand(400, 2.0, 4.0, reserve_m=0.0, margin_m=0.1)
    tab = PowerTable.build(rule_power(RULE), 250, np.linspace(2.0, 3.9, 121))
    assert min(plan([150.0] * 24, dear_first, 3.0, no_reserve, tab).levels_m) < TANK.lowest - 0.2


def test_a_level_below_the_reserve_is_brought_back_within_the_first_step() -> None:
    pl = plan([100.0] * 6, [0.5] * 6, TANK.lowest - 0.1, TANK, TABLE)
    assert pl.first_flow_m3h >= 100.0 + TANK.area_m2 * 0.1 - 1e-6
    high = plan([100.0] * 6, [0.1] * 6, TANK.highest + 0.05, TANK, TABLE)
    assert high.first_flow_m3h <= 100.0 - TANK.area_m2 * 0.05 + 1e-6


def test_a_flat_tariff_gives_the_energy_optimal_flow() -> None:
    # kWh/m³ is convex in flow and parked pumps still draw power: with one price the cheapest
    # plan evens the flow out (the tank absorbs the demand's swings) and spends no less than needed
    pl = plan(DEMAND, [0.2] * 24, 3.0, TANK, TABLE)
    follow = plan(DEMAND, [0.2] * 24, 3.0, TANK, _follow_demand_table())
    assert np.std(pl.flows_m3h) < 0.5 * np.std(DEMAND)
    assert pl.energy_kwh < follow.energy_kwh
    assert pl.cost == pytest.approx(0.2 * pl.energy_kwh)
    steady = plan([100.0] * 12, [0.2] * 12, 3.0, TANK, TABLE)
    assert all(abs(q - 100.0) < 10 for q in steady.flows_m3h)


def test_demand_beyond_pumps_and_storage_is_reported_and_pumps_at_maximum() -> None:
    pl = plan([400.0] * 12, [0.2] * 12, 3.0, TANK, TABLE)
    assert not pl.feasible and "no plan keeps the level" in pl.reason
    assert pl.first_flow_m3h == TABLE.q_max


def _tariff(**weekly: object) -> TariffConfig:
    return TariffConfig.model_validate({"currency": "EUR", **weekly})


def test_tariff_prices_by_day_and_time() -> None:
    t = _tariff(weekly=[{"days": "weekdays", "from": "07:00", "to": "22:00", "price": 0.3},
                        {"days": "all", "from": "00:00", "to": "24:00", "price": 0.1}])  # fmt: skip
    monday = datetime.fromisoformat("2024-01-08T06:30:00+00:00")
    assert t.prices(monday, 3) == pytest.approx([0.2, 0.3, 0.3])  # 06:30-07:30 is half and half
    assert t.price_at(datetime.fromisoformat("2024-01-13T12:00:00+00:00")) == 0.1  # Saturday


DEMO = (Path(__file__).parents[2] / "configs" / "demo.yaml").read_text()
TARIFF = """\
  tariff:
    currency: EUR
    weekly:
      - {days: weekdays, from: "07:00", to: "25:00", price: 0.3}
      - {days: [mon, tue, wed, thu, fri, sat], from: "00:00", to: "24:00", price: 0.1}
"""


def test_tariff_config_errors_name_file_line_and_field() -> None:
    base = DEMO.count("\n")  # the tariff block follows the demo's recommender section
    with pytest.raises(ConfigError) as exc:
        parse_config(DEMO + TARIFF, "site.yaml")
    assert f"site.yaml:{base + 4} recommender.tariff.weekly[0].to: '25:00' is not a time HH:MM" in str(
        exc.value
    )
    fixed = DEMO + TARIFF.replace('"25:00"', '"22:00"')
    with pytest.raises(
        ConfigError, match=rf"site\.yaml:{base + 3} recommender\.tariff\.weekly: sun 00:00 has no"
    ):
        parse_config(fixed, "site.yaml")
    ok = parse_config(fixed.replace("[mon, tue, wed, thu, fri, sat]", "all"), "site.yaml")
    assert ok.recommender is not None and ok.recommender.tariff is not None
    assert ok.recommender.tariff.price_at(datetime.fromisoformat("2024-01-08T08:00:00+00:00")) == 0.3


def test_an_unknown_time_zone_is_named() -> None:
    text = DEMO + "  forecast: {timezone: Mars/Olympus}\n"
    with pytest.raises(
        ConfigError, match=rf"site\.yaml:{DEMO.count(chr(10)) + 1} recommender\.forecast\.timezone: "
    ):
        parse_config(text, "site.yaml")
