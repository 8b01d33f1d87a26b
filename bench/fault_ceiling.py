"""How much of a sensor fault a 60 s window can show at all: the ceiling of any window classifier.

The simulator's sensor faults change the measurement only, never the physics or the random
stream (simulator/faults.py), so the day of a seed recorded once with its fault schedule and once
with the sensor faults left out differs exactly by what the faults did to the tags. Per window
the fault kind's label covers (the bundle's window and stride; windows the agent would skip, a gap
or a value outside the sensor range, left out as the agent leaves them out):

- ``sensor_spike``: does the window hold any spiked sample? A window without one is a normal
  window with a spike label: no model over that window can tell it from normal operation.
- ``sensor_drift``: the drifted tag's offset at the window's last row in units of that tag's noise
  (the median within-window std of normal windows): the early windows of a drift are labelled but
  below the noise.

    python -m bench.fault_ceiling --seeds 101,102 [--bundle models/fault-mlp] [--out ceiling.json]

With ``--bundle`` the classifier's recall of each kind is split by the same measure (spike
windows with and without a spike; drift windows by offset), as the agent runs the bundle. Judge
on seeds the chain reads as test (101, 102), never to choose a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from agent.modelstore.bundle import load_bundle  # noqa: E402
from agent.modelstore.manifest import load_manifest  # noqa: E402
from agent.pipeline.features import sliding_windows, window_to_input  # noqa: E402
from bench.teachers import agent_rows  # noqa: E402
from export.data import load_columns  # noqa: E402

__all__ = ["ceiling", "main"]

STUCK, DRIFT, SPIKE = 6, 7, 8  # the recordings' fault codes (configs/export-teachers.yaml classes)
LABEL = "pump{n}_fault_code"


def _record_pair(seed: int, hours: float, pumps: int, out: Path) -> tuple[Path, Path]:
    """The day of ``seed`` with its random fault schedule, and the same day without sensor faults."""
    from export.pipeline import random_fault_schedule
    from simulator.physics import StationParams
    from simulator.recorder import record

    events = random_fault_schedule(seed, hours, pumps)
    clean = [e for e in events if not (e.fault is not None and e.fault.kind.is_sensor)]
    clean = [
        e for e in clean if not (e.clear is not None and e.clear[1] is not None and e.clear[1].is_sensor)
    ]
    paths = (out / f"faulty-s{seed}.wide.csv", out / f"clean-s{seed}.wide.csv")
    out.mkdir(parents=True, exist_ok=True)
    for path, ev in zip(paths, (events, clean), strict=True):
        if not path.exists():
            record(
                path,
                hours=hours,
                seed=seed,
                scenario=ev,
                fmt="wide",
                sample_s=1.0,
                params=StationParams(pumps=pumps),
            )
    return paths


def ceiling(bundle_dir: Path, pairs: Sequence[tuple[Path, Path]], *, run_model: bool) -> dict[str, Any]:
    """Per fault kind: the share of labelled windows a window can show, and the bundle's recall."""
    man = load_manifest(bundle_dir)
    cols = json.loads(man.provenance["columns"])
    lo = np.array([r.range[0] for r in man.inputs])
    hi = np.array([r.range[1] for r in man.inputs])
    w = man.window
    model = load_bundle(bundle_dir, allow_unsigned=True) if run_model else None
    names = list(man.outputs[0].labels or ())
    spike_has, spike_ok, drift_z, drift_ok, drift_age = [], [], [], [], []
    stuck_moves, stuck_ok, stuck_tag, stuck_pred = [], [], [], []
    normal_std: list[np.ndarray] = []
    for faulty, clean in pairs:
        for n, asset in enumerate(cols, start=1):
            roles = [cols[asset][r.role] for r in man.inputs]
            (a,) = load_columns(faulty, [*roles, LABEL.format(n=n)], w.sample_period_s)
            (b,) = load_columns(clean, roles, w.sample_period_s)
            va = sliding_windows(a, w.length, w.stride)
            vb = sliding_windows(b, w.length, w.stride)
            raw = va[:, :, : len(roles)]
            ok = np.all(np.isfinite(raw) & (raw >= lo) & (raw <= hi), axis=(1, 2))
            code = va[:, -1, -1]
            diff = np.abs(np.nan_to_num(raw - vb, nan=0.0))
            normal = ok & (code == 0)
            normal_std.append(raw[normal].std(axis=1))
            pred = None
            if model is not None:  # the model's input as the agent holds it (ewma roles smoothed)
                held = sliding_windows(agent_rows(a, man), w.length, w.stride)
                x = window_to_input(held[ok, :, : len(roles)], man)
                p = np.concatenate([model.run({"x": x[i : i + 4096]})[0] for i in range(0, len(x), 4096)])
                pred = np.full(len(raw), -1)
                pred[ok] = p.argmax(1)
            m = ok & (code == STUCK)
            # frozen where the true reading moved: a window whose true reading was itself constant
            # (a steady quantised temperature, a stopped pump's flow) is a normal-looking window
            frozen = np.ptp(raw[m], axis=1) == 0
            moved = np.ptp(np.nan_to_num(vb[m]), axis=1) > 0
            stuck_moves.append(np.any(frozen & moved, axis=1))
            stuck_tag.append(np.argmax(frozen & moved, axis=1))  # the frozen role (0: none)
            stuck_ok.append(
                pred[m] == names.index("sensor_stuck") if pred is not None else np.zeros(int(m.sum()), bool)
            )
            stuck_pred.append(pred[m] if pred is not None else np.full(int(m.sum()), -1))
            # onset row of every run of a code: the age of a drift window
            lab = a[:, -1]
            for kind, has, okl in ((SPIKE, spike_has, spike_ok), (DRIFT, None, drift_ok)):
                m = ok & (code == kind)
                if kind == SPIKE:
                    has.append(diff[m].max(axis=(1, 2)) > 0)
                else:
                    tag = np.argmax(diff[m][:, -1, :], axis=1)
                    drift_z.append((diff[m][:, -1, :].max(axis=1), tag))
                    ends = w.length - 1 + w.stride * np.flatnonzero(m)
                    onset = np.array([_onset(lab, e) for e in ends])
                    drift_age.append((ends - onset) * w.sample_period_s / 60.0)
                okl.append(
                    pred[m] == names.index("sensor_spike" if kind == SPIKE else "sensor_drift")
                    if pred is not None
                    else np.zeros(int(m.sum()), bool)
                )
    noise = np.median(np.concatenate(normal_std), axis=0)  # per role, engineering units
    out: dict[str, Any] = {"bundle": str(bundle_dir), "files": [str(p) for pr in pairs for p in pr]}
    moves, hit = np.concatenate(stuck_moves), np.concatenate(stuck_ok)
    frozen_tag = np.concatenate(stuck_tag)
    called = np.concatenate(stuck_pred)
    out["sensor_stuck"] = {
        "windows": len(moves),
        "share_frozen_where_the_reading_moved": float(moves.mean()),
        **_recall(
            hit, {"": np.ones(len(hit), bool), "_where_moved": moves, "_steady_anyway": ~moves}, run_model
        ),
        "by_tag": {
            man.inputs[k].role: {
                **_recall(hit, {"": moves & (frozen_tag == k)}, run_model),
                # what the classifier called the frozen windows of this tag (every class it chose)
                "called": _called(called[moves & (frozen_tag == k)], names) if run_model else None,
            }
            for k in np.unique(frozen_tag[moves])
        },
    }
    has, hit = np.concatenate(spike_has), np.concatenate(spike_ok)
    out["sensor_spike"] = {
        "windows": len(has),
        "share_with_a_spike": float(has.mean()),
        **_recall(hit, {"": np.ones(len(hit), bool), "_with_a_spike": has, "_without": ~has}, run_model),
    }
    off = np.concatenate([d[0] for d in drift_z])
    tag = np.concatenate([d[1] for d in drift_z])
    z = off / noise[tag]
    age = np.concatenate(drift_age)
    hit = np.concatenate(drift_ok)
    bands = [(0, 1), (1, 3), (3, 10), (10, np.inf)]
    ages = [(0, 5), (5, 15), (15, 30), (30, 60), (60, np.inf)]
    out["sensor_drift"] = {
        "windows": len(z),
        "noise_per_role": {r.role: float(s) for r, s in zip(man.inputs, noise, strict=True)},
        "share_below_3_noise_sd": float(np.mean(z < 3)),
        **_recall(hit, {"": np.ones(len(hit), bool)}, run_model),
        "by_offset_in_noise_sd": {
            f"{a:g}-{b:g}": _recall(hit, {"": (z >= a) & (z < b)}, run_model) for a, b in bands
        },
        "by_minutes_after_onset": {
            f"{a:g}-{b:g}": _recall(hit, {"": (age >= a) & (age < b)}, run_model) for a, b in ages
        },
        "by_tag": {
            man.inputs[k].role: {
                **_recall(hit, {"": tag == k}, run_model),
                "offset_quartiles": [float(q) for q in np.quantile(off[tag == k], [0.25, 0.5, 0.75])],
                "share_offset_below": {f"{c:g}": float(np.mean(off[tag == k] < c)) for c in (1, 2, 4, 8)},
            }
            for k in np.unique(tag)
        },
    }
    return out


