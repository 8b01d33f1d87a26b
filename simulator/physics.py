"""Physics of the pumping station: N identical variable-speed pumps lifting water into a tank.

Pure math (numpy for curves, plain floats in the step loop for speed); no I/O. The formulas and
every default are published in ``simulator/README.md`` so that the agent's rule-based
recommender can reproduce :func:`oracle_speed` from the parameters alone.

Hydraulics (heads in m, flows in m3/h, speed n in rpm, r = n / n_rated):

- pump curve (affinity laws built in): ``H = H0 r^2 - b q^2``
- pump efficiency: ``eta = eta_bep x (2 - x)`` with ``x = q / (r q_bep)`` (constant along
  affinity parabolas), so shaft power ``P = rho g q H / (3.6e6 eta)`` scales with ``r^3``
- branch of pump i: suction loss ``k_s q^2`` (plus a clogged strainer when cavitating) and
  discharge valve loss (when blocked); pumps in parallel into one header
- system curve: ``H_header = Hs + k Q^2`` with ``Hs = static_head_m + level`` and Q the total
- tank: ``A dL/dt = Q - D`` (overflow at the top, demand unmet when empty)
- motor: losses ``L_r (f + (1 - f) lambda^2)``, ``lambda = P_shaft / P_rated``,
  ``L_r = P_rated (1 / eta_rated - 1)``; drive efficiency constant; current from active and
  magnetising components at V/f voltage; winding and bearing temperatures first-order lags
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import numpy as np

from .demand import DemandModel, DemandParams
from .faults import RUL_SENTINEL_H, Fault, FaultKind, Scenario, ScenarioEvent
from .plc import Plc
from .register_map import build_register_map

__all__ = [
    "KWH_PER_M3_M",
    "RHO",
    "G",
    "Plant",
    "PlantState",
    "PlantVariant",
    "PumpParams",
    "StationParams",
    "optimal_speed",
    "oracle_speed",
    "pump_efficiency",
    "pump_head",
    "shaft_power_kw",
    "specific_energy",
    "specific_energy_curve",
    "speed_for_flow",
    "station_operating_point",
]

RHO = 998.2  # kg/m3, water at 20 °C
G = 9.80665  # m/s2
#: Energy to lift 1 m3 by 1 m, in kWh (rho g / 3.6e6).
KWH_PER_M3_M = RHO * G / 3.6e6
BAR_PER_M = RHO * G / 1e5
ATM_HEAD_M = 10.33  # atmospheric pressure head at sea level (1.01325 bar)
VAPOUR_HEAD_M = 0.24  # vapour pressure head of water at 20 °C (2.34 kPa)
SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class PumpParams:
    """One pump, its motor and drive. Defaults: a 22 kW end-suction pump, 2900 rpm."""

    rated_speed_rpm: float = 2900.0
    shutoff_head_m: float = 60.0  # H0: head at zero flow, rated speed
    head_coeff: float = 0.0015  # b in H = H0 r^2 - b q^2, m/(m3/h)^2
    bep_flow_m3h: float = 110.0  # best efficiency flow at rated speed
    bep_efficiency: float = 0.78
    npsh_required_bep_m: float = 4.5  # NPSH3 (3 % head drop) at BEP, rated speed
    npsh_incipient_factor: float = 2.0  # cavitation noise starts at NPSHa < factor * NPSH3
    motor_rated_power_kw: float = 22.0
    motor_rated_efficiency: float = 0.93
    motor_fixed_loss_fraction: float = 0.35  # share of rated losses independent of load
    motor_rated_voltage_v: float = 400.0
    motor_rated_current_a: float = 40.0
    motor_magnetising_current_a: float = 12.0
    drive_efficiency: float = 0.97
    winding_rise_rated_k: float = 75.0  # winding temperature rise at rated current
    winding_time_constant_s: float = 1500.0
    bearing_rise_rated_k: float = 18.0  # bearing temperature rise at rated speed
    bearing_time_constant_s: float = 900.0
    vib_1x_mm_s: float = 0.8  # band RMS at rated speed, healthy
    vib_2x_mm_s: float = 0.35
    vib_bearing_mm_s: float = 0.25
    vib_hf_mm_s: float = 0.2
    vib_residual_mm_s: float = 0.25  # broadband rest included in the overall value
    min_flow_fraction: float = 0.3  # minimum continuous flow: this share of BEP flow at the speed

    def min_flow_m3h(self, speed_rpm: float) -> float:
        """Minimum continuous flow at a speed (affinity: proportional to speed)."""
        return self.min_flow_fraction * self.bep_flow_m3h * speed_rpm / self.rated_speed_rpm


@dataclass(frozen=True)
class StationParams:
    """The station, its tank, its demand and the PLC's own control. All defaults documented."""

    pumps: int = 2
    pump: PumpParams = field(default_factory=PumpParams)
    min_speed_rpm: float = 1500.0  # PLC limits: external setpoints are clamped to these
    max_speed_rpm: float = 2950.0
    ramp_rpm_s: float = 300.0  # drive acceleration / deceleration ramp
    static_head_m: float = 15.0  # suction reservoir surface to tank bottom; Hs = this + level
    system_k: float = 3.6e-4  # header + main friction, m/(m3/h)^2 of total flow
    suction_head_m: float = -2.5  # suction reservoir surface above the pump centreline (< 0: suction lift)
    suction_k: float = 1.0e-4  # suction line loss per pump, m/(m3/h)^2
    tank_area_m2: float = 30.0
    tank_height_m: float = 5.0
    level_low_m: float = 2.0  # level band (oracle constraint, LEVEL_LOW/HIGH bits)
    level_high_m: float = 4.0
    level_setpoint_m: float = 3.0  # the PLC PI's setpoint
    initial_level_m: float | None = None  # None: at the setpoint
    pi_gain_rpm_per_m: float = 2000.0
    pi_integral_time_s: float = 1600.0
    level_filter_s: float = 5.0  # first-order filter on the PI's level input
    demand_mean_m3h_per_pump: float = 60.0
    demand_daily_amplitude: float = 0.30  # sin(2 pi (h - 9) / 24): peak at 15:00
    demand_twice_daily_amplitude: float = 0.12  # sin(4 pi (h - 5) / 24): peaks 08:00, 20:00
    demand_noise: float = 0.04  # relative, Ornstein-Uhlenbeck
    demand_noise_time_s: float = 600.0
    ambient_mean_c: float = 20.0
    ambient_amplitude_c: float = 5.0  # peak at 15:00
    demand: DemandParams | None = None
    """None: the diurnal sine above (every existing scenario is tuned on it). Given: the
    structured demand of :mod:`simulator.demand` (weekdays, holidays, temperature with fronts,
    events), its temperature published as Station.AmbientTemp; the shape amplitudes and
    ambient_* above are then unused."""
    epoch: str = "2024-01-01T06:00:00+00:00"  # wall-clock time of t = 0 (sets the time of day)
    heartbeat_timeout_s: float = 10.0
    ack_pulse_s: float = 5.0
    oracle_horizon_s: float = 1800.0
    noise_scale: float = 1.0  # 0 removes all noise (the random stream is consumed anyway)
    max_step_s: float = 1.0  # longer steps are split

    def __post_init__(self) -> None:
        if not 1 <= self.pumps <= 8:
            raise ValueError(f"pumps must be between 1 and 8, got {self.pumps}")
        if not 0 < self.min_speed_rpm < self.max_speed_rpm:
            raise ValueError("need 0 < min_speed_rpm < max_speed_rpm")
        if not 0 <= self.level_low_m < self.level_setpoint_m < self.level_high_m <= self.tank_height_m:
            raise ValueError("need 0 <= level_low < level_setpoint < level_high <= tank_height")

    @property
    def demand_mean_m3h(self) -> float:
        return self.demand_mean_m3h_per_pump * self.pumps

    @property
    def epoch_datetime(self) -> datetime:
        return datetime.fromisoformat(self.epoch)

    @property
    def epoch_hour(self) -> float:
        e = self.epoch_datetime
        return e.hour + e.minute / 60 + e.second / 3600

    @property
    def branch_k(self) -> float:
        """Nominal resistance of one pump branch: pump curve + suction line, m/(m3/h)^2."""
        return self.pump.head_coeff + self.suction_k


