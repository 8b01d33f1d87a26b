"""The pump-energy rule against the plant's own oracle (independent code in simulator/)."""

from __future__ import annotations

import itertools

import pytest

from agent.pipeline.policy import PumpEnergyRule, RecommenderConfig, RecommenderPump, StationState
from simulator.physics import StationParams, oracle_speed, station_operating_point


def rule(n: int = 2) -> PumpEnergyRule:
    pumps = [
        RecommenderPump(asset=f"pump{i}", target=f"Pump{i}.ExternalSpeedSetpoint") for i in range(1, n + 1)
    ]
    # band_margin_m=0: the plant's oracle rides the band edges exactly
    return PumpEnergyRule(RecommenderConfig(level_tag="lvl", demand_tag="dem", pumps=pumps, band_margin_m=0))


@pytest.mark.parametrize(
    "demand,level", list(itertools.product([20, 60, 100, 120, 160, 200, 240], [2.0, 2.4, 3.0, 3.6, 4.0]))
)
def test_matches_the_plant_oracle_when_all_pumps_are_healthy(demand: float, level: float) -> None:
    r = rule()
    speeds, flows, _ = r.plan(level, demand, [])
    assert speeds["pump1"] == pytest.approx(speeds["pump2"], abs=1e-6)
    prm = StationParams()
    oracle = oracle_speed(demand, level, prm)
    q_oracle, _ = station_operating_point(oracle, prm.static_head_m + level, prm)
    floor = r.min_flow_m3h("pump1", oracle) * (1 + r.config.min_flow_margin)
    if q_oracle >= floor:  # the plant's oracle knows no minimum flow: equal where it keeps it
        assert speeds["pump1"] == pytest.approx(oracle, abs=0.5)
    else:  # below it, the rule holds the pumps at their minimum continuous flow
        assert speeds["pump1"] > oracle
        floor = r.min_flow_m3h("pump1", speeds["pump1"]) * (1 + r.config.min_flow_margin)
        assert flows["pump1"] == pytest.approx(floor, rel=1e-3)


def test_alarmed_pump_is_unloaded_and_the_other_carries_the_flow() -> None:
    r = rule()
    recs = r.recommend(
        StationState(level_m=3.0, demand_m3h=120, severity={"pump1": 3}, inputs_good=True), 100.0
    )
    by = {x.target_tag: x for x in recs}
    speeds, flows, _ = r.plan(3.0, 120, ["pump1"])
    unloaded = by["Pump1.ExternalSpeedSetpoint"].value
    # never a speed that delivers nothing: the unloaded pump is held at its minimum flow
    assert unloaded == speeds["pump1"] > 1500
    assert flows["pump1"] == pytest.approx(r.min_flow_m3h("pump1", unloaded) * 1.15, rel=1e-3)
    assert flows["pump1"] > 20
    healthy = by["Pump2.ExternalSpeedSetpoint"].value
    both, _ = r.speeds(3.0, 120, [])
    assert healthy > both["pump2"] + 50  # the healthy pump must run faster to carry the flow
    assert "pump1 unloaded to its minimum-flow speed" in by["Pump2.ExternalSpeedSetpoint"].reason
    assert all(x.model == "pump-energy-rule" and x.expires_mono == 110.0 for x in recs)


def test_low_severity_alert_does_not_unload() -> None:
    recs = rule().recommend(StationState(3.0, 120, {"pump1": 1}, True), 0.0)
    assert recs[0].value == recs[1].value


def test_no_recommendation_without_good_level_or_demand() -> None:
    assert rule().recommend(StationState(None, 120, {}, False), 0.0) == []
    assert rule().recommend(StationState(3.0, None, {}, False), 0.0) == []


def test_band_margin_aims_inside_the_band() -> None:
    pumps = [RecommenderPump(asset="pump1", target="a"), RecommenderPump(asset="pump2", target="b")]
    edge = PumpEnergyRule(RecommenderConfig(level_tag="l", demand_tag="d", pumps=pumps, band_margin_m=0))
    inner = PumpEnergyRule(RecommenderConfig(level_tag="l", demand_tag="d", pumps=pumps, band_margin_m=0.2))
    # near the bottom with a high demand the margin asks for more flow, near the top for less
    assert inner.speeds(2.1, 240, [])[0]["pump1"] > edge.speeds(2.1, 240, [])[0]["pump1"]
    assert inner.speeds(3.9, 60, [])[0]["pump1"] < edge.speeds(3.9, 60, [])[0]["pump1"]


def test_band_edges_track_the_demand() -> None:
    r = rule()
    top, _ = r.speeds(4.0, 60, [])
    mid, _ = r.speeds(3.0, 60, [])
    assert top["pump1"] < mid["pump1"]  # full tank: slow down
    low, why = r.speeds(2.0, 240, [])
    assert low["pump1"] > mid["pump1"] and "bottom of its band" in why


def test_a_planned_station_flow_is_followed_within_the_band() -> None:
    r = rule()
    free = r.recommend(StationState(3.0, 120, {}, True), 0.0)
    more = r.recommend(StationState(3.0, 120, {}, True), 0.0, planned_flow_m3h=160)
    assert more[0].value > free[0].value and "planned station flow 160.0" in more[0].reason
    # the band still bounds it: a full tank refuses a large planned flow
    full = r.recommend(StationState(4.0, 60, {}, True), 0.0, planned_flow_m3h=200)
    assert full[0].value < more[0].value


def test_where_start_stop_is_allowed_an_alarmed_pump_is_stopped_not_held_at_min_flow() -> None:
    pumps = [
        RecommenderPump(
            asset=f"pump{i}", target=f"Pump{i}.ExternalSpeedSetpoint", start_stop_tag=f"Pump{i}.RunRequest"
        )
        for i in (1, 2)
    ]
    r = PumpEnergyRule(RecommenderConfig(level_tag="l", demand_tag="d", pumps=pumps))
    recs = {x.target_tag: x for x in r.recommend(StationState(3.0, 120, {"pump1": 3}, True), 0.0)}
    assert recs["Pump1.RunRequest"].value == 0.0 and recs["Pump2.RunRequest"].value == 1.0
    assert "pump1 stopped" in recs["Pump2.RunRequest"].reason
    # its speed setpoint waits at its minimum-flow speed for the next start, never at zero flow
    held = rule().plan(3.0, 120, ["pump1"])[0]["pump1"]
    assert recs["Pump1.ExternalSpeedSetpoint"].value > 1600
    assert abs(recs["Pump1.ExternalSpeedSetpoint"].value - held) < 80
    healthy = {x.target_tag: x.value for x in r.recommend(StationState(3.0, 120, {}, True), 0.0)}
    assert healthy["Pump1.RunRequest"] == healthy["Pump2.RunRequest"] == 1.0
