"""Recordings of the embedded plant with the agent's load shifts: speed setpoints written through
the PLC API (permissive, heartbeat, ``PumpN.ExternalSpeedSetpoint``, the PLC's own rules), as the
pump-energy rule moves the load. A helper of ``bench/operating_point.py`` and of
``models/build.sh`` (the operating-point model must see the operating envelope it will run in).

    python -m bench.loadshift --seed 1 --hours 48 --out build/recordings/shift-s1.csv
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.faults import ScenarioEvent
from simulator.physics import Plant, StationParams
from simulator.recorder import _wide, _Writer

CARRY_MIN_RPM = 1850.0
"""The carrying pump's lowest speed in the schedule's wide moves: below it the two pumps deliver
little against the station's static head (the PLC's level control runs both at 1,750-2,300 rpm)."""
CARRY_MAX_RPM = 2500.0
"""The carrier's highest speed in an unload to any speed: one pump carrying the demand alone."""
UNLOAD_MAX_RPM = 2000.0
"""The unloaded pump's highest speed in an unload to any speed (its minimum-flow speed and above)."""
LOW_CARRY_MAX_RPM = 2000.0
"""The carrier's highest speed in a low-carrier move (``low_carrier``): the bottom of its range."""
LOW_UNLOAD_MAX_RPM = 1600.0
"""The unloaded pump's highest speed in a low-carrier move: at or near its zero-flow speed."""

__all__ = [
    "CARRY_MAX_RPM",
    "CARRY_MIN_RPM",
    "LOW_CARRY_MAX_RPM",
    "LOW_UNLOAD_MAX_RPM",
    "UNLOAD_MAX_RPM",
    "Shift",
    "ShiftingPlant",
    "main",
    "record",
    "shift_schedule",
]


@dataclass(frozen=True)
class Shift:
    """At ``at_s`` write these external speed setpoints (pump → rpm); ``None``: give control back
    to the PLC (permissive off)."""

    at_s: float
    speeds: dict[int, float] | None


class ShiftingPlant(Plant):
    """The plant with an agent writing speed setpoints through the PLC API at given times."""

    def __init__(
        self, params: StationParams, seed: int, shifts: Sequence[Shift], scenario: Sequence[ScenarioEvent]
    ):
        super().__init__(params, seed=seed, scenario=list(scenario))
        self._shifts = sorted(shifts, key=lambda s: s.at_s)
        self._next = 0
        self._remote = False
        self._beat = 0
        self._beat_at = -math.inf

    def step(self, dt: float) -> None:
        while self._next < len(self._shifts) and self._shifts[self._next].at_s <= self.t + 1e-9:
            s = self._shifts[self._next]
            self._next += 1
            if s.speeds is None:
                self.plc.write("Station.Permissive", False)
                self._remote = False
                continue
            if not self._remote:
                self.plc.write("Station.Permissive", True)
                self._remote = True
            self._heartbeat()
            for pump, rpm in s.speeds.items():
                self.plc.write(f"Pump{pump}.ExternalSpeedSetpoint", float(rpm))
        if self._remote and self.t - self._beat_at >= 2.0:
            self._heartbeat()
        super().step(dt)

    def _heartbeat(self) -> None:
        self._beat = (self._beat + 1) % 65536
        self._beat_at = self.t
        self.plc.write("Station.AgentHeartbeat", self._beat)


def record(
    path: Path, *, seed: int, hours: float, shifts: Sequence[Shift] = (), events: Sequence[ScenarioEvent] = ()
) -> Path:
    """A wide CSV at 1 s (the simulator's own recording format) of a run with ``shifts``."""
    plant = ShiftingPlant(StationParams(pumps=2), seed, shifts, events)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        _wide(plant, _Writer(fh), round(hours * 3600), 1, 1.0, 1.0)
    return path