# ---------------------------------------------------------------------------------------------
# published formulas (nominal, fault-free pumps)


def pump_head(q_m3h: float, speed_rpm: float, p: PumpParams) -> float:
    """Head of one pump at flow q and speed n: ``H0 (n/n0)^2 - b q^2``."""
    r = speed_rpm / p.rated_speed_rpm
    return p.shutoff_head_m * r * r - p.head_coeff * q_m3h * q_m3h


def pump_efficiency(q_m3h: float, speed_rpm: float, p: PumpParams) -> float:
    """``eta_bep x (2 - x)``, ``x = q / (r q_bep)`` (x capped at 1.9)."""
    r = speed_rpm / p.rated_speed_rpm
    if r <= 0:
        return 0.0
    x = min(q_m3h / (r * p.bep_flow_m3h), 1.9)
    return p.bep_efficiency * x * (2.0 - x)


def shaft_power_kw(q_m3h: float, speed_rpm: float, p: PumpParams, head_m: float | None = None) -> float:
    """``rho g q H / (3.6e6 eta)``; finite at q = 0 (the limit of q/eta)."""
    r = speed_rpm / p.rated_speed_rpm
    if r <= 0:
        return 0.0
    h = pump_head(q_m3h, speed_rpm, p) if head_m is None else head_m
    x = min(q_m3h / (r * p.bep_flow_m3h), 1.9)
    # q / eta = r q_bep / (eta_bep (2 - x))
    return KWH_PER_M3_M * h * r * p.bep_flow_m3h / (p.bep_efficiency * (2.0 - x))


def motor_input_kw(shaft_kw: float, p: PumpParams) -> float:
    """Shaft power plus motor losses ``L_r (f + (1 - f) lambda^2)``."""
    rated_losses = p.motor_rated_power_kw * (1.0 / p.motor_rated_efficiency - 1.0)
    lam = shaft_kw / p.motor_rated_power_kw
    f = p.motor_fixed_loss_fraction
    return shaft_kw + rated_losses * (f + (1.0 - f) * lam * lam)


def electrical_power_kw(shaft_kw: float, p: PumpParams) -> float:
    """Drive input power: motor input / drive efficiency."""
    return motor_input_kw(shaft_kw, p) / p.drive_efficiency


def station_operating_point(
    speed_rpm: float, static_head_m: float, params: StationParams, pumps: int | None = None
) -> tuple[float, float]:
    """Flow per pump and header head with ``pumps`` identical pumps at one speed.

    ``q = sqrt((H0 r^2 - Hs) / (b + k_s + k N^2))`` (0 when the pumps cannot reach the static
    head), ``H = Hs + k (N q)^2``.
    """
    n_p = params.pumps if pumps is None else pumps
    p = params.pump
    r = speed_rpm / p.rated_speed_rpm
    excess = p.shutoff_head_m * r * r - static_head_m
    if excess <= 0:
        return 0.0, static_head_m
    q = math.sqrt(excess / (params.branch_k + params.system_k * n_p * n_p))
    return q, static_head_m + params.system_k * (n_p * q) ** 2


def specific_energy(
    speed_rpm: float, static_head_m: float, params: StationParams, pumps: int | None = None
) -> float:
    """Station kWh per m3 delivered, all pumps at one speed; ``inf`` when nothing is delivered."""
    n_p = params.pumps if pumps is None else pumps
    q, _ = station_operating_point(speed_rpm, static_head_m, params, n_p)
    if q <= 1e-9:
        return math.inf
    head = pump_head(q, speed_rpm, params.pump)
    p_el = electrical_power_kw(shaft_power_kw(q, speed_rpm, params.pump, head), params.pump)
    return p_el / q


def specific_energy_curve(
    speeds_rpm: Sequence[float] | np.ndarray,
    static_head_m: float,
    params: StationParams | None = None,
    pumps: int | None = None,
) -> np.ndarray:
    """``specific_energy`` over an array of speeds (kWh/m3, ``inf`` where nothing is delivered)."""
    prm = params or StationParams()
    return np.array([specific_energy(float(n), static_head_m, prm, pumps) for n in speeds_rpm], dtype=float)


def speed_for_flow(
    total_m3h: float, static_head_m: float, params: StationParams, pumps: int | None = None
) -> float:
    """Speed at which ``pumps`` identical pumps deliver ``total_m3h`` (not clamped).

    ``r = sqrt((Hs + k Q^2 + (b + k_s) q^2) / H0)`` with ``q = Q / N``.
    """
    n_p = params.pumps if pumps is None else pumps
    q_tot = max(total_m3h, 0.0)
    q = q_tot / n_p
    head = static_head_m + params.system_k * q_tot * q_tot + params.branch_k * q * q
    return params.pump.rated_speed_rpm * math.sqrt(max(head, 0.0) / params.pump.shutoff_head_m)


def optimal_speed(static_head_m: float, params: StationParams, pumps: int | None = None) -> float:
    """Unconstrained minimiser of :func:`specific_energy` over [min_speed, max_speed].

    Golden-section search (unimodal curve) from just above the zero-flow speed; ``max_speed``
    when even that delivers nothing. Cached on (static head rounded to 1 mm, params, pumps):
    the rounding moves the result by < 0.1 rpm.
    """
    return _optimal_speed_cached(round(static_head_m, 3), params, params.pumps if pumps is None else pumps)


@lru_cache(maxsize=8192)
def _optimal_speed_cached(static_head_m: float, params: StationParams, pumps: int) -> float:
    p = params.pump
    cutoff = p.rated_speed_rpm * math.sqrt(max(static_head_m, 0.0) / p.shutoff_head_m)
    lo = max(params.min_speed_rpm, cutoff * 1.0001 + 1e-6)
    hi = params.max_speed_rpm
    if lo >= hi:
        return hi
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c = b - inv_phi * (b - a)
    d = a + inv_phi * (b - a)
    fc = specific_energy(c, static_head_m, params, pumps)
    fd = specific_energy(d, static_head_m, params, pumps)
    while b - a > 0.01:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = specific_energy(c, static_head_m, params, pumps)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = specific_energy(d, static_head_m, params, pumps)
    n = (a + b) / 2.0
    # the interval may have collapsed onto a bound: compare with the bounds themselves
    best = min((specific_energy(x, static_head_m, params, pumps), x) for x in (n, lo, hi))
    return best[1]


def oracle_speed(
    demand_m3h: float,
    level_m: float,
    params: StationParams | None = None,
    pumps: int | None = None,
) -> float:
    """The speed the agent's setpoint recommendations are judged against.

    Definition (all pumps at one speed, nominal fault-free curves, quasi-static):

    1. ``Hs = static_head_m + level``; ``n* = optimal_speed(Hs)``, the speed of minimum
       specific energy (kWh/m3) — interior under static head.
    2. Keeping the level in band over the horizon ``T = oracle_horizon_s`` bounds the total
       flow: ``Q_min = D - A (level - level_low) / T`` (do not drain below the band) and
       ``Q_max = D + A (level_high - level) / T`` (do not fill above it), with A the tank area
       and D the demand; ``n_lo = speed_for_flow(Q_min)`` (``min_speed`` when Q_min <= 0),
       ``n_hi = speed_for_flow(Q_max)``.
    3. oracle = ``clip(n*, n_lo, n_hi)`` (``n_lo`` if the band cannot be kept), then clipped to
       the PLC limits [min_speed, max_speed].

    So with the level mid-band the oracle runs at the energy optimum and lets the tank absorb
    the difference; near a band edge it tracks the demand.
    """
    prm = params or StationParams()
    n_p = prm.pumps if pumps is None else pumps
    return _oracle(demand_m3h, level_m, prm, n_p, optimal_speed(prm.static_head_m + level_m, prm, n_p))


