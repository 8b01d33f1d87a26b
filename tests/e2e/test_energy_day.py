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

from agent.pipeline.guard import Guard, GuardConfig, GuardInputs, SetpointTarget
from agent.pipeline.policy import PumpEnergyRule, RecommenderConfig, RecommenderPump, StationState
from agent.types import Quality, Sample, utcnow
from simulator import Plant

HOURS = 24
DT = 1.0
SEED = 11
PUMPS = ("Pump1", "Pump2")


def _guard() -> Guard:
    targets = [
        SetpointTarget(tag=f"{p}.ExternalSpeedSetpoint", min=1500, max=2950, rate_per_min=600, deadband=5, ttl_s=5, max_input_age_s=5)
        for p in PUMPS
    ]
    return Guard(
        GuardConfig(
            writes_enabled=True,
            mode="auto",
            permissive_tag="Station.Permissive",
            allow_list=[t.tag for t in targets],
            targets=targets,
        )
    )


def _sample(tag: str, value: float | bool, t: float) -> Sample:
    ok = not (isinstance(value, float) and math.isnan(value))
    return Sample(tag, value, Quality.good() if ok else Quality.bad("no valid value"), utcnow(), t)


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
    guard = _guard()
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
        for target in guard.targets:
            d = guard.decide(
                target,
                GuardInputs(
                    now=t,
                    recommendation=recs.get(target),
                    permissive=_sample("Station.Permissive", bool(tags["Station.Permissive"]), t),
                    readback=_sample(target, float(tags[target]), t),
                    input_qualities={"Station.TankLevel": Quality.good(), "Station.OutletFlow": Quality.good()},
                    inputs_mono=t,
                    model_healthy=True,
                    audit_ok=True,
                    stopping=False,
                    last_verify_ok=True,
                    last_write_at=last_write.get(target),
                ),
            )
            if d.writes and d.write_tag is not None and d.applied_value is not None:
                plant.plc.write(d.write_tag, d.applied_value)
                last_write[target] = t
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
