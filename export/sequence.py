"""A temporal, operating-point-aware anomaly model: a small 1-D CNN over the window.

The agent feeds it the window as it is (``features: sequence``, ``[batch, T, R]``, normalised
per role by the manifest). What the plant is asked to do (the roles marked ``operating``:
speed, flow, production target) is an input, never a fault; everything else is monitored:

1. **Reconstruction given the operating point.** A temporal branch (two 1-D convolutions,
   the second dilated) reads the operating roles' sequences; an encoder squeezes the whole
   window into a ``latent`` of a few numbers (the slow states a window cannot explain, such as
   temperatures set by the last hour's load); a decoder rebuilds every monitored role's
   sequence from both. A setpoint step is in the operating inputs, so its transient is
   predicted, not flagged; a sensor that leaves the relation (a drift, a blockage) is not.
2. **Roughness given the operating point.** Per monitored role, the log mean squared
   first difference over the window (how much the live signal moves), predicted from the
   operating branch alone. A frozen transmitter reads zero movement: its log roughness falls
   far below what the operating point predicts. The floor ``eps`` is per role, from the
   training data (a twentieth of its median roughness, at least a quantisation step's share).
3. **Score.** Each role's mean squared reconstruction error (in units of the expected
   variance) and each low roughness residual (standardised, squared) is divided by its 99.9th
   percentile on held-out normal windows, and so is each role's squared *mean* standardised
   error over the window (a persistent offset, a drift: noise averages out of it): ``3 M``
   terms at most about 1 in normal operation;
   ``score`` is their maximum (sensor faults are single-role faults, a mean over all roles
   would dilute them).

Training is on normal data only (the agent's own load shifts included: bench/loadshift.py),
seeded, one thread. The threshold is not a per-frame quantile: :func:`fit_bundle` replays the
calibration recordings through the agent's own alarm path (``agent/replay.py`` through
:func:`export.evaluate.calibrate`: feature windows, scorer, alarm engine with its on/off delays)
and sets ``thresholds.alarm`` to the lowest value that raises at most ``false_alerts_per_day``
false alerts per asset-day. The ONNX file is one self-contained graph (Conv, MatMul, ReduceMean,
Log, ReduceMax ...), ``x[batch, T, R] → score[batch]``; the agent runs it unchanged.

    edge-export sequence --csv normal.csv --csv shifts.csv --calibrate cal.csv \\
        --asset Pump1 --asset Pump2 --role 'speed:rpm:0:3000:{asset}.Speed' ... \\
        --operating speed --operating flow --out build/seq-pump --name seq-pump
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from agent.modelstore.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    FeatureSpec,
    FileHash,
    InputRole,
    Manifest,
    OutputSpec,
    TensorSpec,
    Variant,
    WindowSpec,
)
from agent.pipeline.features import sliding_windows, window_to_input
from export.sequence_args import SequenceConfig, add_arguments

__all__ = [
    "BundleResult",
    "SequenceConfig",
    "SequenceNet",
    "SequenceScore",
    "add_arguments",
    "fit_bundle",
    "main",
    "run",
    "train",
    "windows_of",
]

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
MODEL_FILE = "model.onnx"
TAIL = 0.999  # each term in units of this quantile of its held-out normal values
LATENT_NOISE = 0.5  # in training, on a latent kept near unit scale by its penalty
RESTING = 0.01  # share of normal windows without any movement above which roughness says nothing


class SequenceNet(nn.Module):
    """The 1-D CNN (see the module docstring). ``forward(x[B, T, R])`` returns the per-role
    mean squared reconstruction error ``[B, M]`` and the roughness residual ``[B, M]``."""

    def __init__(
        self, n_roles: int, operating: Sequence[int], eps: Sequence[float], cfg: SequenceConfig
    ) -> None:
        super().__init__()
        op = sorted(set(operating))
        if not op or not all(0 <= i < n_roles for i in op) or len(op) >= n_roles:
            raise ValueError(
                f"operating role indices {list(operating)} must name some, not all, of {n_roles} roles"
            )
        mon = [i for i in range(n_roles) if i not in op]
        if len(eps) != len(mon):
            raise ValueError(f"eps: {len(eps)} values for {len(mon)} monitored roles")
        self.register_buffer("op_idx", torch.tensor(op, dtype=torch.int64))
        self.register_buffer("mon_idx", torch.tensor(mon, dtype=torch.int64))
        self.register_buffer("eps", torch.tensor(list(eps), dtype=torch.float32))
        c, k = cfg.channels, cfg.kernel
        pad = k // 2

        def branch(n_in: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv1d(n_in, c, k, padding=pad),
                nn.ReLU(),
                nn.Conv1d(c, c, k, padding=2 * pad, dilation=2),
                nn.ReLU(),
            )

        self.encoder = branch(n_roles)
        self.to_latent = nn.Linear(c, cfg.latent)
        self.operating = branch(len(op))
        self.decoder = nn.Sequential(
            nn.Conv1d(c + cfg.latent, c, 1), nn.ReLU(), nn.Conv1d(c, len(mon), k, padding=pad)
        )
        # the expected error's log variance, from the operating branch alone: wide while the
        # plant is being moved, narrow in steady operation; a fault cannot widen its own band
        self.log_var = nn.Conv1d(c, len(mon), k, padding=pad)
        self.rough = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, len(mon)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rec, log_var_mean, rough_res, level)``: per monitored role the mean over the window
        of the squared error in units of its expected variance, the mean log variance (the
        Gaussian likelihood's penalty, for training), the log-roughness residual and the mean
        standardised error (a persistent offset: a drift or a shifted relation; noise averages
        out of it over the window, so it is far more sensitive to an offset than ``rec``)."""
        xt = x.transpose(1, 2)  # [B, R, T]
        op = torch.index_select(xt, 1, self.op_idx)
        mon = torch.index_select(xt, 1, self.mon_idx)
        z = self.to_latent(self.encoder(xt).mean(dim=2))
        if self.training:
            # a noisy, small summary carries the slow states a window cannot explain (coarse,
            # large), not the fine offset of one role: a drift stays in the error
            z = z + LATENT_NOISE * torch.randn_like(z)
        h = self.operating(op)
        zt = z.unsqueeze(2).expand(-1, -1, h.shape[2])
        recon = self.decoder(torch.cat([h, zt], dim=1))
        log_var = torch.clamp(self.log_var(h), -12.0, 6.0)
        err = (recon - mon) * torch.exp(-0.5 * log_var)
        rec = (err * err).mean(dim=2)
        d = mon[:, :, 1:] - mon[:, :, :-1]
        rough = torch.log((d * d).mean(dim=2) + self.eps)
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        return rec, log_var.mean(dim=2), rough - self.rough(pooled), err.mean(dim=2)