def _oracle(demand_m3h: float, level_m: float, prm: StationParams, n_p: int, n_star: float) -> float:
    hs = prm.static_head_m + level_m
    horizon_h = prm.oracle_horizon_s / 3600.0
    area = prm.tank_area_m2
    q_min = demand_m3h - area * (level_m - prm.level_low_m) / horizon_h
    q_max = demand_m3h + area * (prm.level_high_m - level_m) / horizon_h
    n_lo = speed_for_flow(q_min, hs, prm, n_p) if q_min > 0 else prm.min_speed_rpm
    n_hi = speed_for_flow(q_max, hs, prm, n_p) if q_max > 0 else prm.min_speed_rpm
    n = n_lo if n_lo > n_hi else min(max(n_star, n_lo), n_hi)
    return min(max(n, prm.min_speed_rpm), prm.max_speed_rpm)


# ---------------------------------------------------------------------------------------------
# perturbed plants


@dataclass(frozen=True)
class PlantVariant:
    """A perturbed station: what a real one looks like against its datasheet.

    Drawn by :meth:`draw` from a seed: every pump curve perturbed (shut-off head, curve
    steepness and BEP flow each uniformly within ±15 %, BEP efficiency −8..0 %), wear (shut-off
    head −0..6 %, efficiency −0..5 %), one pump's impeller trimmed to 92..97 % of its diameter
    (affinity for trims: H0 × d², BEP flow × d, efficiency −2 %), the static head ±15 % and the
    tank area ±20 %. The recommender is never told any of this.
    """

    seed: int
    pumps: tuple[PumpParams, ...]
    static_head_m: float
    tank_area_m2: float
    trimmed_pump: int  # 1-based
    trim_ratio: float

    @classmethod
    def draw(cls, seed: int, params: StationParams | None = None) -> PlantVariant:
        """The variant of ``params`` (defaults) drawn from ``seed`` (deterministic)."""
        prm = params or StationParams()
        rng = np.random.Generator(np.random.PCG64([0x5EED, int(seed)]))
        trimmed = int(rng.integers(1, prm.pumps + 1))
        trim = float(rng.uniform(0.92, 0.97))
        pumps = []
        for i in range(prm.pumps):
            p = prm.pump
            f_h0, f_b, f_q = rng.uniform(0.85, 1.15, 3)
            f_eta = rng.uniform(0.92, 1.0)
            wear_h, wear_eta = rng.uniform(0.0, 0.06), rng.uniform(0.0, 0.05)
            h0 = p.shutoff_head_m * f_h0 * (1 - wear_h)
            q_bep = p.bep_flow_m3h * f_q
            eta = p.bep_efficiency * f_eta * (1 - wear_eta)
            if i + 1 == trimmed:
                h0, q_bep, eta = h0 * trim * trim, q_bep * trim, eta * 0.98
            pumps.append(
                replace(
                    p,
                    shutoff_head_m=h0,
                    head_coeff=p.head_coeff * f_b,
                    bep_flow_m3h=q_bep,
                    bep_efficiency=eta,
                )
            )
        return cls(
            seed=int(seed),
            pumps=tuple(pumps),
            static_head_m=prm.static_head_m * float(rng.uniform(0.85, 1.15)),
            tank_area_m2=prm.tank_area_m2 * float(rng.uniform(0.8, 1.2)),
            trimmed_pump=trimmed,
            trim_ratio=trim,
        )

    def describe(self) -> dict[str, Any]:
        """The true parameters (for reports; never given to the recommender)."""
        return {
            "seed": self.seed,
            "static_head_m": self.static_head_m,
            "tank_area_m2": self.tank_area_m2,
            "trimmed_pump": self.trimmed_pump,
            "trim_ratio": self.trim_ratio,
            "pumps": [
                {
                    "shutoff_head_m": p.shutoff_head_m,
                    "head_coeff": p.head_coeff,
                    "bep_flow_m3h": p.bep_flow_m3h,
                    "bep_efficiency": p.bep_efficiency,
                }
                for p in self.pumps
            ],
        }


def _pump_power_kw(q: np.ndarray, r: np.ndarray, head: np.ndarray, p: PumpParams) -> np.ndarray:
    """Vectorised electrical power of one pump (no cavitation): the step loop's formula."""
    x = np.minimum(np.where(r > 0, q / np.maximum(r, 1e-9) / p.bep_flow_m3h, 0.0), 1.9)
    shaft = np.where(
        (r > 0) & (head > 0), KWH_PER_M3_M * head * r * p.bep_flow_m3h / (p.bep_efficiency * (2.0 - x)), 0.0
    )
    rated_losses = p.motor_rated_power_kw * (1.0 / p.motor_rated_efficiency - 1.0)
    lam = shaft / p.motor_rated_power_kw
    f = p.motor_fixed_loss_fraction
    return np.asarray((shaft + rated_losses * (f + (1.0 - f) * lam * lam)) / p.drive_efficiency)


# ---------------------------------------------------------------------------------------------
# the plant


@dataclass(frozen=True)
class PlantState:
    """Snapshot after a step. ``tags`` holds every tag of the register map by name (measured
    values as the PLC sees them, NaN for dropouts; PLC memory; simulation ground truth)."""

    t_s: float
    timestamp: datetime
    tags: MappingProxyType[str, Any]
    fault_codes: tuple[int, ...]
    fault_labels: tuple[str, ...]
    fault_masks: tuple[int, ...]
    rul_h: tuple[float, ...]  # RUL_SENTINEL_H when no bearing wear is active
    bearing_degradation: tuple[float, ...]
    demand_m3h: float  # true demand
    level_m: float  # true level
    oracle_speed_rpm: float
    optimal_speed_rpm: float
    energy_kwh: float
    volume_m3: float
    external_active: bool
    bad_tags: frozenset[str] = frozenset()  # tags without a valid value (sensor dropout)

    def __getitem__(self, name: str) -> Any:
        return self.tags[name]


@dataclass
class _Active:
    fault: Fault
    onset_s: float
    stuck_value: float | None = None


_EMPTY: frozenset[str] = frozenset()

# normals consumed per step: station, then per pump
_N_STATION = 5
_N_PUMP = 16
_BLOCK = 1024


