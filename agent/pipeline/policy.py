"""Setpoint recommendations: a rule-based recommender on the station's pump and system curves.

This is the **pump-energy rule**, named as such everywhere it shows (recommendation reasons,
audit rows, the console): not a learned model. It works on curves, one set per pump:

* head ``H = a r² + b r q − c q²`` (r = n / n_rated, q per pump) and electrical power per pump;
  the system ``H = static + level + k Q² + k_s q²`` and the tank area;
* taken from an **identified** station (a signed recommender bundle, ``station_bundle``, that
  ``edge-export identify`` fits from the station's own recordings) or, until one is loaded,
  from the datasheet values in ``station`` (the identification's prior and the fallback).

Each cycle:

* the station flow Q of least specific energy (kWh/m³) is found, the flow split across the
  running pumps at least total power (pumps that differ take different speeds);
* over a look-ahead horizon the level must stay in its band (less a margin), which bounds Q to
  ``[D − A·(level − low)/T, D + A·(high − level)/T]``; a planned station flow (a schedule)
  replaces the optimum but stays inside the band;
* **pump constraints**: no pump is ever recommended a speed that delivers below its minimum
  continuous flow (a fraction of its BEP flow, proportional to speed, plus a margin); a pump
  outside its preferred operating region around BEP costs a penalty in the split; where a
  suction pressure is measured and NPSH3 is configured, a pump's flow is capped so the NPSH
  available keeps its margin over NPSH3;
* a pump with an active alarm at or above ``unload_on_severity`` is unloaded to its
  **minimum-flow speed** (never a speed that delivers nothing) and the healthy pumps carry the
  rest.

Pure: inputs in, recommendations out. The Guard decides what, if anything, is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import Field

from agent.configbase import FrozenModel
from agent.modelstore.station import StationManifest
from agent.types import Recommendation

__all__ = [
    "PumpCurve",
    "PumpEnergyRule",
    "PumpStationModel",
    "RecommenderConfig",
    "RecommenderPump",
    "StationCurves",
    "StationState",
]

RULE_NAME = "pump-energy-rule"
_RHO_G_KWH = 998.2 * 9.80665 / 3.6e6  # kWh per m³ per m of head
_BAR_PER_M = 998.2 * 9.80665 / 1e5
_ATM_M, _VAPOUR_M = 10.33, 0.24  # atmospheric and vapour pressure heads of water at 20 °C
_PENALTY_KW = 1000.0  # per m³/h beyond a hard pump limit: keeps the searches away from it

_Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Frac = Annotated[float, Field(ge=0, le=1)]


class PumpStationModel(FrozenModel):
    """Datasheet data of N identical variable-speed pumps in parallel feeding a tank: the prior
    of the identification and the rule's fallback until an identified station is loaded."""

    rated_speed_rpm: _Pos = 2900
    shutoff_head_m: _Pos = 60
    head_coeff: _Pos = 0.0015  # m/(m³/h)²: H = H0 r² − b q²
    bep_flow_m3h: _Pos = 110
    bep_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.78
    motor_rated_power_kw: _Pos = 22
    motor_rated_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.93
    motor_fixed_loss_fraction: _Frac = 0.35
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
    # measured tags: identification reads them from recordings; suction pressure also feeds
    # the NPSH check
    speed_tag: str | None = None
    flow_tag: str | None = None
    suction_pressure_tag: str | None = None  # bar (gauge)
    discharge_pressure_tag: str | None = None  # bar (gauge)
    power_tag: str | None = None  # kW
    min_flow_m3h: _NonNeg | None = None
    """Minimum continuous flow at rated speed (the pump datasheet's); None: ``min_flow_fraction``
    of the BEP flow (identified, or the datasheet's)."""
    start_stop_tag: str | None = None
    """The request tag of this pump's ``guard.start_stop`` target: the rule may then stop it
    (an alarmed pump is stopped instead of held at its minimum flow) and start it again."""


