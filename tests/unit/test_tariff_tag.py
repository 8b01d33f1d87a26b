"""The tariff from a PLC tag: the current step from the tag, the future from the table or the
learned weekly profile (persisted), a BAD tag falls back with a reason, check names the tag."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import RecommenderSection, parse_config
from agent.energyplan import PRICE_PROFILE_FILE, TariffPlanner
from agent.errors import ConfigError
from agent.pipeline.policy import PumpEnergyRule
from agent.pipeline.tariff import PriceProfile, TariffConfig
from agent.types import Quality, Sample

MONDAY = datetime(2024, 1, 8, 0, 0, tzinfo=UTC)
WEEKLY = [
    {"days": "all", "from": "06:00", "to": "22:00", "price": 0.3},
    {"days": "all", "from": "00:00", "to": "24:00", "price": 0.1},
]


def _section(tariff: dict[str, Any]) -> RecommenderSection:
    return RecommenderSection.model_validate(
        {
            "station": {"tank_area_m2": 400},
            "level_tag": "L",
            "demand_tag": "D",
            "pumps": [{"asset": "p1", "target": "S1"}, {"asset": "p2", "target": "S2"}],
            "tariff": tariff,
        }
    )


def _price(v: float | None) -> Sample:
    q = Quality.good() if v is not None else Quality.bad("exception 02")
    return Sample("Price", v, q, MONDAY, 0.0)


def test_the_tag_prices_the_current_step_and_the_table_the_future() -> None:
    sec = _section({"weekly": WEEKLY, "price_tag": "Price"})
    planner = TariffPlanner(sec, None, PumpEnergyRule(sec))
    noon = MONDAY.replace(hour=12)
    planner.observe(noon, 100.0, None, _price(0.9))
    prices, source = planner.prices(noon, 24)
    assert (
        prices[0] == 0.9
        and prices[1:] == TariffConfig.model_validate({"weekly": WEEKLY}).prices(noon, 24)[1:]
    )
    assert source == "price tag Price now, weekly table after"
    assert planner.price_now(noon) == 0.9
    # a BAD tag: the table prices now too, and the plan says why
    planner.observe(noon, 100.0, None, _price(None))
    prices, source = planner.prices(noon, 24)
    assert prices[0] == 0.3 and source == "price tag Price not GOOD (BAD (exception 02)): weekly table"
    planner.planned_flow(0.0, noon, 3.0, 100.0)
    assert planner.status is not None and planner.status.price_source == source
    assert planner.price_now(noon) == 0.3
    # a negative or missing sample is no price either
    planner.observe(noon, 100.0, None, None)
    assert planner.prices(noon, 2)[0][0] == 0.3


def test_a_dear_price_now_changes_the_plan() -> None:
    sec = _section(
        {"weekly": [{"days": "all", "from": "00:00", "to": "24:00", "price": 0.2}], "price_tag": "Price"}
    )
    night = MONDAY.replace(hour=1)
    flows = {}
    for price in (0.05, 0.6):  # cheap now (fill), dear now (wait for the flat table's hours)
        planner = TariffPlanner(sec, None, PumpEnergyRule(sec))
        planner.observe(night, 100.0, None, _price(price))
        flows[price] = planner.planned_flow(0.0, night, 3.0, 100.0)
    assert flows[0.05] is not None and flows[0.6] is not None
    assert flows[0.05] > 100.0 > flows[0.6]


def test_without_a_table_the_profile_is_learned_from_the_tag_and_persisted(tmp_path: Path) -> None:
    sec = _section({"price_tag": "Price"})
    planner = TariffPlanner(sec, None, PumpEnergyRule(sec), tmp_path)
    assert planner.price_now(MONDAY) is None
    prices, source = planner.prices(MONDAY, 3)
    assert prices == [1.0, 1.0, 1.0] and "no price known" in source
    for m in range(0, 26 * 60, 10):  # a day and two hours, a sample every 10 min
        t = MONDAY + timedelta(minutes=m)
        planner.observe(t, 100.0, None, _price(0.3 if 6 <= t.hour < 22 else 0.1))
    assert planner.profile is not None and planner.profile.known == 25
    saved = json.loads((tmp_path / PRICE_PROFILE_FILE).read_text())
    assert saved["bins"][12] == pytest.approx(0.3) and saved["bins"][2] == pytest.approx(0.1)
    # the tag BAD: the learned profile prices every step
    tuesday = MONDAY + timedelta(days=1, hours=2)
    planner.observe(tuesday, 100.0, None, _price(None))
    prices, source = planner.prices(MONDAY + timedelta(days=7, hours=5), 3)
    assert prices == pytest.approx([0.1, 0.3, 0.3]) and source.endswith(
        "learned profile (26 of 168 hours)"
    )  # the BAD sample closed 01:00
    # a new planner (a restart) starts from the file
    again = TariffPlanner(sec, None, PumpEnergyRule(sec), tmp_path)
    assert again.profile is not None and again.profile.bins == planner.profile.bins
    (tmp_path / PRICE_PROFILE_FILE).write_text('{"bins": [1]}')
    assert TariffPlanner(sec, None, PumpEnergyRule(sec), tmp_path).profile.known == 0  # type: ignore[union-attr]


def test_the_profile_weights_recent_weeks() -> None:
    p = PriceProfile(UTC, weeks=2)
    for week, price in enumerate((0.1, 0.3, 0.3)):
        start = MONDAY + timedelta(weeks=week)
        p.observe(start, price)
        p.observe(start + timedelta(hours=1), price)  # closes hour 0 of Monday
    assert p.bins[0] == pytest.approx(0.1 + 0.5 * 0.2 + 0.5 * (0.3 - 0.2))


DEMO = (Path(__file__).parents[2] / "configs" / "demo.yaml").read_text()


def test_a_tariff_needs_a_table_or_a_tag_and_check_names_an_unknown_tag() -> None:
    base = DEMO.count("\n")
    with pytest.raises(
        ConfigError, match=rf"site\.yaml:{base + 1} recommender\.tariff: .*weekly table, a price_tag"
    ):
        parse_config(DEMO + "  tariff:\n    currency: EUR\n", "site.yaml")
    with pytest.raises(
        ConfigError,
        match=rf"site\.yaml:{base + 3} recommender\.tariff\.price_tag: unknown tag 'Station\.Price'",
    ):
        parse_config(DEMO + "  tariff:\n    currency: EUR\n    price_tag: Station.Price\n", "site.yaml")
    ok = parse_config(DEMO + "  tariff:\n    price_tag: Station.TotalPower\n", "site.yaml")
    assert ok.recommender is not None and ok.recommender.tariff is not None
    assert ok.recommender.tariff.price_tag == "Station.TotalPower"