def _recall(hit: np.ndarray, parts: dict[str, np.ndarray], run_model: bool) -> dict[str, Any]:
    """``windows<suffix>`` and ``recall<suffix>`` of every named subset of the windows."""
    out: dict[str, Any] = {}
    for suffix, m in parts.items():
        out[f"windows{suffix}"] = int(m.sum())
        out[f"recall{suffix}"] = float(hit[m].mean()) if run_model and m.any() else None
    return out


def _called(pred: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """How many windows the classifier gave each class, most first."""
    kinds, counts = np.unique(pred, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {names[int(kinds[i])]: int(counts[i]) for i in order}


def _onset(label: np.ndarray, end: int) -> int:
    """The first row of the run of ``label[end]`` that holds row ``end``."""
    i = end
    while i > 0 and label[i - 1] == label[end]:
        i -= 1
    return i


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fault_ceiling", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seeds", default="101,102", help="comma-separated seeds (default: the chain's test seeds)"
    )
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--pumps", type=int, default=2)
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "fault-mlp")
    ap.add_argument("--no-model", action="store_true", help="only the share of windows that show a fault")
    ap.add_argument("--dir", type=Path, default=ROOT / "build" / "recordings" / "ceiling")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true", help="the first seed only (make bench --quick)")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds = a.seeds.split(",")[0]
    pairs = [_record_pair(int(s), a.hours, a.pumps, a.dir) for s in a.seeds.split(",")]
    r = ceiling(a.bundle, pairs, run_model=not a.no_model)
    print(json.dumps(r, indent=2))
    if a.out:
        a.out.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