class Plant:
    """The station, stepped deterministically in simulated time.

    ``Plant(params, seed=...)`` starts in steady state at ``t = 0`` with the level at the PI
    setpoint. ``step(dt_s)`` advances; the same seed, parameters, events and step sizes give
    bit-identical states. Writes from outside go through ``plant.plc`` (see ``simulator.plc``).

    ``heartbeat_clock`` is the PLC watchdog's clock (default: simulated time; ``serve()`` uses
    the monotonic wall clock). ``permissive`` is the operator permissive at start.

    Read-only for callers: ``t`` (simulated seconds), ``level`` (true, m), ``speed`` /
    ``setpoint`` / ``q`` (per pump), ``energy_kwh``, ``volume_m3`` (pumped into the tank),
    ``demand_volume_m3``, ``overflow_m3``, ``unmet_demand_m3``; ``state`` for everything else.
    """

    def __init__(
        self,
        params: StationParams | None = None,
        *,
        seed: int = 0,
        scenario: Scenario | Iterable[ScenarioEvent] | None = None,
        heartbeat_clock: Callable[[], float] | None = None,
        permissive: bool = False,
        variant_seed: int | None = None,
        variant: PlantVariant | None = None,
    ) -> None:
        params = params or StationParams()
        if variant is None and variant_seed is not None:
            variant = PlantVariant.draw(variant_seed, params)
        self.variant = variant
        if variant is not None:
            if len(variant.pumps) != params.pumps:
                raise ValueError(f"variant has {len(variant.pumps)} pumps but the station {params.pumps}")
            params = replace(params, static_head_m=variant.static_head_m, tank_area_m2=variant.tank_area_m2)
        self.params = params
        self.seed = int(seed)
        prm = self.params
        n = prm.pumps
        self.pumps = n
        #: per-pump parameters (all ``params.pump`` unless a variant perturbs them)
        self.pump_params: tuple[PumpParams, ...] = variant.pumps if variant is not None else (prm.pump,) * n
        self._h0 = [pp.shutoff_head_m for pp in self.pump_params]
        self._b_nom = [pp.head_coeff + prm.suction_k for pp in self.pump_params]
        self._oracle_tables: dict[float, tuple[np.ndarray, ...]] = {}
        self._epoch_hour = prm.epoch_hour
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._row_width = _N_STATION + _N_PUMP * n
        self._rows: list[list[float]] = []
        self._row_i = 0
        self.t = 0.0
        self.plc = Plc(
            pumps=n,
            min_speed_rpm=prm.min_speed_rpm,
            max_speed_rpm=prm.max_speed_rpm,
            heartbeat_timeout_s=prm.heartbeat_timeout_s,
            ack_pulse_s=prm.ack_pulse_s,
            permissive=permissive,
            clock=heartbeat_clock,
        )
        self.plc.on_fault_command = self._fault_command
        self.plc.fault_code_of = self.fault_code
        self._entries = build_register_map(n)
        self._eu_span = {e.name: (e.eu_range[1] - e.eu_range[0]) for e in self._entries if e.eu_range}
        self._names = [
            {
                rel: f"Pump{i + 1}.{rel}"
                for rel in (
                    "Speed",
                    "SpeedSetpoint",
                    "Flow",
                    "SuctionPressure",
                    "DischargePressure",
                    "MotorCurrent",
                    "MotorPower",
                    "WindingTemp",
                    "BearingTemp",
                    "Vibration",
                    "Vib1x",
                    "Vib2x",
                    "VibBearing",
                    "VibHF",
                    "Status",
                )
            }
            for i in range(n)
        ]
        self._active: list[list[_Active]] = [[] for _ in range(n)]
        self._events: list[ScenarioEvent] = []
        self._event_i = 0
        self.demand_scale = 1.0
        self.demand_model = (
            DemandModel(prm.demand, mean_m3h=prm.demand_mean_m3h, epoch=prm.epoch_datetime, seed=self.seed)
            if prm.demand is not None
            else None
        )
        if scenario is not None:
            self.schedule(scenario.events if isinstance(scenario, Scenario) else scenario)
        # state variables
        level0 = prm.initial_level_m if prm.initial_level_m is not None else prm.level_setpoint_m
        self.level = level0
        self._level_filt = level0
        self._ou = 0.0
        self.energy_kwh = 0.0
        self.volume_m3 = 0.0  # delivered into the tank
        self.demand_volume_m3 = 0.0  # drawn from the tank
        self.overflow_m3 = 0.0
        self.unmet_demand_m3 = 0.0
        d0 = self._demand_base(0.0)
        n0 = min(
            max(speed_for_flow(d0, prm.static_head_m + level0, prm), prm.min_speed_rpm), prm.max_speed_rpm
        )
        self.speed = [n0] * n
        self.setpoint = [n0] * n
        self._pi_u = n0
        self._pi_e = prm.level_setpoint_m - level0
        self._was_external = False
        self.q = [0.0] * n
        self.h_gen = [0.0] * n
        self._h_header = prm.static_head_m + level0
        self.cav = [0.0] * n
        self.npsh_margin = [10.0] * n
        self.t_wind = [0.0] * n
        self.t_bear = [0.0] * n
        for i in range(n):
            self.plc.track_setpoint(i + 1, n0)
        self._exp_cache: dict[float, tuple[float, ...]] = {}
        self._opt_cache: dict[float, float] = {}
        self._zeros = [0.0] * n
        self._no_rul = [RUL_SENTINEL_H] * n
        self._state: PlantState | None = None
        self._state_version = -1
        self._advance(0.0, initial=True)

    # -- faults and events ------------------------------------------------------------------

    def schedule(self, events: Iterable[ScenarioEvent]) -> None:
        """Add timed events (applied at the first step starting at or after their time)."""
        pending = self._events[self._event_i :] + list(events)
        pending.sort(key=lambda e: e.at_s)
        for ev in pending:
            pump = ev.fault.pump if ev.fault else ev.clear[0] if ev.clear else None
            if pump is not None and pump > self.pumps:
                raise ValueError(
                    f"event at {ev.at_s:g} s: pump {pump} but the station has {self.pumps} pumps"
                )
        self._events = pending
        self._event_i = 0

    def inject(self, fault: Fault) -> None:
        """Start ``fault`` now (re-injecting the same kind and tag restarts it)."""
        if fault.pump > self.pumps:
            raise ValueError(f"pump {fault.pump} but the station has {self.pumps} pumps")
        lst = self._active[fault.pump - 1]
        lst[:] = [a for a in lst if not (a.fault.kind == fault.kind and a.fault.tag == fault.tag)]
        lst.append(_Active(fault, self.t))
        self._state = None

    def clear(self, fault: Fault | int, kind: FaultKind | None = None) -> None:
        """Clear a fault: ``clear(fault)`` (that kind and tag on its pump), ``clear(pump, kind)``
        (every fault of that kind on the pump) or ``clear(pump)`` (all faults of the pump)."""
        if isinstance(fault, Fault):
            lst = self._active[fault.pump - 1]
            lst[:] = [a for a in lst if not (a.fault.kind == fault.kind and a.fault.tag == fault.tag)]
        else:
            lst = self._active[fault - 1]
            if kind is None:
                lst.clear()
            else:
                lst[:] = [a for a in lst if a.fault.kind != kind]
        self._state = None

    def active_faults(self, pump: int) -> tuple[Fault, ...]:
        return tuple(a.fault for a in self._active[pump - 1])

    def fault_code(self, pump: int) -> int:
        lst = self._active[pump - 1]
        return min((int(a.fault.kind) for a in lst), default=0)

    def _fault_command(self, pump: int, code: int) -> str | None:
        if not 1 <= pump <= self.pumps:
            return f"no pump {pump}"
        if code == 0:
            self.clear(pump)
            return None
        try:
            kind = FaultKind(code)
        except ValueError:
            return f"unknown fault code {code}"
        self.inject(Fault(kind=kind, pump=pump))
        return None

    def _apply_event(self, ev: ScenarioEvent) -> None:
        if ev.fault is not None:
            self.inject(ev.fault)
        elif ev.clear is not None:
            self.clear(ev.clear[0], ev.clear[1])
        elif ev.permissive is not None:
            self.plc.write("Station.Permissive", ev.permissive, protocol="scenario")
        elif ev.acknowledge is not None:
            self.plc.write("Station.Acknowledge", ev.acknowledge, protocol="scenario")
        elif ev.demand_scale is not None:
            self.demand_scale = ev.demand_scale

    # -- stepping ---------------------------------------------------------------------------

    def step(self, dt_s: float = 0.1) -> None:
        """Advance by ``dt_s`` simulated seconds (split into steps of at most ``max_step_s``)."""
        if not dt_s > 0:
            raise ValueError(f"dt_s must be positive, got {dt_s}")
        n_sub = max(1, math.ceil(dt_s / self.params.max_step_s - 1e-9))
        sub = dt_s / n_sub
        for _ in range(n_sub):
            self._advance(sub)

    def run(self, duration_s: float, dt_s: float = 1.0) -> None:
        """Step for ``duration_s`` in steps of ``dt_s`` (the last one shorter if needed)."""
        end = self.t + duration_s
        while self.t < end - 1e-9:
            self.step(min(dt_s, end - self.t))

    def _next_row(self) -> list[float]:
        if self._row_i >= len(self._rows):
            self._rows = self._rng.standard_normal((_BLOCK, self._row_width)).tolist()
            self._row_i = 0
        row = self._rows[self._row_i]
        self._row_i += 1
        return row

    def _exp(self, dt: float) -> tuple[float, ...]:
        c = self._exp_cache.get(dt)
        if c is None:
            p, prm = self.params.pump, self.params
            c = (
                1.0 - math.exp(-dt / p.winding_time_constant_s),
                1.0 - math.exp(-dt / p.bearing_time_constant_s),
                math.exp(-dt / prm.demand_noise_time_s),
                1.0 - math.exp(-dt / prm.level_filter_s),
                1.0 - math.exp(-dt / 2.0),  # cavitation intensity lag
            )
            if len(self._exp_cache) > 64:
                self._exp_cache.clear()
            self._exp_cache[dt] = c
        return c

    def _demand_base(self, t: float) -> float:
        if self.demand_model is not None:
            return self.demand_model.demand(t)
        prm = self.params
        h = (self._epoch_hour + t / 3600.0) % 24.0
        shape = (
            1.0
            + prm.demand_daily_amplitude * math.sin(2 * math.pi * (h - 9.0) / 24.0)
            + prm.demand_twice_daily_amplitude * math.sin(4 * math.pi * (h - 5.0) / 24.0)
        )
        return prm.demand_mean_m3h * shape

    def _advance(self, dt: float, initial: bool = False) -> None:
        prm = self.params
        p = prm.pump
        n = self.pumps
        plc = self.plc
        sqrt = math.sqrt
        if not initial:
            # scheduled events due at the start of this step
            events = self._events
            while self._event_i < len(events) and events[self._event_i].at_s <= self.t + 1e-9:
                self._apply_event(events[self._event_i])
                self._event_i += 1
            t_new = self.t + dt
            a_w, a_b, a_ou, a_lf, a_cav = self._exp(dt)
        else:
            t_new = 0.0
            a_w, a_b, a_ou, a_lf, a_cav = 1.0, 1.0, 0.0, 1.0, 1.0
        plc.sim_time_s = self.t
        row = self._next_row()
        ns = prm.noise_scale

        # demand (diurnal shape x OU noise) and ambient
        if not initial:
            self._ou = self._ou * a_ou + prm.demand_noise * sqrt(1.0 - a_ou * a_ou) * row[0] * ns
        demand = self._demand_base(self.t) * self.demand_scale * (1.0 + self._ou)
        if demand < 0.0:
            demand = 0.0
        hour = (self._epoch_hour + self.t / 3600.0) % 24.0
        if self.demand_model is not None:
            ambient = self.demand_model.temperature(self.t)
        else:
            ambient = prm.ambient_mean_c + prm.ambient_amplitude_c * math.sin(2 * math.pi * (hour - 9) / 24)

        # PLC scan: external setpoints or own PI on the filtered level
        external = plc.update()
        hb_age = plc.heartbeat_age_s()  # as seen by this scan
        hb_ok = hb_age is not None and hb_age <= plc.heartbeat_timeout_s
        speed = self.speed
        setpoint = self.setpoint
        if not initial:
            if external:
                for i in range(n):
                    # a pump whose run request is cleared stops (ramps to 0); set, it runs again
                    setpoint[i] = plc.setpoint(i + 1) if plc.run_request(i + 1) else 0.0
            else:
                e = prm.level_setpoint_m - self._level_filt
                if self._was_external:  # bumpless return to local control
                    self._pi_u = sum(setpoint) / n
                    self._pi_e = e
                u = self._pi_u + prm.pi_gain_rpm_per_m * ((e - self._pi_e) + dt / prm.pi_integral_time_s * e)
                u = (
                    prm.min_speed_rpm
                    if u < prm.min_speed_rpm
                    else prm.max_speed_rpm
                    if u > prm.max_speed_rpm
                    else u
                )
                self._pi_u, self._pi_e = u, e
                for i in range(n):
                    setpoint[i] = u
                    plc.track_setpoint(i + 1, u)
                    plc.track_run(i + 1)
            self._was_external = external
            ramp = prm.ramp_rpm_s * dt
            for i in range(n):
                d_n = setpoint[i] - speed[i]
                speed[i] += ramp if d_n > ramp else -ramp if d_n < -ramp else d_n

        # faults -> effective parameters per pump, evaluated at the end of the step so that the
        # labels (RUL) match the reported time exactly
        effects = self._fault_effects(t_new) if any(self._active) else None

        # hydraulics: parallel branches into the header, H_header = Hs + k Q^2
        n0 = p.rated_speed_rpm
        hs = prm.static_head_m + self.level
        pps = self.pump_params
        h0s = self._h0
        b_nom = self._b_nom
        cav_l = self.cav
        margin_l = self.npsh_margin
        r = [s_ / n0 for s_ in speed]
        npsh_const = ATM_HEAD_M + prm.suction_head_m - VAPOUR_HEAD_M
        if effects is None:
            bk = list(b_nom)
            k_suc = [prm.suction_k] * n
        else:
            bk = [b_nom[i] + effects[5][i] + effects[6][i] for i in range(n)]
            k_suc = [prm.suction_k + effects[5][i] for i in range(n)]
        # pumps near cavitation need the implicit branch curve (head drop depends on q)
        implicit = [k_suc[i] > prm.suction_k or margin_l[i] < 1.4 for i in range(n)]
        if any(implicit):
            branches = [
                _Branch(
                    h0s[i] * r[i] * r[i],
                    bk[i],
                    k_suc[i],
                    pps[i].npsh_required_bep_m * r[i] * r[i],
                    r[i] * pps[i].bep_flow_m3h,
                    npsh_const,
                )
                if implicit[i]
                else None
                for i in range(n)
            ]
            amp = [h0s[i] * r[i] * r[i] for i in range(n)]
            h_hdr, q = _solve_header_implicit(amp, bk, branches, hs, prm.system_k)
        else:
            amp = [h0s[i] * r[i] * r[i] for i in range(n)]
            h_hdr, q = _solve_header(amp, bk, hs, prm.system_k, self._h_header)
        self._h_header = h_hdr
        self.q = q
        q_tot = sum(q)

        # per pump: NPSH and cavitation, power, motor, temperatures, vibration, measurements
        tags: dict[str, Any] = {}
        bad: set[str] = set()
        ext_bit = 2 if external else 0
        total_power_m = 0.0
        total_power = 0.0
        j = _N_STATION
        suction_k = prm.suction_k
        rated_losses = p.motor_rated_power_kw * (1.0 / p.motor_rated_efficiency - 1.0)
        f_fix = p.motor_fixed_loss_fraction
        for i in range(n):
            qi, ri = q[i], r[i]
            pp = pps[i]
            h0, head_coeff, q_bep = h0s[i], pp.head_coeff, pp.bep_flow_m3h
            if effects is None:
                s_imb = s_mot = wear = k_str = 0.0
            else:
                s_imb, s_mot, wear = effects[0][i], effects[1][i], effects[2][i]
                k_str = effects[5][i]
            suction_loss = (suction_k + k_str) * qi * qi
            npsh_a = npsh_const - suction_loss
            if ri > 0:
                x = qi / (ri * q_bep)
                if x > 1.9:
                    x = 1.9
            else:
                x = 0.0
            npsh3 = pp.npsh_required_bep_m * ri * ri * (0.7 + 0.3 * x * x) + 1e-9
            m = npsh_a / npsh3  # NPSH margin ratio
            margin_l[i] = m
            h_gen = h0 * ri * ri * (1.0 - _head_drop(m)) - head_coeff * qi * qi
            self.h_gen[i] = h_gen
            inc = p.npsh_incipient_factor
            cav_t = (inc - m) / (inc - 0.5)  # noise intensity: 0 at incipient, 1 at m = 0.5
            cav_t = 0.0 if cav_t < 0.0 else 1.0 if cav_t > 1.0 else cav_t
            cav = cav_l[i] + (cav_t - cav_l[i]) * a_cav  # bubble clouds do not follow instantly
            cav_l[i] = cav
            # shaft power rho g q H / (3.6e6 eta), eta reduced by cavitation; q/eta kept finite
            if ri > 0 and h_gen > 0:
                p_shaft = (
                    KWH_PER_M3_M * h_gen * ri * q_bep / (pp.bep_efficiency * (2.0 - x) * (1.0 - 0.3 * cav))
                )
            else:
                p_shaft = 0.0
            lam = p_shaft / p.motor_rated_power_kw
            p_in = p_shaft + rated_losses * (f_fix + (1.0 - f_fix) * lam * lam) if ri > 0 else 0.0
            if s_mot:
                p_in += s_mot * (0.08 * p_shaft + 0.6)
            p_el = p_in / p.drive_efficiency
            total_power += p_el
            volt = p.motor_rated_voltage_v * (0.1 if ri < 0.1 else 1.0 if ri > 1.0 else ri)
            i_act = p_in * 1000.0 / (SQRT3 * volt)
            i_mag = p.motor_magnetising_current_a * (1.0 + 0.5 * s_mot)
            current = sqrt(i_act * i_act + i_mag * i_mag)
            irel = current / p.motor_rated_current_a
            tw_ss = ambient + p.winding_rise_rated_k * irel * irel + 20.0 * s_mot
            tb_ss = ambient + p.bearing_rise_rated_k * ri + 1.0 * s_imb + 30.0 * wear
            t_w = self.t_wind[i] + (tw_ss - self.t_wind[i]) * a_w
            t_b = self.t_bear[i] + (tb_ss - self.t_bear[i]) * a_b
            self.t_wind[i] = t_w
            self.t_bear[i] = t_b
            r2 = ri * ri
            v1 = (p.vib_1x_mm_s + 5.0 * s_imb) * r2
            v2 = p.vib_2x_mm_s * r2 + 0.4 * s_mot
            vb = p.vib_bearing_mm_s * ri + 9.0 * wear
            vh_base = p.vib_hf_mm_s * ri * (1.0 + 1.5 * (x - 1.0) * (x - 1.0))
            p_suc = BAR_PER_M * (prm.suction_head_m - suction_loss)
            p_dis = p_suc + BAR_PER_M * h_gen

            # measurements (sensor noise; sensor faults last)
            z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15 = row[j : j + _N_PUMP]
            j += _N_PUMP
            m_pow = p_el * (1.0 + 0.005 * z6 * ns)
            total_power_m += m_pow  # the station meter is separate hardware: pump sensor faults miss it
            m_v1 = v1 * (1.0 + 0.05 * z9 * ns)
            m_v2 = v2 * (1.0 + 0.05 * z10 * ns)
            m_vb = vb * (1.0 + 0.05 * z11 * ns)
            m_vh = vh_base * (1.0 + 0.05 * z12 * ns) + 6.0 * cav * (1.0 + 0.5 * z13 * ns)
            if m_vh < 0.0:
                m_vh = 0.0
            vals = {
                "Speed": speed[i] + 2.0 * z0 * ns,
                "Flow": qi * (1.0 + (0.005 * z1 + 0.08 * cav * z2) * ns),
                "SuctionPressure": p_suc + 0.005 * z3 * ns,
                "DischargePressure": p_dis + 0.01 * z4 * ns,
                "MotorCurrent": current * (1.0 + 0.005 * z5 * ns),
                "MotorPower": m_pow,
                "WindingTemp": t_w + 0.1 * z7 * ns,
                "BearingTemp": t_b + 0.1 * z8 * ns,
                "Vibration": sqrt(
                    m_v1 * m_v1 + m_v2 * m_v2 + m_vb * m_vb + m_vh * m_vh + p.vib_residual_mm_s**2
                ),
                "Vib1x": m_v1,
                "Vib2x": m_v2,
                "VibBearing": m_vb,
                "VibHF": m_vh,
            }
            signal_fault = False
            if effects is not None and effects[7][i]:
                signal_fault = self._sensor_faults(i, vals, z14, z15, dt, t_new, bad)
            sp = setpoint[i]
            running = speed[i] > 0.0
            bits = (1 if running else 0) | ext_bit
            if sp <= prm.min_speed_rpm + 0.5:
                bits |= 4
            if sp >= prm.max_speed_rpm - 0.5:
                bits |= 8
            if vals["WindingTemp"] > 130.0:
                bits |= 16
            if vals["MotorCurrent"] > p.motor_rated_current_a:
                bits |= 32
            if vals["SuctionPressure"] < -0.5:
                bits |= 64
            if signal_fault:
                bits |= 128
            nm = self._names[i]
            for rel, v in vals.items():
                tags[nm[rel]] = v
            tags[nm["SpeedSetpoint"]] = sp
            tags[nm["Status"]] = bits
            tags[f"Pump{i + 1}.Running"] = running

        # tank, energy, volume
        if not initial:
            area = prm.tank_area_m2
            level = self.level + (q_tot - demand) * dt / 3600.0 / area
            drawn = demand * dt / 3600.0
            if level > prm.tank_height_m:
                self.overflow_m3 += (level - prm.tank_height_m) * area
                level = prm.tank_height_m
            elif level < 0.0:
                self.unmet_demand_m3 += -level * area
                drawn -= -level * area
                level = 0.0
            self.level = level
            self.energy_kwh += total_power * dt / 3600.0
            self.volume_m3 += q_tot * dt / 3600.0
            self.demand_volume_m3 += drawn
            self.t = t_new
            plc.sim_time_s = t_new

        # station measurements (the PI filter sees the measured level)
        m_level = self.level + 0.003 * row[1] * ns
        if initial:
            self._level_filt = self.level
        else:
            self._level_filt += (m_level - self._level_filt) * a_lf
        m_tot = q_tot * (1.0 + 0.005 * row[3] * ns)
        low = m_level < prm.level_low_m
        high = m_level > prm.level_high_m
        tags["Station.TankLevel"] = m_level
        tags["Station.OutletFlow"] = demand * (1.0 + 0.01 * row[2] * ns)
        tags["Station.TotalFlow"] = m_tot
        tags["Station.HeaderPressure"] = BAR_PER_M * (prm.suction_head_m + h_hdr) + 0.01 * row[4] * ns
        tags["Station.AmbientTemp"] = ambient
        tags["Station.TotalPower"] = total_power_m
        tags["Station.EnergyTotal"] = self.energy_kwh
        tags["Station.VolumeTotal"] = self.volume_m3
        tags["Station.LevelSetpoint"] = prm.level_setpoint_m
        tags["Station.Status"] = (
            (1 if plc.permissive else 0)
            | (2 if hb_ok else 0)
            | (4 if external else 0)
            | (8 if low else 0)
            | (16 if high else 0)
            | (32 if plc.acknowledge else 0)
        )
        tags["Station.HeartbeatAge"] = hb_age if hb_age is not None and hb_age < 6553.4 else 6553.4
        tags["Station.SpecificEnergy"] = total_power_m / m_tot if m_tot >= 1.0 else math.nan
        tags["Station.HeartbeatOk"] = hb_ok
        tags["Station.RemoteActive"] = external
        tags["Station.LevelLow"] = low
        tags["Station.LevelHigh"] = high
        self._tags = tags
        self._bad_tags = frozenset(bad) if bad else _EMPTY
        self._demand = demand
        if effects is None:
            self._degr = self._zeros
            self._rul = self._no_rul
        else:
            self._degr = effects[3]
            self._rul = effects[4]
        self._external = external
        self._state = None

    def _fault_effects(self, t_eval: float) -> tuple[list[float], ...]:
        """Per-pump effect vectors of the active faults at time ``t_eval`` (auto-clears expired)."""
        n = self.pumps
        s_imb = [0.0] * n
        s_mot = [0.0] * n
        wear = [0.0] * n  # severity * degradation
        degr = [0.0] * n
        rul = [RUL_SENTINEL_H] * n
        k_strainer = [0.0] * n
        k_valve = [0.0] * n
        sensor = [0.0] * n
        for i in range(n):
            lst = self._active[i]
            if not lst:
                continue
            keep = []
            for a in lst:
                f = a.fault
                if f.duration_s is not None and t_eval >= a.onset_s + f.duration_s:
                    continue
                keep.append(a)
                k = f.kind
                if k == FaultKind.BEARING_WEAR:
                    ttf = f.ttf_s
                    tau = min(max((t_eval - a.onset_s) / ttf, 0.0), 1.0)
                    degr[i] = tau * tau
                    wear[i] = f.severity * degr[i]
                    rul[i] = max(a.onset_s + ttf - t_eval, 0.0) / 3600.0
                elif k == FaultKind.CAVITATION:
                    k_strainer[i] = f.severity * 13.0 / 3600.0  # clogged strainer: 13 m extra loss at 60 m3/h
                elif k == FaultKind.IMBALANCE:
                    s_imb[i] = f.severity
                elif k == FaultKind.MOTOR_ELECTRICAL:
                    s_mot[i] = f.severity
                elif k == FaultKind.VALVE_BLOCKAGE:
                    k_valve[i] = f.severity * 8.0 / 3600.0  # 8 m extra loss at 60 m3/h
                else:
                    sensor[i] = 1.0
            if len(keep) != len(lst):
                lst[:] = keep
                self._state = None
        return s_imb, s_mot, wear, degr, rul, k_strainer, k_valve, sensor

    def _sensor_faults(
        self,
        i: int,
        vals: dict[str, float],
        z_event: float,
        z_sign: float,
        dt: float,
        t_eval: float,
        bad: set[str],
    ) -> bool:
        """Apply sensor faults of pump i to its measured values; True if a value is missing."""
        missing = False
        for a in self._active[i]:
            f = a.fault
            if not f.kind.is_sensor:
                continue
            rel = f.sensor_tag
            name = self._names[i][rel]
            span = self._eu_span.get(name, 1.0)
            k = f.kind
            if k == FaultKind.SENSOR_STUCK:
                if a.stuck_value is None:
                    a.stuck_value = vals[rel]
                vals[rel] = a.stuck_value
            elif k == FaultKind.SENSOR_DRIFT:
                vals[rel] += f.severity * 0.05 * span * (t_eval - a.onset_s) / 3600.0
            elif k == FaultKind.SENSOR_SPIKE:
                prob = 1.0 - math.exp(-0.05 * f.severity * dt)
                if _upper_tail(z_event) < prob:
                    vals[rel] += (0.25 if z_sign >= 0 else -0.25) * span * min(f.severity, 1.0)
            elif k == FaultKind.SENSOR_DROPOUT:
                vals[rel] = math.nan
                bad.add(name)
                missing = True
        return missing

    # -- outputs ----------------------------------------------------------------------------

    @property
    def state(self) -> PlantState:
        """Snapshot of every tag and label at the current time (cached until the next step)."""
        if self._state is None or self._state_version != self.plc.version:
            self._state_version = self.plc.version
            self._state = self._build_state()
        return self._state

    def _build_state(self) -> PlantState:
        prm = self.params
        n = self.pumps
        codes = tuple(self.fault_code(i + 1) for i in range(n))
        masks = tuple(_mask(self._active[i]) for i in range(n))
        oracle = self.oracle_speed()
        opt = self.optimal_speed()
        tags = dict(self._tags)
        plc = self.plc
        tags.update(plc.values)
        tags["Station.OperatorCommand"] = plc.read("Station.OperatorCommand")
        tags["Simulation.Time"] = self.t
        tags["Simulation.Demand"] = self._demand
        tags["Simulation.OracleSpeed"] = oracle
        tags["Simulation.OptimalSpeed"] = opt
        tags["Simulation.SpecificEnergyAvg"] = (
            self.energy_kwh / self.volume_m3 if self.volume_m3 > 0 else math.nan
        )
        for i in range(n):
            p = f"Simulation.Pump{i + 1}."
            tags[p + "FaultCode"] = codes[i]
            tags[p + "FaultMask"] = masks[i]
            tags[p + "TrueRUL"] = self._rul[i]
            tags[p + "BearingDegradation"] = self._degr[i]
            tags[p + "FaultInject"] = codes[i]
        return PlantState(
            t_s=self.t,
            timestamp=prm.epoch_datetime + timedelta(seconds=self.t),
            tags=MappingProxyType(tags),
            fault_codes=codes,
            fault_labels=tuple(FaultKind(c).label for c in codes),
            fault_masks=masks,
            rul_h=tuple(self._rul),
            bearing_degradation=tuple(self._degr),
            demand_m3h=self._demand,
            level_m=self.level,
            oracle_speed_rpm=oracle,
            optimal_speed_rpm=opt,
            energy_kwh=self.energy_kwh,
            volume_m3=self.volume_m3,
            external_active=self._external,
            bad_tags=self._bad_tags,
        )

    def specific_energy_curve(
        self, speeds_rpm: Sequence[float] | np.ndarray, static_head_m: float | None = None
    ) -> np.ndarray:
        """kWh/m3 over speeds (all pumps at one speed), at the current static head by default."""
        hs = self.params.static_head_m + self.level if static_head_m is None else static_head_m
        return specific_energy_curve(speeds_rpm, hs, self.params)

    def optimal_speed(self, static_head_m: float | None = None) -> float:
        """:func:`optimal_speed` at the current (or given) static head."""
        hs = self.params.static_head_m + self.level if static_head_m is None else static_head_m
        key = round(hs, 3)
        n = self._opt_cache.get(key)
        if n is None:
            if len(self._opt_cache) > 20000:
                self._opt_cache.clear()
            n = self._opt_cache[key] = _optimal_speed_cached(key, self.params, self.pumps)
        return n

    def oracle_speed(self, demand_m3h: float | None = None, level_m: float | None = None) -> float:
        """:func:`oracle_speed` with this plant's parameters; true demand and level by default."""
        demand = self._demand if demand_m3h is None else demand_m3h
        level = self.level if level_m is None else level_m
        return _oracle(
            demand, level, self.params, self.pumps, self.optimal_speed(self.params.static_head_m + level)
        )

    def min_flow_m3h(self, pump: int, speed_rpm: float) -> float:
        """True minimum continuous flow of pump ``pump`` (1-based) at a speed."""
        return self.pump_params[pump - 1].min_flow_m3h(speed_rpm)

    def oracle_speeds(self, demand_m3h: float | None = None, level_m: float | None = None) -> list[float]:
        """The energy oracle with this plant's true per-pump curves (variants included).

        The definition of :func:`oracle_speed` generalised to pumps that differ: over a grid of
        speed pairs (every pump at least at its minimum continuous flow), the one of least
        station kWh/m³ whose total flow keeps the level in band over the horizon; the flow
        closest above ``Q_min`` when the band forces more. Without a variant all pumps are
        identical and this is :meth:`oracle_speed` for each.
        """
        demand = self._demand if demand_m3h is None else demand_m3h
        level = self.level if level_m is None else level_m
        if self.variant is None:
            return [self.oracle_speed(demand, level)] * self.pumps
        prm = self.params
        speeds, q_tot, spec = self._oracle_table(round(level, 2))
        horizon_h = prm.oracle_horizon_s / 3600.0
        q_min = demand - prm.tank_area_m2 * (level - prm.level_low_m) / horizon_h
        q_max = demand + prm.tank_area_m2 * (prm.level_high_m - level) / horizon_h
        ok = (q_tot >= q_min) & (q_tot <= q_max)
        if q_min <= q_max and ok.any():
            k = int(np.argmin(np.where(ok, spec, np.inf)))
        else:
            above = q_tot >= q_min
            k = int(np.argmin(np.where(above, q_tot, np.inf))) if above.any() else int(np.argmax(q_tot))
        return [float(v) for v in speeds[k]]

    def _oracle_table(self, level: float) -> tuple[np.ndarray, ...]:
        """Speed grid, total flow and kWh/m³ at one level (cached; pairs below min flow dropped)."""
        tab = self._oracle_tables.get(level)
        if tab is not None:
            return tab
        prm = self.params
        n = self.pumps
        grid = np.linspace(prm.min_speed_rpm, prm.max_speed_rpm, 59 if n <= 2 else 12)
        mesh = np.stack([g.ravel() for g in np.meshgrid(*([grid] * n), indexing="ij")], axis=1)
        r = mesh / prm.pump.rated_speed_rpm
        amp = np.stack([self._h0[i] * r[:, i] ** 2 for i in range(n)], axis=1)
        bk = np.array(self._b_nom)
        hs = prm.static_head_m + level
        lo = np.full(len(mesh), hs)
        hi = np.maximum(amp.max(axis=1), hs)
        for _ in range(60):  # bisection on H = hs + k (sum q_i)^2, vectorised over the grid
            h = 0.5 * (lo + hi)
            q = np.sqrt(np.maximum(amp - h[:, None], 0.0) / bk)
            g = h - hs - prm.system_k * q.sum(axis=1) ** 2
            lo, hi = np.where(g < 0, h, lo), np.where(g < 0, hi, h)
        h = 0.5 * (lo + hi)
        q = np.sqrt(np.maximum(amp - h[:, None], 0.0) / bk)
        power = sum(
            _pump_power_kw(
                q[:, i],
                r[:, i],
                amp[:, i] - self.pump_params[i].head_coeff * q[:, i] ** 2,
                self.pump_params[i],
            )
            for i in range(n)
        )
        q_tot = q.sum(axis=1)
        q_floor = np.stack([self.pump_params[i].min_flow_m3h(mesh[:, i]) for i in range(n)], axis=1)
        keep = (q >= q_floor).all(axis=1)
        tab = (mesh[keep], q_tot[keep], power[keep] / np.maximum(q_tot[keep], 1e-9))
        if len(self._oracle_tables) > 2000:
            self._oracle_tables.clear()
        self._oracle_tables[level] = tab
        return tab


