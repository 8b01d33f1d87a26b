"""Operating point bench: does an anomaly model read the agent's own setpoint changes as faults,
and which faults does it catch?

Run ``python bench/operating_point.py`` (``--quick``: fewer days and episodes; ``--plant pump``
or ``cstr``: one plant). Prints the tables and writes ``bench/results/operating_point.json``.
Reported, never asserted.

Four models on the same recordings, every one replayed through the agent's own pipeline
(``agent.replay`` via ``export.evaluate``: feature windows, scorer, alarm engine; one alert per
output, on/off delay 30 s as configs/demo.yaml's anomaly alert; ``bad_input: hold`` for an hour,
so a transmitter that stops delivering reads as a frozen value to every model), and every
one's alert thresholds **calibrated the same way**: through the replay of the same normal
calibration recordings for ``--false-alerts-per-day`` (default 0.5) per pump-day:

* ``pca-pump``: the shipped PCA baseline (T²/SPE over window means and stds);
* ``op-pump``: the shipped operating-point-conditioned model (``export/conditioned.py``);
* ``dpca-pump``: dynamic PCA (the last 4 samples of every role), fitted here on the training
  recordings below;
* ``seq-pump``: the shipped sequence model (``export/sequence.py``: a 1-D CNN over the window,
  conditioned on speed, flow and the speed's 30 min exponentially weighted mean,
  ``speed_history``; built by models/build.sh on the fault-free days 1-3 and the
  load-shift days 1-6, none of them below; models/README.md says why it is the scratch
  student, not a distilled one); ``--train-seq`` trains one the same way here on the
  training recordings instead, ``--seq-bundle`` judges another bundle. Its alert's on-delay is
  70 s (``--seq-on-delay``; calibrated with it): the window and one frame, so the frames
  whose window holds a setpoint step's transient cannot raise it alone (30 s detects an
  abrupt fault as fast as PCA but alerts more after moves: models/README.md).
* ``seq-pump, fast level``: the same model and alert with configs/demo.yaml's second level: a
  ``high_high`` limit with its own 30 s on-delay (``--seq-fast-delay``) at twice the highest
  score the calibration days held for 30 s (``export.evaluate.with_fast_limits``, set on the
  calibration days only): an exceedance that far beyond normal operation is no transient.

Recordings (seeds: training 1-3 and calibration 101-102, 24 h each, with and without the
agent's load shifts; the test seeds below are used by nothing else):

* **load-shift days** (seeds 501-507, 24 h, 2 healthy pumps): every 3 h the load moves between
  the pumps as the agent's recommendation moves it: the permissive goes on, the agent's
  heartbeat runs, and ``PumpN.ExternalSpeedSetpoint`` is written through the PLC API (its own
  write rules and clamping), held 1 h, then the permissive goes off and the PLC's level
  control takes over again (a second setpoint change). Metrics: alerts raised within 30 min
  after a setpoint change, and false alerts per pump-day over the whole day.
* **fault runs** (seeds 601-602): episodes of every fault kind on alternating pumps, 45 min
  each with 75 min of normal operation between (sensor faults on ``DischargePressure``; bearing
  wear with a time to failure of 45 min). Metrics: detection and median delay per fault kind.

**The second plant** (``tests/plants/cstr.py``, a jacketed reactor sampled every 180 s): PCA,
dynamic PCA (3 lags) and the sequence model (operating variable: the production target) fitted
on 20 normal days, calibrated for the same false alerts per day on 10 other normal days,
judged on 10 runs of 4 days with every fault kind once (seeds 21-30); ``bad_input: hold`` for
2 h, as on the pump station.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ comes first on the path and its export.py would shadow the package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() not in (ROOT, ROOT / "bench")]

from bench.loadshift import record, shift_schedule  # noqa: E402
from bench.replay import STATION_ROLES  # noqa: E402
from simulator.faults import Fault, FaultKind, ScenarioEvent  # noqa: E402
from simulator.physics import StationParams  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "operating_point.json"
BUILD = ROOT / "build" / "bench" / "operating_point"
SHIPPED = {
    "pca-pump (PCA)": ROOT / "models" / "pca-pump",
    "op-pump (conditioned)": ROOT / "models" / "op-pump",
}
DPCA = "dpca-pump (dynamic PCA)"
SEQ = "seq-pump (sequence CNN)"
SEQ_FAST = "seq-pump, fast level"
SEQ_FAST_DELAY_S = 30.0  # its fast level's delay (export.evaluate.with_fast_limits), as configs/demo.yaml
TRAIN_NORMAL_SEEDS = (1, 2, 3)
TRAIN_SHIFT_SEEDS = (1, 2, 3)
CAL_NORMAL_SEEDS = (101,)
CAL_SHIFT_SEEDS = (101, 102)
SHIFT_SEEDS = tuple(range(501, 508))
FAULT_SEEDS = (601, 602)
AFTER_CHANGE_S = 1800.0
HOLD_CYCLES = 3600  # bad_input: hold for an hour: a dropout reads as a frozen value (every method)
ON_DELAY_S = 30.0
SEQ_ON_DELAY_S = 70.0  # the window (60 s) and one frame: the frames that hold a setpoint step
SEQ_HISTORY = "speed_history:rpm:0:3000:{asset}.Speed"  # bound to the speed tag, smoothed by the agent
SEQ_EWMA = {"speed_history": 1800.0}
SEQ_OPERATING = ("speed", "flow", "speed_history")
FAULT_KINDS = tuple(k for k in FaultKind if k != FaultKind.NORMAL)
ROLES = STATION_ROLES  # models/build.sh's roles: the same inputs for every method
OPERATING = ("speed", "flow")
ASSETS = ("Pump1", "Pump2")

__all__ = [
    "alerts_after_changes",
    "build_dpca",
    "build_seq",
    "delays_by_kind",
    "fault_events",
    "main",
    "raised_s",
]


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


def _role_columns(roles: Sequence[str] = ROLES) -> dict[str, dict[str, str]]:
    from export.pca_baseline import RoleSpec

    specs = [RoleSpec.parse(r) for r in roles]
    return {a: {r.role: r.column.format(asset=a) for r in specs} for a in ASSETS}


def _recordings(quick: bool) -> tuple[list[Path], list[Path]]:
    """Normal training and calibration recordings (24 h each; quick: 12 h), with and without the
    agent's load shifts; seeds never used in the test days or fault runs."""
    hours = 12.0 if quick else 24.0
    train: list[Path] = []
    cal: list[Path] = []
    n_seeds = TRAIN_NORMAL_SEEDS[:1] if quick else TRAIN_NORMAL_SEEDS
    s_seeds = TRAIN_SHIFT_SEEDS[:2] if quick else TRAIN_SHIFT_SEEDS
    for seed in n_seeds:
        train.append(_cached(BUILD / f"train-normal-s{seed}-{hours:g}h.csv", seed, hours, False))
    for seed in s_seeds:
        train.append(_cached(BUILD / f"train-shift-s{seed}-{hours:g}h.csv", seed, hours, True))
    for seed in CAL_NORMAL_SEEDS:
        cal.append(_cached(BUILD / f"cal-normal-s{seed}-{hours:g}h.csv", seed, hours, False))
    for seed in CAL_SHIFT_SEEDS[:1] if quick else CAL_SHIFT_SEEDS:
        cal.append(_cached(BUILD / f"cal-shift-s{seed}-{hours:g}h.csv", seed, hours, True))
    return train, cal