class SequenceScore(nn.Module):
    """The served graph: ``score`` = the largest of the ``2 M`` terms, each in units of its own
    99.9th percentile on held-out normal windows (so no single heavy-tailed role sets the
    threshold for all: a role whose live signal often rests for a whole window, a quantised
    slow temperature, has its roughness tail at "no movement" and cannot alarm on that alone)."""

    def __init__(
        self,
        net: SequenceNet,
        rec_scale: FloatArray,
        rough_mean: FloatArray,
        rough_std: FloatArray,
        rough_weight: FloatArray,
        level_scale: FloatArray,
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("rec_scale", torch.tensor(rec_scale, dtype=torch.float32))
        self.register_buffer("rough_mean", torch.tensor(rough_mean, dtype=torch.float32))
        self.register_buffer("rough_std", torch.tensor(rough_std, dtype=torch.float32))
        self.register_buffer("rough_weight", torch.tensor(rough_weight, dtype=torch.float32))
        self.register_buffer("level_scale", torch.tensor(level_scale, dtype=torch.float32))

    def terms(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3 M]``: the reconstruction terms, the roughness terms (one-sided: only a signal
        that moves *less* than the operating point says counts; a step moves more), the level
        terms."""
        rec, _, res, level = self.net(x)
        z = torch.clamp((res - self.rough_mean) / self.rough_std, max=0.0)
        return torch.cat(
            [rec / self.rec_scale, z * z * self.rough_weight, level * level / self.level_scale], dim=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.terms(x).amax(dim=1)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Contract:
    inputs: tuple[InputRole, ...]
    features: FeatureSpec


def windows_of(
    segments: Sequence[FloatArray], inputs: Sequence[InputRole], window: WindowSpec, stride: int
) -> F32:
    """Normalised windows ``[N, T, R]`` of gap-free segments (a window holding a bad sample is
    skipped, as the agent skips it), every ``stride`` samples, by the agent's feature code."""
    contract = _Contract(tuple(inputs), FeatureSpec(kind="sequence"))
    parts: list[F32] = []
    for seg in segments:
        view = sliding_windows(seg, window.length, stride)
        if not len(view):
            continue
        ok = np.isfinite(view).all(axis=(1, 2))
        if ok.any():
            parts.append(window_to_input(view[ok], contract))
    if not parts:
        return np.empty((0, window.length, len(inputs)), dtype=np.float32)
    return np.concatenate(parts)


def _eps(x: F32, inputs: Sequence[InputRole], monitored: Sequence[int]) -> list[float]:
    """Per monitored role, the roughness floor: 0.5 % of the median mean squared step of the
    training windows, at least a tenth of one quantisation step in the window."""
    from export.pca_baseline import resolution

    out = []
    for j in monitored:
        d = np.diff(x[:, :, j].astype(np.float64), axis=1)
        med = float(np.median(np.mean(d * d, axis=1)))
        step = resolution(x[: min(len(x), 2000), :, j])
        out.append(max(0.005 * med, step * step / (10.0 * max(1, x.shape[1] - 1)), 1e-8))
    return out


def _thin(x: F32, n: int, operating: Sequence[int]) -> F32:
    """At most ``n`` windows, evenly thinned, but every window in which an operating role moves
    most (the top 5 % of their range within the window, up to half of ``n``) is kept: setpoint
    changes are rare in normal data, and they are what the model must learn not to flag."""
    if len(x) <= n:
        return x
    span = (x[:, :, list(operating)].max(axis=1) - x[:, :, list(operating)].min(axis=1)).max(axis=1)
    moving = np.flatnonzero(span >= np.quantile(span, 0.95))[: n // 2]
    rest = np.setdiff1d(np.arange(len(x)), moving)
    keep = rest[np.linspace(0, len(rest) - 1, n - len(moving)).round().astype(np.int64)]
    return x[np.sort(np.concatenate([moving, keep]))]


# --------------------------------------------------------------------------- training


def train(
    x_fit: F32, x_val: F32, inputs: Sequence[InputRole], cfg: SequenceConfig, *, log: bool = False
) -> tuple[SequenceScore, dict[str, float]]:
    """Train on normal windows ``x_fit`` ``[N, T, R]``; standardise the score's terms on the
    held-out normal windows ``x_val``. Returns the served graph and training numbers."""
    from export.train import seed_everything

    seed_everything(cfg.seed, cfg.threads)
    operating = [i for i, r in enumerate(inputs) if r.operating]
    monitored = [i for i, r in enumerate(inputs) if not r.operating]
    if not operating:
        raise ValueError(
            "the sequence model needs at least one operating role (what the plant is asked to do)"
        )
    if len(x_fit) < 32 or len(x_val) < 32:
        raise ValueError(
            f"too little clean normal data: {len(x_fit)} training and {len(x_val)} held-out windows"
        )
    x_fit = _thin(x_fit, cfg.max_windows, operating)
    net = SequenceNet(len(inputs), operating, _eps(x_fit, inputs, monitored), cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    xt = torch.from_numpy(np.ascontiguousarray(x_fit))
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.monotonic()
    loss_v = math.nan
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for lo in range(0, len(xt), cfg.batch):
            xb = xt[perm[lo : lo + cfg.batch]]
            rec, log_var, res, _ = net(xb)
            z = net.to_latent(net.encoder(xb.transpose(1, 2)).mean(dim=2))
            loss = rec.mean() + log_var.mean() + (res * res).mean() + 0.1 * (z * z).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
        sched.step()
        loss_v = total / len(xt)
        if log:
            print(
                f"  epoch {epoch + 1}/{cfg.epochs}: loss {loss_v:.4f} ({time.monotonic() - t0:.0f} s)",
                file=sys.stderr,
            )
    net.eval()
    with torch.no_grad():
        rec_l, res_l, lev_l = [], [], []
        for lo in range(0, len(x_val), 4096):
            r, _, s, v = net(torch.from_numpy(np.ascontiguousarray(x_val[lo : lo + 4096])))
            rec_l.append(r.numpy())
            res_l.append(s.numpy())
            lev_l.append(v.numpy())
    rec_v = np.concatenate(rec_l).astype(np.float64)
    res_v = np.concatenate(res_l).astype(np.float64)
    r_mean = res_v.mean(axis=0)
    r_std = np.maximum(res_v.std(axis=0), 1e-3)
    low = np.minimum((res_v - r_mean) / r_std, 0.0) ** 2
    # a role that rests for a whole window in more than 1 % of normal windows (a quantised slow
    # temperature): a frozen reading of it looks like normal, its roughness term is left out
    d = np.diff(x_val[:, :, monitored], axis=1)
    resting = np.mean(np.all(d == 0, axis=1), axis=0) > RESTING
    rough_weight = np.where(resting, 0.0, 1.0 / np.maximum(np.quantile(low, TAIL, axis=0), 1.0))
    lev_v = np.concatenate(lev_l).astype(np.float64)
    graph = SequenceScore(
        net,
        np.maximum(np.quantile(rec_v, TAIL, axis=0), 1e-6),
        r_mean,
        r_std,
        rough_weight,
        np.maximum(np.quantile(lev_v**2, TAIL, axis=0), 1e-6),
    )
    graph.eval()
    info = {
        "train_loss": loss_v,
        "train_windows": float(len(x_fit)),
        "heldout_windows": float(len(x_val)),
        "parameters": float(sum(p.numel() for p in net.parameters())),
        "train_s": time.monotonic() - t0,
    }
    return graph, info


def _onnx(graph: SequenceScore, window: WindowSpec, n_roles: int) -> bytes:
    from export.onnx_tools import to_onnx

    example = torch.zeros(2, window.length, n_roles)
    return to_onnx(graph, example, "x", ["score"])


def _manifest(
    *,
    name: str,
    version: str,
    window: WindowSpec,
    inputs: Sequence[InputRole],
    data: bytes,
    threshold: float,
    far: float,
    files: Mapping[str, FileHash],
    provenance: Mapping[str, str],
) -> Manifest:
    ops = [r.role for r in inputs if r.operating]
    return Manifest(
        schema_version=SCHEMA_VERSION,
        name=name,
        version=version,
        task="anomaly",
        description=(
            "temporal anomaly model: a 1-D CNN over the window reconstructs every monitored role and "
            f"its roughness given the operating variables ({', '.join(ops)}); the score is the largest "
            "standardised error"
        ),
        window=window,
        inputs=tuple(inputs),
        features=FeatureSpec(kind="sequence"),
        model_input=TensorSpec(name="x", shape=("batch", window.length, len(inputs)), dtype="float32"),
        outputs=(
            OutputSpec(
                name="score",
                meaning="largest standardised reconstruction or roughness error of a monitored role "
                "given the operating point (about 1 in normal operation)",
                thresholds={"alarm": float(threshold)},
                false_alarm_rate=float(far),
            ),
        ),
        variants=(
            Variant(
                file=MODEL_FILE,
                precision="fp32",
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                note="fp32 only: a model this small gains nothing from INT8",
            ),
        ),
        files=dict(files),
        provenance=dict(provenance),
    )


def _write(out: Path, manifest: Manifest, data: bytes, extra: Mapping[str, bytes]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(data)
    for fname, raw in extra.items():
        (out / fname).write_bytes(raw)
    (out / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")


@dataclass(frozen=True)
class BundleResult:
    """What :func:`fit_bundle` wrote."""

    out: Path
    manifest: Manifest
    report: dict[str, object]


def fit_bundle(
    train_paths: Sequence[str | Path],
    calibration_paths: Sequence[str | Path],
    role_columns: Mapping[str, Mapping[str, str]],
    roles: Sequence[object],
    operating: Sequence[str],
    window: WindowSpec,
    out: Path,
    *,
    name: str,
    version: str = "1",
    cfg: SequenceConfig | None = None,
    train_stride: int | None = None,
    heldout_fraction: float = 0.2,
    false_alerts_per_day: float = 0.5,
    on_delay_s: float | None = None,
    key: Path | None = None,
    provenance: Mapping[str, str] | None = None,
    log: bool = False,
) -> BundleResult:
    """Train on the normal recordings ``train_paths`` (the last ``heldout_fraction`` of each held
    out to standardise the terms), then calibrate ``thresholds.alarm`` through the agent's own
    replay of the normal ``calibration_paths`` (alert on/off delay ``on_delay_s``, default two
    frames less one: what ``edge-export evaluate`` derives) for ``false_alerts_per_day`` per
    asset-day, and write the bundle to ``out`` (signed with ``key``)."""
    from agent.modelstore.bundle import load_bundle
    from agent.modelstore.signing import sign_bundle
    from agent.replay import alarm_inputs
    from export.evaluate import CalibrationData, calibrate, derived_setup, load_recording, provisional_bundle
    from export.pca_baseline import RoleSpec, input_roles, split_segments

    cfg = cfg or SequenceConfig()
    specs = [r if isinstance(r, RoleSpec) else RoleSpec.parse(str(r)) for r in roles]
    unknown = [o for o in operating if o not in [r.role for r in specs]]
    if unknown:
        raise ValueError(f"operating role(s) {unknown} are not roles ({[r.role for r in specs]})")
    if not calibration_paths:
        raise ValueError(
            "calibration recordings are required: thresholds come from false alerts per day on them"
        )
    period = window.sample_period_s
    fit_segs, val_segs = split_segments(train_paths, role_columns, specs, period, heldout_fraction)
    if not fit_segs:
        raise ValueError("no data in the training recordings")
    inputs = input_roles(np.concatenate(fit_segs), specs, operating)
    stride = train_stride or window.stride
    x_fit = windows_of(fit_segs, inputs, window, stride)
    x_val = windows_of(val_segs, inputs, window, window.stride)
    graph, info = train(x_fit, x_val, inputs, cfg, log=log)
    data = _onnx(graph, window, len(inputs))
    prov = {
        "method": "sequence-cnn",
        "columns": json.dumps({a: dict(c) for a, c in role_columns.items()}, sort_keys=True),
        "assets": " ".join(role_columns),
        "recordings": " ".join(Path(p).name for p in train_paths),
        "calibration": " ".join(Path(p).name for p in calibration_paths),
        "architecture": f"1-D CNN, {cfg.channels} channels, kernel {cfg.kernel}, latent {cfg.latent}, "
        f"{int(info['parameters'])} parameters",
        "training": f"{cfg.epochs} epochs, seed {cfg.seed}, {int(info['train_windows'])} windows",
        **dict(provenance or {}),
    }
    common = {"name": name, "version": version, "window": window, "inputs": inputs, "data": data}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        bundle = provisional_bundle(
            tmp / "provisional",
            _manifest(threshold=1e30, far=1e-3, files={}, provenance=prov, **common).model_dump(mode="json"),
            data,
        )
        frame_s = window.stride * window.sample_period_s
        delay = frame_s if on_delay_s is None else on_delay_s
        setup = derived_setup(bundle, role_columns, on_delay_s=delay)
        tags = sorted({t for cols in role_columns.values() for t in cols.values()})
        cal = []
        for p in calibration_paths:
            rec = load_recording([p], tags, window.sample_period_s)
            cal.append(CalibrationData(alarm_inputs(rec, setup)[0], rec.period_s))
        alarms = calibrate(setup.alarms, cal, false_alerts_per_day)
        d = alarms.defs[0]
        assert d.high is not None
        threshold = float(d.high.value)
        seen = [cols[d.source] for c in cal for cols in c.inputs.sources.values() if d.source in cols]
        frames = np.concatenate([v[p & np.isfinite(v)] for v, p in seen])
        # the share of normal frames above it (never 0 in a manifest: half a frame when none is)
        far = max(float(np.mean(frames > threshold)) if len(frames) else 0.0, 0.5 / max(1, len(frames)))
        days = sum(c.normal_days() for c in cal)
        report: dict[str, object] = {
            "name": name,
            "method": "sequence-cnn",
            "threshold": threshold,
            "false_alerts_per_day_target": false_alerts_per_day,
            "false_alerts_calibration": sum(c.false_alerts(alarms) for c in cal),
            "calibration_asset_days": days,
            "calibration_frames": len(frames),
            "frame_exceedance": far,
            "on_delay_s": delay,
            **info,
        }
        prov["thresholds"] = (
            f"calibrated through the agent's replay (alert on-delay {delay:g} s) for "
            f"{false_alerts_per_day:g} false alerts per asset-day on {days:.2f} asset-days of "
            f"{prov['calibration']}"
        )
        rep_json = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
        rep_md = (
            "\n".join(
                [f"# {name}: sequence anomaly model", ""] + [f"- {k}: {v}" for k, v in sorted(report.items())]
            )
            + "\n"
        ).encode()
        extra = {"report.json": rep_json, "report.md": rep_md}
        files = {k: FileHash(sha256=hashlib.sha256(v).hexdigest(), size=len(v)) for k, v in extra.items()}
        manifest = _manifest(threshold=threshold, far=far, files=files, provenance=prov, **common)
        final = tmp / "bundle"
        _write(final, manifest, data, extra)
        load_bundle(final)  # what the agent will load
        if key is not None:
            sign_bundle(final, key)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        final.chmod(0o755)
        shutil.move(str(final), str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BundleResult(out, manifest, report)


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Run ``edge-export sequence`` with parsed ``args``; prints a summary, returns the exit code."""
    from export.pca_baseline import RoleSpec, _key_value

    try:
        specs = [RoleSpec.parse(r) for r in args.role]
        assets = args.asset or [args.name]
        role_columns = {a: {r.role: r.column.format(asset=a) for r in specs} for a in assets}
        window = WindowSpec(sample_period_s=args.period, length=args.window, stride=args.stride)
        cfg = SequenceConfig(
            channels=args.channels,
            latent=args.latent,
            epochs=args.epochs,
            seed=args.seed,
            max_windows=args.max_windows,
        )
        res = fit_bundle(
            args.csv,
            args.calibrate,
            role_columns,
            specs,
            args.operating,
            window,
            args.out,
            name=args.name,
            version=args.version,
            cfg=cfg,
            train_stride=args.train_stride,
            false_alerts_per_day=args.false_alerts_per_day,
            on_delay_s=args.on_delay,
            key=args.key,
            provenance=dict(_key_value(kv) for kv in args.provenance),
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    r = {k: float(v) for k, v in res.report.items() if isinstance(v, int | float)}
    signed = "; signed" if args.key else ""
    print(
        f"wrote {args.out} ({res.manifest.ident}): 1-D CNN, {r['parameters']:.0f} parameters, "
        f"{r['train_windows']:.0f} training windows; threshold {r['threshold']:.4g} for "
        f"{args.false_alerts_per_day:g} false alerts per asset-day ({r['false_alerts_calibration']:.0f} in "
        f"{r['calibration_asset_days']:.2f} calibration asset-days){signed}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.sequence``: the same as ``edge-export sequence``."""
    ap = argparse.ArgumentParser(
        prog="python -m export.sequence", description=__doc__.splitlines()[0] if __doc__ else None
    )
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