def _head_drop(margin: float) -> float:
    """Fraction of head lost to cavitation at NPSH margin ratio m = NPSHa / NPSH3."""
    if margin >= 1.3:
        return 0.0
    if margin >= 0.5:
        return 0.03 * ((1.3 - margin) / 0.3) ** 2  # 3 % at m = 1, 21 % at m = 0.5
    d = 0.2133 + 1.4 * (0.5 - margin)  # breakdown: the pump chokes as NPSHa -> 0
    return d if d < 0.95 else 0.95


def _mask(active: list[_Active]) -> int:
    m = 0
    for a in active:
        m |= 1 << int(a.fault.kind)
    return m


def _upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class _Branch:
    """A pump branch whose head depends on its own NPSH margin (cavitation)."""

    a0: float  # H0 r^2
    bk: float  # total branch resistance
    k_suc: float  # suction-side resistance (line + strainer)
    npsh_bep: float  # NPSH3_bep r^2
    q_ref: float  # r q_bep
    npsh_const: float  # atmospheric + suction head - vapour head

    def head(self, q: float) -> float:
        """Head delivered to the header at flow q."""
        x = min(q / self.q_ref, 1.9) if self.q_ref > 0 else 0.0
        m = (self.npsh_const - self.k_suc * q * q) / (self.npsh_bep * (0.7 + 0.3 * x * x) + 1e-9)
        return self.a0 * (1.0 - _head_drop(m)) - self.bk * q * q

    def flow(self, h: float) -> float:
        """Flow at header head h (head(q) is decreasing in q)."""
        f0 = self.head(0.0) - h
        if f0 <= 0.0:
            return 0.0
        hi = math.sqrt(self.a0 / self.bk)
        return _falsi(lambda q: self.head(q) - h, 0.0, hi, f0, self.head(hi) - h, 1e-7)


