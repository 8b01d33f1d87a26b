"""Setpoint recommendations: a rule-based recommender from published pump physics.

This is the **pump-energy rule**, named as such everywhere it shows (recommendation reasons,
audit rows, the console): not a learned model. Until export ships a learned recommender it
follows the station's published physics (pump curve, efficiency curve, motor losses, system
curve, tank band), the same data a controls engineer takes from the datasheets:

* specific energy (kWh/m³) over speed has an interior minimum under static head; the rule runs
  the pumps at that optimum while the tank can absorb the difference between flow and demand;
* over a look-ahead horizon the level must stay in its band (less a margin), which bounds the
  station flow to ``[D − A·(level − low)/T, D + A·(high − level)/T]`` and so the speed;
* a pump with an active alarm at or above ``unload_on_severity`` is unloaded to its minimum
  speed (below its zero-flow speed, so it delivers nothing) and the healthy pumps carry the
  flow, each at the optimum for that number of running pumps.

Pure: inputs in, recommendations out. The Guard decides what, if anything, is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field

from agent.configbase import FrozenModel
from agent.types import Recommendation

__all__ = [
    "PumpEnergyRule",
    "PumpStationModel",
    "RecommenderConfig",
    "RecommenderPump",
    "StationState",
]

RULE_NAME = "pump-energy-rule"
_RHO_G_KWH = 998.2 * 9.80665 / 3.6e6  # kWh per m³ per m of head

_Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PumpStationModel(FrozenModel):
    """Published data of N identical variable-speed pumps in parallel feeding a tank."""

    rated_speed_rpm: _Pos = 2900
    shutoff_head_m: _Pos = 60
    head_coeff: _Pos = 0.0015  # m/(m³/h)²: H = H0 r² − b q²
    bep_flow_m3h: _Pos = 110
    bep_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.78
    motor_rated_power_kw: _Pos = 22
    motor_rated_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.93
    motor_fixed_loss_fraction: Annotated[float, Field(ge=0, le=1)] = 0.35
    drive_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.97
    static_head_m: _NonNeg = 15  # to the tank bottom; the level adds to it
    system_k: _NonNeg = 3.6e-4  # m/(m³/h)², on the total flow
    suction_k: _NonNeg = 1.0e-4  # m/(m³/h)², per pump
    tank_area_m2: _Pos = 30
    level_low_m: _NonNeg = 2.0
    level_high_m: _Pos = 4.0
    horizon_s: _Pos = 1800
    min_speed_rpm: _Pos = 1500
    max_speed_rpm: _Pos = 2950


class RecommenderPump(FrozenModel):
    asset: str
    target: str  # the Guard target (setpoint tag) for this pump


class RecommenderConfig(FrozenModel):
    kind: Literal["pump_energy_rule"] = "pump_energy_rule"
    station: PumpStationModel = PumpStationModel()
    level_tag: str
    demand_tag: str  # the tank outlet flow (consumer demand)
    pumps: Annotated[list[RecommenderPump], Field(min_length=1)]
    unload_on_severity: Annotated[int, Field(ge=1, le=4)] = 3
    ttl_s: _Pos = 10.0
    band_margin_m: _NonNeg = 0.1
    """Aim inside the level band by this much: measurement noise and drive ramps must not
    carry the level out of it (the plant's oracle rides the band edges exactly)."""


@dataclass(frozen=True, slots=True)
class StationState:
    """What the rule needs this cycle; None means the value is not GOOD."""

    level_m: float | None
    demand_m3h: float | None
    severity: Mapping[str, int]  # asset → highest active alarm severity (0 = none)
    inputs_good: bool


class _Physics:
    """Pump, motor and system curves (nominal), for speed n (rpm) and head (m)."""

    def __init__(self, m: PumpStationModel) -> None:
        self.m = m
        self.loss_rated = m.motor_rated_power_kw * (1 / m.motor_rated_efficiency - 1)

    def pump_flow(self, n: float, hs: float, running: int) -> float:
        """Per-pump flow with ``running`` pumps at speed n against static head hs."""
        m = self.m
        r = n / m.rated_speed_rpm
        num = m.shutoff_head_m * r * r - hs
        if num <= 0:
            return 0.0
        return math.sqrt(num / (m.head_coeff + m.suction_k + m.system_k * running * running))

    def electrical_power(self, q: float, n: float) -> float:
        """kW drawn by one pump's drive at flow q and speed n."""
        m = self.m
        r = n / m.rated_speed_rpm
        x = q / (r * m.bep_flow_m3h)
        head = m.shutoff_head_m * r * r - m.head_coeff * q * q
        if q > 0:
            shaft = _RHO_G_KWH * q * head / (m.bep_efficiency * x * (2 - x))
        else:  # churning at shut-off: finite
            shaft = _RHO_G_KWH * head * r * m.bep_flow_m3h / (m.bep_efficiency * 2)
        lam = shaft / m.motor_rated_power_kw
        f = m.motor_fixed_loss_fraction
        motor_in = shaft + self.loss_rated * (f + (1 - f) * lam * lam)
        return motor_in / m.drive_efficiency

    def specific_energy(self, n: float, hs: float, running: int, parked: int) -> float:
        """kWh/m³ of the station with ``running`` pumps at n and ``parked`` at minimum speed."""
        q = self.pump_flow(n, hs, running)
        if q <= 0:
            return math.inf
        park = parked * self.electrical_power(0.0, self.m.min_speed_rpm)
        return (running * self.electrical_power(q, n) + park) / (running * q)

    def speed_for_flow(self, total_q: float, hs: float, running: int) -> float:
        m = self.m
        per_pump = total_q / running
        head = hs + m.system_k * total_q * total_q + (m.head_coeff + m.suction_k) * per_pump * per_pump
        return m.rated_speed_rpm * math.sqrt(head / m.shutoff_head_m)

    def optimal_speed(self, hs: float, running: int, parked: int) -> float:
        return _optimal_speed_cached(self, round(hs, 3), running, parked)


@lru_cache(maxsize=4096)
def _optimal_speed_cached(phys: _Physics, hs: float, running: int, parked: int) -> float:
    m = phys.m
    lo = max(m.min_speed_rpm, m.rated_speed_rpm * math.sqrt(hs / m.shutoff_head_m) + 1.0)
    hi = m.max_speed_rpm
    if lo >= hi:
        return hi
    golden = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = phys.specific_energy(c, hs, running, parked), phys.specific_energy(d, hs, running, parked)
    while b - a > 0.01:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = phys.specific_energy(c, hs, running, parked)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = phys.specific_energy(d, hs, running, parked)
    return (a + b) / 2


class PumpEnergyRule:
    """The rule-based recommender (see the module docstring). One instance per station."""

    name = RULE_NAME

    def __init__(self, config: RecommenderConfig) -> None:
        self.config = config
        self._phys = _Physics(config.station)

    def speeds(
        self,
        level_m: float,
        demand_m3h: float,
        unloaded: Sequence[str],
        planned_flow_m3h: float | None = None,
    ) -> tuple[dict[str, float], str]:
        """Speed per pump asset, and the reason in words.

        ``planned_flow_m3h`` is the station flow a schedule asks for (None: the energy optimum);
        the level band still bounds it."""
        cfg, m = self.config, self.config.station
        assets = [p.asset for p in cfg.pumps]
        running_assets = [a for a in assets if a not in unloaded] or assets  # never unload them all
        parked = len(assets) - len(running_assets)
        running = len(running_assets)
        hs = m.static_head_m + level_m
        n_opt = self._phys.optimal_speed(hs, running, parked)
        low, high = m.level_low_m + cfg.band_margin_m, m.level_high_m - cfg.band_margin_m
        q_min = demand_m3h - m.tank_area_m2 * (level_m - low) / (m.horizon_s / 3600)
        q_max = demand_m3h + m.tank_area_m2 * (high - level_m) / (m.horizon_s / 3600)
        n_lo = m.min_speed_rpm if q_min <= 0 else self._phys.speed_for_flow(q_min, hs, running)
        n_hi = self._phys.speed_for_flow(max(q_max, 1e-6), hs, running)
        if planned_flow_m3h is not None:
            n_opt = self._phys.speed_for_flow(max(planned_flow_m3h, 1e-6), hs, running)
        n = n_lo if n_lo > n_hi else min(max(n_opt, n_lo), n_hi)
        n = min(max(n, m.min_speed_rpm), m.max_speed_rpm)
        if planned_flow_m3h is not None and abs(n - n_opt) < 0.5:
            why = f"planned station flow {planned_flow_m3h:.1f} m³/h: {n:.0f} rpm"
        elif n == n_opt or abs(n - n_opt) < 0.5:
            why = f"energy optimum {n_opt:.0f} rpm at static head {hs:.1f} m"
        elif n < n_opt:
            why = f"level near the top of its band: {n:.0f} rpm (optimum {n_opt:.0f})"
        else:
            why = f"level near the bottom of its band: {n:.0f} rpm (optimum {n_opt:.0f})"
        if parked:
            why += f"; {', '.join(sorted(unloaded))} unloaded, load on {', '.join(running_assets)}"
        out = {a: (n if a in running_assets else m.min_speed_rpm) for a in assets}
        return out, why

    def recommend(
        self, state: StationState, now_mono: float, planned_flow_m3h: float | None = None
    ) -> list[Recommendation]:
        """One recommendation per pump target, or none when level or demand is not GOOD.

        ``planned_flow_m3h``: the station flow a schedule asks for (None: the energy optimum),
        distributed across the pumps under the same constraints."""
        if state.level_m is None or state.demand_m3h is None:
            return []
        cfg = self.config
        unloaded = [p.asset for p in cfg.pumps if state.severity.get(p.asset, 0) >= cfg.unload_on_severity]
        speeds, why = self.speeds(state.level_m, state.demand_m3h, unloaded, planned_flow_m3h)
        return [
            Recommendation(
                target_tag=p.target,
                value=speeds[p.asset],
                reason=f"{RULE_NAME}: {why}",
                model=RULE_NAME,
                created_mono=now_mono,
                expires_mono=now_mono + cfg.ttl_s,
                inputs_good=state.inputs_good,
            )
            for p in cfg.pumps
        ]

    def specific_energy(self, speed: float, level_m: float, running: int, parked: int = 0) -> float:
        """kWh/m³ at a speed (for the console and the benchmark)."""
        return self._phys.specific_energy(speed, self.config.station.static_head_m + level_m, running, parked)
