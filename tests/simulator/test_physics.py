"""Physics sanity: affinity laws, mass balance, wear, the specific-energy minimum, the oracle."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.faults import RUL_SENTINEL_H, Fault, FaultKind, ScenarioEvent
from simulator.physics import (
    Plant,
    StationParams,
    optimal_speed,
    oracle_speed,
    pump_efficiency,
    pump_head,
    shaft_power_kw,
    specific_energy,
    specific_energy_curve,
    speed_for_flow,
    station_operating_point,
)

P = StationParams()


@settings(max_examples=60, deadline=None)
@given(
    q=st.floats(min_value=5.0, max_value=150.0),
    n=st.floats(min_value=1000.0, max_value=2950.0),
    ratio=st.floats(min_value=0.5, max_value=1.5),
)
def test_pump_affinity_laws_along_similar_points(q: float, n: float, ratio: float) -> None:
    pp = P.pump
    # at speed n*ratio the similar point has flow q*ratio: head ~ ratio^2, power ~ ratio^3, same efficiency
    assert pump_head(q * ratio, n * ratio, pp) == pytest.approx(ratio**2 * pump_head(q, n, pp), rel=1e-9)
    assert pump_efficiency(q * ratio, n * ratio, pp) == pytest.approx(pump_efficiency(q, n, pp), rel=1e-9)
    assert shaft_power_kw(q * ratio, n * ratio, pp) == pytest.approx(
        ratio**3 * shaft_power_kw(q, n, pp), rel=1e-9
    )


def test_station_without_static_head_follows_affinity_laws() -> None:
    params = replace(P, static_head_m=0.0)
    q1, h1 = station_operating_point(1500.0, 0.0, params)
    q2, h2 = station_operating_point(3000.0, 0.0, params)
    assert q1 > 0
    assert q2 / q1 == pytest.approx(2.0, rel=1e-12)  # Q ~ n
    assert h2 / h1 == pytest.approx(4.0, rel=1e-12)  # H ~ n^2
    p1 = shaft_power_kw(q1, 1500.0, params.pump, pump_head(q1, 1500.0, params.pump))
    p2 = shaft_power_kw(q2, 3000.0, params.pump, pump_head(q2, 3000.0, params.pump))
    assert p2 / p1 == pytest.approx(8.0, rel=1e-12)  # P ~ n^3


def test_operating_point_is_on_both_curves_and_speed_for_flow_inverts_it() -> None:
    hs = 18.0
    for n in (1700.0, 2200.0, 2900.0):
        q, h = station_operating_point(n, hs, P)
        assert h == pytest.approx(hs + P.system_k * (2 * q) ** 2)
        assert pump_head(q, n, P.pump) - P.suction_k * q * q == pytest.approx(h)
        assert speed_for_flow(2 * q, hs, P) == pytest.approx(n, rel=1e-9)
    # below the zero-flow speed nothing is delivered
    cutoff = P.pump.rated_speed_rpm * math.sqrt(hs / P.pump.shutoff_head_m)
    assert station_operating_point(cutoff - 1.0, hs, P)[0] == 0.0
    assert specific_energy(cutoff - 1.0, hs, P) == math.inf


def test_plant_operating_point_matches_the_published_formula() -> None:
    plant = Plant(replace(P, noise_scale=0.0), seed=3)
    plant.run(600, 1.0)
    n = plant.speed[0]
    q, _ = station_operating_point(n, P.static_head_m + plant.level, P)
    assert plant.q[0] == pytest.approx(q, rel=1e-6)
    assert plant.q[1] == pytest.approx(q, rel=1e-6)


def test_tank_mass_balance_holds_exactly() -> None:
    params = replace(P, initial_level_m=4.6)  # start high so that overflow happens too
    plant = Plant(params, seed=5)
    plant.schedule([ScenarioEvent(at_s=60, demand_scale=0.2)])  # demand collapses: tank fills
    plant.plc.write("Station.Permissive", True)
    level0 = plant.level
    plant.run(2 * 3600, 1.0)
    stored = params.tank_area_m2 * (plant.level - level0)
    balance = plant.volume_m3 - plant.demand_volume_m3 - plant.overflow_m3 + plant.unmet_demand_m3
    assert stored == pytest.approx(balance, abs=1e-6)
    assert plant.volume_m3 > 0 and plant.demand_volume_m3 > 0


def test_pi_keeps_the_level_in_band_over_a_day_of_demand() -> None:
    plant = Plant(replace(P, max_step_s=5.0), seed=2)
    levels, speeds = [], []
    for _ in range(24 * 60):
        plant.run(60, 5.0)
        levels.append(plant.level)
        speeds.append(plant.speed[0])
    assert P.level_low_m < min(levels) and max(levels) < P.level_high_m
    assert max(abs(x - P.level_setpoint_m) for x in levels) < 0.2
    assert max(speeds) - min(speeds) > 300  # the daily demand cycle moves the speed


def test_bearing_wear_is_monotonic_and_rul_is_exact() -> None:
    params = replace(P, noise_scale=0.0)
    ttf = 2 * 3600.0
    onset = 600.0
    fault = Plant(
        params,
        seed=9,
        scenario=[ScenarioEvent(at_s=onset, fault=Fault(FaultKind.BEARING_WEAR, 1, time_to_failure_s=ttf))],
    )
    base = Plant(params, seed=9)
    prev_vib = prev_temp = prev_d = -1.0
    for _ in range(int((onset + ttf) / 10) + 60):
        fault.step(10.0)
        base.step(10.0)
        s, b = fault.state, base.state
        d_vib = s["Pump1.VibBearing"] - b["Pump1.VibBearing"]
        d_temp = s["Pump1.BearingTemp"] - b["Pump1.BearingTemp"]
        assert d_vib >= prev_vib - 1e-12 and d_temp >= prev_temp - 1e-12
        assert s.bearing_degradation[0] >= prev_d
        prev_vib, prev_temp, prev_d = d_vib, d_temp, s.bearing_degradation[0]
        if s.t_s <= onset:  # events apply from the step starting at their time
            assert s.rul_h[0] == RUL_SENTINEL_H and s.fault_codes[0] == 0
        else:
            assert s.fault_codes[0] == 1 and s.fault_labels[0] == "bearing_wear"
            assert s.rul_h[0] == pytest.approx(max(onset + ttf - s.t_s, 0.0) / 3600.0, abs=1e-9)
        assert s.rul_h[1] == RUL_SENTINEL_H
    assert fault.state.rul_h[0] == 0.0 and fault.state.bearing_degradation[0] == 1.0
    assert prev_vib == pytest.approx(9.0, rel=1e-6)  # the documented amplitude at failure
    assert fault.state["Pump1.Vibration"] > 7.1  # ISO 10816 zone D at failure
    # accelerating: the second half of life adds three times what the first half did (d = tau^2)


def test_specific_energy_has_an_interior_minimum_that_moves_with_static_head() -> None:
    speeds = np.arange(P.min_speed_rpm, P.max_speed_rpm + 1, 5.0)
    optima = []
    for hs in (17.0, 18.0, 19.0):
        curve = specific_energy_curve(speeds, hs, P)
        i = int(np.argmin(curve))
        assert 0 < i < len(speeds) - 1, "minimum must be interior"
        n_star = optimal_speed(hs, P)
        assert abs(n_star - speeds[i]) <= 5.0
        e_star = specific_energy(n_star, hs, P)
        assert e_star < specific_energy(n_star - 150, hs, P)
        assert e_star < specific_energy(n_star + 150, hs, P)
        assert e_star < 0.75 * specific_energy(2900.0, hs, P)
        optima.append(n_star)
    assert optima[0] + 40 < optima[1] < optima[2] - 40  # more static head -> faster optimum


def test_plant_specific_energy_curve_uses_its_own_static_head() -> None:
    plant = Plant(seed=0)
    speeds = [1800.0, 2000.0, 2400.0]
    assert plant.specific_energy_curve(speeds).tolist() == pytest.approx(
        specific_energy_curve(speeds, P.static_head_m + plant.level, P).tolist()
    )


def test_oracle_runs_at_the_optimum_mid_band_and_tracks_demand_at_the_edges() -> None:
    level = 3.0
    n_star = optimal_speed(P.static_head_m + level, P)
    q_star = 2 * station_operating_point(n_star, P.static_head_m + level, P)[0]
    assert oracle_speed(q_star, level, P) == pytest.approx(n_star, abs=0.5)
    # near the top with low demand: slow down to (about) the demand
    hi = oracle_speed(70.0, 3.99, P)
    assert hi < n_star
    assert hi == pytest.approx(speed_for_flow(70.0 + P.tank_area_m2 * 0.01 / 0.5, 3.99 + P.static_head_m, P))
    # near the bottom with high demand: at least keep up with it
    lo = oracle_speed(200.0, 2.01, P)
    assert lo > n_star and lo >= speed_for_flow(190.0, 2.01 + P.static_head_m, P)
    # never outside the PLC limits
    for demand in (0.0, 50.0, 400.0, 1000.0):
        for lvl in (0.5, 2.0, 3.0, 4.0, 4.9):
            assert P.min_speed_rpm <= oracle_speed(demand, lvl, P) <= P.max_speed_rpm


def test_oracle_setpoints_keep_the_level_in_band_and_use_less_energy_than_the_pi() -> None:
    pi = Plant(seed=4)
    ext = Plant(seed=4)
    ext.plc.write("Station.Permissive", True)
    for k in range(6 * 3600 // 10):
        ext.plc.write("Station.AgentHeartbeat", k % 60000 + 1)
        for i in (1, 2):
            ext.plc.write(f"Pump{i}.ExternalSpeedSetpoint", ext.state.oracle_speed_rpm)
        ext.step(10.0)
        pi.step(10.0)
        assert P.level_low_m - 0.05 < ext.level < P.level_high_m + 0.05
    assert ext.state.external_active
    e_pi = pi.energy_kwh / pi.volume_m3
    e_oracle = ext.energy_kwh / ext.volume_m3
    assert e_oracle < e_pi * 0.99


def test_steps_are_split_and_long_runs_stay_finite() -> None:
    plant = Plant(seed=1)
    plant.step(10.0)  # 10 sub-steps of 1 s
    other = Plant(seed=1)
    for _ in range(10):
        other.step(1.0)
    assert plant.state.tags == other.state.tags
    assert all(math.isfinite(v) for v in plant.state.tags.values() if isinstance(v, float))
