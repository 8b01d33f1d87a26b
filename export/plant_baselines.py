"""``edge-export baseline``: the honest comparison for every plant, fitted to its own normal data.

With the same config as ``edge-export train`` (the same files, roles, exclusions and splits),
two signed bundles the agent runs as they are:

* **PCA** (``<model>-pca``): Hotelling T^2 and SPE over per-window mean and std of every role
  (the model's window), components by parallel analysis;
* **dynamic PCA** (``<model>-dpca``): the same bundle kind over the last ``lags + 1`` samples
  of every role, flattened (lagged inputs: it sees autocorrelation and dynamics a static PCA
  cannot); the lag count by Ku's rule (:func:`export.pca_baseline.choose_lags`) or configured.

Fitting windows: the training split's normal windows. Thresholds: the calibration files'
normal windows (a separate normal run), else the validation windows. Check: the test split's
normal windows (else the validation windows when thresholds came from calibration files):
a bundle whose check exceedance is above :func:`export.pca_baseline.check_passes`' limit is
refused (:class:`Refused`; its report is written to ``<bundle>.refused/``, no bundle).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import FeatureSpec, Manifest, WindowSpec
from agent.modelstore.signing import sign_bundle
from export.data import NORMAL, Contract, Dataset, Windows, build_dataset, features, fit_normalisation
from export.dataconfig import data_spec
from export.pca_baseline import PcaModel, check_passes, choose_lags, fit_pca, write_bundle, write_refusal

__all__ = ["BaselineResult", "Refused", "fit_baselines"]


class Refused(Exception):
    """A baseline missed its own check: no bundle was written (the report was)."""

    def __init__(self, message: str, report_dir: Path) -> None:
        super().__init__(message)
        self.report_dir = report_dir


@dataclass(frozen=True)
class BaselineResult:
    """One written bundle."""

    kind: str  # "pca" or "dpca"
    out: Path
    manifest: Manifest
    report: dict[str, Any]


def _normal(w: Windows) -> Windows:
    return w.take(w.label == NORMAL)


def _split_sets(ds: Dataset) -> tuple[Windows, Windows, Windows | None, str, str]:
    """(fit, thresholds, check or None, where the thresholds and the check come from)."""
    fit_w = _normal(ds.train)
    cal = ds.calibration if ds.calibration is not None and len(ds.calibration) else None
    if cal is not None:
        thr_w, thr_from = _normal(cal), "calibration files"
        test = _normal(ds.test)
        chk, chk_from = (test, "test split") if len(test) else (_normal(ds.val), "validation split")
    else:
        thr_w, thr_from = _normal(ds.val), "validation split"
        test = _normal(ds.test)
        chk, chk_from = (test, "test split") if len(test) else (None, "none (no test or calibration data)")
    return fit_w, thr_w, chk, thr_from, chk_from


def _one(
    kind: str,
    x_fit: np.ndarray,
    x_thr: np.ndarray,
    x_chk: np.ndarray | None,
    *,
    name: str,
    out: Path,
    window: WindowSpec,
    fs: FeatureSpec,
    contract: Contract,
    far: float,
    sources: dict[str, Any],
    key: Path | None,
    seed: int,
) -> BaselineResult:
    if len(x_fit) < 10 or len(x_thr) < 10:
        raise ValueError(
            f"{name}: too little clean normal data: {len(x_fit)} fitting and {len(x_thr)} threshold windows"
        )
    model: PcaModel = fit_pca(x_fit, false_alarm_rate=far, calibration=x_thr, seed=seed)
    rep: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "components": model.n_components,
        "features": model.n_features,
        "explained_variance": model.explained_variance,
        "component_rule": "parallel analysis (95 % of 20 column permutations)",
        "window": window.model_dump(),
        "false_alarm_rate": far,
        "fit_windows": len(x_fit),
        "threshold_windows": len(x_thr),
        "t2_limit": model.t2_limit,
        "spe_limit": model.spe_limit,
        **sources,
    }
    if x_chk is not None and len(x_chk):
        flags = model.alarms(x_chk)
        rate = float(flags.mean())
        ok, limit = check_passes(rate, len(flags), far)
        rep["check"] = {"frames": len(flags), "exceedance_rate": rate, "limit": limit, "passed": ok}
        if not ok:
            rep["refused"] = (
                f"check exceedance {rate:.2%} per frame on {len(flags)} normal frames "
                f"({sources['check_from']}) is above the limit {limit:.2%} for the target {far:g}"
            )
            where = write_refusal(out, rep)
            raise Refused(f"{name}: {rep['refused']}: no bundle written (report: {where})", where)
    md = [f"# {name}: {kind} baseline", ""] + [f"- {k}: {v}" for k, v in sorted(rep.items())]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        man = _write(tmp, model, name, kind, window, contract, fs, sources, rep, md)
        load_bundle(tmp)  # what the agent will load, before it is signed
        if key is not None:
            sign_bundle(tmp, key)
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is shipped readable
        tmp.rename(out)  # never half a bundle, never a stale signature beside a new manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    shutil.rmtree(Path(f"{out}.refused"), ignore_errors=True)
    return BaselineResult(kind, out, man, rep)


def _write(
    out: Path,
    model: PcaModel,
    name: str,
    kind: str,
    window: WindowSpec,
    contract: Contract,
    fs: FeatureSpec,
    sources: dict[str, Any],
    rep: dict[str, Any],
    md: list[str],
) -> Manifest:
    return write_bundle(
        out,
        model,
        name=name,
        version="1",
        window=window,
        inputs=contract.inputs,
        features=fs,
        description=f"{'dynamic ' if kind == 'dpca' else ''}PCA baseline (T^2 and SPE) fitted on the "
        "plant's own normal data by edge-export baseline",
        provenance={
            "method": kind,
            "thresholds_from": sources["thresholds_from"],
            "check_from": sources["check_from"],
        },
        extra_files={
            "report.json": json.dumps(rep, indent=2, sort_keys=True, default=str) + "\n",
            "report.md": "\n".join(md) + "\n",
        },
    )


def fit_baselines(
    cfg: Any,
    model_cfg: Any,
    recordings: Any,
    out_dir: Path,
    *,
    key: Path | None = None,
    lags: int | None = None,
    max_lags: int = 5,
    progress: bool = False,
) -> list[BaselineResult]:
    """Fit and write the PCA and dynamic-PCA bundles of ``model_cfg``'s data (see the module
    docstring); raises :class:`Refused` for a bundle that misses its check (the bundles before
    it stay written)."""
    d = model_cfg.data
    ds = build_dataset(
        data_spec(d, recordings), recordings, validation_fraction=d.validation_fraction, progress=progress
    )
    spec = ds.spec
    inputs = fit_normalisation(spec, ds.train_samples, training_range=ds.training_range)
    fit_w, thr_w, chk_w, thr_from, chk_from = _split_sets(ds)
    sources = {"thresholds_from": thr_from, "check_from": chk_from, "quality": ds.quality}
    far = model_cfg.false_alarm_rate
    results: list[BaselineResult] = []

    fs = FeatureSpec(kind="summary", stats=("mean", "std"))
    c = Contract(inputs, fs)
    results.append(
        _one(
            "pca",
            features(fit_w.x, c),
            features(thr_w.x, c),
            features(chk_w.x, c) if chk_w is not None else None,
            name=f"{model_cfg.name}-pca",
            out=out_dir / f"{model_cfg.name}-pca",
            window=spec.window,
            fs=fs,
            contract=c,
            far=far,
            sources=sources,
            key=key,
            seed=cfg.seed,
        )
    )

    mean = np.array([r.normalisation.mean for r in inputs])
    std = np.array([r.normalisation.std for r in inputs])
    length = spec.window.length
    lag_rule = "configured" if lags is not None else "Ku et al. 1995 with parallel analysis"
    if lags is None:
        top = min(max_lags, length - 1)
        lags = choose_lags((fit_w.x[:, -(top + 1) :, :] - mean) / std, max_lags=top, seed=cfg.seed)
    if lags + 1 > length:
        raise ValueError(f"{model_cfg.name}: {lags} lags need windows of at least {lags + 1} samples")
    dwin = WindowSpec(sample_period_s=spec.window.sample_period_s, length=lags + 1, stride=spec.window.stride)
    dfs = FeatureSpec(kind="flatten")
    dc = Contract(inputs, dfs)

    def tail(w: Windows) -> np.ndarray:
        return features(np.ascontiguousarray(w.x[:, -(lags + 1) :, :]), dc)

    results.append(
        _one(
            "dpca",
            tail(fit_w),
            tail(thr_w),
            tail(chk_w) if chk_w is not None else None,
            name=f"{model_cfg.name}-dpca",
            out=out_dir / f"{model_cfg.name}-dpca",
            window=dwin,
            fs=dfs,
            contract=dc,
            far=far,
            sources={**sources, "lags": lags, "lag_rule": lag_rule},
            key=key,
            seed=cfg.seed,
        )
    )
    return results
