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
  rest; where the config lets the agent start and stop it (``start_stop_tag``) it is stopped;
* **how many and which pumps run** (pumps with a ``start_stop_tag`` and a known running
  feedback, :class:`PumpRunState`): every running set that can keep the level band is priced
  at the flow it would deliver, and the rule moves to another set only when the current one
  cannot keep the band (its minimum continuous flows deliver too much, or its maximum speed too
  little) or when the other saves at least ``switch_saving`` of the kWh/m³; a pump is stopped
  only after its minimum run time, started only after its rest and while starts of the hour are
  left (energy keeps ``energy_starts_reserve`` of them for a start the band needs); the Guard
  enforces the same limits again;
* **equal wear**: between sets that cost the same, the pumps with fewer run hours run; while
  the running set holds, duty passes to the standby pump once their run hours differ by
  ``duty_imbalance_h`` (started first, the duty pump stopped once the standby runs).

Every pump target gets a **reason code** (:class:`ReasonCode`, the HMI's
``recommender_reason`` register; the table is in docs/architecture.md) and the words say what
bound and what the recommendation saves against plain level control (all available pumps on
the level, equal speeds, the flow the demand takes).

Pure: inputs in, recommendations out. The Guard decides what, if anything, is written.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import Field

from agent.configbase import FrozenModel
from agent.modelstore.station import StationManifest
from agent.types import Recommendation

__all__ = [
    "REASON_CODES",
    "PumpCurve",
    "PumpEnergyRule",
    "PumpRunState",
    "PumpStationModel",
    "ReasonCode",
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


class ReasonCode(IntEnum):
    """What bound a pump's recommendation: the integer the HMI shows per pump target
    (``assets[].hmi.recommender_reason``; meanings in :data:`REASON_CODES`). Codes are never
    renumbered; new ones are appended."""

    NONE = 0
    ENERGY_OPTIMUM = 1
    MIN_FLOW = 2
    BEP_REGION = 3
    NPSH_MARGIN = 4
    LEVEL_HIGH = 5
    LEVEL_LOW = 6
    TARIFF_PLAN = 7
    RATE_LIMITED = 8
    STOPPED_FOR_ENERGY = 9
    DUTY_ROTATION = 10
    MAX_SPEED = 11
    UNLOADED_ALARM = 12
    STOPPED_ALARM = 13
    STARTED_FOR_DEMAND = 14


REASON_CODES: Mapping[int, str] = MappingProxyType(
    {
        ReasonCode.NONE: "No recommendation (level or demand not GOOD, no recommender).",
        ReasonCode.ENERGY_OPTIMUM: "Unconstrained: the flow of least kWh/m³.",
        ReasonCode.MIN_FLOW: "Held at (or above) its minimum continuous flow.",
        ReasonCode.BEP_REGION: "Kept toward its preferred operating region around BEP.",
        ReasonCode.NPSH_MARGIN: "Flow capped to keep the NPSH margin (suction pressure).",
        ReasonCode.LEVEL_HIGH: "Less flow: the level is near the top of its band.",
        ReasonCode.LEVEL_LOW: "More flow: the level is near the bottom of its band.",
        ReasonCode.TARIFF_PLAN: "Following the tariff plan's station flow.",
        ReasonCode.RATE_LIMITED: "The Guard limited the step (rate or step): the setpoint is on its way.",
        ReasonCode.STOPPED_FOR_ENERGY: "Stopped: the others deliver the flow at lower kWh/m³.",
        ReasonCode.DUTY_ROTATION: "Started or stopped to even the run hours of duty and standby.",
        ReasonCode.MAX_SPEED: "At maximum speed: the running pumps cannot deliver more.",
        ReasonCode.UNLOADED_ALARM: "An alarm unloaded it to its minimum-flow speed (no start/stop allowed).",
        ReasonCode.STOPPED_ALARM: "An alarm stopped it (start/stop allowed).",
        ReasonCode.STARTED_FOR_DEMAND: "Started: the running pumps could not keep the level band.",
    }
)
"""Code → its meaning, for docs, the console and status."""


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
    (an alarmed pump is stopped instead of held at its minimum flow; a pump the others can do
    without, for energy) and start it again."""
    run_hours_tag: str | None = None
    """The PLC's run-hours counter of this pump (h); None: the agent counts them itself."""


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
    switch_saving: Annotated[float, Field(ge=0, le=0.5)] = 0.03
    """Run another set of pumps (fewer or more) only when it saves at least this share of the
    kWh/m³, or when the running set cannot keep the level band: no chatter."""
    duty_imbalance_h: _Pos = 24.0
    """Pass duty to the standby pump once their run hours differ by this much."""
    duty_max_extra: Annotated[float, Field(ge=0, le=1)] = 0.10
    """Equal wear may cost up to this share more kWh/m³ (pumps that differ): beyond it the
    cheaper pumps keep running whatever their hours."""
    energy_starts_reserve: Annotated[int, Field(ge=0, le=10)] = 1
    """Starts of the hour that energy and duty rotation leave for a start the level band needs."""


@dataclass(frozen=True, slots=True)
class PumpRunState:
    """One pump's running state and what its start/stop limits allow now (planning: the Guard
    enforces the limits again on every request)."""

    running: bool | None
    """The running feedback (None: not GOOD; the rule then starts and stops nothing for energy)."""
    run_hours: float | None = None
    may_start: bool = True
    """Rested its minimum stop time and a start of the hour is left."""
    may_stop: bool = True
    """Ran its minimum run time."""
    starts_left: int = 60
    """Starts still allowed within the last hour."""


@dataclass(frozen=True, slots=True)
class StationState:
    """What the rule needs this cycle; None means the value is not GOOD."""

    level_m: float | None
    demand_m3h: float | None
    severity: Mapping[str, int]  # asset → highest active alarm severity (0 = none)
    inputs_good: bool
    suction: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))
    """asset → (measured suction pressure in bar, measured flow in m³/h), GOOD values only."""
    pumps: Mapping[str, PumpRunState] = field(default_factory=lambda: MappingProxyType({}))
    """asset → its running state (pumps with a start/stop target; others always run)."""
    price_per_kwh: float | None = None
    """The electricity price now (tariff), for the cost the reason states."""


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


