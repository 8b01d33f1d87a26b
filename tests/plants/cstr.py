"""A jacketed continuous stirred-tank reactor: a test plant that is not the pump station.

An exothermic first-order reaction A → B in a 12 m³ stirred tank. The feed flow follows a
production target (the operating variable, changed by the planners every day or so); a PI
controller holds the level with the outlet valve, another the reactor temperature with the
coolant valve of the jacket. The coolant loop is cooled by a plate heat exchanger on cooling
water. Sampled every 180 s (plant time), 17 measurements:

=============  ======  ==============================================
tag            unit    what
=============  ======  ==============================================
R1.FIC101.SP   m3/h    production target (operating variable)
R1.FI101       m3/h    feed flow
R1.TI101       degC    feed temperature
R1.AI101       kmol/m3 feed concentration (analyser)
R1.TI201       degC    reactor temperature (controlled)
R1.LI201       %       reactor level (controlled)
R1.AI201       kmol/m3 product concentration of A (analyser)
R1.FI202       m3/h    product flow
R1.XV201       %       outlet valve position
R1.FI301       m3/h    coolant flow
R1.XV301       %       coolant valve position (positioner feedback)
R1.TI301       degC    coolant supply temperature (after the exchanger)
R1.TI302       degC    coolant return temperature (jacket outlet)
R1.TI401       degC    cooling water inlet temperature
R1.TI402       degC    cooling water outlet temperature
R1.PI201       bar     reactor pressure (gauge)
R1.JI201       kW      agitator power
=============  ======  ==============================================

Slow disturbances: feed temperature and cooling water follow the day (and a random walk), the
feed concentration wanders (Ornstein-Uhlenbeck), the exchanger fouls slowly. Labelled faults
(code: class, see :data:`FAULTS`) with onset and end: a drifting reactor thermometer, a stuck
product analyser, feed-flow dropouts, accelerated exchanger fouling, coolant valve stiction and
an inhibitor in the feed. Seeded; ten days take well under a second (:func:`simulate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from tests.plants.formats import Episode, PlantRun, TagInfo

__all__ = ["ASSET", "FAULTS", "PERIOD_S", "TAGS", "FaultSpec", "random_schedule", "simulate"]

PERIOD_S = 180.0
ASSET = "r1"
_SUB = 6  # Euler sub-steps per sample (30 s): the jacket's time constant is minutes

TAGS: tuple[TagInfo, ...] = (
    TagInfo("R1.FIC101.SP", "m3/h", 0.0, 8.0, "production target", operating=True),
    TagInfo("R1.FI101", "m3/h", 0.0, 8.0, "feed flow"),
    TagInfo("R1.TI101", "degC", 0.0, 120.0, "feed temperature"),
    TagInfo("R1.AI101", "kmol/m3", 0.0, 4.0, "feed concentration"),
    TagInfo("R1.TI201", "degC", 0.0, 150.0, "reactor temperature"),
    TagInfo("R1.LI201", "%", 0.0, 100.0, "reactor level"),
    TagInfo("R1.AI201", "kmol/m3", 0.0, 4.0, "product concentration of A"),
    TagInfo("R1.FI202", "m3/h", 0.0, 10.0, "product flow"),
    TagInfo("R1.XV201", "%", 0.0, 100.0, "outlet valve position"),
    TagInfo("R1.FI301", "m3/h", 0.0, 40.0, "coolant flow"),
    TagInfo("R1.XV301", "%", 0.0, 100.0, "coolant valve position"),
    TagInfo("R1.TI301", "degC", 0.0, 100.0, "coolant supply temperature"),
    TagInfo("R1.TI302", "degC", 0.0, 100.0, "coolant return temperature"),
    TagInfo("R1.TI401", "degC", -5.0, 50.0, "cooling water inlet temperature"),
    TagInfo("R1.TI402", "degC", -5.0, 80.0, "cooling water outlet temperature"),
    TagInfo("R1.PI201", "bar", 0.0, 6.0, "reactor pressure"),
    TagInfo("R1.JI201", "kW", 0.0, 20.0, "agitator power"),
)

_NOISE = {
    "R1.FIC101.SP": 0.0,
    "R1.FI101": 0.03,
    "R1.TI101": 0.15,
    "R1.AI101": 0.01,
    "R1.TI201": 0.08,
    "R1.LI201": 0.3,
    "R1.AI201": 0.006,
    "R1.FI202": 0.04,
    "R1.XV201": 0.2,
    "R1.FI301": 0.15,
    "R1.XV301": 0.2,
    "R1.TI301": 0.08,
    "R1.TI302": 0.08,
    "R1.TI401": 0.08,
    "R1.TI402": 0.08,
    "R1.PI201": 0.01,
    "R1.JI201": 0.05,
}


@dataclass(frozen=True)
class FaultSpec:
    """A fault class of this plant: its code, name and the tag a sensor fault affects."""

    code: int
    name: str
    tag: str | None = None


FAULTS: tuple[FaultSpec, ...] = (
    FaultSpec(1, "thermometer_drift", "R1.TI201"),
    FaultSpec(2, "analyser_stuck", "R1.AI201"),
    FaultSpec(3, "feed_flow_dropout", "R1.FI101"),
    FaultSpec(4, "exchanger_fouling"),
    FaultSpec(5, "coolant_valve_stiction", "R1.XV301"),
    FaultSpec(6, "feed_inhibitor"),
)
_BY_NAME = {f.name: f for f in FAULTS}

# process constants (hours, m3, kJ, kmol, degC)
_VMAX = 12.0
_K_REF, _T_REF, _EA_R = 1.0, 80.0, 8000.0  # 1/h at 80 degC; activation energy / R (K)
_DH = 2.0e5  # kJ/kmol released
_RHOCP = 4000.0  # kJ/(m3 K), reaction mass
_RHOCP_W = 4180.0  # coolant and cooling water
_UA = 2.6e4  # kJ/(h K), jacket
_VJ = 1.2  # m3, jacket
_FJ_MAX = 36.0  # m3/h, coolant at 100 % valve
_FCW = 30.0  # m3/h, cooling water through the exchanger
_EFF0 = 0.62  # exchanger effectiveness, clean
_CV_OUT = 9.6  # outlet valve: F = Cv * x * sqrt(level)


def random_schedule(seed: int, days: float, *, faults: Sequence[str] | None = None) -> list[Episode]:
    """Every fault class (or ``faults``) once, in random order, in its own slot of the run,
    with quiet time between (the first day stays normal)."""
    rng = np.random.default_rng(seed + 7919)
    names = list(faults) if faults is not None else [f.name for f in FAULTS]
    rng.shuffle(names)
    total = days * 86400.0
    first = min(86400.0, 0.25 * total)
    slot = (total - first) / max(1, len(names))
    out = []
    for i, name in enumerate(names):
        start = first + slot * i + rng.uniform(0.05, 0.25) * slot
        dur = slot * rng.uniform(0.45, 0.6)
        f = _BY_NAME[name]
        out.append(Episode(name, f.code, start, start + dur, ASSET, f.tag, float(rng.uniform(0.8, 1.2))))
    return sorted(out, key=lambda e: e.start_s)


def _ou(rng: np.random.Generator, n: int, tau: float, sd: float) -> np.ndarray:
    """An Ornstein-Uhlenbeck path on ``n`` samples (``tau`` in samples, stationary ``sd``)."""
    a = math.exp(-1.0 / tau)
    e = rng.normal(0.0, sd * math.sqrt(1 - a * a), n)
    out = np.empty(n)
    x = rng.normal(0.0, sd)
    for i in range(n):
        x = a * x + e[i]
        out[i] = x
    return out


def _targets(rng: np.random.Generator, n: int) -> np.ndarray:
    """The production target: held for 8-36 h, then moved to another of the plant's rates."""
    levels = np.array([3.0, 3.5, 4.0, 4.5, 5.0])
    out = np.empty(n)
    i, cur = 0, 4.0
    while i < n:
        hold = int(rng.uniform(8, 36) * 3600 / PERIOD_S)
        out[i : i + hold] = cur
        i += hold
        cur = float(rng.choice(levels[levels != cur]))
    return out


