"""24 simulated hours in auto: the station's specific energy is within 5 % of the oracle's while
the tank stays in band.

Closed loop without the network (the protocol path is covered by test_writeback_on_plant.py):
every simulated second the agent's own pure stages run on what the PLC measures: the
pump-energy rule recommends, the Guard decides from the measured permissive and the setpoint
read back from the PLC, and the decision is written through the PLC's own write logic (the
same logic the Modbus and OPC UA servers call). The oracle run drives an identical plant (same
seed, same demand) at the oracle speed. Both must keep the level inside its band.
"""

from __future__ import annotations

import math

from agent.pipeline.policy import PumpEnergyRule, RecommenderConfig, RecommenderPump, StationState
from bench.closed_loop import guard_step, station_guard
from simulator import Plant

HOURS = 24
DT = 1.0
SEED = 11
PUMPS = ("Pump1", "Pump2")


def _run(drive: str) -> tuple[float, float, float]:
    """Run 24 h; return (kWh/m³, min level, max level)."""
    plant = Plant(seed=SEED, permissive=True)
    rule = PumpEnergyRule(
        RecommenderConfig(
            level_tag="Station.TankLevel",
            demand_tag="Station.OutletFlow",
            pumps=[RecommenderPump(asset=p.lower(), target=f"{p}.ExternalSpeedSetpoint") for p in PUMPS],
        )
    )
    guard = station_guard([f"{p}.ExternalSpeedSetpoint" for p in PUMPS], ttl_s=5)
    last_write: dict[str, float] = {}
    lo, hi = math.inf, -math.inf
    heartbeat = 0
    steps = int(HOURS * 3600 / DT)
    for k in range(steps):
        plant.step(DT)
        t = (k + 1) * DT
        tags = plant.state.tags
        level = float(tags["Station.TankLevel"])
        lo, hi = min(lo, plant.state.level_m), max(hi, plant.state.level_m)
        heartbeat = (heartbeat + 1) % 65536
        plant.plc.write("Station.AgentHeartbeat", heartbeat)
        if drive == "oracle":
            for p in PUMPS:
                plant.plc.write(f"{p}.ExternalSpeedSetpoint", plant.state.oracle_speed_rpm)
            continue
        demand = float(tags["Station.OutletFlow"])
        good = math.isfinite(level) and math.isfinite(demand)
        recs = {
            r.target_tag: r
            for r in rule.recommend(StationState(level if good else None, demand if good else None, {}, good), t)
        }
        guard_step(guard, plant, recs, t, last_write)
    return plant.energy_kwh / plant.volume_m3, lo, hi


def test_a_day_in_auto_is_within_5_percent_of_the_oracle_with_the_tank_in_band() -> None:
    ours, lo, hi = _run("agent")
    oracle, olo, ohi = _run("oracle")
    pi_only = Plant(seed=SEED)  # the PLC's own level controller, for the record
    pi_only.run(HOURS * 3600, dt_s=DT)
    pi = pi_only.energy_kwh / pi_only.volume_m3
    print(f"\nkWh/m3 over {HOURS} h: agent {ours:.5f}, oracle {oracle:.5f}, PLC PI alone {pi:.5f}")
    print(f"level band: agent [{lo:.2f}, {hi:.2f}] m, oracle [{olo:.2f}, {ohi:.2f}] m")
    print(f"agent/oracle = {ours / oracle:.4f}")
    assert abs(ours / oracle - 1) <= 0.05
    assert lo >= 2.0 and hi <= 4.0
    assert ours < pi  # and it saves energy against the PLC's own control