def _cached(path: Path, seed: int, hours: float, shifts: bool) -> Path:
    if path.exists():
        return path
    tmp = path.with_suffix(".part")
    record(tmp, seed=seed, hours=hours, shifts=shift_schedule(seed, hours) if shifts else ())
    tmp.rename(path)
    return path


def build_seq(
    train: Sequence[Path], cal: Sequence[Path], out: Path, *, target: float, epochs: int, on_delay_s: float
) -> Path:
    """The sequence model (export/sequence.py) on the bench's training recordings, calibrated
    through the replay on ``cal`` for ``target`` false alerts per pump-day."""
    from agent.modelstore.manifest import WindowSpec
    from export.sequence import SequenceConfig, fit_bundle

    roles = (*ROLES, SEQ_HISTORY)
    fit_bundle(
        train, cal, _role_columns(roles), roles, SEQ_OPERATING,
        WindowSpec(sample_period_s=1.0, length=60, stride=10), out,
        name="seq-pump", cfg=SequenceConfig(epochs=epochs), false_alerts_per_day=target,
        on_delay_s=on_delay_s, ewma=SEQ_EWMA,
    )  # fmt: skip
    return out


def build_dpca(train: Sequence[Path], out: Path, *, lags: int = 3) -> Path:
    """The dynamic PCA baseline: T²/SPE over the last ``lags + 1`` samples of every role
    (flattened), fitted on the same training recordings as the sequence model."""
    from agent.modelstore.manifest import FeatureSpec, WindowSpec
    from export.pca_baseline import RoleSpec, fit, write_bundle

    specs = [RoleSpec.parse(r) for r in ROLES]
    window = WindowSpec(sample_period_s=1.0, length=lags + 1, stride=10)
    fs = FeatureSpec(kind="flatten")
    res = fit(train, _role_columns(), specs, window, fs, variance=None, false_alarm_rate=3e-4)  # type: ignore[arg-type]
    write_bundle(
        out, res.model, name="dpca-pump", version="1", window=window, inputs=res.inputs, features=fs,
        provenance={"method": "dpca", "lags": str(lags), "columns": json.dumps(_role_columns())},
    )  # fmt: skip
    return out


