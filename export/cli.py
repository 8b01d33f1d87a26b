"""``edge-export``: the export tool chain's command line.

::

    edge-export keygen --out export/keys/my-key          # my-key.pem (private) + my-key.pub
    edge-export sign models/fault-mlp --key export/keys/dev-ed25519.pem
    edge-export verify models/fault-mlp --trust export/keys/dev-ed25519.pub
    edge-export record --config configs/export-demo.yaml   # the plant recordings only
    edge-export train --config configs/export-demo.yaml --model fault-mlp   # one model's chain
    edge-export compress --module mypkg.nets:build --state-dict w.pt --manifest m.json \\
        --calibration x.npy --out build/my-model                  # any nn.Module with a manifest
    edge-export report models/fault-mlp                    # print the bundle's report (Markdown)
    edge-export evaluate models/fault-mlp --data rec/ --events events.csv --baseline build/pca
    edge-export all --config configs/export-demo.yaml      # record, train, compress, gate, sign
    edge-export baseline --config configs/export-example.yaml --out build/baselines  # PCA + dynamic PCA
    edge-export sequence --csv normal.csv --calibrate cal.csv --role ... --operating speed \\
        --out build/seq-pump --name seq-pump               # the temporal anomaly model (export/sequence.py)
    edge-export recalibrate models/seq-pump --calibrate day1.csv day2.csv --false-alerts-per-day 0.1 \
        --version 5 --out models/seq-pump --key KEY.pem   # its threshold only: the same model.onnx
    edge-export forecast --data rec/*.csv --test unseen/*.csv --config configs/export-forecast.yaml \\
        --out models/demand-forecast                       # the demand forecast bundle
    edge-export identify --data rec1.csv rec2/ --config configs/demo.yaml --out models/station \
        --key export/keys/dev-ed25519.pem                  # the station's curves: a recommender bundle

Exit codes: 0 success, 1 a gate failed or a bundle was refused (the message says which and
why; nothing is written), 2 a usage, config or data error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-export", description=__doc__.split("\n\n")[0] if __doc__ else "")
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="write a new ed25519 key pair (PEM)")
    k.add_argument("--out", required=True, type=Path, help="path prefix: PREFIX.pem and PREFIX.pub")
    s = sub.add_parser("sign", help="sign bundles (writes signature.json over manifest.json)")
    s.add_argument("bundles", nargs="+", type=Path)
    s.add_argument("--key", required=True, type=Path, help="private key (PEM)")
    v = sub.add_parser("verify", help="verify hashes, session, and signature against trusted keys")
    v.add_argument("bundles", nargs="+", type=Path)
    v.add_argument("--trust", action="append", default=[], type=Path, help="trusted public key (PEM, repeat)")
    v.add_argument("--allow-unsigned", action="store_true")
    r = sub.add_parser("record", help="make the config's plant recordings")
    r.add_argument("--config", required=True, type=Path)
    t = sub.add_parser("train", help="train teachers, compress, gate and write one model's bundle")
    t.add_argument("--config", required=True, type=Path)
    t.add_argument("--model", action="append", default=[], help="model name (repeat; default: all)")
    t.add_argument("--task", action="append", default=[], help="every model of this task (repeat)")
    t.add_argument("--no-sign", action="store_true")
    c = sub.add_parser("compress", help="export, quantize, gate and bundle a user nn.Module")
    c.add_argument("--module", required=True, help="pkg.module:factory, called with no arguments")
    c.add_argument("--state-dict", type=Path, help="weights to load (torch.save of a state_dict)")
    c.add_argument(
        "--manifest",
        required=True,
        type=Path,
        help="manifest template JSON (every field but schema_version, variants, files)",
    )
    c.add_argument("--calibration", required=True, type=Path, help="model inputs [N, ...] as .npy")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--int8", choices=("optional", "required", "off"), default="optional")
    c.add_argument("--int8-gate", choices=("top1", "correlation"), default="correlation")
    c.add_argument("--key", type=Path)
    p = sub.add_parser("report", help="print a bundle's report as Markdown (from report.json)")
    p.add_argument("bundle", type=Path)
    b = sub.add_parser(
        "baseline", help="PCA and dynamic-PCA bundles fitted to the config's own normal data (signed)"
    )
    b.add_argument("--config", required=True, type=Path)
    b.add_argument("--model", help="whose data section to use (default: the config's first model)")
    b.add_argument("--out", type=Path, default=Path("build/baselines"), help="directory for the bundles")
    b.add_argument("--lags", type=int, help="dynamic PCA lags (default: chosen by Ku's rule)")
    b.add_argument("--no-sign", action="store_true")
    e = sub.add_parser(
        "evaluate", help="replay data through the agent's own alarm path: false alerts, detections, delays"
    )
    e.add_argument("bundle", type=Path)
    e.add_argument("--data", nargs="+", required=True, help="wide/long CSVs or agent recording dirs")
    e.add_argument("--events", type=Path, help="labelled episodes: CSV start,end,asset,class")
    e.add_argument("--label-column", help="a label column of the data instead ({asset}: one per asset)")
    e.add_argument("--config", type=Path, help="the agent config to replay (default: derived)")
    e.add_argument("--baseline", action="append", default=[], type=Path, help="a bundle to compare (repeat)")
    e.add_argument("--no-classical", action="store_true", help="leave out the 3-sigma and EWMA detectors")
    e.add_argument("--calibrate", nargs="+", default=[], help="normal data: calibrate alert thresholds first")
    e.add_argument("--false-alerts-per-day", type=float, default=1.0, help="calibration target (default 1)")
    e.add_argument(
        "--fast-delay", type=float,
        help="with --calibrate: give the model's alerts a fast level with this on-delay, s "
        "(twice what the calibration data held that long; a limit with its own on-delay)",
    )  # fmt: skip
    e.add_argument("--out", type=Path, default=Path("."), help="directory for evaluation.json (default: .)")
    f = sub.add_parser("forecast", help="train the demand forecast bundle from recordings")
    f.add_argument("--data", nargs="+", required=True, type=Path, help="training recordings (CSV)")
    f.add_argument("--test", nargs="*", default=[], type=Path, help="unseen recordings (default: last days)")
    f.add_argument("--config", required=True, type=Path)
    f.add_argument("--out", required=True, type=Path)
    f.add_argument("--no-sign", action="store_true")
    i = sub.add_parser("identify", help="fit the station's pump and system curves: a recommender bundle")
    i.add_argument(
        "--data", required=True, nargs="+", type=Path, help="recordings (CSV files or directories)"
    )
    i.add_argument("--config", required=True, type=Path, help="the agent config (its recommender section)")
    i.add_argument("--out", required=True, type=Path)
    i.add_argument(
        "--prior", type=Path, help="datasheet values and uncertainties (YAML); default: the config's"
    )
    i.add_argument("--key", type=Path, help="private key (PEM) to sign station.json")
    # sequence (anomaly helper): the temporal, operating-point-aware anomaly model
    from export.sequence_args import add_arguments as _sequence_arguments

    q = sub.add_parser(
        "sequence", help="a 1-D CNN anomaly model over the window, calibrated by false alerts per day"
    )
    _sequence_arguments(q)
    rc = sub.add_parser(
        "recalibrate",
        help="a sequence bundle recalibrated (new threshold, version, signature): the same model.onnx",
    )
    rc.add_argument("bundle", type=Path, help="an edge-export sequence bundle")
    rc.add_argument("--calibrate", nargs="+", required=True, help="normal recordings (CSV) to calibrate on")
    rc.add_argument("--false-alerts-per-day", type=float, required=True, help="per asset-day")
    rc.add_argument("--out", required=True, type=Path, help="the new bundle (may be BUNDLE itself)")
    rc.add_argument("--version", required=True, help="the new bundle's version")
    rc.add_argument("--key", type=Path, help="private key (PEM) to sign the new bundle")
    rc.add_argument(
        "--on-delay", type=float, help="alert on-delay, s (default: the bundle's report.json on_delay_s)"
    )
    a = sub.add_parser("all", help="the whole chain: record, every model, sign")
    a.add_argument("--config", required=True, type=Path)
    a.add_argument("--no-sign", action="store_true")
    return ap


def _cmd_keygen(args: argparse.Namespace) -> int:
    from agent.modelstore.signing import generate_key_pair

    prefix = args.out
    kid = generate_key_pair(prefix.with_suffix(".pem"), prefix.with_suffix(".pub"))
    private, public = prefix.with_suffix(".pem"), prefix.with_suffix(".pub")
    print(f"wrote {private} (private, keep it secret) and {public}: key id {kid}")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from agent.modelstore.bundle import load_bundle
    from agent.modelstore.signing import sign_bundle

    for b in args.bundles:
        load_bundle(b)  # never sign a bundle whose files do not match its manifest
        kid = sign_bundle(b, args.key)
        print(f"signed {b} with key {kid}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from agent.modelstore.bundle import load_bundle
    from agent.modelstore.signing import verify_bundle_signature

    for b in args.bundles:
        bundle = load_bundle(b)
        for v in bundle.manifest.variants[1:]:
            load_bundle(b, variant=v.file)
        if args.allow_unsigned and not (Path(b) / "signature.json").exists():
            print(f"{b}: {bundle.ident} OK (hashes, sessions), UNSIGNED (allowed)")
            continue
        kid = verify_bundle_signature(b, args.trust)
        print(f"{b}: {bundle.ident} OK (hashes, sessions), signed by trusted key {kid}")
    return 0


def _selected(cfg: object, names: Sequence[str], tasks: Sequence[str]) -> list[object]:
    models = list(cfg.models)  # type: ignore[attr-defined]
    if names or tasks:
        unknown = [n for n in names if n not in {m.name for m in models}]
        if unknown:
            raise ValueError(f"no model {unknown} in the config (models: {[m.name for m in models]})")
        models = [m for m in models if m.name in names or m.task in tasks]
    return models


def _cmd_train(args: argparse.Namespace, every: bool = False) -> int:
    from export.pipeline import export_model, load_config, record_all

    cfg = load_config(args.config)
    models = _selected(cfg, [] if every else args.model, [] if every else args.task)
    recordings = record_all(cfg.recordings, progress=cfg.progress)
    key = None if args.no_sign else cfg.key
    for m in models:
        man = export_model(
            m,
            recordings,
            seed=cfg.seed,
            threads=cfg.threads,
            key=key,  # type: ignore[attr-defined]
            progress=cfg.progress,
        )
        files = ", ".join(f"{v.file} ({v.size} B)" for v in man.variants)
        print(f"wrote {m.out} ({man.ident}): {files}{'; signed' if key else ''}")  # type: ignore[attr-defined]
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from export.pipeline import load_config, record_all
    from export.plant_baselines import Refused, fit_baselines

    cfg = load_config(args.config)
    models = _selected(cfg, [args.model] if args.model else [], [])
    if not models:
        raise ValueError(f"{args.config}: no models: the baseline uses a model's data section")
    m: Any = models[0]
    recordings = record_all(cfg.recordings, progress=cfg.progress)
    key = None if args.no_sign else cfg.key
    try:
        results = fit_baselines(cfg, m, recordings, args.out, key=key, lags=args.lags, progress=cfg.progress)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        chk = r.report.get("check")
        checked = (
            f"check {chk['exceedance_rate']:.2%} per frame (limit {chk['limit']:.2%})"
            if chk
            else "no check data"
        )
        lags = f", {r.report['lags']} lags" if "lags" in r.report else ""
        print(
            f"wrote {r.out} ({r.manifest.ident}): {r.report['features']} features, "
            f"{r.report['components']} components{lags}; {checked}{'; signed' if key else ''}"
        )
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from export.pipeline import load_config, record_all

    cfg = load_config(args.config)
    for r in record_all(cfg.recordings, progress=cfg.progress):
        print(f"{r.split:5} {r.path}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from export.pipeline import Int8Settings, package

    mod_name, _, attr = args.module.partition(":")
    factory = getattr(importlib.import_module(mod_name), attr or "build")
    net = factory()
    if args.state_dict is not None:
        net.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
    net.eval()
    template = json.loads(args.manifest.read_text(encoding="utf-8"))
    for k in ("schema_version", "variants", "files"):
        template.pop(k, None)
    x = np.load(args.calibration).astype(np.float32)
    man = package(
        net,
        manifest=template,
        x_check=x,
        x_calibration=x,
        out=args.out,
        int8=Int8Settings(mode=args.int8),
        int8_kind=args.int8_gate,
        key=args.key,
        report_data={
            "name": template["name"],
            "version": template["version"],
            "task": template["task"],
            "summary": f"user module {args.module}",
            "models": [],
        },
    )
    print(f"wrote {args.out} ({man.ident}): " + ", ".join(f"{v.file} ({v.size} B)" for v in man.variants))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from export.evaluate import render_table, run_evaluation

    if args.events is not None and args.label_column is not None:
        raise ValueError("give --events or --label-column, not both")
    results, doc = run_evaluation(
        args.bundle,
        args.data,
        events=args.events,
        label_column=args.label_column,
        config=args.config,
        baselines=args.baseline,
        classical=not args.no_classical,
        calibration=args.calibrate,
        false_alerts_per_day=args.false_alerts_per_day,
        fast_delay_s=args.fast_delay,
    )
    print(f"{doc['model']} on {doc['rows']} rows ({doc['days']:.2f} days, every {doc['period_s']:g} s)")
    for n in doc["notes"]:
        print(f"- {n}")
    print()
    print(render_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "evaluation.json"
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from export.forecast import build_forecast, load_forecast_config

    cfg = load_forecast_config(args.config)
    if args.no_sign:
        cfg = cfg.model_copy(update={"key": None})
    report = build_forecast(cfg, args.data, args.out, test=args.test)
    print(f"wrote {args.out} ({cfg.name} v{cfg.version}){'; signed' if cfg.key else ''}: {report['summary']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from export.report import render_markdown

    data = json.loads((args.bundle / "report.json").read_text(encoding="utf-8"))
    print(render_markdown(data))
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    from export.identify import identify

    man = identify(args.data, args.config, args.out, args.prior, args.key)
    for p in man.pumps:
        a, b, c = p.head
        print(
            f"{p.asset}: H = {a.value:.2f}±{a.se:.2f} r² {b.value:+.4f} r q − {c.value:.6f}±{c.se:.6f} q², "
            f"BEP {p.bep_flow_m3h:.1f} m³/h, head RMS {p.residual_head_m:.3f} m, "
            f"power RMS {p.residual_power_kw:.3f} kW"
        )
    s = man.system
    print(
        f"system: static head {s.static_head_m.value:.2f}±{s.static_head_m.se:.2f} m, "
        f"tank area {s.tank_area_m2.value:.1f}±{s.tank_area_m2.se:.1f} m²"
    )
    print(f"wrote {args.out}{' (signed)' if args.key else ' (UNSIGNED)'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-export``; returns the exit status."""
    args = _parser().parse_args(argv)
    from agent.errors import ConfigError, ModelError

    try:
        from export.gates import GateError
    except ImportError as exc:  # pragma: no cover - without the [export] extra
        print(f"error: {exc}; install the export extra: pip install '.[export]'", file=sys.stderr)
        return 2
    try:
        if args.cmd == "keygen":
            return _cmd_keygen(args)
        if args.cmd == "sign":
            return _cmd_sign(args)
        if args.cmd == "verify":
            return _cmd_verify(args)
        if args.cmd == "record":
            return _cmd_record(args)
        if args.cmd == "train":
            return _cmd_train(args)
        if args.cmd == "compress":
            return _cmd_compress(args)
        if args.cmd == "report":
            return _cmd_report(args)
        if args.cmd == "baseline":
            return _cmd_baseline(args)
        if args.cmd == "evaluate":
            return _cmd_evaluate(args)
        if args.cmd == "forecast":
            return _cmd_forecast(args)
        if args.cmd == "identify":
            return _cmd_identify(args)
        if args.cmd == "sequence":
            from export.sequence import run as _cmd_sequence

            return _cmd_sequence(args)
        if args.cmd == "recalibrate":
            from export.sequence import run_recalibrate

            return run_recalibrate(args)
        return _cmd_train(args, every=True)
    except ConfigError as exc:
        print("\n".join(f"error: {p}" for p in exc.problems), file=sys.stderr)
        return 2
    except GateError as exc:
        print(f"error: {exc}\nno bundle was written", file=sys.stderr)
        return 1
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