class RecommenderConfig(FrozenModel):
    kind: Literal["pump_energy_rule"] = "pump_energy_rule"
    station: PumpStationModel = PumpStationModel()
    station_bundle: Path | None = None
    """A recommender bundle from ``edge-export identify`` (signature checked against
    ``models_trust``); ``station`` is then only the fallback."""
    level_tag: str
    demand_tag: str  # the tank outlet flow (consumer demand)
    total_flow_tag: str | None = None  # the station flow meter (identification)
    pumps: Annotated[list[RecommenderPump], Field(min_length=1)]
    unload_on_severity: Annotated[int, Field(ge=1, le=4)] = 3
    ttl_s: _Pos = 10.0
    band_margin_m: _NonNeg = 0.1
    """Aim inside the level band by this much: measurement noise and drive ramps must not
    carry the level out of it (the plant's oracle rides the band edges exactly)."""
    min_flow_fraction: _Frac = 0.3
    """Minimum continuous flow as a share of the BEP flow at the running speed."""
    min_flow_margin: _NonNeg = 0.15
    """Recommend at least (1 + margin) × the minimum flow: the flow meter and the curves err."""
    bep_region: tuple[_Pos, _Pos] = (0.7, 1.2)
    """Preferred operating region, as q / q_BEP at the running speed."""
    bep_penalty: _NonNeg = 0.05
    """Outside the region, the split counts power × (1 + penalty × distance²)."""
    npsh3_bep_m: _Pos | None = None
    """NPSH3 at BEP and rated speed (datasheet); with a suction pressure tag the flow is capped
    so that NPSHa ≥ ``npsh_margin`` × NPSH3 (NPSH3 ∝ r² max(x, 0.5)²)."""
    npsh_margin: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 1.3


@dataclass(frozen=True, slots=True)
class StationState:
    """What the rule needs this cycle; None means the value is not GOOD."""

    level_m: float | None
    demand_m3h: float | None
    severity: Mapping[str, int]  # asset → highest active alarm severity (0 = none)
    inputs_good: bool
    suction: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))
    """asset → (measured suction pressure in bar, measured flow in m³/h), GOOD values only."""


class PumpCurve:
    """One pump: head curve, electrical power and minimum flow (per unit speed)."""

    def __init__(
        self,
        head: tuple[float, float, float],
        power: Callable[[float, float], float],
        bep_flow_m3h: float,
        min_flow_m3h: float,
    ) -> None:
        self.a, self.b, self.c = head
        self.power = power  # kW at (q, r)
        self.bep_flow_m3h = bep_flow_m3h
        self.min_flow_m3h = min_flow_m3h  # at rated speed

    def key(self) -> tuple[float, ...]:
        return (self.a, self.b, self.c, self.bep_flow_m3h, self.min_flow_m3h, id(self.power))

    def speed_for(self, q: float, head: float) -> float:
        """r at which this pump makes ``head`` at flow q (a r² + b q r − c q² = head)."""
        rhs = head + self.c * q * q
        if rhs <= 0:
            return 0.0
        return (-self.b * q + math.sqrt(self.b * self.b * q * q + 4 * self.a * rhs)) / (2 * self.a)

    def flow_at(self, r: float, head: float, ks: float) -> float:
        """Flow at speed r against ``head`` plus its own suction loss ``ks q²``."""
        cc = self.c + ks
        disc = self.b * self.b * r * r + 4 * cc * (self.a * r * r - head)
        if disc < 0 or self.a * r * r <= head:
            return 0.0
        return (self.b * r + math.sqrt(disc)) / (2 * cc)