def _labels(path: Path) -> object:
    """Episodes from the recording's truth columns ``pump<i>_fault_label``."""
    from export.evaluate import Episode, Labels, label_column_episodes

    out = []
    for pump in (1, 2):
        lab = label_column_episodes([path], f"pump{pump}_fault_label", ["x"], 1.0)
        out += [Episode(e.start, e.end, f"Pump{pump}", e.label) for e in lab.episodes]
    return Labels(tuple(out))


def _setup(
    bundle_dir: Path, cal: Sequence[Path], target: float, on_delay_s: float = ON_DELAY_S
) -> tuple[object, list[str]]:
    """The bundle's derived agent setup (one alert per output, on/off delay 30 s), its alert
    thresholds calibrated through the replay of ``cal`` for ``target`` false alerts per
    pump-day (every method the same way: the comparison is at the same false alerts per day)."""
    from dataclasses import replace

    from agent.modelstore.bundle import load_bundle
    from export.evaluate import calibrate, derived_setup

    bundle = load_bundle(bundle_dir)
    cols = _role_columns()
    # a role beyond the station's (an ewma history of one): the columns the bundle was built on
    known = all(r in c for c in cols.values() for r in bundle.manifest.roles)
    setup = derived_setup(bundle, cols if known else None, on_delay_s=on_delay_s, hold_cycles=HOLD_CYCLES)
    tags = sorted({t for b, _ in setup.models for c in b.assets.values() for t in c.values()})
    return replace(setup, alarms=calibrate(setup.alarms, _cal_data(setup, tags, cal), target)), tags


def _cal_data(setup: object, tags: list[str], cal: Sequence[Path]) -> list[object]:
    """The engine's inputs over the calibration recordings (normal throughout)."""
    from agent.replay import alarm_inputs
    from export.evaluate import CalibrationData, load_recording

    data: list[object] = []
    for p in cal:
        rec = load_recording([p], tags, 1.0)
        data.append(CalibrationData(alarm_inputs(rec, setup)[0], rec.period_s))  # type: ignore[arg-type]
    return data


_INPUTS: dict[tuple[int, Path], object] = {}  # (the setup's models, recording) → the engine's inputs


def _evaluate(setup: object, tags: list[str], path: Path, labels: object) -> object:
    """Replay ``path`` through ``setup``'s models and alarms; methods that differ only in their
    alarms (seq-pump with and without its fast level) share the models' replay."""
    from export.evaluate import load_recording, score_alarms

    key = (id(setup.models), path)  # type: ignore[attr-defined]
    if key not in _INPUTS:
        from agent.replay import alarm_inputs

        rec = load_recording([path], tags, 1.0)
        _INPUTS.clear()  # one recording's inputs at a time (memory): the methods run per recording
        _INPUTS[key] = (alarm_inputs(rec, setup)[0], rec.period_s)  # type: ignore[arg-type]
    inputs, period = _INPUTS[key]  # type: ignore[misc]
    return score_alarms("m", inputs, setup.alarms, labels, period)  # type: ignore[attr-defined,arg-type]


