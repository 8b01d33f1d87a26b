"""The pump-energy rule closing the loop on the embedded plant without the network.

For the energy benches (bench/energy.py, bench/tariff.py) and the tests that run whole simulated
days in seconds (tests/e2e/test_energy_day.py, tests/e2e/test_min_flow_on_plant.py): every step
the agent's pure stages decide on what the PLC measures, the Guard decides from the measured
permissive and the setpoint the PLC holds, and the decision is written through the PLC's own
write logic (the same logic its Modbus and OPC UA servers call). The protocol path, the audit
and the write-back unit are covered by the e2e tests that run the real agent.

:class:`StartStopLoop` closes the start/stop loop the same way: the agent's own run-state unit
(:class:`agent.pumprun.PumpRunTracker`, reading the PLC's running feedback) tells the rule
what runs and what the limits allow, :meth:`Guard.decide_start_stop` decides every request from
the start history (kept here as the audit log keeps it: every start requested counts), and the
request bit goes through the PLC's write logic. It also measures, from the plant's truth, the
run hours per pump and the most starts any pump made within an hour.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from agent.pipeline.guard import (
    Guard,
    GuardConfig,
    GuardInputs,
    SetpointTarget,
    StartStopInputs,
    StartStopTarget,
)
from agent.pipeline.policy import PumpRunState, RecommenderConfig
from agent.pumprun import PumpRunTracker, StartHistory
from agent.types import Quality, Recommendation, Sample, utcnow
from simulator import Plant

__all__ = ["PlantTable", "StartStopLoop", "guard_step", "start_stop_targets", "station_guard"]


def start_stop_targets(pumps: int) -> list[StartStopTarget]:
    """Start/stop targets on the plant's run requests (the limits' defaults: 15 min run, 5 min
    rest, 4 starts per hour)."""
    return [
        StartStopTarget(
            tag=f"Pump{i}.RunRequest", asset=f"pump{i}", running_tag=f"Pump{i}.Running",
            remote_start_tag="Station.RemoteActive", ttl_s=60, max_input_age_s=60,
        )
        for i in range(1, pumps + 1)
    ]  # fmt: skip


def station_guard(
    targets: Sequence[str],
    *,
    ttl_s: float,
    rate_per_min: float = 600.0,
    start_stop: Sequence[StartStopTarget] = (),
) -> Guard:
    """A Guard in ``auto`` on the pumps' external speed setpoints (the demo's limits), and on
    ``start_stop`` targets."""
    cfg = [
        SetpointTarget(
            tag=t,
            min=1500,
            max=2950,
            rate_per_min=rate_per_min,
            deadband=5,
            ttl_s=ttl_s,
            max_input_age_s=ttl_s,
        )
        for t in targets
    ]
    return Guard(
        GuardConfig(
            writes_enabled=True,
            mode="auto",
            permissive_tag="Station.Permissive",
            allow_list=[*targets, *(t.tag for t in start_stop)],
            targets=cfg,
            start_stop=list(start_stop),
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


class PlantTable:
    """The plant's PLC tags as the agent's tag table shows them (GOOD and fresh at ``t``)."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        self.t = 0.0

    def get(self, tag: str, now: float | None = None) -> Sample:
        return _sample(tag, self.plant.state.tags[tag], self.t if now is None else now)


class StartStopLoop:
    """Start/stop through the Guard on the plant (see the module docstring)."""

    def __init__(self, plant: Plant, rc: RecommenderConfig, targets: Sequence[StartStopTarget]) -> None:
        self.plant = plant
        self.guard = station_guard([], ttl_s=60, start_stop=targets)
        self.targets = list(targets)
        self.table = PlantTable(plant)
        self.tracker = PumpRunTracker(rc, targets, None)
        # a pump first seen without history counts its run (or rest) from then, as the agent's
        # start/stop unit does
        self.history: dict[str, tuple[list[float], float | None, float | None]] = {
            t.tag: ([], 0.0, None) if plant.state.tags[t.running_tag] else ([], None, 0.0) for t in targets
        }
        self.run_s = [0.0] * plant.pumps  # truth: time with speed > 0
        self.starts: list[deque[float]] = [deque() for _ in range(plant.pumps)]
        self.max_starts_per_hour = 0
        self.max_imbalance_s = 0.0
        self._was = [s > 0 for s in plant.speed]

    def _history(self, tag: str) -> StartHistory | None:
        starts, started, stopped = self.history[tag]
        return tuple(starts), started, stopped

    def run_state(self, t: float) -> dict[str, PumpRunState]:
        """What the agent's run-state unit tells the rule at ``t``."""
        self.table.t = t
        return self.tracker.observe(self.table, t, t, self._history)

    def observe(self, t: float, dt: float) -> None:
        """After each plant step: the truth (run time, starts per hour in any hour)."""
        for i, s in enumerate(self.plant.speed):
            running = s > 0
            if running:
                self.run_s[i] += dt
            if running and not self._was[i]:
                q = self.starts[i]
                q.append(t)
                while q and q[0] <= t - 3600.0:
                    q.popleft()
                self.max_starts_per_hour = max(self.max_starts_per_hour, len(q))
            self._was[i] = running
        self.max_imbalance_s = max(self.max_imbalance_s, max(self.run_s) - min(self.run_s))

    def step(self, recs: Mapping[str, Recommendation], t: float) -> None:
        """The Guard on every start/stop target; a request it allows is written to the PLC."""
        tags = self.plant.state.tags
        for target in self.targets:
            starts, started, stopped = self.history[target.tag]
            d = self.guard.decide_start_stop(
                target.tag,
                StartStopInputs(
                    now=t, now_utc_s=t, recommendation=recs.get(target.tag),
                    permissive=_sample("Station.Permissive", bool(tags["Station.Permissive"]), t),
                    remote_start=_sample(target.remote_start_tag, bool(tags[target.remote_start_tag]), t),
                    running=_sample(target.running_tag, bool(tags[target.running_tag]), t),
                    starts_utc_s=tuple(s for s in starts if s > t - 3600.0),
                    started_at_utc_s=started, stopped_at_utc_s=stopped, pending_since=None,
                    last_confirm_ok=True, model_healthy=True, audit_ok=True, stopping=False,
                ),
            )  # fmt: skip
            if not d.writes or d.applied_value is None:
                continue
            on = bool(d.applied_value)
            self.plant.plc.write(target.tag, on)
            if on:
                self.history[target.tag] = ([s for s in starts if s > t - 3600.0] + [t], t, stopped)
            else:
                self.history[target.tag] = (starts, started, t)

    def summary(self) -> dict[str, Any]:
        """Run hours per pump, their imbalance at the end and the largest during the run, the
        most starts any pump made within an hour (the plant's truth)."""
        hours = [s / 3600.0 for s in self.run_s]
        return {
            "run_hours": hours,
            "run_hours_imbalance_h": max(hours) - min(hours),
            "max_run_hours_imbalance_h": self.max_imbalance_s / 3600.0,
            "max_starts_per_hour": float(self.max_starts_per_hour),
        }


def loop_summary(loop: StartStopLoop | None) -> dict[str, Any]:
    """:meth:`StartStopLoop.summary`, or what a run without start/stop (every pump always
    running) reports in its place."""
    if loop is not None:
        return loop.summary()
    return {
        "run_hours_imbalance_h": 0.0,
        "max_run_hours_imbalance_h": 0.0,
        "max_starts_per_hour": 0.0,
        "run_hours": None,
    }
