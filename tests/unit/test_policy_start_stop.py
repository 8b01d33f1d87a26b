"""The pump-energy rule choosing how many and which pumps run: stops for energy, starts for
the level band, hysteresis, the start/stop limits in planning, duty rotation, reason codes."""

from __future__ import annotations

import pytest

from agent.pipeline.policy import (
    REASON_CODES,
    PumpEnergyRule,
    PumpRunState,
    ReasonCode,
    RecommenderConfig,
    RecommenderPump,
    StationState,
)


def rule(**kw: object) -> PumpEnergyRule:
    pumps = [RecommenderPump(asset=f"pump{i}", target=f"P{i}.Sp", start_stop_tag=f"P{i}.Run") for i in (1, 2)]
    return PumpEnergyRule(RecommenderConfig(level_tag="l", demand_tag="d", pumps=pumps, **kw))  # type: ignore[arg-type]


def both(h1: float = 10.0, h2: float = 5.0, **kw: object) -> dict[str, PumpRunState]:
    return {"pump1": PumpRunState(True, h1, **kw), "pump2": PumpRunState(True, h2, **kw)}  # type: ignore[arg-type]


def recs(r: PumpEnergyRule, state: StationState, now: float = 0.0) -> dict[str, float]:
    return {x.target_tag: float(x.value) for x in r.recommend(state, now)}  # type: ignore[arg-type]


def test_fewer_pumps_at_lower_kwh_per_m3_stop_the_one_with_more_hours() -> None:
    r = rule()
    out = recs(r, StationState(3.0, 80.0, {}, True, pumps=both(10.0, 5.0), price_per_kwh=0.2))
    assert out["P1.Run"] == 0.0 and out["P2.Run"] == 1.0
    assert r.code("pump1") == ReasonCode.STOPPED_FOR_ENERGY
    reason = r.last_specific_energy
    assert reason is not None and reason[0] < reason[1]  # it saves against plain level control
    # the stopped pump waits at its minimum-flow speed; the running one carries the flow
    _, flows, why = r.plan(3.0, 80.0, [], run=both(10.0, 5.0))
    assert flows["pump1"] == 0.0 or "pump1" in r.last_stopped
    assert "stopped for energy" in why and "saved" in why
    # the other way round when pump 2 has more hours (a new rule: a running one keeps its
    # duty order until the hours differ by duty_imbalance_h)
    out = recs(rule(), StationState(3.0, 80.0, {}, True, pumps=both(5.0, 10.0)))
    assert out["P1.Run"] == 1.0 and out["P2.Run"] == 0.0


def test_without_start_stop_or_feedback_every_pump_runs() -> None:
    r = rule()
    out = recs(r, StationState(3.0, 80.0, {}, True))
    assert out["P1.Run"] == out["P2.Run"] == 1.0 and out["P1.Sp"] == out["P2.Sp"]
    unknown = {"pump1": PumpRunState(None, 1.0), "pump2": PumpRunState(None, 1.0)}
    assert recs(r, StationState(3.0, 80.0, {}, True, pumps=unknown))["P1.Run"] == 1.0
    plain = PumpEnergyRule(
        RecommenderConfig(
            level_tag="l",
            demand_tag="d",
            pumps=[RecommenderPump(asset=f"pump{i}", target=f"P{i}.Sp") for i in (1, 2)],
        )
    )
    speeds, _, _ = plain.plan(3.0, 80.0, [], run=both())
    assert plain.last_stopped == set() and speeds["pump1"] == speeds["pump2"]


def test_minimum_run_time_is_respected_in_planning() -> None:
    r = rule()
    out = recs(r, StationState(3.0, 80.0, {}, True, pumps=both(may_stop=False)))
    assert out["P1.Run"] == out["P2.Run"] == 1.0