def raised_s(res: object) -> list[tuple[str, float]]:
    """``(asset, t)`` of each alert the replay ``res`` (``score_alarms``) raised, t in s from the
    simulator's epoch (the time base of bench/loadshift.py's schedules)."""
    epoch = StationParams().epoch_datetime.timestamp()
    return [
        (str(a["asset"]), dt.datetime.fromisoformat(a["raised"].replace("Z", "+00:00")).timestamp() - epoch)
        for a in res.alarms  # type: ignore[attr-defined]
    ]


def alerts_after_changes(res: object, starts: Sequence[float]) -> int:
    """How many of ``res``'s alerts (a replay's ``score_alarms``) were raised within
    ``AFTER_CHANGE_S`` after a setpoint change at ``starts`` (s from the simulator's epoch)."""
    return sum(any(0.0 <= t0 - s <= AFTER_CHANGE_S for s in starts) for _, t0 in raised_s(res))


def delays_by_kind(episodes: Sequence[Mapping[str, object]], ndigits: int) -> dict[str, list[float | None]]:
    """Per fault kind (an episode's ``class``), in episode order, each episode's detection delay
    in minutes rounded to ``ndigits`` (None: not detected)."""
    kinds: dict[str, list[float | None]] = {}
    for e in episodes:
        kinds.setdefault(str(e["class"]), []).append(
            round(float(e["delay_s"]) / 60, ndigits) if e["detected"] else None  # type: ignore[arg-type]
        )
    return kinds


# --------------------------------------------------------------------------- the second plant

CSTR_TRAIN_DAYS = 20.0
CSTR_CAL_DAYS = 10.0
CSTR_TEST_SEEDS = tuple(range(21, 31))  # every fault kind once per run: 10 episodes of each
CSTR_WINDOW = 20  # samples (1 h at 180 s)
CSTR_LAGS = 3
CSTR_HOLD = 40  # ticks (2 h): bad_input hold, as on the pump station


def _cstr_role(tag: str) -> str:
    return tag.removeprefix("R1.").replace(".", "_").lower()


