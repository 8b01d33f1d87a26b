"""A process model nobody here wrote: NASA's ``progpy`` centrifugal pump, wearing out.

``progpy.models.CentrifugalPumpBase`` (Daigle & Goebel, "Model-based prognostics with
concurrent damage progression processes", IEEE TSMC 2013) integrates the pump's speed, flow,
bearing and oil temperatures from its electrical supply and pressures, with three damage
processes: impeller wear (``wA``: the impeller area shrinks with flow), thrust and radial
bearing wear (``wThrust``/``wRadial``: friction grows with speed). Its events
(``ImpellerWearFailure``, ``ThrustBearingOverheat``, ``RadialBearingOverheat``,
``PumpOilOverheat``) mark the end of life.

This module only drives it: a variable-speed drive moves the supply (voltage and synchronous
speed together) between operating points, the discharge and suction pressures wander, the
ambient temperature follows the day; one wear process at a time is switched on at its onset
(:data:`WEAR`), runs until progpy's threshold is met, then the pump is replaced. Labels are
the wear class during the episode; the RUL target is the time to that failure (NaN outside
an episode). Measurements get sensor noise and are sampled every ``period_s``; the physics steps
at 2 s (the model's electrical and hydraulic dynamics diverge at 5 s).

Tags (``P101.*``): speed command (operating variable), speed, flow, discharge and suction
pressure, supply voltage, thrust/radial bearing and oil temperatures, ambient temperature.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from tests.plants.formats import Episode, PlantRun, TagInfo

__all__ = ["ASSET", "STEP_S", "TAGS", "WEAR", "simulate"]

ASSET = "p101"
STEP_S = 2.0
_K = 273.15
_W_NOM = 376.991118431  # rad/s at 60 Hz
_V_NOM = 471.2389

TAGS: tuple[TagInfo, ...] = (
    TagInfo("P101.SC", "%", 0.0, 110.0, "speed command", operating=True),
    TagInfo("P101.SI", "rpm", 0.0, 4000.0, "pump speed"),
    TagInfo("P101.FI", "m3/h", 0.0, 800.0, "discharge flow"),
    TagInfo("P101.PI_D", "bar", 0.0, 20.0, "discharge pressure"),
    TagInfo("P101.PI_S", "bar", -1.0, 6.0, "suction pressure"),
    TagInfo("P101.EI", "V", 0.0, 600.0, "supply voltage"),
    TagInfo("P101.TI_THR", "degC", -20.0, 150.0, "thrust bearing temperature"),
    TagInfo("P101.TI_RAD", "degC", -20.0, 150.0, "radial bearing temperature"),
    TagInfo("P101.TI_OIL", "degC", -20.0, 150.0, "oil temperature"),
    TagInfo("P101.TI_AMB", "degC", -30.0, 50.0, "ambient temperature"),
)
_NOISE = {
    "P101.SC": 0.0,
    "P101.SI": 3.0,
    "P101.FI": 2.0,
    "P101.PI_D": 0.03,
    "P101.PI_S": 0.02,
    "P101.EI": 0.8,
    "P101.TI_THR": 0.15,
    "P101.TI_RAD": 0.15,
    "P101.TI_OIL": 0.1,
    "P101.TI_AMB": 0.2,
}

# wear class → (code, progpy parameter, nominal rate, the event that ends it)
WEAR: dict[str, tuple[int, str, float, str]] = {
    "impeller_wear": (1, "wA", 0.03, "ImpellerWearFailure"),
    "thrust_bearing_wear": (2, "wThrust", 7e-10, "ThrustBearingOverheat"),
    "radial_bearing_wear": (3, "wRadial", 9e-10, "RadialBearingOverheat"),
}


def _model() -> object:
    from progpy.models import CentrifugalPumpBase

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CentrifugalPumpBase(process_noise=0, measurement_noise=0)


def simulate(
    hours: float = 12.0,
    *,
    seed: int = 0,
    period_s: float = 10.0,
    wear: Sequence[str] | str = "random",
    start: datetime | None = None,
    name: str = "progpy-pump",
) -> PlantRun:
    """Run the pump for ``hours`` with the wear classes of ``wear`` (``"random"``: every class
    once in random order, ``"normal"``: none, or a list), each starting after a quiet spell and
    ending at progpy's failure threshold (the pump is then replaced). Seeded."""
    rng = np.random.default_rng(seed)
    m = _model()
    kinds = list(WEAR) if wear == "random" else [] if wear == "normal" else list(wear)
    if wear == "random":
        rng.shuffle(kinds)
    per = max(1, round(period_s / STEP_S))
    n = round(hours * 3600.0 / period_s)
    horizon = int(n * 1.6)  # simulated past the end, so a cut episode still knows its failure time
    t_h = np.arange(horizon) * period_s / 3600.0
    levels = np.array([0.88, 0.94, 1.0])
    speed = np.empty(horizon)
    i = 0
    cur = 1.0
    while i < horizon:
        hold = int(rng.uniform(1.0, 3.0) * 3600 / period_s)
        speed[i : i + hold] = cur
        i += hold
        cur = float(rng.choice(levels[levels != cur]))
    p_d = 928654.0 * (1.0 + 0.01 * _walk(rng, horizon, 600))
    p_s = 239179.0 * (1.0 + 0.02 * _walk(rng, horizon, 600))
    t_amb = (
        290.0 + 4.0 * np.sin(2 * math.pi * t_h / 24.0 + rng.uniform(0, 6.28)) + 0.5 * _walk(rng, horizon, 900)
    )

    def inputs(k: int) -> object:
        s = speed[k]
        return m.InputContainer(  # type: ignore[attr-defined]
            {"Tamb": t_amb[k], "V": _V_NOM * s, "pdisch": p_d[k], "psuc": p_s[k], "wsync": _W_NOM * s}
        )

    def start_up(k: int) -> object:
        state = m.initialize(inputs(k))  # type: ignore[attr-defined]
        state["w"] = 0.97 * _W_NOM * speed[k]  # at synchronous speed the motor's slip is 0 (1/0)
        return state

    x = start_up(0)
    for p in ("wA", "wThrust", "wRadial"):
        m.parameters[p] = 0.0  # type: ignore[attr-defined]
    raw = np.empty((horizon, 7))
    label = np.zeros(horizon, np.int64)
    episodes: list[Episode] = []
    queue = list(kinds)
    quiet = int(rng.uniform(1.5, 2.5) * 3600 / period_s)
    active: tuple[str, int, float] | None = None  # (kind, onset sample, severity)
    next_onset = quiet
    for k in range(horizon):
        if active is None and queue and k >= next_onset:
            kind = queue.pop(0)
            sev = float(rng.uniform(0.75, 1.3))
            m.parameters[WEAR[kind][1]] = WEAR[kind][2] * sev  # type: ignore[attr-defined]
            active = (kind, k, sev)
        u = inputs(k)
        for _ in range(per):
            x = m.next_state(x, u, STEP_S)  # type: ignore[attr-defined]
        z = m.output(x)  # type: ignore[attr-defined]
        raw[k] = [float(z["w"]), float(z["Qout"]), float(z["Tt"]), float(z["Tr"]), float(z["To"]),
                  p_d[k], p_s[k]]  # fmt: skip
        if active is not None:
            kind, onset, sev = active
            label[k] = WEAR[kind][0]
            if m.threshold_met(x)[WEAR[kind][3]]:  # type: ignore[attr-defined]
                episodes.append(
                    Episode(kind, WEAR[kind][0], onset * period_s, (k + 1) * period_s, ASSET, None, sev)
                )
                m.parameters[WEAR[kind][1]] = 0.0  # type: ignore[attr-defined]
                x = start_up(k)  # replaced
                active = None
                next_onset = k + int(rng.uniform(0.5, 1.0) * 3600 / period_s)
        if k >= n and active is None:
            break
    rul = np.full(n, np.nan)
    kept: list[Episode] = []
    for e in episodes:
        a, b = int(e.start_s / period_s), int(e.end_s / period_s)
        if a >= n:
            continue
        idx = np.arange(a, min(b, n))
        rul[idx] = (b - idx) * period_s / 3600.0
        kept.append(Episode(e.kind, e.code, e.start_s, min(e.end_s, n * period_s), e.asset, None, e.severity))
    if active is not None and active[1] < n:  # never failed, even past the end: no RUL known
        kind, onset, sev = active
        kept.append(Episode(kind, WEAR[kind][0], onset * period_s, n * period_s, ASSET, None, sev))
    raw, label, speed = raw[:n], label[:n], speed[:n]
    values = {
        "P101.SC": 100.0 * speed,
        "P101.SI": raw[:, 0] * 60.0 / (2 * math.pi),
        "P101.FI": raw[:, 1] * 3600.0,
        "P101.PI_D": raw[:, 5] / 1e5,
        "P101.PI_S": raw[:, 6] / 1e5,
        "P101.EI": _V_NOM * speed,
        "P101.TI_THR": raw[:, 2] - _K,
        "P101.TI_RAD": raw[:, 3] - _K,
        "P101.TI_OIL": raw[:, 4] - _K,
        "P101.TI_AMB": t_amb[:n] - _K,
    }
    for tag, sd in _NOISE.items():
        if sd:
            values[tag] = values[tag] + rng.normal(0.0, sd, n)
    values["P101.FI"] = np.maximum(values["P101.FI"], 0.0)  # a flow meter's low-flow cut-off
    return PlantRun(
        name=name,
        start=start or datetime(2026, 11, 2, tzinfo=UTC),
        period_s=period_s,
        tags=TAGS,
        values=values,
        label=label,
        classes={0: "normal", **{c: k for k, (c, *_r) in WEAR.items()}},
        episodes=tuple(kept),
        asset=ASSET,
        rul_h=rul,
    )


def _walk(rng: np.random.Generator, n: int, tau: float) -> np.ndarray:
    """A unit-variance Ornstein-Uhlenbeck path (``tau`` in samples)."""
    a = math.exp(-1.0 / tau)
    e = rng.normal(0.0, math.sqrt(1 - a * a), n)
    out = np.empty(n)
    v = 0.0
    for i in range(n):
        v = a * v + e[i]
        out[i] = v
    return out
