"""seq-pump's alert threshold calibrated on more days for fewer false alerts per pump-day, judged on
the validation days (models/README.md, seq-pump: "A lower false-alert target").

Run ``python -m bench.seqcalib [--bundle models/seq-pump] [--targets 0.5 0.25 0.1]``. The bundle
is replayed once per recording through the agent's pipeline (``bench/operating_point.py``'s
setup: 70 s on-delay, ``bad_input: hold`` an hour); its alert threshold is calibrated through
that replay (``export.evaluate.calibrate``, as ``edge-export sequence --false-alerts-per-day``
does) on ``--calibrate`` days for each target, and its fast level (``--fast-delay``,
``export.evaluate.with_fast_limits`` on the same days, as configs/demo.yaml's) set beside it.
Also the bundle's own calibration (models/build.sh's three days, 0.5 a pump-day), the shipped
setting. On the validation days:

* load-shift days (``--shift-days``, 24 h, ``python -m bench.loadshift``): alerts raised within
  30 min after a setpoint change, false alerts per pump-day, and where in time every alert fell
  (time since the last change, which change: a move or the PLC's take-back), beside the
  fraction of pump-time the 30 min after changes cover; low-carrier days (``--hold-days``,
  ``holds-s<seed>.csv``, ``python -m bench.loadshift --low-carrier``) the same, their false
  alerts per pump-day apart;
* fault days (``--fault-days``, models/build.sh's schedule): episodes detected, delays per kind,
  false alerts outside the episodes.

``--targets 0.1 --no-bundle-days`` judges a bundle calibrated as v5 is (models/build.sh) and
nothing else. Prints the tables and writes ``build/calib/seqcalib.json``. Reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() not in (ROOT, ROOT / "bench")]

from bench import operating_point as op  # noqa: E402

REC = ROOT / "build" / "recordings"
BUNDLE_CALIBRATION = ("check-s101.csv", "shift-s101.csv", "shift-s102.csv")  # models/build.sh's seq-pump
CALIBRATION = ("check-s101.csv", *(f"shift-s{s}.csv" for s in range(101, 107)))
TARGETS = (0.5, 0.25, 0.1)
SHIFT_DAYS = (111, 112, 119, 120)
FAULT_DAYS = ("faults-s301.csv", "faults-s304.csv")
DAY_S = 86400.0

__all__ = ["after_change_coverage", "alert_times", "main"]


def after_change_coverage(
    starts: Sequence[float], day_s: float = DAY_S, after_s: float = op.AFTER_CHANGE_S
) -> float:
    """The fraction of a day's time within ``after_s`` after a change at ``starts`` (s): the
    share of false alerts that would fall there by chance alone if they fell evenly in time."""
    spans = sorted((max(0.0, s), min(day_s, s + after_s)) for s in starts)
    covered = 0.0
    end = 0.0
    for lo, hi in spans:
        lo = max(lo, end)
        if hi > lo:
            covered += hi - lo
            end = hi
    return covered / day_s


def alert_times(
    raised: Sequence[float], starts: Sequence[float], moves: Sequence[bool]
) -> list[dict[str, object]]:
    """Each alert (raised at ``raised``, s) with the time since the last change before it
    (``None`` before the first) and that change's kind (``moves[i]``: a move by the agent, else
    the PLC's take-back), and whether it counts as an alert after a change."""
    out: list[dict[str, object]] = []
    for t in raised:
        before = [(t - s, m) for s, m in zip(starts, moves, strict=True) if t >= s]
        since, move = min(before) if before else (None, None)
        out.append({
            "t_h": round(t / 3600.0, 3),
            "since_change_min": None if since is None else round(since / 60.0, 1),
            "change": None if move is None else ("move" if move else "take-back"),
            "after_change": since is not None and since <= op.AFTER_CHANGE_S,
        })  # fmt: skip
    return out


def _median(v: Sequence[float]) -> float | None:
    return float(np.median(v)) if len(v) else None


