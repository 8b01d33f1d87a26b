"""Offline recording of labelled data, as fast as the plant steps (no servers).

Wide format (``fmt="wide"``): one row per sample period, columns

- ``timestamp``: ISO 8601 UTC (``2024-01-01T06:00:00Z``), the plant's epoch + simulated time
- every tag the PLC exposes to a historian: the ``measurement`` group of the register map, the
  station discrete inputs and the operator coils, quantised to the register resolution; empty
  when the sensor has no valid value (dropout)
- labels: ``pump<i>_fault_code``, ``pump<i>_fault_label``, ``pump<i>_fault_mask``,
  ``pump<i>_rul_h`` (exact; 10000 when no bearing wear is active), ``oracle_speed_rpm``,
  ``optimal_speed_rpm``, ``demand_true_m3h``

Long format (``fmt="long"``): what historians export, ``timestamp,tag,value,quality`` with one
row per *change*: a value is archived when it moves by more than its deadband since the last
archived value, when its quality changes, or when ``max_interval_s`` (15 min) has passed, so
timestamps are irregular per tag. Quality is ``GOOD``, ``BAD`` (sensor dropout, empty value) or
``UNCERTAIN`` (outside the tag's EU range, e.g. a spike). With ``include_truth`` the
``Simulation.*`` ground-truth tags (fault codes, true RUL, oracle speed, true demand) are
archived the same way.
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from .faults import Scenario, ScenarioEvent
from .physics import Plant, StationParams
from .register_map import RegisterEntry, build_register_map

__all__ = ["DEADBAND_BY_UNIT", "RecordSummary", "record", "recorded_tags"]

_NAN_RE = re.compile(r"(?<=,)-?nan(?=[,\n])")

#: Historian deadband per engineering unit (absolute); tags without a unit archive any change.
DEADBAND_BY_UNIT: dict[str, float] = {
    "rpm": 5.0,
    "m3/h": 1.0,
    "bar": 0.02,
    "A": 0.2,
    "kW": 0.2,
    "°C": 0.2,
    "mm/s": 0.05,
    "m": 0.01,
    "kWh": 1.0,
    "m3": 1.0,
    "kWh/m3": 0.002,
    "s": 60.0,
    "h": 0.05,
}


@dataclass(frozen=True)
class RecordSummary:
    path: Path
    fmt: str
    rows: int
    samples: int
    sim_hours: float
    wall_s: float
    energy_kwh: float
    volume_m3: float


def recorded_tags(pumps: int, include_truth: bool = False) -> list[RegisterEntry]:
    """Tags written to recordings, in register-map order."""
    out = [
        e
        for e in build_register_map(pumps)
        if e.group == "measurement" or e.name in ("Station.Permissive", "Station.Acknowledge")
    ]
    if include_truth:
        out += [e for e in build_register_map(pumps) if e.group == "simulation" and e.access == "R"]
    return out


class _Writer:
    """csv.writer for headers and quoted rows, raw lines for the pre-formatted wide rows."""

    def __init__(self, fh: IO[str]) -> None:
        self._fh = fh
        self._csv = csv.writer(fh, lineterminator="\n")

    def writerow(self, row: Sequence[Any]) -> None:
        self._csv.writerow(row)

    def writerows_raw(self, lines: Sequence[str]) -> None:
        self._fh.write("".join(lines))


def _iso(ts: Any, ms: bool) -> str:
    return str(ts.isoformat(timespec="milliseconds" if ms else "seconds")).replace("+00:00", "Z")


def _kind(e: RegisterEntry) -> int:
    """0: analog (rounded to the register resolution), 1: bool, 2: integer word."""
    if e.type == "bool":
        return 1
    if e.type == "bits16" or (e.type == "uint16" and e.scale == 1.0 and not e.unit):
        return 2
    return 0


def _fmt_kind(kind: int, decimals: int, v: Any) -> str:
    if kind == 1:
        return "1" if v else "0"
    if kind == 2:
        return str(int(v))
    if v != v:  # NaN: no valid value
        return ""
    return repr(round(v, decimals))


def record(
    path: str | Path | IO[str],
    *,
    hours: float,
    params: StationParams | None = None,
    seed: int = 0,
    scenario: Scenario | Iterable[ScenarioEvent] | None = None,
    fmt: str = "wide",
    sample_s: float = 1.0,
    dt_s: float | None = None,
    include_truth: bool = True,
    max_interval_s: float = 900.0,
    variant_seed: int | None = None,
) -> RecordSummary:
    """Run a plant for ``hours`` of simulated time and write a CSV (see module docstring).

    ``variant_seed`` records a perturbed plant (:class:`simulator.physics.PlantVariant`)."""
    if fmt not in ("wide", "long"):
        raise ValueError("fmt must be 'wide' or 'long'")
    if not hours > 0 or not sample_s > 0:
        raise ValueError("hours and sample_s must be positive")
    dt = dt_s if dt_s is not None else min(sample_s, 1.0)
    steps_per_sample = max(1, round(sample_s / dt))
    dt = sample_s / steps_per_sample
    plant = Plant(params, seed=seed, scenario=scenario, variant_seed=variant_seed)
    n_samples = round(hours * 3600.0 / sample_s)
    t_wall = time.perf_counter()
    close = False
    if isinstance(path, str | Path):
        out_path = Path(path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fh: IO[str] = out_path.open("w", newline="", encoding="utf-8")
        close = True
    else:
        out_path = Path(getattr(path, "name", "<stream>"))
        fh = path
    try:
        writer = _Writer(fh)
        if fmt == "wide":
            rows = _wide(plant, writer, n_samples, steps_per_sample, dt, sample_s)
        else:
            rows = _long(
                plant, writer, n_samples, steps_per_sample, dt, sample_s, include_truth, max_interval_s
            )
    finally:
        if close:
            fh.close()
    return RecordSummary(
        path=out_path,
        fmt=fmt,
        rows=rows,
        samples=n_samples + 1,
        sim_hours=plant.t / 3600.0,
        wall_s=time.perf_counter() - t_wall,
        energy_kwh=plant.energy_kwh,
        volume_m3=plant.volume_m3,
    )


def _samples(plant: Plant, n_samples: int, steps: int, dt: float) -> Iterable[Any]:
    yield plant.state
    for _ in range(n_samples):
        for _ in range(steps):
            plant.step(dt)
        yield plant.state


def _wide(plant: Plant, writer: Any, n_samples: int, steps: int, dt: float, sample_s: float) -> int:
    entries = recorded_tags(plant.pumps)
    n = plant.pumps
    header = ["timestamp"] + [e.name for e in entries]
    for i in range(1, n + 1):
        header += [f"pump{i}_fault_code", f"pump{i}_fault_label", f"pump{i}_fault_mask", f"pump{i}_rul_h"]
    header += ["oracle_speed_rpm", "optimal_speed_rpm", "demand_true_m3h"]
    writer.writerow(header)
    # one %-format per row (C speed): analog values at their register resolution, NaN -> empty
    spec = ["%s"]
    for e in entries:
        spec.append(f"%.{e.decimals}f" if _kind(e) == 0 else "%d")
    spec += ["%d,%s,%d,%.6f"] * n
    spec += ["%.2f", "%.2f", "%.3f"]
    line_fmt = ",".join(spec) + "\n"
    names = [e.name for e in entries]
    ms = not float(sample_s).is_integer()
    epoch = plant.params.epoch_datetime
    rows = 0
    buf: list[str] = []
    for st in _samples(plant, n_samples, steps, dt):
        tags = st.tags
        vals: list[Any] = [_iso(epoch + timedelta(seconds=round(st.t_s, 3)), ms)]
        vals += [tags[name] for name in names]
        for i in range(n):
            vals += [st.fault_codes[i], st.fault_labels[i], st.fault_masks[i], st.rul_h[i]]
        vals += [st.oracle_speed_rpm, st.optimal_speed_rpm, st.demand_m3h]
        line = line_fmt % tuple(vals)
        if "nan" in line:
            line = _NAN_RE.sub("", line)
        buf.append(line)
        rows += 1
        if len(buf) >= 2000:
            writer.writerows_raw(buf)
            buf.clear()
    writer.writerows_raw(buf)
    return rows


def _long(
    plant: Plant,
    writer: Any,
    n_samples: int,
    steps: int,
    dt: float,
    sample_s: float,
    include_truth: bool,
    max_interval_s: float,
) -> int:
    entries: Sequence[RegisterEntry] = recorded_tags(plant.pumps, include_truth=include_truth)
    writer.writerow(["timestamp", "tag", "value", "quality"])
    ms = not float(sample_s).is_integer()
    epoch = plant.params.epoch_datetime
    deadband = [DEADBAND_BY_UNIT.get(e.unit, 0.0) for e in entries]
    fmts = [(_kind(e), e.decimals) for e in entries]
    ranges = [e.eu_range for e in entries]
    last_v: list[Any] = [None] * len(entries)
    last_q: list[str | None] = [None] * len(entries)
    last_t = [-math.inf] * len(entries)
    rows = 0
    for st in _samples(plant, n_samples, steps, dt):
        tags = st.tags
        bad = st.bad_tags
        ts: str | None = None
        t = st.t_s
        for k, e in enumerate(entries):
            v = tags[e.name]
            if e.name in bad or (isinstance(v, float) and math.isnan(v)):
                q = "BAD"
            elif ranges[k] is not None and not ranges[k][0] <= v <= ranges[k][1]:  # type: ignore[index]
                q = "UNCERTAIN"
            else:
                q = "GOOD"
            prev = last_v[k]
            if q == last_q[k] and t - last_t[k] < max_interval_s:
                if q == "BAD":
                    continue
                if deadband[k] > 0:
                    if abs(v - prev) <= deadband[k]:
                        continue
                elif v == prev:
                    continue
            if ts is None:
                ts = _iso(epoch + timedelta(seconds=round(t, 3)), ms)
            writer.writerow([ts, e.name, "" if q == "BAD" else _fmt_kind(*fmts[k], v), q])
            rows += 1
            last_v[k], last_q[k], last_t[k] = v, q, t
    return rows