def _falsi(f: Any, a: float, b: float, fa: float, fb: float, tol: float) -> float:
    """Root of f on [a, b] with f(a), f(b) of opposite signs (Illinois regula falsi)."""
    side = 0
    c = a
    for _ in range(100):
        c = (a * fb - b * fa) / (fb - fa)
        fc = f(c)
        if fc == 0.0 or abs(b - a) < tol:
            return c
        if (fc > 0) == (fb > 0):
            b, fb = c, fc
            if side == -1:
                fa *= 0.5
            side = -1
        else:
            a, fa = c, fc
            if side == 1:
                fb *= 0.5
            side = 1
        if abs(fc) < tol:
            return c
    return c


def _solve_header_implicit(
    amp: list[float], bk: list[float], branches: list[_Branch | None], hs: float, k: float
) -> tuple[float, list[float]]:
    """Like :func:`_solve_header` with some branches given by their implicit curve."""

    def flows(h: float) -> list[float]:
        return [
            br.flow(h) if br is not None else (math.sqrt((a - h) / b) if a > h else 0.0)
            for a, b, br in zip(amp, bk, branches, strict=True)
        ]

    def g(h: float) -> float:
        s = sum(flows(h))
        return h - hs - k * s * s

    top = max(amp)
    if top <= hs:
        return hs, [0.0] * len(amp)
    h = _falsi(g, hs, top, g(hs), g(top), 1e-8)
    return h, flows(h)


