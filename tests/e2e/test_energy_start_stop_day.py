"""Simulated days with start/stop allowed: fewer kWh/m³ than today's rule, no chatter, starts
per hour within the limit, no pump below its minimum flow, the tank in band, duty rotated.

Closed loop without the network, as test_energy_day.py (bench/closed_loop.py): the rule
recommends from what the PLC measures, the agent's run-state unit reads the running feedback,
the Guard decides setpoints and start/stop requests (its default limits: 15 min run, 5 min rest,
4 starts per hour), the PLC's own write logic applies them. The protocol path is
test_energy_stop_on_plant.py's.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from agent.pipeline.policy import PumpEnergyRule, RecommenderConfig, RecommenderPump, StationState
from bench.closed_loop import StartStopLoop, guard_step, start_stop_targets, station_guard
from simulator import Plant, StationParams

PUMPS = ("Pump1", "Pump2")
DT, RULE_S = 10.0, 20.0


def _run(hours: float, start_stop: bool, **rule: Any) -> dict[str, Any]:
    plant = Plant(replace(StationParams(), max_step_s=DT), seed=11, permissive=True)
    rc = RecommenderConfig(
        level_tag="Station.TankLevel",
        demand_tag="Station.OutletFlow",
        pumps=[
            RecommenderPump(
                asset=p.lower(),
                target=f"{p}.ExternalSpeedSetpoint",
                start_stop_tag=f"{p}.RunRequest" if start_stop else None,
            )
            for p in PUMPS
        ],
        **rule,
    )
    r = PumpEnergyRule(rc)
    guard = station_guard([f"{p}.ExternalSpeedSetpoint" for p in PUMPS], ttl_s=30)
    loop = StartStopLoop(plant, rc, start_stop_targets(2))
    last: dict[str, float] = {}
    lo, hi = math.inf, -math.inf
    stretch, longest = [0.0, 0.0], [0.0, 0.0]
    for k in range(int(hours * 3600 / DT)):
        plant.step(DT)
        t = (k + 1) * DT
        plant.plc.write("Station.AgentHeartbeat", k % 65536)
        loop.observe(t, DT)
        lo, hi = min(lo, plant.level), max(hi, plant.level)
        for i in range(2):
            below = plant.q[i] < plant.min_flow_m3h(i + 1, plant.speed[i]) - 1e-9
            stretch[i] = stretch[i] + DT if below else 0.0
            longest[i] = max(longest[i], stretch[i])
        if k % round(RULE_S / DT):
            continue
        tags = plant.state.tags
        state = StationState(
            float(tags["Station.TankLevel"]),
            float(tags["Station.OutletFlow"]),
            {},
            True,
            pumps=loop.run_state(t) if start_stop else {},
        )
        recs = {x.target_tag: x for x in r.recommend(state, t)}
        guard_step(guard, plant, recs, t, last)
        if start_stop:
            loop.step(recs, t)
    return {
        "kwh_m3": plant.energy_kwh / plant.volume_m3,
        "level": (lo, hi),
        "longest_below_min_flow_s": max(longest),
        **loop.summary(),
    }


def test_a_day_with_start_stop_saves_energy_without_chatter() -> None:
    today = _run(24, start_stop=False)
    ours = _run(24, start_stop=True)
    print(f"\nkWh/m³: today {today['kwh_m3']:.5f}, with start/stop {ours['kwh_m3']:.5f}; {ours}")
    assert ours["kwh_m3"] < today["kwh_m3"] * 0.98  # one pump where it is cheaper
    assert 1 <= ours["max_starts_per_hour"] <= 2  # it does use start/stop, and does not chatter
    assert ours["longest_below_min_flow_s"] <= 60.0  # a stopping pump ramps through it, no more
    lo, hi = ours["level"]
    assert lo >= 2.0 and hi <= 4.0


def test_duty_rotates_by_run_hours() -> None:
    out = _run(24, start_stop=True, duty_imbalance_h=3.0)
    h1, h2 = out["run_hours"]
    print(f"\nrun hours {h1:.1f} / {h2:.1f}, starts/h max {out['max_starts_per_hour']:.0f}")
    assert min(h1, h2) > 6.0  # both pumps took duty
    assert out["run_hours_imbalance_h"] <= 3.0 + 0.5  # within the configured imbalance (+ a cycle's slack)
    assert out["max_starts_per_hour"] <= 4
    lo, hi = out["level"]
    assert lo >= 2.0 and hi <= 4.0
