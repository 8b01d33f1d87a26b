"""Distillation gate of seq-pump on the operating days: distilled students against students
trained from scratch, judged as seq-pump v3 and v4 were chosen (models/README.md).

Run ``python -m bench.seqdistill --distilled D1 D2 D3 --scratch S1 S2 S3 [--also B ...]`` on
bundles from ``edge-export sequence ... --every-graph DIR`` (models/README.md, seq-pump). Every
bundle is replayed through the agent's pipeline (``bench/operating_point.py``'s setup: 70 s
on-delay, ``bad_input: hold`` an hour) with its threshold calibrated as the bundle's is (0.5
false alerts per pump-day on the calibration days of models/build.sh), on the validation days
that no bundle trained or calibrated on and the bench never uses:

* load-shift days 111, 112 (24 h, ``python -m bench.loadshift``; 64 pump setpoint changes,
  4 pump-days): alerts raised within 30 min after a setpoint change, false alerts per pump-day;
* fault day 301 (models/build.sh: every fault kind twice on alternating pumps): episodes detected.

The rule (pre-registered in models/README.md before the first run): the distilled family wins
if its mean alerts after changes is lower than the scratch family's by more than 2 pooled
standard errors (``sqrt(sd_d² / n + sd_s² / n)``, sample standard deviations over the seeds),
with a mean of false alerts per pump-day no higher and of fault episodes detected no lower.
Prints a table and the verdict; writes ``build/bench/seqdistill.json``. Reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() not in (ROOT, ROOT / "bench")]

from bench import operating_point as op  # noqa: E402

REC = ROOT / "build" / "recordings"
CALIBRATION = ("check-s101.csv", "shift-s101.csv", "shift-s102.csv")  # models/build.sh's seq-pump
SHIFT_DAYS = (111, 112)
FAULT_DAY = "faults-s301.csv"
ON_DELAY_S = op.SEQ_ON_DELAY_S
TARGET = 0.5  # false alerts per pump-day, as the bundles are calibrated

__all__ = ["gate", "judge", "main"]


def judge(
    bundle: Path, rec: Path = REC, shift_days: Sequence[int] = SHIFT_DAYS, fault_day: str = FAULT_DAY
) -> dict[str, object]:
    """One bundle on the validation days (``shift_days``: load-shift seeds, 24 h, recorded as
    ``rec/shift-s<seed>.csv``; ``fault_day``: a labelled fault recording in ``rec``): threshold,
    alerts after changes (and how many changes), false alerts per pump-day, fault episodes
    detected (of how many) and per kind the delays (min)."""
    from bench.loadshift import shift_schedule
    from export.evaluate import Labels

    setup, tags = op._setup(bundle, [rec / c for c in CALIBRATION], TARGET, ON_DELAY_S)
    after = changes = false = 0
    days = 0.0
    for seed in shift_days:
        starts = [s.at_s for s in shift_schedule(seed, 24.0)]
        changes += 2 * len(starts)  # every change moves both pumps
        days += 2.0
        res = op._evaluate(setup, tags, rec / f"shift-s{seed}.csv", Labels())
        false += sum(v["false_alerts"] for v in res.per_asset.values())  # type: ignore[attr-defined]
        after += op.alerts_after_changes(res, starts)
    path = rec / fault_day
    res = op._evaluate(setup, tags, path, op._labels(path))
    kinds = op.delays_by_kind(res.episodes, 1)  # type: ignore[attr-defined]
    return {
        "threshold": [d.high.value for d in setup.alarms.defs if d.high is not None],  # type: ignore[attr-defined]
        "after": after,
        "changes": changes,
        "false_per_pump_day": false / days,
        "detected": sum(v is not None for d in kinds.values() for v in d),
        "episodes": sum(len(d) for d in kinds.values()),
        "delays_min": dict(sorted(kinds.items())),
    }


def _stats(v: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def gate(distilled: Sequence[dict[str, object]], scratch: Sequence[dict[str, object]]) -> dict[str, object]:
    """The pre-registered rule over the two families' :func:`judge` results."""

    def col(rs: Sequence[dict[str, object]], k: str) -> list[float]:
        return [float(r[k]) for r in rs]  # type: ignore[arg-type]

    (ad, sd_d), (as_, sd_s) = _stats(col(distilled, "after")), _stats(col(scratch, "after"))
    se = math.sqrt(sd_d**2 / len(distilled) + sd_s**2 / len(scratch))
    fd, fs = np.mean(col(distilled, "false_per_pump_day")), np.mean(col(scratch, "false_per_pump_day"))
    dd, ds = np.mean(col(distilled, "detected")), np.mean(col(scratch, "detected"))
    diff = as_ - ad  # fewer alerts after changes: positive
    margin = diff / se if se else (math.copysign(math.inf, diff) if diff else 0.0)
    wins = bool(margin > 2 and fd <= fs and dd >= ds)
    return {
        "after": {"distilled": [ad, sd_d], "scratch": [as_, sd_s], "pooled_se": se, "margin_se": margin},
        "false_per_pump_day": {"distilled": float(fd), "scratch": float(fs)},
        "detected": {"distilled": float(dd), "scratch": float(ds)},
        "wins": wins,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--distilled", type=Path, nargs="+", required=True, help="one bundle per seed")
    ap.add_argument("--scratch", type=Path, nargs="+", required=True, help="one bundle per seed")
    ap.add_argument("--also", type=Path, nargs="*", default=[], help="further bundles, judged alone")
    ap.add_argument("--recordings", type=Path, default=REC)
    ap.add_argument(
        "--shift-days", type=int, nargs="+", default=list(SHIFT_DAYS),
        help="load-shift day seeds (RECORDINGS/shift-s<seed>.csv, 24 h; default 111 112)",
    )  # fmt: skip
    ap.add_argument(
        "--fault-day", default=FAULT_DAY, help=f"fault recording in RECORDINGS (default {FAULT_DAY})"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "seqdistill.json")
    args = ap.parse_args(argv)
    results: dict[str, dict[str, object]] = {}
    for b in [*args.distilled, *args.scratch, *args.also]:
        results[str(b)] = judge(b, args.recordings, args.shift_days, args.fault_day)
        r = results[str(b)]
        print(f"{b}: threshold {r['threshold']}, {r['after']}/{r['changes']} alerts after changes, "
              f"{r['false_per_pump_day']:.2f} false alerts per pump-day, {r['detected']}/{r['episodes']} "
              f"episodes detected; delays {r['delays_min']}", flush=True)  # fmt: skip
    verdict = gate([results[str(b)] for b in args.distilled], [results[str(b)] for b in args.scratch])
    a = verdict["after"]
    print(f"alerts after changes: distilled {a['distilled'][0]:.2f} ± {a['distilled'][1]:.2f}, scratch "  # type: ignore[index]
          f"{a['scratch'][0]:.2f} ± {a['scratch'][1]:.2f} (pooled SE {a['pooled_se']:.2f}, difference "  # type: ignore[index]
          f"{a['margin_se']:.2f} SE); false alerts per pump-day {verdict['false_per_pump_day']}; detected "  # type: ignore[index]
          f"{verdict['detected']}: distilled {'WINS' if verdict['wins'] else 'does not win'}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundles": results, "gate": verdict}, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