class StationCurves:
    """The curves the rule plans on: per pump, the system, the tank; and where they came from."""

    def __init__(
        self,
        pumps: Sequence[PumpCurve],
        static_head_m: float,
        system_k: float,
        suction_k: float,
        tank_area_m2: float,
        rated_speed_rpm: float,
        source: str,
    ) -> None:
        self.pumps = list(pumps)
        self.static_head_m = static_head_m
        self.system_k = system_k
        self.suction_k = suction_k
        self.tank_area_m2 = tank_area_m2
        self.rated_speed_rpm = rated_speed_rpm
        self.source = source
        self.identical = len({p.key() for p in self.pumps}) == 1

    @classmethod
    def from_datasheet(
        cls, m: PumpStationModel, n: int, min_flow: Sequence[float | None], fraction: float
    ) -> StationCurves:
        loss_rated = m.motor_rated_power_kw * (1 / m.motor_rated_efficiency - 1)

        def power(q: float, r: float) -> float:
            x = q / (r * m.bep_flow_m3h) if r > 0 else 0.0
            head = m.shutoff_head_m * r * r - m.head_coeff * q * q
            if q > 0 and x < 2:
                shaft = _RHO_G_KWH * q * head / (m.bep_efficiency * x * (2 - x))
            else:  # churning at shut-off: finite
                shaft = _RHO_G_KWH * head * r * m.bep_flow_m3h / (m.bep_efficiency * 2)
            lam = shaft / m.motor_rated_power_kw
            f = m.motor_fixed_loss_fraction
            return (shaft + loss_rated * (f + (1 - f) * lam * lam)) / m.drive_efficiency

        head = (m.shutoff_head_m, 0.0, m.head_coeff)
        shared = PumpCurve(head, power, m.bep_flow_m3h, fraction * m.bep_flow_m3h)
        curves = [
            shared
            if i >= len(min_flow) or (mf := min_flow[i]) is None
            else PumpCurve(head, power, m.bep_flow_m3h, mf)
            for i in range(n)
        ]
        return cls(
            curves, m.static_head_m, m.system_k, m.suction_k, m.tank_area_m2, m.rated_speed_rpm, "datasheet"
        )

    @classmethod
    def from_bundle(cls, st: StationManifest, min_flow: Sequence[float | None]) -> StationCurves:
        curves = []
        for i, p in enumerate(st.pumps):
            d0, p0, p1, p2, p3 = (x.value for x in p.power)

            def power(
                q: float,
                r: float,
                d0: float = d0,
                p0: float = p0,
                p1: float = p1,
                p2: float = p2,
                p3: float = p3,
            ) -> float:
                return d0 + p0 * r**3 + p1 * r * r * q + p2 * r * q * q + p3 * q**3

            mf = min_flow[i] if i < len(min_flow) else None
            head = (p.head[0].value, p.head[1].value, p.head[2].value)
            curves.append(PumpCurve(head, power, p.bep_flow_m3h, p.min_flow_m3h if mf is None else mf))
        s = st.system
        return cls(
            curves,
            s.static_head_m.value,
            s.system_k.value,
            s.suction_k.value,
            s.tank_area_m2.value,
            st.rated_speed_rpm,
            f"identified {st.name} ({st.created_utc})",
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    q: tuple[float, ...]  # per pump, m³/h
    r: tuple[float, ...]  # per pump, per unit speed
    power_kw: float
    bound: tuple[str, ...]  # constraints that bound the split


class PumpEnergyRule:
    """The rule-based recommender (see the module docstring). One instance per station."""

    name = RULE_NAME

    def __init__(self, config: RecommenderConfig, station: StationManifest | None = None) -> None:
        self.config = config
        self._datasheet = StationCurves.from_datasheet(
            config.station,
            len(config.pumps),
            [p.min_flow_m3h for p in config.pumps],
            config.min_flow_fraction,
        )
        self.curves = self._datasheet
        self._cache: dict[tuple[object, ...], tuple[float, _Plan]] = {}
        self._ranges: dict[tuple[object, ...], tuple[float, float]] = {}
        self.last_stopped: set[str] = set()  # the assets the last plan stopped
        if station is not None:
            self.use_station(station)

    def use_station(self, station: StationManifest | None) -> None:
        """Plan on an identified station (None: back to the datasheet)."""
        cfg = self.config
        if station is None:
            self.curves = self._datasheet
        else:
            if len(station.pumps) != len(cfg.pumps):
                raise ValueError(
                    f"{station.ident} has {len(station.pumps)} pumps, the recommender {len(cfg.pumps)}"
                )
            self.curves = StationCurves.from_bundle(station, [p.min_flow_m3h for p in cfg.pumps])
        self._cache.clear()
        self._ranges.clear()

    # ------------------------------------------------------------------ the station model

    def _min_flow_ratio(self, i: int) -> float:
        """Recommended minimum flow per unit speed (m³/h at r = 1), margin included."""
        return self.curves.pumps[i].min_flow_m3h * (1 + self.config.min_flow_margin)

    def _npsh_cap(self, i: int, r: float, suction: tuple[float, float] | None) -> float:
        """Largest flow with NPSHa ≥ margin × NPSH3 (inf when not checked)."""
        cfg = self.config
        if suction is None or cfg.npsh3_bep_m is None:
            return math.inf
        p_bar, q_now = suction
        ks = self.curves.suction_k
        base = _ATM_M + p_bar / _BAR_PER_M + ks * q_now * q_now - _VAPOUR_M  # NPSHa at q = 0
        q_bep = self.curves.pumps[i].bep_flow_m3h * r
        # NPSHa(q) = base − ks q²; NPSH3(q) = npsh3 r² max(q / q_bep, 0.5)²: solve for q
        n3 = cfg.npsh_margin * cfg.npsh3_bep_m * r * r
        denom = ks + n3 / (q_bep * q_bep)
        q = math.sqrt(max(base, 0.0) / denom) if denom > 0 else math.inf
        return q if q >= 0.5 * q_bep else 0.0

    def _pump_cost(
        self, i: int, q: float, head: float, suction: tuple[float, float] | None, pinned: bool
    ) -> tuple[float, float, str | None]:
        """(kW with penalties, r, the constraint that bound) for pump i at flow q."""
        cfg, m = self.config, self.config.station
        pc = self.curves.pumps[i]
        ks = self.curves.suction_k
        r = pc.speed_for(q, head + ks * q * q)
        r_min, r_max = (
            m.min_speed_rpm / self.curves.rated_speed_rpm,
            m.max_speed_rpm / self.curves.rated_speed_rpm,
        )
        kw = pc.power(q, max(r, 1e-6))
        bound = None
        q_floor = self._min_flow_ratio(i) * r
        if q < q_floor - 1e-6 and not pinned:
            kw += _PENALTY_KW * (q_floor - q)
            bound = "min flow"
        if r > r_max:
            kw += _PENALTY_KW * (r - r_max) * 100
            bound = "max speed"
        elif r < r_min:
            kw += _PENALTY_KW * (r_min - r) * 100
        cap = self._npsh_cap(i, r, suction)
        if q > cap:
            kw += _PENALTY_KW * (q - cap)
            bound = "NPSH margin"
        lo, hi = cfg.bep_region
        x = q / (pc.bep_flow_m3h * r) if r > 0 else 0.0
        dist = max(lo - x, x - hi, 0.0)
        if dist > 0 and cfg.bep_penalty > 0:
            kw *= 1 + cfg.bep_penalty * dist * dist
            bound = bound or "BEP region"
        return kw, r, bound

    def _pinned_flow(self, i: int, head: float) -> float:
        """Flow of pump i held at its minimum-flow speed against ``head`` (closed form)."""
        pc = self.curves.pumps[i]
        mq = self._min_flow_ratio(i)
        ks = self.curves.suction_k
        denom = pc.a + pc.b * mq - (pc.c + ks) * mq * mq
        return mq * math.sqrt(max(head, 0.0) / denom) if denom > 0 else 0.0

    def _split(
        self,
        total: float,
        hs: float,
        running: Sequence[int],
        pinned: Sequence[int],
        suction: Mapping[int, tuple[float, float]],
    ) -> _Plan:
        """Least-power split of station flow ``total`` (pinned pumps at their minimum flow)."""
        n = len(self.curves.pumps)
        head = hs + self.curves.system_k * total * total
        q = [0.0] * n
        for j in pinned:
            q[j] = self._pinned_flow(j, head)
        rest = max(total - sum(q[j] for j in pinned), 0.0)
        if running:
            for i in running:
                q[i] = rest / len(running)
            if not self.curves.identical and len(running) > 1:
                for _ in range(2 if len(running) > 2 else 1):
                    for j in running[1:]:
                        i0 = running[0]
                        pair = q[i0] + q[j]

                        def cost(x: float, i0: int = i0, j: int = j, pair: float = pair) -> float:
                            return (
                                self._pump_cost(i0, x, head, suction.get(i0), False)[0]
                                + self._pump_cost(j, pair - x, head, suction.get(j), False)[0]
                            )

                        q[i0] = _golden(cost, 0.0, pair, pair * 1e-4 + 1e-6)
                        q[j] = pair - q[i0]
        kw, rs, bound = 0.0, [0.0] * n, []
        for i in range(n):
            if i in running or i in pinned:
                k, rs[i], b = self._pump_cost(i, q[i], head, suction.get(i), i in pinned)
                kw += k
                if b and i not in pinned:
                    bound.append(f"pump {i + 1} {b}")
        return _Plan(tuple(q), tuple(rs), kw, tuple(bound))

    def _flow_range(
        self, hs: float, running: tuple[int, ...], pinned: tuple[int, ...]
    ) -> tuple[float, float]:
        """Station flow with every running pump at its minimum flow … all at maximum speed."""
        key = ("range", round(hs, 3), running, pinned, self.curves)
        if (hit := self._ranges.get(key)) is not None:
            return hit
        if len(self._ranges) > 8192:
            self._ranges.clear()
        self._ranges[key] = out = self._flow_range_uncached(hs, running, pinned)
        return out

    def _flow_range_uncached(
        self, hs: float, running: tuple[int, ...], pinned: tuple[int, ...]
    ) -> tuple[float, float]:
        c = self.curves
        r_max = self.config.station.max_speed_rpm / c.rated_speed_rpm
        lo_q, hi_q = 0.0, 0.0
        for _ in range(30):  # fixed point on the header head (k Q² is a small part of it)
            head = hs + c.system_k * lo_q * lo_q
            lo_q = sum(self._pinned_flow(i, head) for i in (*running, *pinned))
        a, b = 0.0, 1e4
        for _ in range(60):
            mid = 0.5 * (a + b)
            head = hs + c.system_k * mid * mid
            q = sum(c.pumps[i].flow_at(r_max, head, c.suction_k) for i in running)
            q += sum(self._pinned_flow(i, head) for i in pinned)
            a, b = (mid, b) if q > mid else (a, mid)
        hi_q = a
        return lo_q, max(hi_q, lo_q)

    def _optimum(
        self,
        hs: float,
        running: tuple[int, ...],
        pinned: tuple[int, ...],
        suction: Mapping[int, tuple[float, float]],
    ) -> tuple[float, _Plan]:
        """Station flow of least kWh/m³, cached per static head (1 mm; 1 cm for pumps that
        differ, whose optimum is a nested search) and rounded suction readings."""
        digits = 3 if self.curves.identical else 2
        sk = tuple(sorted((i, round(p, 2), round(q)) for i, (p, q) in suction.items()))
        key = (round(hs, digits), running, pinned, self.curves, sk)
        if (hit := self._cache.get(key)) is not None:
            return hit
        lo, hi = self._flow_range(hs, running, pinned)

        def spec(total: float) -> float:
            return self._split(total, hs, running, pinned, suction).power_kw / max(total, 1e-9)

        best = _golden(spec, lo, hi, 1e-3 if self.curves.identical else 0.02)
        out = (best, self._split(best, hs, running, pinned, suction))
        if len(self._cache) > 8192:
            self._cache.clear()
        self._cache[key] = out
        return out

    # ------------------------------------------------------------------ the rule

    def plan(
        self,
        level_m: float,
        demand_m3h: float,
        unloaded: Sequence[str],
        planned_flow_m3h: float | None = None,
        suction: Mapping[str, tuple[float, float]] | None = None,
    ) -> tuple[dict[str, float], dict[str, float], str]:
        """Speed and expected flow per pump asset, and the reason in words.

        ``planned_flow_m3h`` is the station flow a schedule asks for (None: the energy optimum);
        the level band still bounds it, and the pump constraints bound its split."""
        cfg, m, c = self.config, self.config.station, self.curves
        assets = [p.asset for p in cfg.pumps]
        idx_unloaded = tuple(i for i, a in enumerate(assets) if a in unloaded)
        running = tuple(i for i in range(len(assets)) if i not in idx_unloaded)
        if not running:  # never unload them all
            running, idx_unloaded = tuple(range(len(assets))), ()
        # an unloaded pump the agent may stop is stopped: no minimum flow to keep
        stopped = tuple(i for i in idx_unloaded if cfg.pumps[i].start_stop_tag is not None)
        idx_unloaded = tuple(i for i in idx_unloaded if i not in stopped)
        checked = suction if suction and cfg.npsh3_bep_m is not None else {}  # else unused
        by_idx = {i: checked[a] for i, a in enumerate(assets) if a in checked}
        hs = c.static_head_m + level_m
        q_opt, _ = self._optimum(hs, running, idx_unloaded, by_idx)
        low, high = m.level_low_m + cfg.band_margin_m, m.level_high_m - cfg.band_margin_m
        q_min = demand_m3h - c.tank_area_m2 * (level_m - low) / (m.horizon_s / 3600)
        q_max = demand_m3h + c.tank_area_m2 * (high - level_m) / (m.horizon_s / 3600)
        target = q_opt if planned_flow_m3h is None else planned_flow_m3h
        total = q_min if q_min > q_max else min(max(target, q_min), q_max)
        lo, hi = self._flow_range(hs, running, idx_unloaded)
        reasons: list[str] = []
        if total < lo:
            total = lo
            reasons.append(f"every pump at its minimum continuous flow: {lo:.1f} m³/h")
        elif total > hi:
            total = hi
            reasons.append("all pumps at maximum speed")
        plan = self._split(total, hs, running, idx_unloaded, by_idx)
        head = hs + c.system_k * total * total
        r_all = list(plan.r)
        for i in stopped:  # when started again: at its minimum-flow speed
            q_i = self._pinned_flow(i, head)
            r_all[i] = c.pumps[i].speed_for(q_i, head + c.suction_k * q_i * q_i)
        plan = replace(plan, r=tuple(r_all))
        self.last_stopped = {assets[i] for i in stopped}
        speeds = {
            a: min(max(plan.r[i] * c.rated_speed_rpm, m.min_speed_rpm), m.max_speed_rpm)
            for i, a in enumerate(assets)
        }
        flows = {a: plan.q[i] for i, a in enumerate(assets)}
        spec = plan.power_kw / max(total, 1e-9)
        if planned_flow_m3h is not None and abs(total - planned_flow_m3h) < 0.05:
            why = f"planned station flow {planned_flow_m3h:.1f} m³/h"
        elif abs(total - q_opt) < 0.05:
            why = f"energy optimum {total:.1f} m³/h at static head {hs:.1f} m"
        elif total < target:
            why = f"level near the top of its band: {total:.1f} m³/h (optimum {target:.1f})"
        else:
            why = f"level near the bottom of its band: {total:.1f} m³/h (optimum {target:.1f})"
        if len(assets) > 1 and not c.identical:
            why += ": " + ", ".join(f"{a} {speeds[a]:.0f} rpm {flows[a]:.1f} m³/h" for a in assets)
        else:
            why += f": {speeds[assets[running[0]]]:.0f} rpm"
        why += f", {spec:.4f} kWh/m³ expected ({c.source} curves)"
        why += "".join(f"; {r}" for r in reasons)
        bound = [b for b in plan.bound if "BEP" not in b or not reasons]
        if bound:
            why += "; bound: " + ", ".join(bound)
        if stopped:
            names = ", ".join(sorted(assets[i] for i in stopped))
            why += f"; {names} stopped (alarm: no minimum flow to keep), load on the others"
        if idx_unloaded:
            names = ", ".join(sorted(assets[i] for i in idx_unloaded))
            held = ", ".join(f"{flows[assets[i]]:.1f} m³/h" for i in idx_unloaded)
            carry = ", ".join(assets[i] for i in running)
            why += f"; {names} unloaded to its minimum-flow speed ({held}), load on {carry}"
        return speeds, flows, why

    def speeds(
        self,
        level_m: float,
        demand_m3h: float,
        unloaded: Sequence[str],
        planned_flow_m3h: float | None = None,
    ) -> tuple[dict[str, float], str]:
        """Speed per pump asset, and the reason in words (see :meth:`plan`)."""
        speeds, _, why = self.plan(level_m, demand_m3h, unloaded, planned_flow_m3h)
        return speeds, why

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
        speeds, _, why = self.plan(state.level_m, state.demand_m3h, unloaded, planned_flow_m3h, state.suction)
        def recommend(tag: str, value: float) -> Recommendation:
            return Recommendation(
                target_tag=tag,
                value=value,
                reason=f"{RULE_NAME}: {why}",
                model=RULE_NAME,
                created_mono=now_mono,
                expires_mono=now_mono + cfg.ttl_s,
                inputs_good=state.inputs_good,
            )

        out = [recommend(p.target, speeds[p.asset]) for p in cfg.pumps]
        out += [
            recommend(p.start_stop_tag, 0.0 if p.asset in self.last_stopped else 1.0)
            for p in cfg.pumps
            if p.start_stop_tag is not None
        ]
        return out

    def min_flow_m3h(self, asset: str, speed_rpm: float) -> float:
        """The minimum continuous flow the rule keeps ``asset`` above, at a speed."""
        i = [p.asset for p in self.config.pumps].index(asset)
        return self.curves.pumps[i].min_flow_m3h * speed_rpm / self.curves.rated_speed_rpm


def _golden(f: Callable[[float], float], a: float, b: float, tol: float) -> float:
    """Minimiser of a unimodal f on [a, b] (the bounds included)."""
    if b - a <= tol:
        return 0.5 * (a + b)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    x = 0.5 * (a + b)
    return min((x, a, b), key=f)