def shift_schedule(
    seed: int,
    hours: float,
    params: StationParams | None = None,
    *,
    every_h: float = 3.0,
    hold_h: float = 1.0,
    low_carrier: float = 0.0,
) -> list[Shift]:
    """Every ``every_h`` (3 h) from 1 h on, for ``hold_h`` (1 h), one of the moves the agent's
    pump-energy rule can make (agent/pipeline/policy.py), then control goes back to the PLC.
    Five kinds, equally likely:

    * unload one pump to the PLC's minimum speed while the other carries the flow (2300-2900 rpm);
    * move 300-700 rpm of speed from one pump to the other around 1950-2250 rpm;
    * both at one common speed (1800-2600 rpm: the rule's energy optimum moves with the level);
    * unload one pump to any speed from the PLC's minimum to ``UNLOAD_MAX_RPM`` (and below the
      carrier's), the carrier anywhere from ``CARRY_MIN_RPM`` to ``CARRY_MAX_RPM`` (an alarm unloads
      a pump to its minimum-flow speed, which moves with the level and the demand, and the other
      carries the demand: a little above the PLC's own speed, not at the maximum);
    * both pumps anywhere in the PLC's speed range, drawn independently, the faster at least
      ``CARRY_MIN_RPM``.

    The last two cover the operating envelope the rule reaches (each pump anywhere in the PLC's
    range, the other carrying the rest), not only the first three's corners. The rule never
    leaves both pumps near their zero-flow speed (an hour of it empties the tank, which the
    Guard's level band forbids), hence the carrier's floor.

    ``low_carrier`` (0 to 1, default 0): the share of moves drawn instead as a **low-carrier
    move**: one pump unloaded to the PLC's minimum up to ``LOW_UNLOAD_MAX_RPM`` (no flow) beside a
    carrier at ``CARRY_MIN_RPM`` to ``LOW_CARRY_MAX_RPM`` for the whole hold, and the PLC's refill
    to its maximum after the take-back (the level fell meanwhile). The five kinds draw it about one
    move in 92; a model that never saw an hour of it reads it as a fault (models/README.md,
    seq-pump). With 0 the schedule is the five kinds' draw for draw (the same random stream)."""
    prm = params or StationParams(pumps=2)
    lo, hi = prm.min_speed_rpm, prm.max_speed_rpm
    rng = np.random.default_rng(seed)
    if not 0 < hold_h < every_h:
        raise ValueError(f"the hold ({hold_h:g} h) must be shorter than the period ({every_h:g} h)")
    if not 0.0 <= low_carrier <= 1.0:
        raise ValueError(f"low_carrier ({low_carrier:g}) is a share of the moves, from 0 to 1")
    out: list[Shift] = []
    t = 3600.0
    while t + hold_h * 3600.0 <= hours * 3600.0:
        if low_carrier > 0.0 and rng.random() < low_carrier:
            up = int(rng.integers(1, 3))
            carry = float(rng.uniform(CARRY_MIN_RPM, LOW_CARRY_MAX_RPM))
            speeds = {up: carry, 3 - up: float(rng.uniform(lo, LOW_UNLOAD_MAX_RPM))}
        else:
            speeds = _one_of_five(rng, lo, hi)
        out.append(Shift(t, speeds))
        out.append(Shift(t + hold_h * 3600.0, None))
        t += every_h * 3600.0
    return out


def _one_of_five(rng: np.random.Generator, lo: float, hi: float) -> dict[int, float]:
    """One move of :func:`shift_schedule`'s five kinds, equally likely (its docstring)."""
    kind = int(rng.integers(0, 5))
    up = int(rng.integers(1, 3))
    if kind == 0:  # unload: a pump to its minimum speed, the other carries the flow
        return {up: float(rng.uniform(2300.0, 2900.0)), 3 - up: lo}
    if kind == 1:  # move speed from one pump to the other
        delta = float(rng.uniform(300.0, 700.0))
        base = float(rng.uniform(1950.0, 2250.0))
        return {up: min(base + delta / 2, 2900.0), 3 - up: max(base - delta / 2, lo)}
    if kind == 2:  # both at one speed (the rule's energy optimum moves with the level and demand)
        v = float(rng.uniform(1800.0, 2600.0))
        return {1: v, 2: v}
    if kind == 3:  # unload to any speed below the carrier's, the carrier carrying the demand
        carry = float(rng.uniform(CARRY_MIN_RPM, CARRY_MAX_RPM))
        return {up: carry, 3 - up: float(rng.uniform(lo, min(carry, UNLOAD_MAX_RPM)))}
    # both anywhere in the PLC's range, the faster one carrying
    a, b = (float(v) for v in rng.uniform(lo, hi, size=2))
    while max(a, b) < CARRY_MIN_RPM:
        a, b = (float(v) for v in rng.uniform(lo, hi, size=2))
    return {1: a, 2: b}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.loadshift", description=__doc__.splitlines()[0] if __doc__ else None
    )
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--hours", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=float, default=3.0, help="hours from one move to the next (default 3)")
    ap.add_argument(
        "--hold", type=float, default=1.0, help="hours a move is held, then the PLC takes it back (default 1)"
    )
    ap.add_argument(
        "--low-carrier",
        type=float,
        default=0.0,
        help="share of moves drawn as a carrier at 1,850-2,000 rpm beside an unload at no flow (default 0)",
    )
    args = ap.parse_args(argv)
    shifts = shift_schedule(
        args.seed, args.hours, every_h=args.every, hold_h=args.hold, low_carrier=args.low_carrier
    )
    record(args.out, seed=args.seed, hours=args.hours, shifts=shifts)
    print(f"wrote {args.out}: {args.hours:g} h, seed {args.seed}, {len(shifts) // 2} load shifts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
