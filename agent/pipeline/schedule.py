"""Station flow planned against a tariff: dynamic programming over a level grid. Pure.

Given the demand forecast ``D[k]`` (m³/h) and the price ``p[k]`` (per kWh) of each step of
``step_h`` hours, the tank (area ``A``, a level band less a reserve at the bottom and a margin at
the top) and the station's electrical power as a function of station flow and level
(:class:`PowerTable`), :func:`plan` finds the station flows ``Q[k]`` minimising

    Σ_k p[k] · P(Q[k], L̄[k]) · step_h    subject to    A (L[k+1] − L[k]) = (Q[k] − D[k]) · step_h,
    low + reserve ≤ L[k] ≤ high − margin,  0 ≤ Q[k] ≤ Q_max,  L[N] ≥ min(L[0], end target)

with ``L̄`` the step's mean level (the static head rises with it). The levels are a grid of
``grid`` points; each step's cost matrix ``[from level, to level]`` interpolates the power table
along flow, so one plan is ``N · grid²`` array operations (milliseconds). With a flat price it
is the energy-optimal plan (pump at the flow of least kWh/m³, let the tank absorb the rest);
with a two-rate tariff it fills the tank in the cheap hours.

Receding horizon: the agent replans every few minutes from the measured level and hands the
first step's flow to the pump-energy rule (``planned_flow_m3h``); the Guard still decides every
write. When no plan keeps the band (demand above what the pumps and the stored water can give)
the result says so and the first step is the maximum flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Plan", "PowerTable", "TankBand", "plan"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TankBand:
    """The tank as the plan sees it: area (m²), level band (m), the reserve kept above its
    bottom and the margin kept below its top."""

    area_m2: float
    low_m: float
    high_m: float
    reserve_m: float = 0.0
    margin_m: float = 0.0

    @property
    def lowest(self) -> float:
        return self.low_m + self.reserve_m

    @property
    def highest(self) -> float:
        return self.high_m - self.margin_m


@dataclass(frozen=True, slots=True)
class PowerTable:
    """Station electrical power (kW) on a grid of flows (m³/h, from 0) × levels (m)."""

    flows: FloatArray  # [F], increasing, flows[0] == 0
    levels: FloatArray  # [G], increasing
    power_kw: FloatArray  # [G, F]; inf where the flow cannot be delivered

    @classmethod
    def build(
        cls,
        power: Callable[[float, float], float],
        q_max: float,
        levels: Sequence[float] | FloatArray,
        n_flows: int = 121,
    ) -> PowerTable:
        """Tabulate ``power(flow, level)`` (kW; inf when not deliverable) for flows in [0, q_max]."""
        flows = np.linspace(0.0, q_max, n_flows)
        lv = np.asarray(levels, dtype=np.float64)
        tab = np.array([[power(float(q), float(level)) for q in flows] for level in lv], dtype=np.float64)
        return cls(flows, lv, tab)

    @property
    def q_max(self) -> float:
        return float(self.flows[-1])

    def at(self, flow: FloatArray, level_index: npt.NDArray[np.intp]) -> FloatArray:
        """Power at flows (any shape) and level indices (same shape), linear in flow."""
        f = np.clip(flow, 0.0, self.q_max) / self.q_max * (len(self.flows) - 1)
        i0 = np.minimum(np.floor(f).astype(np.intp), len(self.flows) - 2)
        w = f - i0
        p0 = self.power_kw[level_index, i0]
        p1 = self.power_kw[level_index, i0 + 1]
        with np.errstate(invalid="ignore"):
            out: FloatArray = np.where(w == 0, p0, p0 * (1 - w) + p1 * w)
        out[np.isnan(out)] = np.inf  # inf · 0 next to an undeliverable flow
        return out

    def specific_energy(self, flow: float, level: float) -> float:
        """kWh/m³ at one flow and level (nearest tabulated level)."""
        if flow <= 0:
            return math.inf
        j = int(np.abs(self.levels - level).argmin())
        return float(self.at(np.array([flow]), np.array([j], dtype=np.intp))[0]) / flow


@dataclass(frozen=True, slots=True)
class Plan:
    """A planned flow per step and the levels it leads to, with what it costs."""

    step_h: float
    flows_m3h: tuple[float, ...]
    levels_m: tuple[float, ...]  # N + 1 values, from the level now
    energy_kwh: float
    cost: float
    volume_m3: float
    feasible: bool
    reason: str

    @property
    def first_flow_m3h(self) -> float:
        return self.flows_m3h[0]

    @property
    def specific_energy(self) -> float:
        """kWh/m³ of the plan (inf when it pumps nothing)."""
        return self.energy_kwh / self.volume_m3 if self.volume_m3 > 0 else math.inf


def plan(
    demand_m3h: Sequence[float],
    prices: Sequence[float],
    level_m: float,
    tank: TankBand,
    table: PowerTable,
    *,
    step_h: float = 1.0,
    end_level_m: float | None = None,
) -> Plan:
    """The cheapest flows over ``len(demand_m3h)`` steps (see the module docstring).

    ``table.levels`` is the level grid (from ``tank.lowest`` to ``tank.highest``); the level now
    is snapped to it, and a level outside the grid (the plan's model was wrong, or a burst)
    raises (lowers) the first flow enough to be back on it within the first step.
    ``end_level_m``: the plan ends at or above min(level now, this) (default: the level now),
    so a horizon's end never sells the next day's storage.
    """
    d = np.asarray(demand_m3h, dtype=np.float64)
    p = np.asarray(prices, dtype=np.float64)
    if d.shape != p.shape or d.ndim != 1 or len(d) == 0:
        raise ValueError(f"demand ({d.shape}) and prices ({p.shape}) need one value per step")
    lv = table.levels
    g = len(lv)
    n = len(d)
    start = int(np.abs(lv - min(max(level_m, lv[0]), lv[-1])).argmin())
    end_min = min(level_m, end_level_m if end_level_m is not None else level_m)
    end_ok = lv >= min(end_min, lv[-1]) - 1e-9
    dl = lv[None, :] - lv[:, None]  # [from, to]
    mid = np.clip(np.rint((np.arange(g)[:, None] + np.arange(g)[None, :]) / 2), 0, g - 1).astype(np.intp)
    # backward pass: value[i] = cheapest cost from level i at step k to the end
    value = np.where(end_ok, 0.0, np.inf)
    choice = np.zeros((n, g), dtype=np.intp)
    step_cost = np.empty((n, g, g))
    for k in range(n - 1, -1, -1):
        q = d[k] + tank.area_m2 * dl / step_h
        pw = table.at(q, mid)
        ok = (q >= -1e-9) & (q <= table.q_max + 1e-9) & np.isfinite(pw)
        c = np.where(ok, p[k] * pw * step_h, np.inf)
        step_cost[k] = c
        total = c + value[None, :]
        choice[k] = np.argmin(total, axis=1)
        value = total[np.arange(g), choice[k]]
    feasible = bool(np.isfinite(value[start]))
    levels = [float(lv[start])]
    flows: list[float] = []
    energy = cost = volume = 0.0
    i = start
    for k in range(n):
        if feasible:
            j = int(choice[k, i])
        else:  # no plan keeps the band: fill as fast as the pumps can
            j = int(
                np.clip(
                    np.searchsorted(lv, lv[i] + (table.q_max - d[k]) * step_h / tank.area_m2) - 1, 0, g - 1
                )
            )
        q = float(max(0.0, d[k] + tank.area_m2 * (lv[j] - lv[i]) / step_h))
        kw = float(table.at(np.array([q]), np.array([mid[i, j]]))[0])
        flows.append(q)
        levels.append(float(lv[j]))
        energy += kw * step_h
        cost += kw * step_h * float(p[k])
        volume += q * step_h
        i = j
    if not feasible:
        flows[0] = table.q_max
    elif level_m < lv[0]:  # below the reserve (model error, a burst): back to it within the step
        flows[0] = min(table.q_max, max(flows[0], float(d[0]) + tank.area_m2 * (lv[0] - level_m) / step_h))
    elif level_m > lv[-1]:
        flows[0] = max(0.0, min(flows[0], float(d[0]) - tank.area_m2 * (level_m - lv[-1]) / step_h))
    reason = (
        f"plan over {n * step_h:g} h: {energy:.0f} kWh, cost {cost:.2f}"
        if feasible
        else f"no plan keeps the level in [{tank.lowest:.2f}, {tank.highest:.2f}] m over {n * step_h:g} h: "
        "maximum flow"
    )
    return Plan(step_h, tuple(flows), tuple(levels), energy, cost, volume, feasible, reason)
