"""The pump-energy rule closing the loop on the embedded plant without the network.

For the energy benches (bench/energy.py, bench/tariff.py) and the tests that run whole simulated
days in seconds (tests/e2e/test_energy_day.py, tests/e2e/test_min_flow_on_plant.py): every step
the agent's pure stages decide on what the PLC measures, the Guard decides from the measured
permissive and the setpoint the PLC holds, and the decision is written through the PLC's own
write logic (the same logic its Modbus and OPC UA servers call). The protocol path, the audit
and the write-back unit are covered by the e2e tests that run the real agent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from agent.pipeline.guard import Guard, GuardConfig, GuardInputs, SetpointTarget
from agent.types import Quality, Recommendation, Sample, utcnow
from simulator import Plant

__all__ = ["guard_step", "station_guard"]


def station_guard(targets: Sequence[str], *, ttl_s: float, rate_per_min: float = 600.0) -> Guard:
    """A Guard in ``auto`` on the pumps' external speed setpoints (the demo's limits)."""
    cfg = [
        SetpointTarget(
            tag=t, min=1500, max=2950, rate_per_min=rate_per_min, deadband=5, ttl_s=ttl_s,
            max_input_age_s=ttl_s,
        )
        for t in targets
    ]
    return Guard(
        GuardConfig(
            writes_enabled=True,
            mode="auto",
            permissive_tag="Station.Permissive",
            allow_list=list(targets),
            targets=cfg,
        )
    )


def _sample(tag: str, value: float | bool, t: float) -> Sample:
    ok = not (isinstance(value, float) and math.isnan(value))
    return Sample(tag, value, Quality.good() if ok else Quality.bad("no valid value"), utcnow(), t)


def guard_step(
    guard: Guard,
    plant: Plant,
    recs: Mapping[str, Recommendation],
    t: float,
    last_write: dict[str, float],
    inputs: Sequence[str] = ("Station.TankLevel", "Station.OutletFlow"),
) -> None:
    """One step of the Guard on every target at time ``t``; writes through the PLC's logic and
    keeps ``last_write`` (the rate credit's start per target)."""
    tags = plant.state.tags
    for target in guard.targets:
        d = guard.decide(
            target,
            GuardInputs(
                now=t,
                recommendation=recs.get(target),
                permissive=_sample("Station.Permissive", bool(tags["Station.Permissive"]), t),
                readback=_sample(target, float(tags[target]), t),
                input_qualities=dict.fromkeys(inputs, Quality.good()),
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