def _settings(
    bundle: Path,
    cal_rec: Path,
    calibration: Sequence[str],
    targets: Sequence[float],
    on_delay_s: float,
    fast_s: float,
    bundle_days: bool = True,
) -> tuple[dict[str, object], list[str], dict[str, dict[str, object]]]:
    """The bundle's setup and, per setting, its calibrated alarms (and the fast level's); with
    ``bundle_days`` also models/build.sh's first calibration (3 days, 0.5 a pump-day)."""
    from agent.modelstore.bundle import load_bundle
    from export.evaluate import calibrate, derived_setup, with_fast_limits

    b = load_bundle(bundle)
    cols = op._role_columns()
    known = all(r in c for c in cols.values() for r in b.manifest.roles)
    setup = derived_setup(b, cols if known else None, on_delay_s=on_delay_s, hold_cycles=op.HOLD_CYCLES)
    tags = sorted({t for bb, _ in setup.models for c in bb.assets.values() for t in c.values()})
    data = {
        name: op._cal_data(setup, tags, [cal_rec / name])
        for name in dict.fromkeys([*(BUNDLE_CALIBRATION if bundle_days else ()), *calibration])
    }
    runs: list[tuple[str, Sequence[str], float]] = []
    if bundle_days:
        runs.append(("bundle's days, 0.5", BUNDLE_CALIBRATION, 0.5))
    runs += [(f"{len(calibration)} days, {t:g}", calibration, t) for t in targets]
    settings: dict[str, dict[str, object]] = {}
    for name, days, target in runs:
        cal = [d for n in days for d in data[n]]
        alarms = calibrate(setup.alarms, cal, target)  # type: ignore[attr-defined,arg-type]
        pump_days = sum(d.normal_days() for d in cal)  # type: ignore[attr-defined]
        settings[name] = {"target": target, "days": list(days), "pump_days": pump_days, "alarms": alarms}
        if fast_s:
            settings[name + ", fast"] = {
                "target": target, "days": list(days), "pump_days": pump_days,
                "alarms": with_fast_limits(alarms, cal, fast_s),  # type: ignore[arg-type]
            }  # fmt: skip
    return setup, tags, settings  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    from bench.loadshift import shift_schedule
    from export.evaluate import Labels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "seq-pump")
    ap.add_argument("--recordings", type=Path, default=REC, help="the validation days' directory")
    ap.add_argument("--calibration-recordings", type=Path, default=REC, help="the calibration days' dir")
    ap.add_argument(
        "--calibrate",
        nargs="+",
        default=list(CALIBRATION),
        help="calibration recordings in CALIBRATION_RECORDINGS",
    )
    ap.add_argument(
        "--targets", type=float, nargs="+", default=list(TARGETS), help="false alerts per pump-day"
    )
    ap.add_argument(
        "--shift-days", type=int, nargs="+", default=list(SHIFT_DAYS), help="load-shift seeds (24 h)"
    )
    ap.add_argument(
        "--hold-days", type=int, nargs="*", default=[],
        help="low-carrier load-shift seeds (holds-s<seed>.csv, 24 h, bench.loadshift --low-carrier)",
    )  # fmt: skip
    ap.add_argument("--low-carrier", type=float, default=0.5, help="the hold days' --low-carrier (0.5)")
    ap.add_argument(
        "--fault-days", nargs="*", default=list(FAULT_DAYS), help="fault recordings in RECORDINGS"
    )
    ap.add_argument(
        "--no-bundle-days", action="store_true", help="skip the 3-day 0.5 calibration of models/build.sh"
    )
    ap.add_argument("--on-delay", type=float, default=op.SEQ_ON_DELAY_S)
    ap.add_argument("--fast-delay", type=float, default=op.SEQ_FAST_DELAY_S, help="0: no fast level")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "calib" / "seqcalib.json")
    args = ap.parse_args(argv)
    rec: Path = args.recordings
    setup, tags, settings = _settings(
        args.bundle, args.calibration_recordings, args.calibrate, args.targets, args.on_delay,
        args.fast_delay, bundle_days=not args.no_bundle_days,
    )  # fmt: skip
    out: dict[str, dict[str, object]] = {
        n: {"target": s["target"], "days": s["days"], "pump_days": s["pump_days"],
            "threshold": [d.high.value for d in s["alarms"].defs if d.high is not None],  # type: ignore[attr-defined]
            "fast_level": [d.high_high.value for d in s["alarms"].defs if d.high_high is not None],  # type: ignore[attr-defined]
            "after": 0, "changes": 0, "false": 0, "pump_days_shift": 0.0, "false_hold": 0,
            "pump_days_hold": 0.0, "coverage": [], "alerts": [],
            "episodes": [], "fault_false": 0}
        for n, s in settings.items()
    }  # fmt: skip
    days = [(seed, "shift", "shift", 0.0) for seed in args.shift_days]
    days += [(seed, "holds", "hold", args.low_carrier) for seed in args.hold_days]
    for seed, stem, kind, low in days:
        shifts = shift_schedule(seed, 24.0, low_carrier=low)
        starts = [s.at_s for s in shifts]
        moves = [s.speeds is not None for s in shifts]
        cover = after_change_coverage(starts)
        for name, s in settings.items():
            path = rec / f"{stem}-s{seed}.csv"
            res = op._evaluate(replace(setup, alarms=s["alarms"]), tags, path, Labels())  # type: ignore[type-var]
            o = out[name]
            o["changes"] += 2 * len(starts)  # type: ignore[operator]  # every change moves both pumps
            o[f"pump_days_{kind}"] += 2.0  # type: ignore[operator]
            false = sum(v["false_alerts"] for v in res.per_asset.values())  # type: ignore[attr-defined]
            o["false" if kind == "shift" else "false_hold"] += false  # type: ignore[operator]
            o["after"] += op.alerts_after_changes(res, starts)  # type: ignore[operator]
            o["coverage"].append(cover)  # type: ignore[attr-defined]
            for asset, t in op.raised_s(res):
                (a,) = alert_times([t], starts, moves)
                o["alerts"].append({"day": f"{stem}-s{seed}", "asset": asset, **a})  # type: ignore[attr-defined]
    for day in args.fault_days:
        path = rec / day
        labels = op._labels(path)
        for name, s in settings.items():
            res = op._evaluate(replace(setup, alarms=s["alarms"]), tags, path, labels)  # type: ignore[type-var]
            out[name]["episodes"] += [{"day": day, **e} for e in res.episodes]  # type: ignore[attr-defined,operator]
            out[name]["fault_false"] += sum(v["false_alerts"] for v in res.per_asset.values())  # type: ignore[attr-defined,operator]
    for name, o in out.items():
        eps: list[dict[str, object]] = o["episodes"]  # type: ignore[assignment]
        kinds = op.delays_by_kind(eps, 2)
        o["per_kind"] = {
            k: {"detected": sum(v is not None for v in d), "episodes": len(d),
                "median_delay_min": _median([v for v in d if v is not None]),
                "delays_min": d}
            for k, d in sorted(kinds.items())
        }  # fmt: skip
        o["detected"] = sum(bool(e["detected"]) for e in eps)
        o["n_episodes"] = len(eps)
        o["false_per_pump_day"] = o["false"] / o["pump_days_shift"] if o["pump_days_shift"] else None  # type: ignore[operator]
        o["false_per_pump_day_hold"] = o["false_hold"] / o["pump_days_hold"] if o["pump_days_hold"] else None  # type: ignore[operator]
        after_alerts = [a for a in o["alerts"] if a["after_change"]]  # type: ignore[attr-defined]
        print(f"{name}: threshold {o['threshold']}, fast level {o['fast_level']} (calibrated on "
              f"{o['pump_days']:.1f} pump-days); {o['after']}/{o['changes']} alerts after changes "
              f"({len(after_alerts)} of {len(o['alerts'])} alerts within 30 min after a change; those 30 min "  # type: ignore[arg-type]
              f"cover {np.mean(o['coverage']):.3f} of the time), {o['false_per_pump_day']:.2f} false alerts "  # type: ignore[arg-type]
              f"per pump-day ({o['false_hold']} on {o['pump_days_hold']:g} low-carrier pump-days); "
              f"{o['detected']}/{o['n_episodes']} episodes, {o['fault_false']} false alerts "
              "on the fault days", flush=True)  # fmt: skip
        for k, v in o["per_kind"].items():  # type: ignore[attr-defined]
            n = f"{v['detected']}/{v['episodes']}"
            print(f"    {k}: {n}, median {v['median_delay_min']} min {v['delays_min']}")
        for a in o["alerts"]:  # type: ignore[attr-defined]
            tail = " (after a change)" if a["after_change"] else ""
            print(f"    alert {a['day']} {a['asset']} at {a['t_h']:.2f} h: {a['since_change_min']} min "
                  f"after a {a['change']}{tail}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