def _cstr_csv(run: object, path: Path) -> Path:
    """A plant run (tests/plants) as a wide CSV: ISO 8601 UTC timestamps, empty cells for NaN."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    tags = [t.name for t in run.tags]  # type: ignore[attr-defined]
    m = run.matrix(tags)  # type: ignore[attr-defined]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["timestamp", *tags])
        for stamp, row in zip(run.stamps(), m, strict=True):  # type: ignore[attr-defined]
            cells = ("" if not np.isfinite(v) else f"{v:.6g}" for v in row)
            w.writerow([stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), *cells])
    return path


def second_plant(quick: bool, target: float, epochs: int) -> dict[str, object]:
    """The jacketed reactor of tests/plants/cstr.py: PCA, dynamic PCA and the sequence model
    fitted on the same normal days, calibrated through the replay for the same false alerts per
    day on other normal days, judged on runs with every fault kind (seeds never fitted on)."""
    from dataclasses import replace

    from agent.modelstore.bundle import load_bundle
    from agent.modelstore.manifest import FeatureSpec, WindowSpec
    from agent.replay import alarm_inputs
    from export.evaluate import (
        CalibrationData,
        Episode,
        Labels,
        calibrate,
        derived_setup,
        evaluate_method,
        load_recording,
    )
    from export.pca_baseline import RoleSpec, fit, write_bundle
    from export.sequence import SequenceConfig, fit_bundle
    from tests.plants import cstr

    d = BUILD / "cstr"
    tags = [t.name for t in cstr.TAGS]
    roles = [f"{_cstr_role(t.name)}:{t.unit}:{t.low:g}:{t.high:g}:{t.name}" for t in cstr.TAGS]
    operating = [_cstr_role(t.name) for t in cstr.TAGS if t.operating]
    cols = {cstr.ASSET: {RoleSpec.parse(r).role: RoleSpec.parse(r).column for r in roles}}
    train_days = CSTR_TRAIN_DAYS / (2 if quick else 1)
    train = [_cstr_csv(cstr.simulate(train_days, seed=11, episodes="normal"), d / "train-s11.csv")]
    cal = [_cstr_csv(cstr.simulate(CSTR_CAL_DAYS, seed=12, episodes="normal"), d / "cal-s12.csv")]
    seeds = CSTR_TEST_SEEDS[:3] if quick else CSTR_TEST_SEEDS
    tests = []
    for seed in seeds:
        run = cstr.simulate(4.0, seed=seed)
        t0 = run.start.timestamp()
        eps = tuple(Episode(t0 + e.start_s, t0 + e.end_s, cstr.ASSET, e.kind) for e in run.episodes)
        tests.append((_cstr_csv(run, d / f"test-s{seed}.csv"), Labels(eps)))
    period = cstr.PERIOD_S
    specs = [RoleSpec.parse(r) for r in roles]
    bundles: dict[str, Path] = {}
    w = WindowSpec(sample_period_s=period, length=CSTR_WINDOW, stride=1)
    fs = FeatureSpec(kind="summary", stats=("mean", "std"))
    res = fit(train, cols, specs, w, fs, variance=None, false_alarm_rate=1e-3)  # type: ignore[arg-type]
    write_bundle(
        d / "cstr-pca", res.model, name="cstr-pca", version="1", window=w, inputs=res.inputs, features=fs
    )
    bundles["PCA"] = d / "cstr-pca"
    dw = WindowSpec(sample_period_s=period, length=CSTR_LAGS + 1, stride=1)
    dfs = FeatureSpec(kind="flatten")
    res = fit(train, cols, specs, dw, dfs, variance=None, false_alarm_rate=1e-3)  # type: ignore[arg-type]
    write_bundle(
        d / "cstr-dpca", res.model, name="cstr-dpca", version="1", window=dw, inputs=res.inputs, features=dfs
    )
    bundles["dynamic PCA"] = d / "cstr-dpca"
    fit_bundle(
        train, cal, cols, roles, operating, w, d / "cstr-seq", name="cstr-seq",
        cfg=SequenceConfig(epochs=epochs), false_alerts_per_day=target, on_delay_s=period,
    )  # fmt: skip
    bundles["sequence CNN"] = d / "cstr-seq"
    out: dict[str, object] = {}
    for name, bdir in bundles.items():
        b = load_bundle(bdir)
        setup = derived_setup(b, cols, on_delay_s=period, hold_cycles=CSTR_HOLD)  # two frames in a row
        data = []
        for p in cal:
            rec = load_recording([p], tags, period)
            data.append(CalibrationData(alarm_inputs(rec, setup)[0], rec.period_s))
        setup = replace(setup, alarms=calibrate(setup.alarms, data, target))
        episodes: list[dict[str, object]] = []
        false = 0
        days = 0.0
        for p, labels in tests:
            rec = load_recording([p], tags, period)
            r, _ = evaluate_method(name, rec, setup, labels)
            episodes += r.episodes
            false += sum(int(v["false_alerts"]) for v in r.per_asset.values())
            days += sum(float(v["normal_days"]) for v in r.per_asset.values())
        per_kind = {}
        for f in cstr.FAULTS:
            eps = [e for e in episodes if e["class"] == f.name]
            dl = [float(e["delay_s"]) for e in eps if e["detected"]]  # type: ignore[arg-type]
            per_kind[f.name] = {"episodes": len(eps), "detected": len(dl),
                                "median_delay_s": float(np.median(dl)) if dl else None}  # fmt: skip
        n_eps = len(episodes)
        out[name] = {
            "detection_rate": sum(bool(e["detected"]) for e in episodes) / n_eps if n_eps else None,
            "episodes": n_eps,
            "false_alerts_per_day_test": false / days if days else None,
            "per_kind": per_kind,
        }
    return {"train_days": train_days, "calibration_days": CSTR_CAL_DAYS, "test_seeds": list(seeds),
            "false_alerts_per_day_target": target, "results": out}  # fmt: skip


def print_second_plant(doc: dict[str, object]) -> None:
    res: dict[str, dict[str, object]] = doc["results"]  # type: ignore[assignment]
    names = list(res)
    print(f"\nSecond plant (tests/plants/cstr.py, 180 s samples): every method calibrated through the replay "
          f"for {doc['false_alerts_per_day_target']} false alerts per day on {doc['calibration_days']} "
          "normal days; "
          f"test seeds {doc['test_seeds']}")
    print()
    print("| metric | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    print("| detection rate | " + " | ".join(f"{res[n]['detection_rate']:.2f}" for n in names) + " |")
    print("| false alerts per day (test runs) | "
          + " | ".join(f"{res[n]['false_alerts_per_day_test']:.2f}" for n in names) + " |")
    kinds = list(res[names[0]]["per_kind"])  # type: ignore[arg-type]
    for kind in kinds:
        cells = []
        for n in names:
            k = res[n]["per_kind"][kind]  # type: ignore[index]
            delay = "-" if k["median_delay_s"] is None else f"{k['median_delay_s'] / 3600:.1f} h"
            cells.append(f"{k['detected']}/{k['episodes']}, {delay}")
        print(f"| {kind}: detected, median delay | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="2 load-shift days, 2 episodes per fault kind")
    ap.add_argument("--false-alerts-per-day", type=float, default=0.5, help="calibration target per pump-day")
    ap.add_argument("--epochs", type=int, default=12, help="sequence model epochs (--train-seq, cstr)")
    ap.add_argument("--seq-on-delay", type=float, default=SEQ_ON_DELAY_S, help="its alert on-delay, s")
    ap.add_argument(
        "--seq-fast-delay", type=float, default=SEQ_FAST_DELAY_S,
        help="the on-delay of its fast level (the column 'seq-pump, fast level'; 0: no such column)",
    )  # fmt: skip
    ap.add_argument(
        "--train-seq", action="store_true",
        help="train the sequence model here on the bench's recordings (default: the shipped models/seq-pump)",
    )  # fmt: skip
    ap.add_argument(
        "--seq-bundle", type=Path, default=ROOT / "models" / "seq-pump",
        help="the sequence model to judge (default the shipped models/seq-pump)",
    )  # fmt: skip
    ap.add_argument(
        "--also-seq", type=Path, action="append", default=[], metavar="BUNDLE",
        help="a further sequence model judged beside --seq-bundle, the same way (repeat)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plant", choices=("pump", "cstr", "both"), default="both", help="default both")
    args = ap.parse_args(argv)
    from export.evaluate import Labels

    target = args.false_alerts_per_day
    second = None if args.plant == "pump" else second_plant(args.quick, target, args.epochs)
    if args.plant == "cstr":
        assert second is not None
        args.out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"second_plant": second}, indent=2, sort_keys=True) + "\n"
        args.out.write_text(text, encoding="utf-8")
        print_second_plant(second)
        return 0

    shift_seeds = SHIFT_SEEDS[:2] if args.quick else SHIFT_SEEDS
    n_per_kind = 2 if args.quick else 5
    fault_seeds = FAULT_SEEDS[:1] if args.quick else FAULT_SEEDS
    train, cal = _recordings(args.quick)
    BUILD.mkdir(parents=True, exist_ok=True)
    bundles = dict(SHIPPED)
    bundles[DPCA] = build_dpca(train, BUILD / "dpca-pump")
    bundles[SEQ] = (
        build_seq(
            train, cal, BUILD / "seq-pump", target=target, epochs=args.epochs, on_delay_s=args.seq_on_delay
        )
        if args.train_seq
        else args.seq_bundle
    )
    also = {f"{SEQ.split(' ')[0]} {p.name}": p for p in args.also_seq}
    bundles.update(also)
    delays = {name: args.seq_on_delay if name == SEQ or name in also else ON_DELAY_S for name in bundles}
    setups = {name: _setup(b, cal, args.false_alerts_per_day, delays[name]) for name, b in bundles.items()}
    if args.seq_fast_delay:
        from dataclasses import replace

        from export.evaluate import with_fast_limits

        bundles[SEQ_FAST] = bundles[SEQ]
        delays[SEQ_FAST] = args.seq_on_delay
        base, tags = setups[SEQ]
        alarms = with_fast_limits(base.alarms, _cal_data(base, tags, cal), args.seq_fast_delay)  # type: ignore[attr-defined,arg-type]
        setups[SEQ_FAST] = (replace(base, alarms=alarms), tags)  # type: ignore[type-var]  # the same models: one replay
    names = list(bundles)
    hours = 24.0
    results: dict[str, dict[str, object]] = {name: {} for name in names}
    after = {name: 0 for name in names}
    changes = 0
    false_alerts = {name: 0 for name in names}
    pump_days = 0.0
    for seed in shift_seeds:
        shifts = shift_schedule(seed, hours)
        path = _cached(BUILD / f"shift-s{seed}.csv", seed, hours, True)
        starts = [s.at_s for s in shifts]
        changes += 2 * len(starts)  # every change moves both pumps
        pump_days += 2 * hours / 24.0
        for name in names:
            res = _evaluate(*setups[name], path, Labels())
            false_alerts[name] += sum(v["false_alerts"] for v in res.per_asset.values())  # type: ignore[attr-defined]
            after[name] += alerts_after_changes(res, starts)
    episodes: dict[str, list[dict[str, object]]] = {name: [] for name in names}
    fault_false = {name: 0 for name in names}
    for seed in fault_seeds:
        events, fh = fault_events(n_per_kind)
        path = BUILD / f"faults-s{seed}-n{n_per_kind}.csv"
        if not path.exists():
            record(path, seed=seed, hours=fh, events=events)
        labels = _labels(path)
        for name in names:
            res = _evaluate(*setups[name], path, labels)
            episodes[name] += res.episodes  # type: ignore[attr-defined]
            fault_false[name] += sum(v["false_alerts"] for v in res.per_asset.values())  # type: ignore[attr-defined]
    for name in names:
        per_kind = {}
        for kind in FAULT_KINDS:
            eps = [e for e in episodes[name] if e["class"] == kind.label]
            d = [float(e["delay_s"]) for e in eps if e["detected"]]  # type: ignore[arg-type]
            per_kind[kind.label] = {
                "episodes": len(eps),
                "detected": len(d),
                "median_delay_s": float(np.median(d)) if d else None,
            }
        setup = setups[name][0]
        results[name] = {
            "thresholds": {d.source: d.high.value for d in setup.alarms.defs if d.high is not None},  # type: ignore[attr-defined]
            "fast_levels": {
                d.source: {"value": d.high_high.value, "over_threshold": d.high_high.value / d.high.value,
                           "on_delay_s": d.high_high.on_delay_s}
                for d in setup.alarms.defs  # type: ignore[attr-defined]
                if d.high_high is not None and d.high is not None
            },
            "alerts_within_30min_of_setpoint_change": after[name],
            "setpoint_changes": changes,
            "false_alerts_per_pump_day_shift_days": false_alerts[name] / pump_days,
            "false_alerts_fault_runs": fault_false[name],
            "per_kind": per_kind,
        }
    doc = {
        "train": [p.name for p in train],
        "calibration": [p.name for p in cal],
        "false_alerts_per_day_target": args.false_alerts_per_day,
        "shift_seeds": list(shift_seeds),
        "fault_seeds": list(fault_seeds),
        "pump_days_with_shifts": pump_days,
        "on_delay_s": delays,
        "seq_fast_delay_s": args.seq_fast_delay,
        "hold_cycles": HOLD_CYCLES,
        "results": results,
        "second_plant": second,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"Operating point: {len(shift_seeds)} load-shift days x 2 healthy pumps (seeds "
          f"{shift_seeds[0]}-{shift_seeds[-1]}), {changes} pump setpoint changes; fault runs seeds "
          f"{', '.join(map(str, fault_seeds))}, {n_per_kind} episodes per kind per run; "
          f"alert on-delay 30 s (seq-pump {args.seq_on_delay:g} s), bad_input hold {HOLD_CYCLES} ticks; "
          + "".join(f"{SEQ_FAST}: {lv['over_threshold']:.2f}x its threshold after {lv['on_delay_s']:g} s; "
                    for lv in results.get(SEQ_FAST, {}).get("fast_levels", {}).values())  # type: ignore[attr-defined]
          + "every method's threshold "
          f"calibrated through the replay for "
          f"{args.false_alerts_per_day:g} false alerts per pump-day on {', '.join(p.name for p in cal)}")
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
    if second is not None:
        print_second_plant(second)
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
