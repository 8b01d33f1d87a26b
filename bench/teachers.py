"""Judge classifier and RUL bundles on recordings never used to build them (other seeds).

The bundle runs as the agent runs it: its manifest's window, ranges and feature spec
(:func:`agent.pipeline.features.window_to_input`), the ONNX through
:func:`agent.modelstore.bundle.load_bundle`; no torch. Windows with a gap or a value outside a
plausible range are skipped, as the agent skips them; the target is the label / remaining
useful life at the window's last row.

    python -m bench.teachers models/fault-mlp models/rul-bearing --seeds 201-206 --out teachers.json
    python -m bench.teachers models/rul-bearing --data 'build/recordings/x/*.wide.csv' --cap 2

``--seeds A-B`` records (or reuses) one day per seed with the export chain's seeded random fault
schedule (:func:`export.pipeline.random_fault_schedule`) in ``--dir``.

Prints one line per bundle (balanced accuracy and per-class recall, or the RUL MAE over every
window and over the windows of a wearing bearing, in hours and % of the horizon) and writes
them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script (make bench): the repository's export, not bench/export.py

import numpy as np  # noqa: E402

from agent.modelstore.bundle import load_bundle  # noqa: E402
from agent.modelstore.manifest import Manifest, load_manifest  # noqa: E402
from agent.pipeline.features import ewma_rows, sliding_windows, window_to_input  # noqa: E402
from export.data import load_columns  # noqa: E402
from export.tables import expand_paths  # noqa: E402

__all__ = ["agent_rows", "judge", "main"]


def agent_rows(series: np.ndarray, man: Manifest) -> np.ndarray:
    """A recorded series ``[N, >= R]`` (the manifest's roles first) as the agent's windows hold
    it: a value outside its role's plausible range is not valid (NaN), and every ``ewma`` role is
    its exponentially weighted mean since the first row (:func:`agent.pipeline.features.ewma_rows`,
    as the agent computes it from the stream and the export chain from its recordings)."""
    r = len(man.inputs)
    lo = np.array([x.range[0] for x in man.inputs])
    hi = np.array([x.range[1] for x in man.inputs])
    out = np.array(series, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out[:, :r][(out[:, :r] < lo) | (out[:, :r] > hi)] = np.nan
    return ewma_rows(out, man.inputs, man.window.sample_period_s)


def _windows(bundle_dir: Path, files: Sequence[Path], target: str) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and targets of every valid window of ``files`` for every asset of the bundle."""
    man = load_manifest(bundle_dir)
    cols = json.loads(man.provenance["columns"])
    lo = np.array([r.range[0] for r in man.inputs])
    hi = np.array([r.range[1] for r in man.inputs])
    w = man.window
    xs, ys = [], []
    for f in files:
        for n, asset in enumerate(cols, start=1):
            names = [cols[asset][r.role] for r in man.inputs] + [target.format(n=n, asset=asset)]
            (series,) = load_columns(f, names, w.sample_period_s)
            view = sliding_windows(agent_rows(series, man), w.length, w.stride)
            raw = view[:, :, : len(man.inputs)]
            ok = np.all(np.isfinite(raw) & (raw >= lo) & (raw <= hi), axis=(1, 2))
            xs.append(window_to_input(raw[ok], man))
            ys.append(view[ok, -1, -1])
    return np.concatenate(xs), np.concatenate(ys)


def judge(bundle_dir: Path, files: Sequence[Path], *, label: str, rul: str, cap: float) -> dict[str, Any]:
    """Metrics of one bundle on ``files`` (a classifier's or a RUL regressor's)."""
    man = load_manifest(bundle_dir)
    b = load_bundle(bundle_dir, allow_unsigned=True)
    out: dict[str, Any] = {"bundle": str(bundle_dir), "method": man.provenance.get("method", "")}
    if man.task == "classifier":
        x, code = _windows(bundle_dir, files, label)
        names = list(man.outputs[0].labels or ())
        # code -> name as the export read it (report.json); older reports: codes 0..n-1 in order
        report = (
            json.loads((bundle_dir / "report.json").read_text())
            if (bundle_dir / "report.json").exists()
            else {}
        )
        classes = report.get("data", {}).get("classes") or {str(i): n for i, n in enumerate(names)}
        index = {int(c): names.index(n) for c, n in classes.items() if n in names}
        known = np.isin(code, list(index))
        y = np.array([index[int(c)] for c in code[known]])
        pred = np.concatenate([b.run({"x": x[i : i + 4096]})[0] for i in range(0, len(x), 4096)])[
            known
        ].argmax(1)
        recall = {names[k]: float(np.mean(pred[y == k] == k)) for k in range(len(names)) if np.any(y == k)}
        bal = float(np.mean(list(recall.values())))
        out.update(windows=len(y), balanced_accuracy=bal, recall=recall)
    else:
        x, truth = _windows(bundle_dir, files, rul)
        pred = np.concatenate([b.run({"x": x[i : i + 4096]})[0] for i in range(0, len(x), 4096)]).reshape(-1)
        truth = np.minimum(truth, cap)
        err = np.abs(pred - truth)
        wear = truth < cap
        out.update(
            windows=len(truth),
            mae_h=float(err.mean()),
            mae_pct_of_horizon=float(100 * err.mean() / cap),
            wearing_windows=int(wear.sum()),
            mae_wearing_h=float(err[wear].mean()) if wear.any() else float("nan"),
            mae_wearing_pct_of_horizon=float(100 * err[wear].mean() / cap) if wear.any() else float("nan"),
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.teachers", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "bundles",
        nargs="*",
        type=Path,
        default=[ROOT / "models" / "fault-mlp", ROOT / "models" / "rul-bearing"],
        help="bundles to judge (default: the shipped fault-mlp and rul-bearing)",
    )
    ap.add_argument("--quick", action="store_true", help="two 6-hour holdout days (make bench --quick)")
    ap.add_argument("--data", nargs="+", default=[], help="recordings (paths or globs)")
    ap.add_argument(
        "--seeds",
        default="",
        help="record (or reuse) days with a random fault schedule for these seeds: 201-206",
    )
    ap.add_argument("--hours", type=float, default=24.0, help="length of each --seeds recording")
    ap.add_argument(
        "--dir", type=Path, default=Path("build/recordings/holdout"), help="where --seeds records"
    )
    ap.add_argument("--label", default="pump{n}_fault_code", help="label column template ({n}, {asset})")
    ap.add_argument("--rul", default="pump{n}_rul_h", help="remaining useful life column template")
    ap.add_argument("--cap", type=float, default=2.0, help="the RUL horizon (h): the bundle's cap")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if not a.data and not a.seeds:  # make bench: the holdout seeds the chain never read
        a.seeds, a.hours = ("201-202", 6.0) if a.quick else ("201-206", a.hours)
        a.dir = ROOT / "build" / "recordings" / ("holdout-quick" if a.quick else "holdout")
        a.out = a.out or ROOT / "bench" / "results" / ("teachers-quick.json" if a.quick else "teachers.json")
    files = [Path(p) for p in expand_paths(a.data)]
    if a.seeds:
        from export.pipeline import Recordings, RecordingSet, record_all

        lo, _, hi = a.seeds.partition("-")
        seeds = list(range(int(lo), int(hi or lo) + 1))
        sets = [RecordingSet(name="holdout", seeds=seeds, hours=a.hours, split="test")]
        files += [r.path for r in record_all(Recordings(dir=a.dir, sets=sets), progress=False)]
    if not files:
        print("error: no recordings (--data matched no file and no --seeds)", file=sys.stderr)
        return 2
    results = []
    for bd in a.bundles:
        r = judge(bd, files, label=a.label, rul=a.rul, cap=a.cap)
        results.append(r)
        if "balanced_accuracy" in r:
            rec = " ".join(f"{k}={v:.2f}" for k, v in r["recall"].items())
            bal = r["balanced_accuracy"]
            print(f"{bd}: balanced accuracy {bal:.4f} on {r['windows']} windows; recall {rec}")
        else:
            print(
                f"{bd}: RUL MAE {r['mae_h']:.4f} h ({r['mae_pct_of_horizon']:.1f} % of {a.cap:g} h) on "
                f"{r['windows']} windows; while wearing {r['mae_wearing_h']:.4f} h "
                f"({r['mae_wearing_pct_of_horizon']:.1f} %) on {r['wearing_windows']}"
            )
    if a.out:
        a.out.write_text(json.dumps({"data": [str(f) for f in files], "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