_BOUND_CODES = {
    "min flow": ReasonCode.MIN_FLOW,
    "max speed": ReasonCode.MAX_SPEED,
    "NPSH margin": ReasonCode.NPSH_MARGIN,
    "BEP region": ReasonCode.BEP_REGION,
}


@dataclass(frozen=True, slots=True)
class _SetEval:
    """One running set at this cycle: keeps the band?, kWh/m³ at the flow it would deliver."""

    keeps: bool
    spec: float
    total: float
    lo: float
    hi: float
    q_opt: float
    delivers: bool = False
    """It delivers the flow asked for (the plan's, or its optimum) inside the band window."""


@dataclass(frozen=True, slots=True)
class _Plan:
    q: tuple[float, ...]  # per pump, m³/h
    r: tuple[float, ...]  # per pump, per unit speed
    power_kw: float
    bound: tuple[str, ...]  # constraints that bound the split


# plan()'s last call: (arguments, speeds, flows, why, last_stopped, last_codes,
# last_specific_energy, price)
_LastPlan = tuple[
    tuple[object, ...],
    dict[str, float],
    dict[str, float],
    str,
    set[str],
    dict[str, ReasonCode],
    tuple[float, float] | None,
    float | None,
]


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
        self.last_codes: dict[str, ReasonCode] = {}  # per asset: what bound the last plan
        self.last_specific_energy: tuple[float, float] | None = None
        """(expected kWh/m³, plain level control's kWh/m³) of the last plan."""
        self._rank: list[int] = []  # the duty order of the pumps the rule may start and stop
        self._handover: frozenset[int] = frozenset()
        self._price: float | None = None
        self._last_plan: _LastPlan | None = None  # see plan()
        self._summary: tuple[object, str] | None = None  # summary()'s last (inputs, text)
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
        self._last_plan = None

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

    def _set_eval(
        self,
        hs: float,
        running: tuple[int, ...],
        pinned: tuple[int, ...],
        by_idx: Mapping[int, tuple[float, float]],
        q_min: float,
        q_max: float,
        planned_flow_m3h: float | None,
    ) -> _SetEval:
        """What running ``running`` (``pinned`` held at their minimum flow) would deliver now."""
        lo, hi = self._flow_range(hs, running, pinned)
        q_opt, _ = self._optimum(hs, running, pinned, by_idx)
        target = q_opt if planned_flow_m3h is None else planned_flow_m3h
        total = q_min if q_min > q_max else min(max(target, q_min), q_max)
        keeps = lo <= max(q_max, q_min) + 1e-6 and hi >= q_min - 1e-6
        delivers = lo - 1e-6 <= total <= hi + 1e-6
        total = min(max(total, lo), hi)
        spec = self._split(total, hs, running, pinned, by_idx).power_kw / max(total, 1e-9)
        return _SetEval(keeps, spec, total, lo, hi, q_opt, delivers)

    def _choose(
        self,
        hs: float,
        pool: tuple[int, ...],
        fixed: tuple[int, ...],
        pinned: tuple[int, ...],
        run: Mapping[int, PumpRunState],
        window: tuple[float, float],
        planned_flow_m3h: float | None,
        by_idx: Mapping[int, tuple[float, float]],
    ) -> tuple[frozenset[int], dict[int, ReasonCode], list[str]]:
        """Which pumps of ``pool`` (start/stop allowed, feedback known) run: see the module
        docstring. Returns the set, codes for pumps started or stopped, and the words."""
        if not pool:
            return frozenset(), {}, []
        cfg = self.config
        names = [p.asset for p in cfg.pumps]
        current = frozenset(i for i in pool if run[i].running)
        q_min, q_max = window
        cache: dict[frozenset[int], _SetEval] = {}

        def ev(s: frozenset[int]) -> _SetEval:
            if s not in cache:
                running = tuple(sorted((*fixed, *s)))
                cache[s] = (
                    self._set_eval(hs, running, pinned, by_idx, q_min, q_max, planned_flow_m3h)
                    if running
                    else _SetEval(False, math.inf, 0.0, 0.0, 0.0, 0.0)
                )
            return cache[s]

        def hours(s: frozenset[int]) -> float:
            return sum(run[i].run_hours or 0.0 for i in s)

        need = not ev(current).keeps

        def allowed(s: frozenset[int]) -> bool:
            if any(not run[j].may_stop for j in current - s):
                return False
            return all(
                run[j].may_start and (need or run[j].starts_left > cfg.energy_starts_reserve)
                for j in s - current
            )

        if len(pool) <= 6:
            subsets = [frozenset(c) for k in range(len(pool) + 1) for c in itertools.combinations(pool, k)]
        else:  # the least-worn first: n + 1 nested sets
            order = sorted(pool, key=lambda i: run[i].run_hours or 0.0)
            subsets = [frozenset(order[:k]) for k in range(len(pool) + 1)] + [current]
        subsets = [s for s in subsets if (s or fixed) and (s == current or allowed(s))]
        codes: dict[int, ReasonCode] = {}
        words: list[str] = []
        rank, rotated = self._ranking(pool, run, current)
        # sets that deliver the flow asked for first: one that falls short of a plan keeps the
        # band but would shift the pumping into dearer hours
        options = [s for s in subsets if ev(s).delivers] or [s for s in subsets if ev(s).keeps]
        wear = False
        if not options:  # nothing keeps the band: the set nearest to it
            pick = min(
                subsets,
                key=lambda s: (
                    max(q_min - ev(s).hi, ev(s).lo - max(q_max, q_min), 0.0),
                    len(s ^ current),
                    hours(s),
                ),
            )
        else:
            best = min(ev(s).spec for s in options)
            near = [s for s in options if ev(s).spec <= best * 1.002]
            pick = min(near, key=lambda s: (len(s ^ current), hours(s)))
            if current in options and ev(current).spec <= best * (1 + cfg.switch_saving):
                pick = current
            # equal wear: as many pumps, the duty ones (by run hours, with hysteresis) if they
            # cost at most duty_max_extra more
            lead = frozenset(rank[: len(pick)])
            if lead != pick and lead in options and ev(lead).spec <= ev(pick).spec * (1 + cfg.duty_max_extra):
                pick, wear = lead, True
        start, stop = pick - current, current - pick
        self._handover &= current  # duty pumps still to stop after a rotation's start
        if start and stop and not need:  # a swap: the incoming pump starts first
            chosen = current | start
            if wear:
                self._handover |= stop
            for j in start:
                codes[j] = ReasonCode.DUTY_ROTATION if wear else ReasonCode.ENERGY_OPTIMUM
            what = "duty rotation" if wear else "switching pumps"
            words.append(
                f"{what}: {', '.join(names[j] for j in sorted(start))} started before "
                f"{', '.join(names[j] for j in sorted(stop))} stops"
            )
        else:
            chosen = pick
            for j in sorted(start):
                codes[j] = (
                    ReasonCode.STARTED_FOR_DEMAND
                    if need
                    else ReasonCode.DUTY_ROTATION
                    if wear
                    else ReasonCode.TARIFF_PLAN
                    if planned_flow_m3h is not None
                    else ReasonCode.ENERGY_OPTIMUM
                )
            wear = wear or bool(stop & self._handover)
            for j in sorted(stop):
                codes[j] = ReasonCode.DUTY_ROTATION if wear else ReasonCode.STOPPED_FOR_ENERGY
            changed = ", ".join(names[j] for j in sorted(start | stop))
            verb = "started" if start and not stop else "stopped" if stop and not start else "switched"
            if need and changed:
                words.append(f"{changed} {verb}: the running pumps cannot keep the level band")
            elif wear and changed:
                words.append(f"duty rotation: {changed} {verb} (run hours)")
            elif changed:
                saving = 1 - ev(chosen).spec / ev(current).spec if math.isfinite(ev(current).spec) else 0.0
                words.append(
                    f"{changed} {verb} for energy: {ev(chosen).spec:.4f} instead of "
                    f"{ev(current).spec:.4f} kWh/m³ ({saving:.1%} less)"
                )
        if rotated is not None:
            duty, standby = rotated
            gap = (run[duty].run_hours or 0.0) - (run[standby].run_hours or 0.0)
            words.append(
                f"duty passes from {names[duty]} to {names[standby]}: {gap:.1f} h more run "
                f"(limit {cfg.duty_imbalance_h:g} h)"
            )
        if wear and ev(pick).spec > best * 1.002:
            words.append(f"equal wear costs {ev(pick).spec / best - 1:+.1%} kWh/m³")
        for j in pool:
            if j not in chosen and j not in codes:
                codes[j] = ReasonCode.STOPPED_FOR_ENERGY
        return chosen, codes, words

    def _ranking(
        self, pool: tuple[int, ...], run: Mapping[int, PumpRunState], current: frozenset[int]
    ) -> tuple[list[int], tuple[int, int] | None]:
        """The duty order of ``pool`` (first: duty). Kept from cycle to cycle; at first the
        running pumps, then by run hours. A pump passes duty to one behind it once it has run
        ``duty_imbalance_h`` more hours (hysteresis: the other then keeps duty until it has run
        as much more). Returns the order and the (duty, standby) pair that swapped, if any."""
        hours = {i: run[i].run_hours for i in pool}
        rank = [i for i in self._rank if i in pool]
        rank += sorted((i for i in pool if i not in rank), key=lambda i: (i not in current, hours[i] or 0.0))
        rotated = None
        if all(h is not None for h in hours.values()):
            for a in range(len(rank)):
                for b in range(a + 1, len(rank)):
                    i, j = rank[a], rank[b]
                    if (hours[i] or 0.0) - (hours[j] or 0.0) >= self.config.duty_imbalance_h:
                        rank[a], rank[b] = j, i
                        rotated = rotated or (i, j)
        self._rank = rank
        return rank, rotated

    # ------------------------------------------------------------------ the rule

    def plan(
        self,
        level_m: float,
        demand_m3h: float,
        unloaded: Sequence[str],
        planned_flow_m3h: float | None = None,
        suction: Mapping[str, tuple[float, float]] | None = None,
        run: Mapping[str, PumpRunState] | None = None,
        *,
        price_per_kwh: float | None = None,
    ) -> tuple[dict[str, float], dict[str, float], str]:
        """Speed and expected flow per pump asset, and the reason in words.

        ``planned_flow_m3h`` is the station flow a schedule asks for (None: the energy optimum);
        the level band still bounds it, and the pump constraints bound its split. ``run``: the
        running state of pumps with a start/stop target (the rule then chooses which of them
        run; without it they all run). The stopped pumps are in :attr:`last_stopped`, each
        pump's code in :attr:`last_codes`."""
        # The plan is a function of its arguments and the curves, except where the rule chooses
        # which pumps run (duty order and hand-over are kept from call to call): a call with the
        # arguments of the one before, and no such choice, gives that call's plan again (the
        # measurements change far less often than the agent cycles).
        key = (
            level_m,
            demand_m3h,
            tuple(unloaded),
            planned_flow_m3h,
            dict(suction) if suction else None,
            dict(run) if run else None,
            price_per_kwh,
            self.curves,
        )
        last = self._last_plan
        if last is not None and last[0] == key:
            _, speeds, flows, why, stopped, codes, self.last_specific_energy, self._price = last
            self.last_stopped, self.last_codes = set(stopped), dict(codes)
            return dict(speeds), dict(flows), why
        speeds, flows, why, chose = self._plan(
            level_m, demand_m3h, unloaded, planned_flow_m3h, suction, run, price_per_kwh
        )
        self._last_plan = (
            (
                key,
                speeds,
                flows,
                why,
                set(self.last_stopped),
                dict(self.last_codes),
                self.last_specific_energy,
                self._price,
            )
            if not chose
            else None
        )
        return dict(speeds), dict(flows), why

    def _plan(
        self,
        level_m: float,
        demand_m3h: float,
        unloaded: Sequence[str],
        planned_flow_m3h: float | None,
        suction: Mapping[str, tuple[float, float]] | None,
        run: Mapping[str, PumpRunState] | None,
        price_per_kwh: float | None,
    ) -> tuple[dict[str, float], dict[str, float], str, bool]:
        """:meth:`plan` computed, and whether it chose among pumps (a choice that keeps state)."""
        cfg, m, c = self.config, self.config.station, self.curves
        assets = [p.asset for p in cfg.pumps]
        n = len(assets)
        alarmed = tuple(i for i, a in enumerate(assets) if a in unloaded)
        if len(alarmed) == n:  # never unload them all
            alarmed = ()
        # an unloaded pump the agent may stop is stopped: no minimum flow to keep
        stop_alarm = tuple(i for i in alarmed if cfg.pumps[i].start_stop_tag is not None)
        pinned = tuple(i for i in alarmed if i not in stop_alarm)
        runs = run or {}
        pool = tuple(
            i
            for i in range(n)
            if i not in alarmed
            and cfg.pumps[i].start_stop_tag is not None
            and (st := runs.get(assets[i])) is not None
            and st.running is not None
        )
        fixed = tuple(i for i in range(n) if i not in alarmed and i not in pool)
        checked = suction if suction and cfg.npsh3_bep_m is not None else {}  # else unused
        by_idx = {i: checked[a] for i, a in enumerate(assets) if a in checked}
        hs = c.static_head_m + level_m
        low, high = m.level_low_m + cfg.band_margin_m, m.level_high_m - cfg.band_margin_m
        q_min = demand_m3h - c.tank_area_m2 * (level_m - low) / (m.horizon_s / 3600)
        q_max = demand_m3h + c.tank_area_m2 * (high - level_m) / (m.horizon_s / 3600)
        chosen, codes, set_words = self._choose(
            hs, pool, fixed, pinned, {i: runs[assets[i]] for i in pool}, (q_min, q_max),
            planned_flow_m3h, by_idx,
        )  # fmt: skip
        running = tuple(sorted((*fixed, *chosen)))
        stopped = tuple(sorted((*stop_alarm, *(i for i in pool if i not in chosen))))
        q_opt, _ = self._optimum(hs, running, pinned, by_idx)
        target = q_opt if planned_flow_m3h is None else planned_flow_m3h
        total = q_min if q_min > q_max else min(max(target, q_min), q_max)
        lo, hi = self._flow_range(hs, running, pinned)
        reasons: list[str] = []
        station_code = ReasonCode.ENERGY_OPTIMUM
        if total < lo:
            total = lo
            reasons.append(f"every pump at its minimum continuous flow: {lo:.1f} m³/h")
            station_code = ReasonCode.MIN_FLOW
        elif total > hi:
            total = hi
            reasons.append("all pumps at maximum speed")
            station_code = ReasonCode.MAX_SPEED
        plan = self._split(total, hs, running, pinned, by_idx)
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
            station_code = ReasonCode.TARIFF_PLAN
        elif abs(total - q_opt) < 0.05:
            why = f"energy optimum {total:.1f} m³/h at static head {hs:.1f} m"
        elif total < target:
            why = f"level near the top of its band: {total:.1f} m³/h (optimum {target:.1f})"
            station_code = station_code if reasons else ReasonCode.LEVEL_HIGH
        else:
            why = f"level near the bottom of its band: {total:.1f} m³/h (optimum {target:.1f})"
            station_code = station_code if reasons else ReasonCode.LEVEL_LOW
        if len(assets) > 1 and not c.identical:
            why += ": " + ", ".join(f"{a} {speeds[a]:.0f} rpm {flows[a]:.1f} m³/h" for a in assets)
        else:
            why += f": {speeds[assets[running[0]]]:.0f} rpm"
        why += f", {spec:.4f} kWh/m³ expected ({c.source} curves)"
        why += self._saving(hs, demand_m3h, (*fixed, *pool), pinned, by_idx, spec, price_per_kwh)
        why += "".join(f"; {r}" for r in reasons)
        bound = [b for b in plan.bound if "BEP" not in b or not reasons]
        if bound:
            why += "; bound: " + ", ".join(bound)
        why += "".join(f"; {w}" for w in set_words)
        if stop_alarm:
            names = ", ".join(sorted(assets[i] for i in stop_alarm))
            why += f"; {names} stopped (alarm: no minimum flow to keep), load on the others"
        if pinned:
            names = ", ".join(sorted(assets[i] for i in pinned))
            held = ", ".join(f"{flows[assets[i]]:.1f} m³/h" for i in pinned)
            carry = ", ".join(assets[i] for i in running)
            why += f"; {names} unloaded to its minimum-flow speed ({held}), load on {carry}"
        out: dict[str, ReasonCode] = {}
        for i, a in enumerate(assets):
            own = next((b for b in plan.bound if b.startswith(f"pump {i + 1} ")), "")
            if i in stop_alarm:
                out[a] = ReasonCode.STOPPED_ALARM
            elif i in pinned:
                out[a] = ReasonCode.UNLOADED_ALARM
            elif i in codes and (i in stopped or codes[i] != ReasonCode.ENERGY_OPTIMUM):
                out[a] = codes[i]
            elif station_code != ReasonCode.ENERGY_OPTIMUM:
                out[a] = station_code
            else:
                out[a] = _BOUND_CODES.get(own.split(" ", 2)[-1], ReasonCode.ENERGY_OPTIMUM)
        self.last_codes = out
        return speeds, flows, why, bool(pool)

    def _saving(
        self,
        hs: float,
        demand: float,
        available: Sequence[int],
        pinned: tuple[int, ...],
        by_idx: Mapping[int, tuple[float, float]],
        spec: float,
        price: float | None,
    ) -> str:
        """What the recommendation saves against plain level control: every available pump on
        the level (the least-power split of the flow the demand takes)."""
        running = tuple(sorted(available))
        if not running or demand <= 0:
            return ""
        lo, hi = self._flow_range(hs, running, pinned)
        q = min(max(demand, lo), hi)
        base = self._split(q, hs, running, pinned, by_idx).power_kw / max(q, 1e-9)
        self.last_specific_energy = (spec, base)
        self._price = price if price is not None and math.isfinite(price) else None
        out = f" (level control: {base:.4f} kWh/m³, {1 - spec / base:+.1%} saved"
        if price is not None and math.isfinite(price):
            out += f"; {spec * price:.4f} instead of {base * price:.4f} per m³ at {price:g}/kWh"
        return out + ")"

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
            self.last_codes = {}
            return []
        cfg = self.config
        unloaded = [p.asset for p in cfg.pumps if state.severity.get(p.asset, 0) >= cfg.unload_on_severity]
        speeds, _, why = self.plan(
            state.level_m,
            state.demand_m3h,
            unloaded,
            planned_flow_m3h,
            state.suction,
            state.pumps,
            price_per_kwh=state.price_per_kwh,
        )

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

    def summary(self) -> str:
        """The last plan in one line for the console and status: each pump's reason code and
        what the plan saves against plain level control ("" before the first plan)."""
        if not self.last_codes:
            return ""
        # the agent asks every cycle; the plan changes far less often
        said = (tuple(self.last_codes.items()), self.last_specific_energy, self._price)
        if self._summary is not None and self._summary[0] == said:
            return self._summary[1]
        codes = ", ".join(
            f"{a} {int(c)} {c.name.lower().replace('_', ' ')}" for a, c in self.last_codes.items()
        )
        out = codes
        if self.last_specific_energy is not None:
            spec, base = self.last_specific_energy
            out += f"; {spec:.4f} kWh/m³ expected, level control {base:.4f} ({1 - spec / base:+.1%} saved)"
            if self._price is not None:
                out += f", {(base - spec) * self._price:+.4f}/m³ at {self._price:g}/kWh"
        self._summary = (said, out)
        return out

    def pump(self, asset: str) -> RecommenderPump | None:
        """The recommender's pump ``asset`` (None: not one of its pumps)."""
        return next((p for p in self.config.pumps if p.asset == asset), None)

    def code(self, asset: str) -> ReasonCode:
        """What bound the last recommendation for ``asset`` (NONE before the first)."""
        return self.last_codes.get(asset, ReasonCode.NONE)

    def running_sets(self) -> list[tuple[int, ...]]:
        """The sets of pumps the rule may run (by index): all pumps, and where start/stop is
        allowed every non-empty subset that keeps the pumps without it (the tariff plan prices
        a flow on the cheapest of them)."""
        n = len(self.config.pumps)
        fixed = tuple(i for i in range(n) if self.config.pumps[i].start_stop_tag is None)
        pool = [i for i in range(n) if i not in fixed]
        if len(pool) > 6:
            pool = pool[:6]
        out = []
        for k in range(len(pool) + 1):
            for c in itertools.combinations(pool, k):
                s = tuple(sorted((*fixed, *c, *(i for i in range(n) if i not in fixed and i not in pool))))
                if s and (s not in out):
                    out.append(s)
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