def _solve_header(
    amp: list[float], bk: list[float], hs: float, k: float, guess: float
) -> tuple[float, list[float]]:
    """Header head H with ``H = hs + k (sum q_i)^2`` and ``q_i = sqrt((amp_i - H) / bk_i)``.

    g(H) = H - hs - k S(H)^2 is strictly increasing on [hs, max amp]: safeguarded Newton.
    """
    n = len(amp)
    top = max(amp)
    if top <= hs:
        return hs, [0.0] * n
    lo, hi = hs, top
    h = min(max(guess, lo), hi)
    for _ in range(60):
        s = 0.0
        ds = 0.0
        for a, b in zip(amp, bk, strict=True):
            d = a - h
            if d > 0:
                qi = math.sqrt(d / b)
                s += qi
                ds += 0.5 / (b * qi) if qi > 1e-12 else 1e12
        g = h - hs - k * s * s
        if g > 0:
            hi = h
        else:
            lo = h
        h_new = h - g / (1.0 + 2.0 * k * s * ds)
        if abs(h_new - h) < 1e-9:
            h = h_new
            break
        if not lo <= h_new <= hi:
            h_new = 0.5 * (lo + hi)
        h = h_new
    q = [math.sqrt((a - h) / b) if a > h else 0.0 for a, b in zip(amp, bk, strict=True)]
    return h, q
