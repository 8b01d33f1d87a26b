"""Operating point bench: does the anomaly model read the agent's own setpoint changes as faults?

Run ``python bench/operating_point.py`` (``--quick``: fewer days and episodes). Prints one
table and writes ``bench/results/operating_point.json``. Reported, never asserted.

Two shipped bundles on the same recordings, both replayed through the agent's own pipeline
(``agent.replay`` via ``export.evaluate``: feature windows, scorer, alarm engine; one alert per
output at its bundle threshold, on/off delay 30 s as configs/demo.yaml's anomaly alert):

* ``pca-pump``: the PCA baseline (T²/SPE over window means and stds);
* ``op-pump``: the operating-point-conditioned model (``export/conditioned.py``): the same
  features explained by the operating variables (speed, flow, ambient) first.

Recordings (seeds never used to build either bundle: those are 1-6 and 101-106):

* **load-shift days** (seeds 501-507, 24 h, 2 healthy pumps): every 3 h the load moves between
  the pumps as the agent's recommendation moves it: the permissive goes on, the agent's
  heartbeat runs, and ``PumpN.ExternalSpeedSetpoint`` is written through the PLC API (its own
  write rules and clamping) with one pump ``delta`` rpm down and the other up (``delta`` drawn
  in 300-700 rpm), held 1 h, then the permissive goes off and the PLC's level control takes
  over again (a second setpoint change). Metrics: alerts raised within 30 min after a setpoint
  change, and false alerts per pump-day over the whole day.
* **fault runs** (seeds 601-...): episodes of every fault kind on alternating pumps, 45 min
  each with 75 min of normal operation between (sensor faults on ``DischargePressure``; bearing
  wear with a time to failure of 45 min). Metrics: detection and median delay per fault kind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ comes first on the path and its export.py would shadow the package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() not in (ROOT, ROOT / "bench")]

from bench.loadshift import record, shift_schedule  # noqa: E402
from simulator.faults import Fault, FaultKind, ScenarioEvent  # noqa: E402
from simulator.physics import StationParams  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "operating_point.json"
BUILD = ROOT / "build" / "bench" / "operating_point"
BUNDLES = {
    "pca-pump (PCA)": ROOT / "models" / "pca-pump",
    "op-pump (conditioned)": ROOT / "models" / "op-pump",
}
SHIFT_SEEDS = tuple(range(501, 508))
FAULT_SEEDS = (601, 602)
AFTER_CHANGE_S = 1800.0
ON_DELAY_S = 30.0
FAULT_KINDS = tuple(k for k in FaultKind if k != FaultKind.NORMAL)

__all__ = ["fault_events", "main"]


def fault_events(n_per_kind: int) -> tuple[list[ScenarioEvent], float]:
    """Episodes of every kind on alternating pumps: 45 min each, 75 min apart. (events, hours)"""
    events = []
    t = 3600.0
    i = 0
    for _ in range(n_per_kind):
        for kind in FAULT_KINDS:
            extra: dict[str, float | str] = {}
            if kind == FaultKind.BEARING_WEAR:
                extra["time_to_failure_s"] = 2700.0
            events.append(ScenarioEvent(t, fault=Fault(kind, pump=1 + i % 2, duration_s=2700.0, **extra)))  # type: ignore[arg-type]
            t += 7200.0
            i += 1
    return events, t / 3600.0


def _tags(bundle: Path) -> list[str]:
    from agent.modelstore.bundle import load_bundle
    from export.evaluate import _provenance_columns

    cols = _provenance_columns(load_bundle(bundle))
    return sorted({c for m in cols.values() for c in m.values()})


def _labels(path: Path) -> object:
    """Episodes from the recording's truth columns ``pump<i>_fault_label``."""
    from export.evaluate import label_column_episodes

    labels = {}
    for pump in (1, 2):
        lab = label_column_episodes([path], f"pump{pump}_fault_label", ["x"], 1.0)
        labels[f"Pump{pump}"] = [e for e in lab.episodes]
    from export.evaluate import Episode, Labels

    return Labels(tuple(Episode(e.start, e.end, a, e.label) for a, eps in labels.items() for e in eps))