def simulate(
    days: float = 4.0,
    *,
    seed: int = 0,
    episodes: Sequence[Episode] | str = "random",
    start: datetime | None = None,
    name: str = "cstr",
) -> PlantRun:
    """Run the reactor for ``days`` (plant time) with a seeded schedule (``"random"``: every fault
    once, ``"normal"``: none, or explicit :class:`Episode` s). Returns measurements with
    noise, the fault code per sample and the episodes."""
    rng = np.random.default_rng(seed)
    n = round(days * 86400.0 / PERIOD_S)
    if isinstance(episodes, str):
        eps = random_schedule(seed, days) if episodes == "random" else []
    else:
        eps = list(episodes)
    t_h = np.arange(n) * PERIOD_S / 3600.0
    day = 2 * math.pi * t_h / 24.0
    phase = rng.uniform(0, 2 * math.pi)
    sp_f = _targets(rng, n)
    t_feed = 60.0 + 2.0 * np.sin(day + phase) + _ou(rng, n, 240, 0.8)
    ca0 = 2.0 + _ou(rng, n, 200, 0.05)
    t_cw = 18.0 + 3.0 * np.sin(day + phase - 1.0) + _ou(rng, n, 300, 0.6)
    fouling = np.clip(0.02 * t_h / 24.0 + _ou(rng, n, 500, 0.01), 0.0, None)  # slow, normal
    inhibit = np.ones(n)
    drift = np.zeros(n)
    label = np.zeros(n, np.int64)
    stuck = np.zeros(n, bool)
    dropout = np.zeros(n, bool)
    stiction = np.zeros(n)
    for e in eps:
        a, b = int(e.start_s // PERIOD_S), min(n, math.ceil(e.end_s / PERIOD_S))
        label[a:b] = e.code
        ramp = (t_h[a:b] - t_h[a]) / max(1e-9, t_h[b - 1] - t_h[a] if b - 1 > a else 1.0)
        if e.kind == "thermometer_drift":
            drift[a:b] = 4.0 * e.severity * ramp
        elif e.kind == "analyser_stuck":
            stuck[a:b] = True
        elif e.kind == "feed_flow_dropout":
            # its own generator: a run with and without the fault share every other random draw
            dropout[a:b] = np.random.default_rng([seed, e.code, a]).random(b - a) < 0.35
        elif e.kind == "exchanger_fouling":
            fouling[a:b] += 0.45 * e.severity * ramp  # cleaned at the episode's end
        elif e.kind == "coolant_valve_stiction":
            stiction[a:b] = 4.0 * e.severity
        elif e.kind == "feed_inhibitor":
            inhibit[a:b] = 1.0 - 0.35 * e.severity * np.minimum(1.0, 4 * ramp)

    out = {t.name: np.empty(n) for t in TAGS}
    # state: feed flow, volume, CA, T, jacket T, valve positions, integrators
    f, vol, ca, temp, tj = 4.0, 8.4, 0.64, 80.0, 45.0
    xv_c, xv_o = 45.0, 50.0
    i_t, i_l = 45.0, 50.0
    dt = PERIOD_S / _SUB / 3600.0
    proc = rng.normal(0.0, 1.0, (n, 2))
    for k in range(n):
        eff = _EFF0 * max(0.15, 1.0 - fouling[k])
        kk = _K_REF * inhibit[k]
        for _ in range(_SUB):
            f += (sp_f[k] - f) * dt / 0.2
            level = 100.0 * vol / _VMAX
            e_l = level - 70.0
            i_l = min(100.0, max(0.0, i_l + 4.0 * e_l * dt / 0.5))
            u_o = min(100.0, max(0.0, i_l + 4.0 * e_l))
            xv_o += (u_o - xv_o) * min(1.0, dt / 0.01)
            f_out = _CV_OUT * xv_o / 100.0 * math.sqrt(max(level, 0.0) / 100.0)
            e_t = temp + drift[k] - 80.0
            i_t = min(100.0, max(0.0, i_t + 6.0 * e_t * dt / 0.4))
            u_c = min(100.0, max(0.0, i_t + 6.0 * e_t))
            band = stiction[k]
            if band == 0.0 or abs(u_c - xv_c) > band:
                xv_c += (u_c - xv_c) * min(1.0, dt / 0.01)
            fj = max(0.3, _FJ_MAX * xv_c / 100.0)
            tj_in = tj - eff * (tj - t_cw[k])
            r = kk * math.exp(_EA_R * (1.0 / (_T_REF + 273.15) - 1.0 / (temp + 273.15))) * ca
            q_j = _UA * (temp - tj)
            d_ca = f / vol * (ca0[k] - ca) - r
            d_t = f / vol * (t_feed[k] - temp) + (_DH * r * vol - q_j) / (_RHOCP * vol)
            d_tj = fj / _VJ * (tj_in - tj) + q_j / (_RHOCP_W * _VJ)
            vol = min(_VMAX, max(0.5, vol + (f - f_out) * dt))
            ca = max(0.0, ca + d_ca * dt)
            temp += d_t * dt
            tj += d_tj * dt
        level = 100.0 * vol / _VMAX
        out["R1.FIC101.SP"][k] = sp_f[k]
        out["R1.FI101"][k] = f
        out["R1.TI101"][k] = t_feed[k]
        out["R1.AI101"][k] = ca0[k]
        out["R1.TI201"][k] = temp + drift[k]
        out["R1.LI201"][k] = level
        out["R1.AI201"][k] = ca
        out["R1.FI202"][k] = f_out
        out["R1.XV201"][k] = xv_o
        out["R1.FI301"][k] = fj
        out["R1.XV301"][k] = xv_c
        out["R1.TI301"][k] = tj_in
        out["R1.TI302"][k] = tj
        out["R1.TI401"][k] = t_cw[k]
        out["R1.TI402"][k] = t_cw[k] + fj / _FCW * (tj - tj_in)
        out["R1.PI201"][k] = 1.2 + 0.025 * (temp - 80.0) + 0.01 * (level - 70.0) + 0.01 * proc[k, 0]
        out["R1.JI201"][k] = 7.5 * (0.6 + 0.4 * level / 70.0) + 0.05 * proc[k, 1]
    for t in TAGS:
        sd = _NOISE[t.name]
        if sd:
            out[t.name] = out[t.name] + rng.normal(0.0, sd, n)
    for v in ("R1.XV201", "R1.XV301"):
        np.clip(out[v], 0.0, 100.0, out=out[v])  # a positioner reports 0-100 %
    # sensor faults act on the measurement only (the thermometer's drift also fools its loop)
    if stuck.any():
        ai = out["R1.AI201"]
        for a in np.nonzero(stuck & ~np.r_[False, stuck[:-1]])[0]:
            b = a
            while b < n and stuck[b]:
                b += 1
            ai[a:b] = ai[a - 1] if a > 0 else ai[a]
    out["R1.FI101"][dropout] = np.nan
    modes = ["RUN" if abs(sp_f[k] - out["R1.FI101"][k]) < 0.3 else "RAMP" for k in range(n)]
    return PlantRun(
        name=name,
        start=start or datetime(2026, 11, 2, tzinfo=UTC),
        period_s=PERIOD_S,
        tags=TAGS,
        values=out,
        label=label,
        classes={0: "normal", **{f.code: f.name for f in FAULTS}},
        episodes=tuple(eps),
        asset=ASSET,
        strings={"Mode": modes},
    )
