"""The minimum-flow constraint on the plant: an unloaded pump keeps its minimum flow.

Before it, an alarmed pump was parked at 1,500 rpm delivering 0.00 m³/h (a pump against a
closed head overheats). Closed loop without the network, as test_energy_day.py: the rule
recommends from what the PLC measures, the Guard decides, the PLC's write logic applies. Pump 1
is unloaded (an alarm at severity 3) for 40 simulated minutes on the embedded plant (whose
datasheet the rule has): after the drive's ramp it never delivers less than its minimum
continuous flow, and the tank stays in band. (On a perturbed plant the datasheet is not
enough: a worn pump 1 held at the datasheet's minimum-flow speed delivers nothing; that is what
identification is for, and bench/energy.py measures it on five variants.)
"""

from __future__ import annotations

import math

from agent.pipeline.policy import PumpEnergyRule, RecommenderConfig, RecommenderPump, StationState
from bench.closed_loop import guard_step, station_guard
from simulator import Plant

PUMPS = ("Pump1", "Pump2")


def test_an_unloaded_pump_never_runs_below_its_minimum_flow() -> None:
    guard = station_guard([f"{p}.ExternalSpeedSetpoint" for p in PUMPS], ttl_s=5)
    rule = PumpEnergyRule(
        RecommenderConfig(
            level_tag="Station.TankLevel",
            demand_tag="Station.OutletFlow",
            pumps=[RecommenderPump(asset=p.lower(), target=f"{p}.ExternalSpeedSetpoint") for p in PUMPS],
        )
    )
    plant = Plant(seed=3, permissive=True)
    last: dict[str, float] = {}
    flows, reasons = [], set()
    lo, hi = math.inf, -math.inf
    for k in range(2400):
        plant.step(1.0)
        t = float(k + 1)
        plant.plc.write("Station.AgentHeartbeat", k % 65536)
        tags = plant.state.tags
        recs = {
            r.target_tag: r
            for r in rule.recommend(
                StationState(
                    float(tags["Station.TankLevel"]), float(tags["Station.OutletFlow"]), {"pump1": 3}, True
                ),
                t,
            )
        }
        reasons.add(recs["Pump2.ExternalSpeedSetpoint"].reason.split("; ")[-1])
        guard_step(guard, plant, recs, t, last)
        if t > 120:  # after the drive ramps to the recommendation
            flows.append(plant.q[0] / plant.min_flow_m3h(1, plant.speed[0]))
            lo, hi = min(lo, plant.level), max(hi, plant.level)
    print(f"\npump 1 flow / its true minimum flow: min {min(flows):.3f}, level [{lo:.2f}, {hi:.2f}] m")
    assert min(flows) >= 1.0  # never below its minimum continuous flow
    assert plant.speed[0] > 1600 and plant.q[0] > 10  # held at its minimum-flow speed, not parked
    assert any("pump1 unloaded to its minimum-flow speed" in r for r in reasons)
    assert lo >= 2.0 and hi <= 4.0