def test_hysteresis_keeps_the_running_set_below_the_switch_saving() -> None:
    r = rule(switch_saving=0.4)
    out = recs(r, StationState(3.0, 80.0, {}, True, pumps=both()))
    assert out["P1.Run"] == out["P2.Run"] == 1.0
    # and from one pump it does not start the second one for a small saving either
    one = {"pump1": PumpRunState(True, 1.0), "pump2": PumpRunState(False, 0.0)}
    r = rule()
    out = recs(r, StationState(3.0, 80.0, {}, True, pumps=one))
    assert out["P1.Run"] == 1.0 and out["P2.Run"] == 0.0
    assert r.code("pump2") == ReasonCode.STOPPED_FOR_ENERGY


def test_a_pump_is_started_when_the_running_one_cannot_keep_the_band() -> None:
    one = {"pump1": PumpRunState(True, 1.0), "pump2": PumpRunState(False, 0.0)}
    r = rule()
    out = recs(r, StationState(2.2, 240.0, {}, True, pumps=one))
    assert out["P2.Run"] == 1.0 and r.code("pump2") == ReasonCode.STARTED_FOR_DEMAND
    # only a start the band needs may use the last start of the hour
    last = {"pump1": PumpRunState(True, 1.0), "pump2": PumpRunState(False, 0.0, starts_left=1)}
    assert recs(rule(), StationState(2.2, 240.0, {}, True, pumps=last))["P2.Run"] == 1.0
    # none left (or still resting): it is not recommended, the running pump goes to its maximum
    spent = {
        "pump1": PumpRunState(True, 1.0),
        "pump2": PumpRunState(False, 0.0, may_start=False, starts_left=0),
    }
    r = rule()
    out = recs(r, StationState(2.2, 240.0, {}, True, pumps=spent))
    assert out["P2.Run"] == 0.0 and out["P1.Sp"] == pytest.approx(2950.0)
    assert r.code("pump1") == ReasonCode.MAX_SPEED


def test_too_much_flow_at_minimum_stops_a_pump_even_below_the_switch_saving() -> None:
    r = rule(switch_saving=0.5)
    out = recs(r, StationState(3.85, 15.0, {}, True, pumps=both()))
    assert out["P1.Run"] == 0.0 and out["P2.Run"] == 1.0
    assert r.code("pump1") == ReasonCode.STOPPED_FOR_ENERGY


def test_duty_rotation_starts_the_standby_first_then_stops_the_duty_pump() -> None:
    r = rule(duty_imbalance_h=20.0)
    one = {"pump1": PumpRunState(True, 130.0), "pump2": PumpRunState(False, 100.0)}
    out = recs(r, StationState(3.0, 80.0, {}, True, pumps=one), now=0.0)
    assert out["P1.Run"] == out["P2.Run"] == 1.0 and r.code("pump2") == ReasonCode.DUTY_ROTATION
    # the standby runs: the duty pump is stopped
    two = {"pump1": PumpRunState(True, 130.0), "pump2": PumpRunState(True, 100.0)}
    out = recs(r, StationState(3.0, 80.0, {}, True, pumps=two), now=5.0)
    assert out["P1.Run"] == 0.0 and out["P2.Run"] == 1.0 and r.code("pump1") == ReasonCode.DUTY_ROTATION
    # below the imbalance nothing rotates
    near = {"pump1": PumpRunState(True, 110.0), "pump2": PumpRunState(False, 100.0)}
    out = recs(rule(duty_imbalance_h=20.0), StationState(3.0, 80.0, {}, True, pumps=near))
    assert out["P2.Run"] == 0.0
    # never beyond the starts limit: no start left for energy, no rotation
    spent = {"pump1": PumpRunState(True, 130.0), "pump2": PumpRunState(False, 100.0, starts_left=1)}
    out = recs(rule(duty_imbalance_h=20.0), StationState(3.0, 80.0, {}, True, pumps=spent))
    assert out["P2.Run"] == 0.0


