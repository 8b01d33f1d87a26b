"""The agent's tariff planner: replans on its cadence, follows the tariff, says what it used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.config import RecommenderSection
from agent.energyplan import TariffPlanner
from agent.pipeline.policy import PumpEnergyRule

NIGHT = datetime(2024, 1, 8, 1, 0, tzinfo=UTC)  # Monday 01:00, cheap until 06:00


def _section(**schedule: Any) -> RecommenderSection:
    return RecommenderSection.model_validate(
        {
            "station": {"tank_area_m2": 400},
            "level_tag": "L",
            "demand_tag": "D",
            "pumps": [{"asset": "p1", "target": "S1"}, {"asset": "p2", "target": "S2"}],
            "tariff": {
                "currency": "EUR",
                "weekly": [
                    {"days": "all", "from": "06:00", "to": "22:00", "price": 0.3},
                    {"days": "all", "from": "00:00", "to": "24:00", "price": 0.1},
                ],
            },
            "schedule": {"every_s": 300, "horizon_h": 24, **schedule},
        }
    )


def test_replans_on_its_cadence_and_fills_while_cheap() -> None:
    planner = TariffPlanner(_section(), None, PumpEnergyRule(_section()))
    assert planner.planned_flow(0.0, NIGHT, None, 100.0) is None  # no GOOD level: nothing
    planner.observe(NIGHT, 100.0, 5.0)
    q = planner.planned_flow(0.0, NIGHT, 3.0, 100.0)
    assert q is not None and q > 130  # cheap now, dear from 06:00: fill
    assert planner.replans == 1
    st = planner.status
    assert st is not None and st.currency == "EUR" and st.feasible
    assert st.forecast_source == "persistence (history 0 h)" and st.first_flow_m3h == q
    assert 0.05 < st.specific_energy_kwh_m3 < 0.5 and st.cost == pytest.approx(planner.plan.cost)  # type: ignore[union-attr]
    # within every_s: the same plan, whatever the level says
    assert planner.planned_flow(299.0, NIGHT + timedelta(seconds=299), 3.05, 100.0) == q
    assert planner.replans == 1
    planner.planned_flow(300.0, NIGHT + timedelta(seconds=300), 3.05, 100.0)
    assert planner.replans == 2


def test_at_the_top_of_the_band_in_dear_hours_it_draws_the_tank_down() -> None:
    planner = TariffPlanner(_section(), None, PumpEnergyRule(_section()))
    noon = NIGHT.replace(hour=12)
    q = planner.planned_flow(0.0, noon, 3.8, 100.0)
    assert q is not None and q < 100.0


def test_a_tariff_is_required() -> None:
    sec = _section().model_copy(update={"tariff": None})
    with pytest.raises(ValueError, match=r"needs recommender\.tariff"):
        TariffPlanner(sec, None, PumpEnergyRule(sec))


def test_the_plan_follows_the_curves_the_rule_switches_to() -> None:
    from agent.pipeline.policy import PumpStationModel, StationCurves

    sec = _section()
    rule = PumpEnergyRule(sec)
    planner = TariffPlanner(sec, None, rule)
    q_small = planner.planned_flow(0.0, NIGHT, 3.0, 100.0)
    assert planner.tank.area_m2 == 400
    # an identified station with twice the tank: the same night fills it at a higher flow
    rule.curves = StationCurves.from_datasheet(
        PumpStationModel(tank_area_m2=800), 2, [None, None], sec.min_flow_fraction
    )
    q_big = planner.planned_flow(300.0, NIGHT + timedelta(seconds=300), 3.0, 100.0)
    assert planner.tank.area_m2 == 800
    assert q_small is not None and q_big is not None and q_big > q_small