def _evaluate(bundle_dir: Path, path: Path, labels: object) -> object:
    from agent.modelstore.bundle import load_bundle
    from export.evaluate import derived_setup, evaluate_method, load_recording

    bundle = load_bundle(bundle_dir)
    rec = load_recording([path], _tags(bundle_dir), 1.0)
    setup = derived_setup(bundle, on_delay_s=ON_DELAY_S)
    res, _ = evaluate_method(bundle.manifest.ident, rec, setup, labels)  # type: ignore[arg-type]
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="2 load-shift days, 2 episodes per fault kind")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from export.evaluate import Labels

    shift_seeds = SHIFT_SEEDS[:2] if args.quick else SHIFT_SEEDS
    n_per_kind = 2 if args.quick else 5
    fault_seeds = FAULT_SEEDS[:1] if args.quick else FAULT_SEEDS
    hours = 24.0
    results: dict[str, dict[str, object]] = {name: {} for name in BUNDLES}
    after = {name: 0 for name in BUNDLES}
    changes = 0
    false_alerts = {name: 0 for name in BUNDLES}
    pump_days = 0.0
    for seed in shift_seeds:
        shifts = shift_schedule(seed, hours)
        path = record(BUILD / f"shift-s{seed}.csv", seed=seed, hours=hours, shifts=shifts)
        starts = [s.at_s for s in shifts]
        changes += 2 * len(starts)  # every change moves both pumps
        pump_days += 2 * hours / 24.0
        for name, bdir in BUNDLES.items():
            res = _evaluate(bdir, path, Labels())
            false_alerts[name] += sum(v["false_alerts"] for v in res.per_asset.values())  # type: ignore[attr-defined]
            epoch = StationParams().epoch_datetime.timestamp()
            for a in res.alarms:  # type: ignore[attr-defined]
                t0 = dt.datetime.fromisoformat(a["raised"].replace("Z", "+00:00")).timestamp() - epoch
                if any(0.0 <= t0 - s <= AFTER_CHANGE_S for s in starts):
                    after[name] += 1
    episodes: dict[str, list[dict[str, object]]] = {name: [] for name in BUNDLES}
    fault_false = {name: 0 for name in BUNDLES}
    fault_days = 0.0
    for seed in fault_seeds:
        events, fh = fault_events(n_per_kind)
        path = record(BUILD / f"faults-s{seed}.csv", seed=seed, hours=fh, events=events)
        labels = _labels(path)
        for name, bdir in BUNDLES.items():
            res = _evaluate(bdir, path, labels)
            episodes[name] += res.episodes  # type: ignore[attr-defined]
            fault_false[name] += sum(v["false_alerts"] for v in res.per_asset.values())  # type: ignore[attr-defined]
        fault_days += 2 * fh / 24.0  # includes the fault time: the per-day count below uses normal days
    for name in BUNDLES:
        per_kind = {}
        for kind in FAULT_KINDS:
            eps = [e for e in episodes[name] if e["class"] == kind.label]
            d = [float(e["delay_s"]) for e in eps if e["detected"]]  # type: ignore[arg-type]
            per_kind[kind.label] = {
                "episodes": len(eps),
                "detected": len(d),
                "median_delay_s": float(np.median(d)) if d else None,
            }
        results[name] = {
            "alerts_within_30min_of_setpoint_change": after[name],
            "setpoint_changes": changes,
            "false_alerts_per_pump_day_shift_days": false_alerts[name] / pump_days,
            "false_alerts_fault_runs": fault_false[name],
            "per_kind": per_kind,
        }
    doc = {
        "shift_seeds": list(shift_seeds),
        "fault_seeds": list(fault_seeds),
        "pump_days_with_shifts": pump_days,
        "on_delay_s": ON_DELAY_S,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    names = list(BUNDLES)
    print(f"Operating point: {len(shift_seeds)} load-shift days x 2 healthy pumps (seeds "
          f"{shift_seeds[0]}-{shift_seeds[-1]}), {changes} pump setpoint changes; fault runs seeds "
          f"{', '.join(map(str, fault_seeds))}, {n_per_kind} episodes per kind per run; "
          "alert on/off delay 30 s")
    print()
    print("| metric | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    print("| alerts within 30 min after a setpoint change (healthy pumps) | "
          + " | ".join(f"{results[n]['alerts_within_30min_of_setpoint_change']}" for n in names) + " |")
    print("| false alerts per pump-day (load-shift days) | "
          + " | ".join(f"{results[n]['false_alerts_per_pump_day_shift_days']:.2f}" for n in names) + " |")
    for kind in FAULT_KINDS:
        cells = []
        for n in names:
            k = results[n]["per_kind"][kind.label]  # type: ignore[index]
            delay = "-" if k["median_delay_s"] is None else f"{k['median_delay_s'] / 60:.1f} min"
            cells.append(f"{k['detected']}/{k['episodes']}, {delay}")
        print(f"| {kind.label}: detected, median delay | " + " | ".join(cells) + " |")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