def test_duty_stays_with_the_new_pump_until_it_has_run_the_imbalance_more() -> None:
    r = rule(duty_imbalance_h=20.0)
    st = StationState(3.0, 80.0, {}, True)

    def step(h1: float, h2: float, on1: bool, on2: bool) -> dict[str, float]:
        pumps = {"pump1": PumpRunState(on1, h1), "pump2": PumpRunState(on2, h2)}
        return recs(r, StationState(st.level_m, st.demand_m3h, {}, True, pumps=pumps))

    assert step(130.0, 100.0, True, False)["P2.Run"] == 1.0  # rotation: pump2 starts
    assert step(130.0, 100.0, True, True)["P1.Run"] == 0.0  # then pump1 stops
    # pump2 runs on past equal hours: no swap back before it has 20 h more
    out = step(130.0, 140.0, False, True)
    assert out["P1.Run"] == 0.0 and out["P2.Run"] == 1.0
    assert r.code("pump1") == ReasonCode.STOPPED_FOR_ENERGY
    pumps = {"pump1": PumpRunState(False, 130.0), "pump2": PumpRunState(True, 150.0)}
    (first, *_) = r.recommend(StationState(3.0, 80.0, {}, True, pumps=pumps), 0.0)
    assert "duty passes from pump2 to pump1: 20.0 h more run (limit 20 h)" in first.reason
    assert r.code("pump1") == ReasonCode.DUTY_ROTATION and r.last_stopped == set()


def test_reason_codes_for_alarms_band_and_plan() -> None:
    r = rule()
    recs(r, StationState(3.0, 120.0, {"pump1": 3}, True))
    assert r.code("pump1") == ReasonCode.STOPPED_ALARM
    plain = PumpEnergyRule(
        RecommenderConfig(
            level_tag="l",
            demand_tag="d",
            pumps=[RecommenderPump(asset=f"pump{i}", target=f"P{i}.Sp") for i in (1, 2)],
        )
    )
    plain.recommend(StationState(3.0, 120.0, {"pump1": 3}, True), 0.0)
    assert plain.code("pump1") == ReasonCode.UNLOADED_ALARM
    plain.recommend(StationState(2.05, 240.0, {}, True), 0.0)
    assert plain.code("pump1") == ReasonCode.LEVEL_LOW
    plain.recommend(StationState(3.0, 120.0, {}, True), 0.0, planned_flow_m3h=150.0)
    assert plain.code("pump2") == ReasonCode.TARIFF_PLAN
    plain.recommend(StationState(None, 120.0, {}, False), 0.0)
    assert plain.code("pump2") == ReasonCode.NONE
    assert set(REASON_CODES) == {int(c) for c in ReasonCode} and REASON_CODES[9].startswith("Stopped")


def test_the_summary_names_codes_and_the_saving() -> None:
    r = rule()
    assert r.summary() == ""
    recs(r, StationState(3.0, 80.0, {}, True, pumps=both(10.0, 5.0), price_per_kwh=0.25))
    line = r.summary()
    assert line.startswith("pump1 9 stopped for energy, pump2 ")
    spec, base = r.last_specific_energy  # type: ignore[misc]
    assert f"{spec:.4f} kWh/m³ expected, level control {base:.4f}" in line and "saved" in line
    assert f"{(base - spec) * 0.25:+.4f}/m³ at 0.25/kWh" in line


def test_a_planned_flow_one_pump_cannot_deliver_starts_the_second() -> None:
    one = {"pump1": PumpRunState(True, 1.0), "pump2": PumpRunState(False, 0.0)}
    r = rule()
    out = {
        x.target_tag: float(x.value)
        for x in r.recommend(StationState(3.0, 100.0, {}, True, pumps=one), 0.0, 230.0)
    }  # type: ignore[arg-type]
    assert out["P2.Run"] == 1.0 and r.code("pump2") == ReasonCode.TARIFF_PLAN
    # without the plan the same station keeps one pump (cheaper per m³ at its own optimum)
    assert recs(rule(), StationState(3.0, 100.0, {}, True, pumps=one))["P2.Run"] == 0.0
