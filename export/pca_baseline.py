"""PCA monitoring model (Hotelling T^2 and SPE): the classical baseline, without torch.

Fitted with numpy on the plant's normal recordings, written as ONNX with the ``onnx`` helper
API, shipped in ``models/`` so the demo works before the PyTorch export exists. Every later
model must beat it.

Pipeline (training and serving share the feature code):

1. Recordings (wide CSV: ``timestamp`` + one column per signal) are decimated to the model's
   sample period and cut into windows with :func:`agent.pipeline.features.sliding_windows`;
   windows holding a missing, non-finite or implausible value are dropped (what the agent's
   ``skip`` policy does).
2. Per-role normalisation (mean/std over the fitting data) goes into the manifest, and
   :func:`agent.pipeline.features.window_to_input` turns every window into its feature vector.
3. PCA on the feature vectors: features standardised, eigen-decomposition of the correlation
   matrix, ``k`` components by parallel analysis (eigenvalues above those of column-permuted
   data; a variance fraction or a fixed k on request), at most F-1 so the residual space is
   never empty. A dynamic PCA is the same model over lagged samples (``flatten`` features of
   a ``lags + 1`` window; :func:`choose_lags`).
4. ``T^2 = sum_j t_j^2 / lambda_j`` (distance inside the model plane), ``SPE = ||z - P P^T z||^2``
   (distance from it).
5. Thresholds are EMPIRICAL quantiles on held-out calibration windows (the last
   ``calibration_fraction`` of every recording, cut before windowing so no window straddles
   the split), each statistic at ``alpha / 2`` (Bonferroni), so the combined frame-level false
   alarm rate of ``T^2 > limit or SPE > limit`` is at most about ``alpha``. No F/chi^2 theory:
   the features of overlapping windows are neither Gaussian nor independent.

The ONNX graph: ``x[batch, F] → (x - mean) / scale → t = z P → T^2, SPE``; outputs ``t2`` and
``spe`` of shape ``[batch]``, each with an ``"alarm"`` threshold in the manifest (the scorer
adds ``t2_alarm``, ``spe_alarm`` and ``anomaly``).

With ``--check`` (fresh normal recordings) a model whose frame exceedance is above
:func:`check_passes`' limit is refused: exit 1, no bundle, a report in ``OUT.refused/``.

CLI: ``python -m export.pca_baseline --help`` (the command that builds ``models/pca-pump`` is
in ``models/README.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.modelstore.manifest import (
    MANIFEST_FILE,
    FeatureSpec,
    InputRole,
    Manifest,
    Normalisation,
    OutputSpec,
    TensorSpec,
    Variant,
    WindowSpec,
    schema_version_for,
)
from agent.pipeline.features import sliding_windows, window_to_input

if TYPE_CHECKING:
    from export.conditioned import ConditionedModel

__all__ = [
    "FitResult",
    "PcaModel",
    "RoleSpec",
    "alarm_episodes",
    "check",
    "check_passes",
    "choose_lags",
    "fit",
    "fit_pca",
    "input_roles",
    "load_series",
    "main",
    "parallel_analysis",
    "read_csv",
    "resolution",
    "split_segments",
    "to_onnx",
    "write_bundle",
    "write_refusal",
]

FloatArray = npt.NDArray[np.float64]

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.14 (the agent pins >= 1.20)
MODEL_FILE = "model.onnx"
_SCALE_FLOOR = 1e-3  # features are already in role-normalised units


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class PcaModel:
    """A fitted PCA monitoring model (float64 parameters)."""

    mean: FloatArray  # [F] feature means
    scale: FloatArray  # [F] feature standard deviations (floored)
    components: FloatArray  # [F, k] loadings, orthonormal columns
    eigenvalues: FloatArray  # [k] variances of the scores
    t2_limit: float
    spe_limit: float
    false_alarm_rate: float  # combined target (each statistic at half of it)
    explained_variance: float  # fraction of standardised variance kept by k components
    n_fit: int
    n_calibration: int

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    def scores(self, x: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """The numpy reference: (T^2, SPE) for feature vectors ``[N, F]``."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        t = z @ self.components
        t2 = np.sum(t * t / self.eigenvalues, axis=1)
        r = z - t @ self.components.T
        spe = np.sum(r * r, axis=1)
        return t2, spe

    def alarms(self, x: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """True where T^2 or SPE exceeds its limit (what the scorer's ``anomaly`` says)."""
        t2, spe = self.scores(x)
        out: npt.NDArray[np.bool_] = (t2 > self.t2_limit) | (spe > self.spe_limit)
        return out


def parallel_analysis(
    z: npt.ArrayLike, *, permutations: int = 20, quantile: float = 0.95, seed: int = 0, max_rows: int = 5000
) -> int:
    """Components to keep by parallel analysis (Horn 1965): the leading eigenvalues of the
    correlation matrix that exceed the ``quantile`` of the same-rank eigenvalues of the data
    with every column permuted on its own (no correlation left, the marginals kept). Noise
    adds eigenvalues near 1 to every component; a variance fraction counts them, this does not.
    At least 1."""
    zf = np.asarray(z, np.float64)
    rng = np.random.default_rng(seed)
    if len(zf) > max_rows:
        zf = zf[np.sort(rng.choice(len(zf), max_rows, replace=False))]
    zf = (zf - zf.mean(axis=0)) / np.maximum(zf.std(axis=0), 1e-12)
    n = len(zf)
    evals = np.linalg.eigvalsh(zf.T @ zf / (n - 1))[::-1]
    null = np.empty((permutations, zf.shape[1]))
    for i in range(permutations):
        zp = np.column_stack([rng.permutation(zf[:, j]) for j in range(zf.shape[1])])
        null[i] = np.linalg.eigvalsh(zp.T @ zp / (n - 1))[::-1]
    above = evals > np.quantile(null, quantile, axis=0)
    k = int(np.argmin(above)) if not above.all() else len(above)
    return max(1, k)


def fit_pca(
    x: npt.ArrayLike,
    *,
    n_components: int | None = None,
    variance: float | None = None,
    false_alarm_rate: float = 1e-3,
    calibration: npt.ArrayLike | None = None,
    seed: int = 0,
) -> PcaModel:
    """Fit PCA on feature vectors ``x[N, F]`` and set thresholds.

    ``n_components`` fixes k; ``variance`` keeps the smallest k holding that fraction of the
    standardised variance; neither: :func:`parallel_analysis` (holds on noisy data, where a
    variance fraction keeps most of the noise components). k is capped at F-1. Thresholds:
    empirical ``1 - false_alarm_rate/2`` quantiles of T^2 and SPE on ``calibration``
    (held-out normal data; the fitting data when None, which is optimistic for SPE).
    """
    xf = np.asarray(x, dtype=np.float64)
    if xf.ndim != 2 or xf.shape[0] < 2 or xf.shape[1] < 2:
        raise ValueError(f"need at least 2 samples of at least 2 features, got shape {list(xf.shape)}")
    if not np.all(np.isfinite(xf)):
        raise ValueError("fitting data contains values that are not finite")
    if not 0 < false_alarm_rate < 1:
        raise ValueError("false_alarm_rate must be in (0, 1)")
    n, f = xf.shape
    mean = xf.mean(axis=0)
    scale = np.maximum(xf.std(axis=0, ddof=1), _SCALE_FLOOR)
    z = (xf - mean) / scale
    cov = z.T @ z / (n - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals = np.maximum(evals[order], 1e-12)
    evecs = evecs[:, order]
    total = float(np.sum(evals))
    if n_components is not None:
        k = n_components
    elif variance is not None:
        if not 0 < variance <= 1:
            raise ValueError("variance must be in (0, 1]")
        cum = np.cumsum(evals) / total
        k = int(np.searchsorted(cum, variance - 1e-12) + 1)
    else:
        k = parallel_analysis(z, seed=seed)
    k = max(1, min(k, f - 1))
    # A deterministic sign per component (largest loading positive) makes bundles reproducible.
    comps = evecs[:, :k]
    signs = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(k)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    draft = PcaModel(
        mean,
        scale,
        comps,
        evals[:k],
        math.inf,
        math.inf,
        false_alarm_rate,
        float(np.sum(evals[:k]) / total),
        n,
        0,
    )
    cal = xf if calibration is None else np.asarray(calibration, dtype=np.float64)
    if cal.ndim != 2 or cal.shape[1] != f or cal.shape[0] < 1:
        raise ValueError(f"calibration data must be [M, {f}], got shape {list(cal.shape)}")
    t2, spe = draft.scores(cal)
    q = 1.0 - false_alarm_rate / 2.0
    return PcaModel(
        mean,
        scale,
        comps,
        evals[:k],
        t2_limit=float(np.quantile(t2, q)),
        spe_limit=float(np.quantile(spe, q)),
        false_alarm_rate=false_alarm_rate,
        explained_variance=draft.explained_variance,
        n_fit=n,
        n_calibration=int(cal.shape[0]),
    )


def resolution(values: npt.ArrayLike) -> float:
    """The smallest step between distinct finite values (0 for fewer than two)."""
    v = np.asarray(values, np.float64)
    u = np.unique(v[np.isfinite(v)])
    return float(np.min(np.diff(u))) if len(u) > 1 else 0.0


def choose_lags(windows: npt.ArrayLike, *, max_lags: int = 5, seed: int = 0) -> int:
    """The lag count of a dynamic PCA (Ku, Storer, Georgakis 1995), from windows ``[W, T, R]``
    of normalised samples (T > ``max_lags``): with ``l`` lags, parallel analysis keeps ``k(l)``
    components of the lagged data, so ``r(l) = (l + 1) R - k(l)`` linear relations hold; the
    relations a lag adds beyond those the earlier lags already imply are
    ``r_new(l) = r(l) - sum_{i<l} (l - i + 1) r_new(i)``. The answer is the last lag that added
    relations (at least 1, at most ``max_lags``)."""
    w = np.asarray(windows, np.float64)
    if w.ndim != 3 or w.shape[1] <= max_lags:
        raise ValueError(f"need windows [W, T, R] with T > {max_lags}, got shape {list(w.shape)}")
    r_new: list[int] = []
    for lag in range(max_lags + 1):
        x = w[:, -(lag + 1) :, :].reshape(len(w), -1)
        k = parallel_analysis(x, seed=seed)
        r = (lag + 1) * w.shape[2] - k
        new = r - sum((lag - i + 1) * r_new[i] for i in range(lag))
        if lag > 0 and new <= 0:
            return max(1, lag - 1)
        r_new.append(new)
    return max(1, max_lags)


def check_passes(exceedance_rate: float, frames: int, target: float) -> tuple[bool, float]:
    """Whether a fresh normal run's frame exceedance is consistent with the target rate:
    at most twice the target plus three binomial standard errors (frames of overlapping
    windows are not independent, hence the factor two). Returns (passed, limit)."""
    limit = 2.0 * target + 3.0 * math.sqrt(target * (1.0 - target) / max(frames, 1))
    return bool(exceedance_rate <= limit), limit


def to_onnx(model: PcaModel, *, input_name: str = "x", name: str = "pca") -> onnx.ModelProto:
    """The model as ONNX (float32, opset 17): ``x[batch, F]`` → ``t2[batch]``, ``spe[batch]``."""
    f, k = model.n_features, model.n_components

    def const(cname: str, value: npt.ArrayLike, dtype: type[np.generic] = np.float32) -> TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), cname)

    inits = [
        const("mean", model.mean),
        const("inv_scale", 1.0 / model.scale),
        const("P", model.components),
        const("PT", model.components.T),
        const("inv_lambda", 1.0 / model.eigenvalues),
        const("axis1", [1], np.int64),
    ]
    nodes = [
        helper.make_node("Sub", [input_name, "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_scale"], ["z"]),
        helper.make_node("MatMul", ["z", "P"], ["t"]),
        helper.make_node("Mul", ["t", "t"], ["t_sq"]),
        helper.make_node("Mul", ["t_sq", "inv_lambda"], ["t_w"]),
        helper.make_node("ReduceSum", ["t_w", "axis1"], ["t2"], keepdims=0),
        helper.make_node("MatMul", ["t", "PT"], ["z_hat"]),
        helper.make_node("Sub", ["z", "z_hat"], ["residual"]),
        helper.make_node("Mul", ["residual", "residual"], ["r_sq"]),
        helper.make_node("ReduceSum", ["r_sq", "axis1"], ["spe"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", f])],
        [
            helper.make_tensor_value_info("t2", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("spe", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-inference-agent export.pca_baseline",
        doc_string=f"PCA monitoring: {f} features, {k} components; outputs Hotelling T^2 and SPE",
    )
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(
    out_dir: str | Path,
    model: PcaModel | ConditionedModel,
    *,
    name: str,
    version: str,
    window: WindowSpec,
    inputs: Sequence[InputRole],
    features: FeatureSpec,
    description: str = "",
    provenance: Mapping[str, str] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Manifest:
    """Write ``model.onnx`` and ``manifest.json`` (with sha256 and size of it and of every
    ``extra_files`` text file, e.g. a report) into ``out_dir``. A
    :class:`export.conditioned.ConditionedModel` is written the same way (same outputs), its
    provenance says so and its inputs carry ``operating``."""
    from agent.modelstore.manifest import FileHash
    from export import conditioned

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_pca = isinstance(model, PcaModel)
    graph = to_onnx(model, name=name) if is_pca else conditioned.to_onnx(model, name=name)
    data = graph.SerializeToString()
    files = {}
    for fname, text in (extra_files or {}).items():
        raw = text.encode("utf-8")
        (out / fname).write_bytes(raw)
        files[fname] = FileHash(sha256=_sha256(raw), size=len(raw))
    alpha_each = model.false_alarm_rate / 2.0
    manifest = Manifest(
        schema_version=schema_version_for(inputs),  # 2 with an ewma role (the teachers chain's references)
        name=name,
        version=version,
        task="anomaly",
        description=description
        or (
            "PCA monitoring baseline (Hotelling T^2 and SPE) fitted on normal operation"
            if is_pca
            else "Hotelling T^2 and SPE of what the operating variables do not explain "
            "(operating-point-conditioned PCA)"
        ),
        window=window,
        inputs=tuple(inputs),
        features=features,
        model_input=TensorSpec(name="x", shape=("batch", model.n_features), dtype="float32"),
        outputs=(
            OutputSpec(
                name="t2",
                meaning=f"Hotelling T^2 in the {model.n_components}-component model plane "
                + ("" if is_pca else "of the residuals given the operating point ")
                + "(unusual combination of known variations)",
                thresholds={"alarm": model.t2_limit},
                false_alarm_rate=alpha_each,
            ),
            OutputSpec(
                name="spe",
                meaning="squared prediction error (Q) off the model plane (a new kind of variation)",
                thresholds={"alarm": model.spe_limit},
                false_alarm_rate=alpha_each,
            ),
        ),
        variants=(
            Variant(
                file=MODEL_FILE,
                precision="fp32",
                sha256=_sha256(data),
                size=len(data),
                note="fp32 only: a model this small gains nothing from INT8",
            ),
        ),
        files=files,
        provenance={
            "method": "pca" if is_pca else "conditioned-pca",
            **(
                {}
                if is_pca
                else {
                    "operating_terms": f"{len(model.terms)} polynomial terms in the "
                    f"{len(model.regressors)} operating statistics",
                    "gate_gain": f"{model.gate_gain:.6g}",
                }
            ),
            "components": str(model.n_components),
            "explained_variance": f"{model.explained_variance:.4f}",
            "thresholds": "empirical quantiles on held-out calibration windows, Bonferroni alpha/2 each",
            "false_alarm_rate": f"{model.false_alarm_rate:g}",
            "fit_windows": str(model.n_fit),
            "calibration_windows": str(model.n_calibration),
            **dict(provenance or {}),
        },
    )
    (out / MODEL_FILE).write_bytes(data)
    (out / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


# --------------------------------------------------------------------------- recordings


def read_csv(
    path: str | Path, columns: Sequence[str] | None = None
) -> tuple[FloatArray, dict[str, FloatArray]]:
    """A wide CSV: ``timestamp`` (epoch seconds or ms, or ISO 8601) + columns; text and blanks
    → NaN (read by :func:`export.tables.read_table`: sorted, a repeated timestamp keeps the
    last row).

    Returns (timestamps in seconds, {column: values}) for ``columns`` (default: all).
    Raises ValueError naming the file when the header or a timestamp is wrong or a column
    is missing.
    """
    from export.tables import read_table

    p = Path(path)
    table = read_table(p, columns=columns)
    if table.form != "wide":
        raise ValueError(f"{p}: expected a wide CSV (timestamp + one column per tag)")
    wanted = list(table.series) if columns is None else list(dict.fromkeys(columns))
    missing = [c for c in wanted if not table.has(c)]
    if missing:
        has = [c for c in table.available if c != "timestamp"][:20]
        raise ValueError(f"{p}: no column(s) {missing} (has {has})")
    if not wanted:
        return np.empty(0), {}
    out: dict[str, FloatArray] = {}
    for c in wanted:
        _, v = table.series[c]
        out[c] = np.full(len(v), np.nan) if v.dtype == object else v.astype(np.float64)
    return table.series[wanted[0]][0], out


def load_series(path: str | Path, columns: Sequence[str], period_s: float) -> list[FloatArray]:
    """One recording → gap-free segments ``[N, C]`` sampled every ``period_s``.

    Rows are decimated to the model's period (the agent samples the latest value on each
    tick); a jump in time splits the series into segments.
    """
    stamps, cols = read_csv(path, columns)
    if len(stamps) < 2:
        return []
    dt = float(np.median(np.diff(stamps)))
    if dt <= 0:
        raise ValueError(f"{path}: timestamps do not increase")
    step = round(period_s / dt)
    if step < 1 or abs(step * dt - period_s) > 0.01 * period_s:
        raise ValueError(
            f"{path}: rows every {dt:g} s cannot be decimated to the model period {period_s:g} s"
        )
    idx = np.arange(0, len(stamps), step)
    values = np.stack([cols[c][idx] for c in columns], axis=1)
    t = stamps[idx]
    breaks = np.nonzero(np.diff(t) > 1.5 * period_s)[0] + 1
    return [seg for seg in np.split(values, breaks) if len(seg)]


@dataclass(frozen=True)
class RoleSpec:
    """A role as given on the command line: name, unit, plausible range, column template."""

    role: str
    unit: str
    low: float
    high: float
    column: str  # may contain {asset}

    @classmethod
    def parse(cls, text: str) -> RoleSpec:
        """``ROLE:UNIT:LOW:HIGH:COLUMN`` (the unit may itself contain ':')."""
        head, low, high, column = text.rsplit(":", 3) if text.count(":") >= 4 else ("", "", "", "")
        role, _, unit = head.partition(":")
        if not role or not column:
            raise ValueError(f"role spec {text!r}: expected ROLE:UNIT:LOW:HIGH:COLUMN")
        return cls(role, unit, float(low), float(high), column)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` produced: the model, the roles with normalisation, and the data used."""

    model: PcaModel | ConditionedModel
    inputs: tuple[InputRole, ...]
    features: FeatureSpec
    window: WindowSpec
    fit_windows: int
    calibration_windows: int


@dataclass(frozen=True)
class _Contract:
    inputs: tuple[InputRole, ...]
    features: FeatureSpec


_CHUNK = 4096  # windows per feature batch: bounded memory for days of recordings


def _features(segments: Sequence[FloatArray], window: WindowSpec, contract: _Contract) -> FloatArray:
    """Feature vectors [N, F] of every clean window (the agent's framing and feature code)."""
    parts: list[FloatArray] = []
    for seg in segments:
        view = sliding_windows(seg, window.length, window.stride)
        for i in range(0, len(view), _CHUNK):
            w = view[i : i + _CHUNK]
            ok = np.all(np.isfinite(w), axis=(1, 2))  # a bad sample: the window is skipped
            if ok.any():
                x = window_to_input(w[ok], contract)
                parts.append(x.reshape(len(x), -1).astype(np.float64))
    if not parts:
        return np.empty((0, 0))
    return np.concatenate(parts)


def _plausible(seg: FloatArray, roles: Sequence[RoleSpec]) -> FloatArray:
    lo = np.array([r.low for r in roles])
    hi = np.array([r.high for r in roles])
    out = seg.copy()
    out[(seg < lo) | (seg > hi)] = np.nan  # implausible = bad: windows holding it are dropped
    return out


def _split(segments: Sequence[FloatArray], fraction: float) -> tuple[list[FloatArray], list[FloatArray]]:
    head: list[FloatArray] = []
    tail: list[FloatArray] = []
    for seg in segments:
        cut = round(len(seg) * (1.0 - fraction))
        head.append(seg[:cut])
        tail.append(seg[cut:])
    return head, tail


def _asset_segments(
    path: str | Path,
    role_columns: Mapping[str, Mapping[str, str]],
    roles: Sequence[RoleSpec],
    period_s: float,
) -> dict[str, list[FloatArray]]:
    """Read a recording once; per asset, its segments [N, R] (roles in order, implausible → NaN)."""
    names = [r.role for r in roles]
    for asset, mapping in role_columns.items():
        missing = [r for r in names if r not in mapping]
        if missing:
            raise ValueError(f"asset {asset}: no column for roles {missing}")
    columns = list(dict.fromkeys(mapping[r] for mapping in role_columns.values() for r in names))
    segments = load_series(path, columns, period_s)
    out: dict[str, list[FloatArray]] = {}
    for asset, mapping in role_columns.items():
        idx = [columns.index(mapping[r]) for r in names]
        out[asset] = [_plausible(seg[:, idx], roles) for seg in segments]
    return out


def input_roles(
    samples: FloatArray, roles: Sequence[RoleSpec], operating: Sequence[str] = ()
) -> tuple[InputRole, ...]:
    """The manifest's inputs for fitting samples ``[N, R]`` (NaN: bad): standard normalisation
    by their mean and std, the std floored at the column's resolution (round-off is never
    hundreds of sigma), the training range, ``operating`` for the roles named in it."""
    mean = np.nanmean(samples, axis=0)
    std = np.nanstd(samples, axis=0)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        bad = [r.role for r, m in zip(roles, mean, strict=True) if not np.isfinite(m)]
        raise ValueError(f"no valid samples for roles {bad}")
    return tuple(
        InputRole(
            role=r.role,
            unit=r.unit,
            range=(r.low, r.high),
            normalisation=Normalisation(
                kind="standard",
                mean=float(mean[i]),
                std=float(max(std[i], resolution(samples[:, i]), 1e-6 * abs(float(mean[i])), 1e-12)),
            ),
            training_range=(float(np.nanmin(samples[:, i])), float(np.nanmax(samples[:, i]))),
            operating=r.role in operating,
        )
        for i, r in enumerate(roles)
    )


def split_segments(
    paths: Sequence[str | Path],
    role_columns: Mapping[str, Mapping[str, str]],
    roles: Sequence[RoleSpec],
    period_s: float,
    fraction: float,
) -> tuple[list[FloatArray], list[FloatArray]]:
    """Every asset's segments of every recording, each cut in time: the first part (to fit) and
    the last ``fraction`` (held out), empty pieces dropped."""
    head_segs: list[FloatArray] = []
    tail_segs: list[FloatArray] = []
    for path in paths:
        for segs in _asset_segments(path, role_columns, roles, period_s).values():
            head, tail = _split(segs, fraction)
            head_segs += [s for s in head if len(s)]
            tail_segs += [s for s in tail if len(s)]
    return head_segs, tail_segs


def fit(
    csv_paths: Sequence[str | Path],
    role_columns: Mapping[str, Mapping[str, str]],
    roles: Sequence[RoleSpec],
    window: WindowSpec,
    features: FeatureSpec,
    *,
    n_components: int | None = None,
    variance: float = 0.95,
    false_alarm_rate: float = 1e-3,
    calibration_fraction: float = 0.3,
    operating: Sequence[str] = (),
    degree: int = 3,
    gate: bool = False,
) -> FitResult:
    """Fit the baseline on recordings of normal operation.

    ``role_columns``: asset → {role → CSV column}; every asset's windows are pooled (one model
    for identical pumps). The last ``calibration_fraction`` of every recording is held out to
    set the thresholds. Per-role normalisation: mean and std of the fitting samples.
    ``operating``: roles that are operating variables; with any, the model is the
    operating-point-conditioned one (:mod:`export.conditioned`, a polynomial of ``degree``;
    ``gate``: widen the residuals while the first operating role moves within the window).
    """
    if not 0 < calibration_fraction < 1:
        raise ValueError("calibration_fraction must be in (0, 1)")
    period = window.sample_period_s
    fit_segs, cal_segs = split_segments(csv_paths, role_columns, roles, period, calibration_fraction)
    if not fit_segs:
        raise ValueError("no data in the recordings")
    inputs = input_roles(np.concatenate(fit_segs), roles, operating)
    contract = _Contract(inputs, features)
    x_fit = _features(fit_segs, window, contract)
    x_cal = _features(cal_segs, window, contract)
    if len(x_fit) < 10 or len(x_cal) < 10:
        raise ValueError(f"too little clean data: {len(x_fit)} fitting and {len(x_cal)} calibration windows")
    model: PcaModel | ConditionedModel
    if operating:
        from export.conditioned import feature_indices, fit_conditioned

        names = [r.role for r in roles]
        reg, _ = feature_indices(names, features.stats, operating)
        # the first operating role is the commanded one (speed): its spread says "being moved"
        gate_index = (
            list(features.stats).index("std") * len(names) + names.index(operating[0])
            if gate and "std" in features.stats
            else None
        )
        model = fit_conditioned(
            x_fit,
            reg,
            calibration=x_cal,
            n_means=len(operating),
            degree=degree,
            gate=gate_index,
            n_components=n_components,
            variance=variance,
            false_alarm_rate=false_alarm_rate,
        )
    else:
        model = fit_pca(
            x_fit,
            n_components=n_components,
            variance=variance,
            false_alarm_rate=false_alarm_rate,
            calibration=x_cal,
        )
    return FitResult(model, inputs, features, window, len(x_fit), len(x_cal))


def alarm_episodes(flags: npt.ArrayLike, on_delay: int) -> int:
    """Alarms raised by a flag sequence with an on-delay of ``on_delay`` consecutive frames."""
    f = np.asarray(flags, dtype=bool)
    run = 0
    episodes = 0
    for v in f:
        run = run + 1 if v else 0
        if run == on_delay:
            episodes += 1
    return episodes


def check(
    result: FitResult,
    csv_paths: Sequence[str | Path],
    role_columns: Mapping[str, Mapping[str, str]],
    roles: Sequence[RoleSpec],
    on_delay: int,
) -> dict[str, float]:
    """False alarms of a fitted model on fresh normal recordings.

    Frame-level exceedance rate, and alarms with an on-delay of ``on_delay`` consecutive
    frames per asset-day (what an alarm engine with that on-delay would raise).
    """
    contract = _Contract(result.inputs, result.features)
    frames = 0
    exceed = 0
    episodes = 0
    for path in csv_paths:
        for segs in _asset_segments(path, role_columns, roles, result.window.sample_period_s).values():
            for seg in segs:
                x = _features([seg], result.window, contract)
                if not len(x):
                    continue
                flags = result.model.alarms(x)
                frames += len(flags)
                exceed += int(flags.sum())
                episodes += alarm_episodes(flags, on_delay)
    frame_s = result.window.sample_period_s * result.window.stride
    days = frames * frame_s / 86400.0
    return {
        "frames": float(frames),
        "exceedance_rate": exceed / frames if frames else math.nan,
        "alarms": float(episodes),
        "asset_days": days,
        "alarms_per_asset_day": episodes / days if days else math.nan,
    }


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m export.pca_baseline",
        description="Fit the PCA (T^2/SPE) baseline on normal recordings and write an ONNX bundle.",
    )
    ap.add_argument("--csv", action="append", required=True, type=Path, help="normal recording (repeat)")
    ap.add_argument(
        "--check",
        action="append",
        default=[],
        type=Path,
        help="fresh normal recording to report false alarms on (repeat)",
    )
    ap.add_argument(
        "--role",
        action="append",
        required=True,
        help="ROLE:UNIT:LOW:HIGH:COLUMN, COLUMN may contain {asset} (repeat, in input order)",
    )
    ap.add_argument(
        "--asset",
        action="append",
        default=[],
        help="asset name substituted for {asset} in columns (repeat; default: one asset)",
    )
    ap.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    ap.add_argument("--name", required=True)
    ap.add_argument("--version", default="1")
    ap.add_argument("--period", type=float, default=1.0, help="sample period in seconds")
    ap.add_argument("--window", type=int, default=60, help="window length in samples")
    ap.add_argument("--stride", type=int, default=10, help="frame every N samples")
    ap.add_argument(
        "--stats", default="mean,std", help="per-role window statistics (mean,std,min,max,last,slope)"
    )
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--components", type=int, help="number of principal components")
    group.add_argument(
        "--variance", type=float, help="variance fraction to keep (default: parallel analysis chooses k)"
    )
    ap.add_argument(
        "--false-alarm-rate",
        type=float,
        default=1e-3,
        help="combined per-frame false alarm rate (each statistic at half)",
    )
    ap.add_argument("--calibration-fraction", type=float, default=0.3)
    ap.add_argument(
        "--operating",
        action="append",
        default=[],
        metavar="ROLE",
        help="an operating variable (repeat): the model explains the other features by these "
        "roles' window means first and monitors the residuals (export/conditioned.py)",
    )
    ap.add_argument(
        "--gate",
        action="store_true",
        help="divide the residuals by their expected width while the first operating role moves "
        "within the window (tighter thresholds, and a step may then alert: bench/operating_point.py)",
    )
    ap.add_argument("--degree", type=int, default=3, help="polynomial degree in the operating variables")
    ap.add_argument("--on-delay", type=int, default=3, help="frames, for the --check report")
    ap.add_argument(
        "--provenance",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra provenance recorded in the manifest, e.g. how the recordings were made",
    )
    return ap


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--provenance {text!r}: expected KEY=VALUE")
    return key, value


def write_refusal(out: Path, data: Mapping[str, object]) -> Path:
    """A refused bundle's report: ``<out>.refused/report.json`` and ``report.md`` (never in
    ``out``, which keeps whatever bundle it held)."""
    where = Path(f"{out}.refused")
    where.mkdir(parents=True, exist_ok=True)
    (where / "report.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    lines = [f"# {data.get('name', out.name)}: no bundle written", "", f"{data.get('refused', '')}", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(data.items()) if k not in ("name", "refused")]
    (where / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return where


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints a summary and returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        roles = [RoleSpec.parse(r) for r in args.role]
        assets = args.asset or ["asset"]
        role_columns = {a: {r.role: r.column.format(asset=a) for r in roles} for a in assets}
        window = WindowSpec(sample_period_s=args.period, length=args.window, stride=args.stride)
        features = FeatureSpec(kind="summary", stats=tuple(s.strip() for s in args.stats.split(",")))
        result = fit(
            args.csv,
            role_columns,
            roles,
            window,
            features,
            n_components=args.components,
            variance=args.variance,
            false_alarm_rate=args.false_alarm_rate,
            calibration_fraction=args.calibration_fraction,
            operating=args.operating,
            degree=args.degree,
            gate=args.gate,
        )
        report = check(result, args.check, role_columns, roles, args.on_delay) if args.check else {}
        extra = dict(_key_value(kv) for kv in args.provenance)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = result.model
    if report:
        ok, limit = check_passes(report["exceedance_rate"], int(report["frames"]), m.false_alarm_rate)
        if not ok:
            where = write_refusal(
                args.out,
                {
                    "name": args.name,
                    "refused": "the fresh normal data of --check exceed the false-alarm target",
                    "false_alarm_rate": m.false_alarm_rate,
                    "limit": limit,
                    "check": report,
                    "components": m.n_components,
                    "features": m.n_features,
                },
            )
            print(
                f"error: {args.name}: --check exceedance {report['exceedance_rate']:.2%} per frame on "
                f"{report['frames']:.0f} frames, above the limit {limit:.2%} for the target "
                f"{m.false_alarm_rate:g}: no bundle written (report: {where})",
                file=sys.stderr,
            )
            return 1
    provenance = {
        "recordings": " ".join(p.name for p in args.csv),
        "assets": " ".join(assets),
        "columns": json.dumps(role_columns, sort_keys=True),
        **extra,
    }
    if report:
        provenance["check"] = (
            f"{' '.join(p.name for p in args.check)}: exceedance {report['exceedance_rate']:.2e}/frame, "
            f"{report['alarms']:.0f} alarms (on-delay {args.on_delay} frames) in "
            f"{report['asset_days']:.2f} asset-days"
        )
    manifest = write_bundle(
        args.out,
        result.model,
        name=args.name,
        version=args.version,
        window=window,
        inputs=result.inputs,
        features=features,
        provenance=provenance,
    )
    print(
        f"wrote {args.out} ({manifest.ident}): {m.n_features} features, {m.n_components} components "
        f"({m.explained_variance:.1%} of variance)"
    )
    print(f"  windows: {result.fit_windows} fit, {result.calibration_windows} calibration")
    print(
        f"  thresholds at false-alarm rate {m.false_alarm_rate:g}: "
        f"T2 > {m.t2_limit:.4g}, SPE > {m.spe_limit:.4g}"
    )
    if report:
        print(
            f"  check: {report['frames']:.0f} frames, exceedance {report['exceedance_rate']:.2e}/frame, "
            f"{report['alarms']:.0f} alarms with on-delay {args.on_delay} in {report['asset_days']:.2f} "
            f"asset-days = {report['alarms_per_asset_day']:.3f} per asset-day"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
