"""A small process plant that is not the pump station, written as a user's files would be.

Two reactors (R1, R2) sampled every 3 minutes: a feed flow that wanders (the operating
variable), a temperature and a pressure that follow it, a level, an analyser quantised to
0.5 %, a text status column and a constant setpoint column. Historian exports are written with
``%d/%m/%Y %H:%M:%S`` local time (Europe/Berlin), jittered timestamps, a gap, duplicated rows;
an agent recording directory (``recording.json`` + ``wide-*.csv``, ISO UTC with ``Z``) and a long
file (``timestamp,tag,value,quality``, epoch ms) hold the same tags.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

PERIOD_S = 180.0
BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2025, 3, 1, tzinfo=BERLIN)
TAGS = ("TI101", "FI102", "PI103", "LI104", "AI105")
UNITS = {"TI101": "degC", "FI102": "m3/h", "PI103": "bar", "LI104": "%", "AI105": "%"}


def simulate(rows: int, seed: int, *, fault_at: int | None = None, noise: float = 1.0) -> dict[str, np.ndarray]:
    """Tag → values per row; with ``fault_at``, R1's temperature drifts away from the flow;
    ``noise`` scales the measurement noise."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for asset in ("R1", "R2"):
        flow = 50 + np.cumsum(rng.normal(0, 0.3, rows))
        flow = 50 + (flow - flow.mean()) * 0.5 + 5 * np.sin(np.arange(rows) / 40)
        temp = 150 + 0.8 * (flow - 50) + noise * rng.normal(0, 0.3, rows)
        if fault_at is not None and asset == "R1":
            temp[fault_at:] += np.linspace(0, 25, rows - fault_at)
        out[f"{asset}.TI101"] = temp
        out[f"{asset}.FI102"] = flow
        out[f"{asset}.PI103"] = 2 + 0.02 * (temp - 150) + noise * rng.normal(0, 0.01, rows)
        out[f"{asset}.LI104"] = 60 + 0.3 * (flow - 50) + noise * rng.normal(0, 0.5, rows)
        out[f"{asset}.AI105"] = np.round((20 + 0.1 * (temp - 150) + rng.normal(0, 0.6, rows)) * 2) / 2
        out[f"{asset}.SP"] = np.full(rows, 150.0)
    return out


def _local(t: datetime) -> str:
    return t.astimezone(BERLIN).strftime("%d/%m/%Y %H:%M:%S")


def write_historian(
    path: Path, rows: int, seed: int, *, start: datetime = START, gap: tuple[int, int] | None = None,
    duplicates: tuple[int, ...] = (), jitter_s: float = 20.0, fault_at: int | None = None,
) -> list[datetime]:
    """A wide historian export (local time, jittered, with a gap, duplicates and a status text)."""
    rng = np.random.default_rng(seed + 1000)
    data = simulate(rows, seed, fault_at=fault_at)
    cols = list(data)
    lines = ["Time," + ",".join(cols) + ",R1.Status"]
    stamps = []
    for i in range(rows):
        if gap is not None and gap[0] <= i < gap[1]:
            continue
        t = start + timedelta(seconds=i * PERIOD_S + float(rng.uniform(-jitter_s, jitter_s)))
        t = t.replace(microsecond=0)
        stamps.append(t)
        row = _local(t) + "," + ",".join(f"{data[c][i]:.4f}" for c in cols) + ",RUN"
        lines.append(row)
        if i in duplicates:  # a corrected row written again with the same timestamp
            lines.append(row)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return stamps


def write_long(path: Path, rows: int, seed: int, *, start: datetime = START, noise: float = 1.0) -> None:
    """The same tags in long form (epoch milliseconds, one row per sample, quality)."""
    data = simulate(rows, seed, noise=noise)
    lines = ["timestamp,tag,value,quality"]
    for i in range(rows):
        ms = int((start + timedelta(seconds=i * PERIOD_S)).timestamp() * 1000)
        for c, v in data.items():
            lines.append(f"{ms},{c},{v[i]:.4f},{'BAD' if i == 5 and c == 'R1.TI101' else 'GOOD'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_recording(
    d: Path, rows: int, seed: int, *, start: datetime = START, fault_at: int | None = None, noise: float = 1.0
) -> None:
    """An agent recording directory: recording.json and two rotating wide files (ISO UTC, Z)."""
    d.mkdir(parents=True, exist_ok=True)
    data = simulate(rows, seed, fault_at=fault_at, noise=noise)
    cols = list(data)
    half = rows // 2
    files = []
    for part, (a, b) in enumerate(((0, half), (half, rows))):
        t0 = (start + timedelta(seconds=a * PERIOD_S)).astimezone(UTC)
        name = f"wide-{t0.strftime('%Y%m%dT%H%M%SZ')}.csv"
        files.append(name)
        lines = ["timestamp," + ",".join(cols)]
        for i in range(a, b):
            t = (start + timedelta(seconds=i * PERIOD_S)).astimezone(UTC)
            stamp = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
            cells = ["" if (part == 1 and i == b - 3 and c == "R2.LI104") else f"{data[c][i]:.4f}" for c in cols]
            lines.append(stamp + "," + ",".join(cells))
        (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = {
        "tags": {c: {"unit": UNITS.get(c.split(".")[1], ""), "good": rows, "uncertain": 0, "bad": 0} for c in cols},
        "period_s": PERIOD_S,
        "start": start.astimezone(UTC).isoformat(),
        "end": (start + timedelta(seconds=rows * PERIOD_S)).astimezone(UTC).isoformat(),
        "gaps": [],
        "agent_version": "test",
        "files": files,
    }
    (d / "recording.json").write_text(json.dumps(meta), encoding="utf-8")


def write_plant(root: Path) -> None:
    """Every file configs/export-example.yaml names, under ``root`` (its working directory)."""
    plant = root / "data" / "plant"
    plant.mkdir(parents=True, exist_ok=True)
    day = int(86400 / PERIOD_S)
    write_historian(plant / "historian-2025-03.csv", 3 * day, seed=1, gap=(200, 240), duplicates=(10, 11, 300))
    write_historian(
        plant / "historian-2025-04.csv", 2 * day, seed=2, start=START + timedelta(days=31), duplicates=(50,)
    )
    write_long(plant / "normal-run.csv", 2 * day, seed=3, start=START + timedelta(days=60))
    write_recording(plant / "recording-2025-05", day, seed=4, start=START + timedelta(days=70), fault_at=day // 2)
    fault = START + timedelta(days=70, seconds=(day // 2) * PERIOD_S)
    (plant / "bad-events.csv").write_text(
        f"start,end,asset,class\n{fault.isoformat()},{(fault + timedelta(hours=1)).isoformat()},R9,fouling\n",
        encoding="utf-8",
    )
    (plant / "events.csv").write_text(
        "start,end,asset,class\n"
        f"{fault.isoformat()},{(fault + timedelta(hours=12)).isoformat()},R1,fouling\n",
        encoding="utf-8",
    )
