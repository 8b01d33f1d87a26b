"""The export chain: recordings → teachers → distilled, pruned students → gated ONNX bundles.

One call of :func:`export_model` does, for one model of the config:

1. windows from the recordings (:mod:`export.data`: train / validation by time / test by seed)
   and per-role normalisation from the training data;
2. every configured teacher (or an ensemble of seeds of it), trained and scored on
   validation; the best one teaches;
3. the students (MLPs over summary features) from ``seeds`` training seeds: distilled from the
   teacher on the transfer set (the labelled windows and the unlabelled ``split: transfer``
   recordings), structurally pruned and fine-tuned; as many same-size students trained from
   scratch as the control (gate ``distillation``: mean and spread over the seeds);
4. FP32 ONNX (gate ``fp32_parity``), INT8 QDQ (gate ``int8_agreement``), latencies of every
   variant; the score's alert threshold calibrated for ``false_alerts_per_day`` through the
   agent's own replay (:mod:`agent.replay`, :func:`export.evaluate.calibrate`) on the validation
   part of the training recordings, the PCA baseline's likewise, and both replayed on the test
   recordings: detection rate and delay per labelled episode (gate ``detection``; a failed gate
   still writes ``report.json``/``report.md``, never a bundle);
5. the bundle: ``model.onnx`` (+ ``model.int8.onnx``), ``manifest.json`` with the sha256 of
   every file, ``report.json``/``report.md`` and plots; then the signature.

:func:`package` is steps 4-5 for any ``nn.Module`` with a manifest (``edge-export module``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import (
    MANIFEST_FILE,
    FeatureSpec,
    FileHash,
    InputRole,
    Manifest,
    OutputSpec,
    Stat,
    TensorSpec,
    Variant,
    schema_version_for,
)
from agent.modelstore.signing import sign_bundle
from export import baselines, gates, quantize, report
from export.augment import drifted_windows, frozen_windows
from export.data import (
    NORMAL,
    Contract,
    Dataset,
    DataSpec,
    Recording,
    Windows,
    build_dataset,
    features,
    fit_normalisation,
    reference_gaps,
    reference_pairs,
)
from export.dataconfig import DataConfig, data_spec
from export.evaluate import chain_detection, provisional_bundle, render_table, threshold_at
from export.nets import MLP, AutoEncoder, Ensemble, build_net
from export.onnx_tools import (
    ClassifierGraph,
    ReconstructionScore,
    RegressorGraph,
    cpu_features,
    latency_us,
    quantize_int8,
    run_onnx,
    to_onnx,
)
from export.pca_baseline import fit_pca
from export.pca_baseline import write_bundle as write_pca_bundle
from export.tables import TimestampSpec, expand_paths
from export.train import (
    FitConfig,
    auc,
    balanced_accuracy,
    confusion,
    fit,
    n_params,
    predict,
    prune_mlp,
    roc_curve,
    seed_everything,
)

__all__ = [
    "ExportConfig",
    "ModelConfig",
    "SyntheticFaults",
    "export_model",
    "load_config",
    "package",
    "record_all",
    "with_synthetic_faults",
]

# --------------------------------------------------------------------------- config


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RecordingSet(_Strict):
    """Recordings made by the simulator (``seeds``), or the user's files (``files``: paths or
    glob patterns of wide/long CSV files, ``.csv.gz``, or agent recording directories).

    ``split``: ``train`` (cut in time into train / validation [/ test]), ``test`` (whole),
    ``calibration`` (a separate normal run, for thresholds only), or ``transfer`` (unlabelled
    operation: the teacher labels its windows for distillation; its labels are never used).
    """

    name: str
    scenario: str = "random"  # "random" (a seeded fault schedule), "normal", or a scenario YAML path
    seeds: list[int] = []
    hours: float = 24.0
    split: Literal["train", "test", "calibration", "transfer"] = "train"
    format: Literal["wide", "long"] = "wide"
    files: list[str] = []  # existing recordings instead of simulating (paths or globs)
    targets: dict[str, str] = {}  # label/rul/oracle column overrides (long CSVs name tags)
    timestamp: TimestampSpec | None = None  # these files' time format (default: data.timestamp)


class Recordings(_Strict):
    dir: Path = Path("build/recordings/export")
    pumps: int = 2
    sample_period_s: float = 1.0
    sets: list[RecordingSet]


class NetConfig(_Strict):
    arch: Literal["mlp", "cnn", "tcn", "transformer", "autoencoder"] = "mlp"
    features: Literal["summary", "sequence", "flatten"] = "summary"
    hidden: list[int] = [64, 32]
    bottleneck: int = 8
    channels: int = 64
    d_model: int = 32
    heads: int = 4
    layers: int = 2
    dropout: float = 0.0
    epochs: int | None = None  # a teacher's own epoch count (default: fit.epochs)
    ensemble: Annotated[int, Field(ge=1)] = 1  # a teacher: members from as many seeds, outputs averaged
    log_std: bool = False  # an MLP over summary features: the window std of every role as log(1e-3 + std)
    # an MLP: every other input as sign(x) log(1 + |x|) in the graph (bounded activations: W8A8)
    squash: bool = False


class FitSettings(_Strict):
    epochs: int = 30
    finetune_epochs: int = 10
    batch: int = 256
    lr: float = 1e-3
    patience: int = 6
    alpha: float = 0.5
    temperature: float = 4.0


class Int8Settings(_Strict):
    mode: Literal["optional", "required", "off"] = "optional"
    activation: Literal["uint8", "int8"] = "uint8"
    weight: Literal["uint8", "int8"] = "int8"
    reduce_range: bool | None = None  # None: on unless the CPU has VNNI/dot-product... see onnx_tools
    calibration_windows: int = 2000
    graph_normalisation: bool = True  # the graph normalises its raw input (schema 2): export/quantize.py


_DEFAULT_INT8 = Int8Settings()


class OutputNaming(_Strict):
    """Name, unit and meaning of a regression output (``rul``: rul_h in h; ``setpoint``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    unit: str | None = None
    meaning: str = ""


class SyntheticFaults(_Strict):
    """Synthetic sensor-fault windows added to a classifier's labelled training windows
    (:mod:`export.augment`): copies of normal windows with one of ``roles`` frozen (class
    ``stuck``) or offset (class ``drift``), so every tag a sensor fault can hit is taught, not
    only the tags the labelled days happened to hit. Class names are the data's (``classes``)."""

    roles: Annotated[list[str], Field(min_length=1)]
    stuck: str | None = None  # the frozen-sensor class
    stuck_windows: Annotated[int, Field(ge=0)] = 0
    stuck_max_age_s: Annotated[float, Field(ge=0)] = 1800.0  # the freeze began up to this long before
    drift: str | None = None  # the drifting-sensor class
    drift_windows: Annotated[int, Field(ge=0)] = 0
    # the offset's size: uniform in [drift_min_share, 1] x drift_max_share of the role's sensor range
    drift_max_share: Annotated[float, Field(gt=0)] = 0.08
    drift_min_share: Annotated[float, Field(ge=0, le=1)] = 0.25


class ModelConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._\-]*$")]
    version: str = "1"
    task: Literal["classifier", "anomaly", "rul", "setpoint"]
    description: str = ""
    out: Path
    data: DataConfig
    stats: list[Stat] = [
        "mean",
        "std",
        "min",
        "max",
        "slope",
    ]
    # the rows the recent_* stats cover (the last `recent` of the window): a long window for
    # slow and intermittent faults that still sees the last minute on its own
    recent: Annotated[int, Field(ge=2)] | None = None
    teachers: list[NetConfig]
    student: NetConfig
    prune: Annotated[float, Field(gt=0, le=1)] = 0.5
    distillation: Literal["auto", "required", "off"] = "auto"
    distillation_tolerance: float = 0.0
    # students per family (distilled, scratch) from as many training seeds: the distillation
    # gate compares their means and spreads (at least 3, or the gate fails)
    seeds: Annotated[int, Field(ge=1)] = 3
    distillation_min_t: float = 2.0  # the win in standard errors of the difference (Welch's t)
    # which seed of the winning family ships: the best validation metric, or the best mean of
    # validation and test (when the validation days miss fault kinds the test days hold)
    pick: Literal["validation", "validation+test"] = "validation"
    # distil on `all` (the labelled windows, plus `split: transfer` recordings thinned to the
    # training stride) or on the `labelled` windows only
    transfer: Literal["all", "labelled"] = "all"
    # share of the normal training windows kept (every k-th; classifier, rul, setpoint): normal
    # operation is most windows and nearly the same; the transfer set still covers it
    normal_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    int8: Int8Settings = Int8Settings()
    false_alarm_rate: float = 3e-4
    on_delay: int = 3
    false_alerts_per_day: Annotated[float, Field(gt=0)] = 1.0
    detection_gate: bool = True
    rul_cap_h: float = 8.0
    output: OutputNaming = OutputNaming()
    synthetic: SyntheticFaults | None = None  # a classifier's synthetic sensor-fault windows
    # roles only the teachers see (learning using privileged information): the students and the
    # bundle leave them out; a `data.ewma` reference enters a teacher as its tag minus it
    privileged: list[str] = []
    baselines: bool = False  # also build Isolation Forest / LOF / kNN and report their delays
    fit: FitSettings = FitSettings()

    @model_validator(mode="after")
    def _recent_fits(self) -> ModelConfig:
        if any(s.startswith("recent_") for s in self.stats) != (self.recent is not None):
            raise ValueError("recent_* stats need recent (the rows they cover), and recent needs one of them")
        if self.recent is not None and self.recent > self.data.window.length:
            raise ValueError(f"recent {self.recent} is longer than the window ({self.data.window.length})")
        return self


class ExportConfig(_Strict):
    seed: int = 0
    threads: int = 1
    key: Path | None = None  # private key to sign bundles with
    progress: bool = True
    recordings: Recordings
    models: list[ModelConfig]


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "datetime"})


def _union_member(part: int | str) -> bool:
    """pydantic names the member of a union it tried in the error path (``list[str]``)."""
    return isinstance(part, str) and (part in _TYPE_NAMES or ("[" in part and part.endswith("]")))


def load_config(path: str | Path) -> ExportConfig:
    """Read and validate an export config (YAML). Errors: :class:`agent.errors.ConfigError`,
    one ``file:line field.path: message`` line per problem (the agent's located loader)."""
    from agent.config import _message
    from agent.configyaml import compose, line_for, problem, read_text
    from agent.errors import ConfigError

    source = str(path)
    data, lines = compose(read_text(path), source)
    if not isinstance(data, dict):
        raise ConfigError([problem(source, 1, "(top level)", "must be a mapping")])
    try:
        return ExportConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not _union_member(p))
            problems.append(problem(source, line_for(loc, lines), loc, _message(err)))
        raise ConfigError(problems) from None


# --------------------------------------------------------------------------- recordings


def random_fault_schedule(seed: int, hours: float, pumps: int) -> list[Any]:
    """A seeded schedule: every fault class in random order on random pumps, with random
    severities and quiet gaps; bearing wear runs to failure and is then replaced."""
    from simulator.faults import Fault, FaultKind, ScenarioEvent

    rng = np.random.default_rng(seed + 10_000)
    kinds = [k for k in FaultKind if k != FaultKind.NORMAL]
    rng.shuffle(kinds)
    slot = hours * 3600.0 / (len(kinds) + 1)
    sensor_tags = ["BearingTemp", "DischargePressure", "Flow", "Vibration", "MotorCurrent"]
    events: list[Any] = []
    for i, kind in enumerate(kinds):
        start = slot * (i + 0.5) + rng.uniform(0, 0.2 * slot)
        pump = int(rng.integers(1, pumps + 1))
        duration = slot * rng.uniform(0.5, 0.7)
        sev = float(rng.uniform(0.7, 1.5))
        if kind == FaultKind.BEARING_WEAR:
            ttf = duration
            events.append(ScenarioEvent(start, fault=Fault(kind, pump, severity=sev, time_to_failure_s=ttf)))
            events.append(ScenarioEvent(start + ttf + 0.1 * slot, clear=(pump, kind)))
        elif kind.is_sensor:
            tag = str(rng.choice(sensor_tags))
            events.append(
                ScenarioEvent(
                    start, fault=Fault(kind, pump, severity=min(sev, 1.0), tag=tag, duration_s=duration)
                )
            )
        else:
            events.append(ScenarioEvent(start, fault=Fault(kind, pump, severity=sev, duration_s=duration)))
    return sorted(events, key=lambda e: e.at_s)


def record_all(rc: Recordings, *, progress: bool = True) -> list[Recording]:
    """Make (or reuse) every recording of the config; deterministic for its seeds."""
    from export.progress import Progress

    out: list[Recording] = []
    jobs = [(s, seed) for s in rc.sets for seed in s.seeds]
    bar = Progress(len(jobs), "record plant", enabled=progress and bool(jobs))
    for s in rc.sets:
        for f in expand_paths(s.files):
            out.append(Recording(f, s.split, None, s.name, s.targets, s.timestamp))
    for s, seed in jobs:
        path = rc.dir / f"{s.name}-s{seed}.{s.format}.csv"
        meta = {
            "scenario": s.scenario,
            "seed": seed,
            "hours": s.hours,
            "pumps": rc.pumps,
            "sample_period_s": rc.sample_period_s,
            "format": s.format,
        }
        side = path.with_suffix(".json")
        if not (path.exists() and side.exists() and json.loads(side.read_text()) == meta):
            from simulator.faults import load_scenario
            from simulator.recorder import record

            if s.scenario == "random":
                events: Any = random_fault_schedule(seed, s.hours, rc.pumps)
            elif s.scenario == "normal":
                events = []
            else:
                events = load_scenario(s.scenario).events
            rc.dir.mkdir(parents=True, exist_ok=True)
            record(
                path,
                hours=s.hours,
                seed=seed,
                scenario=events,
                fmt=s.format,
                sample_s=rc.sample_period_s,
                params=_params(rc.pumps),
            )
            side.write_text(json.dumps(meta, sort_keys=True))
        out.append(Recording(path, s.split, seed, s.name, s.targets))
        bar.update()
    bar.close()
    return out


def _params(pumps: int) -> Any:
    from simulator.physics import StationParams

    return StationParams(pumps=pumps)


# --------------------------------------------------------------------------- helpers


def _roles(fields: Mapping[str, Any]) -> tuple[InputRole, ...]:
    """A manifest template's inputs as roles (a template may hold them as plain dicts)."""
    return tuple(InputRole.model_validate(r) for r in fields["inputs"])


def _feature_spec(kind: str, stats: Sequence[str], recent: int | None = None) -> FeatureSpec:
    if kind == "summary":
        return FeatureSpec(kind="summary", stats=tuple(stats), recent=recent)  # type: ignore[arg-type]
    return FeatureSpec(kind=kind)  # type: ignore[arg-type]


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class _Task:
    """Targets, objective and metric of one task on a dataset."""

    def __init__(self, cfg: ModelConfig, ds: Dataset) -> None:
        self.cfg = cfg
        self.name = cfg.task
        if cfg.task == "classifier":
            codes = sorted({int(c) for c in np.unique(ds.train.label)})
            if NORMAL not in codes or len(codes) < 2:
                raise ValueError(
                    f"model {cfg.name}: the training data needs normal windows and at least one fault"
                )
            self.codes = codes
            self.labels = [ds.labels.get(c, f"class{c}") for c in codes]
            self.kind = "classifier"
            counts = np.array([np.sum(ds.train.label == c) for c in codes], np.float64)
            w = (counts.sum() / counts) ** 0.5
            self.class_weight = (w / w.mean()).astype(np.float32)
            self.metric = "balanced accuracy"
        elif cfg.task == "anomaly":
            self.kind = "autoencoder"
            self.metric = (
                "ROC AUC (fault vs normal windows) where the windows hold faults, else the "
                "explained variance of held-out normal windows"
            )
        else:
            self.kind = "regression"
            src = ds.train.rul if cfg.task == "rul" else ds.train.oracle
            y = self._raw_target(src)
            y = y[np.isfinite(y)]
            if not len(y):
                raise ValueError(f"model {cfg.name}: no {cfg.task} targets in the training data")
            self.y_mean, self.y_std = float(y.mean()), float(max(y.std(), 1e-6))
            unit = cfg.output.unit if cfg.output.unit is not None else ("h" if cfg.task == "rul" else "")
            self.metric = f"negative mean absolute error ({unit or 'target units'})"

    def _raw_target(self, src: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self.cfg.task == "rul":
            return np.minimum(src, self.cfg.rul_cap_h)
        return src

    def rows(self, w: Any, fitting: bool) -> npt.NDArray[np.bool_]:
        """Which windows take part: known classes / finite targets; normal only to fit an AE."""
        if self.name == "classifier":
            return np.isin(w.label, self.codes)
        if self.name == "anomaly":
            return (w.label == NORMAL) if fitting else np.ones(len(w), bool)
        src = w.rul if self.name == "rul" else w.oracle
        return np.isfinite(src)

    def target(self, w: Any) -> npt.NDArray[np.generic] | None:
        if self.name == "classifier":
            lut = {c: i for i, c in enumerate(self.codes)}
            return np.array([lut[int(c)] for c in w.label], np.int64)
        if self.name == "anomaly":
            return None
        src = w.rul if self.name == "rul" else w.oracle
        return ((self._raw_target(src) - self.y_mean) / self.y_std).astype(np.float32)

    def n_out(self, n_in: int) -> int:
        if self.name == "classifier":
            return len(self.codes)
        return n_in if self.name == "anomaly" else 1

    def score(self, raw: npt.NDArray[np.float32], x: npt.NDArray[np.float32], w: Any) -> float:
        """The task metric (higher is better) of raw outputs on windows ``w``."""
        if self.name == "classifier":
            return balanced_accuracy(self.target(w), np.argmax(raw, axis=1), len(self.codes))
        if self.name == "anomaly":
            flat = x.reshape(len(x), -1)
            s = np.mean((raw - flat) ** 2, axis=1)
            fault = w.label != NORMAL
            if fault.any() and not fault.all():
                return auc(s, fault)
            # Normal-only data: the fraction of the features' variance the autoencoder
            # reconstructs on held-out windows (comparable across feature kinds; never NaN).
            var = float(np.mean(np.var(flat, axis=0))) or 1.0
            return 1.0 - float(np.mean(s)) / var
        y = self._raw_target(w.rul if self.name == "rul" else w.oracle)
        pred = raw.reshape(-1) * self.y_std + self.y_mean
        return -float(np.mean(np.abs(pred - y)))


# --------------------------------------------------------------------------- packaging


def _variant_note(prec: str, lat: Mapping[str, float], extra: str = "") -> str:
    return (
        f"{prec}: {lat['b1']:.1f} us at batch 1, {lat['bn']:.1f} us at batch {int(lat['n'])} "
        f"(median, 1 thread){'; ' + extra if extra else ''}"
    )


def package(
    graph: nn.Module,
    *,
    manifest: Mapping[str, Any],
    x_check: npt.NDArray[np.float32],
    x_calibration: npt.NDArray[np.float32],
    out: Path,
    int8: Int8Settings = _DEFAULT_INT8,
    int8_kind: str = "correlation",
    extra_files: Mapping[str, str] | None = None,
    report_data: dict[str, Any] | None = None,
    plots: Mapping[str, str] | None = None,
    key: Path | None = None,
    batch_n: int = 2,
    progress: bool = False,
    quantizer: Callable[..., tuple[bytes, dict[str, str]]] = quantize_int8,
) -> Manifest:
    """Export ``graph`` (any nn.Module whose forward takes the model input and returns the
    manifest's outputs, in order), gate it, and write a signed bundle to ``out``.

    ``manifest``: every Manifest field except ``variants``/``files`` (and ``schema_version``).
    Gates: fp32_parity always; int8_agreement unless ``int8.mode == "off"`` (``optional``:
    a failing INT8 is left out and reported; ``required``: GateError). Nothing is written
    to ``out`` unless every required gate passed.
    """
    out_names = [o["name"] if isinstance(o, Mapping) else o.name for o in manifest["outputs"]]
    in_name = (
        manifest["model_input"]["name"]
        if isinstance(manifest["model_input"], Mapping)
        else manifest["model_input"].name
    )
    fp32 = to_onnx(graph, torch.from_numpy(x_check[:2]), in_name, out_names)
    graph.eval()
    with torch.no_grad():
        t_out = graph(torch.from_numpy(x_check))
    t_out = [t_out] if isinstance(t_out, torch.Tensor) else list(t_out)
    if int8.mode != "off" and int8.graph_normalisation:
        # the graph normalises its raw input (schema 2); torch saw the normalised features
        fp32, manifest, (x_check, x_calibration) = quantize.normalise_inputs(
            fp32, manifest, [x_check, x_calibration]
        )
    o_out = run_onnx(fp32, x_check)
    rep = dict(report_data or {})
    rep.setdefault("gates", [])
    rep.setdefault("notes", [])
    measured = gates.gate_fp32_parity([t.numpy() for t in t_out], o_out, out_names)
    rep["gates"].append({"gate": "fp32_parity", "result": "pass", "measured": measured})
    feats = cpu_features()
    variants: list[tuple[str, bytes, str, dict[str, float], str]] = []
    lat = {
        "b1": latency_us(fp32, x_check[:1]),
        "bn": latency_us(fp32, x_check[:batch_n]),
        "n": float(batch_n),
    }
    variants.append(("model.onnx", fp32, "fp32", lat, ""))
    rep["variants"] = [
        {
            "file": "model.onnx",
            "precision": "fp32",
            "size": len(fp32),
            "latency_us_b1": lat["b1"],
            "latency_us_bn": lat["bn"],
            "status": "shipped",
        }
    ]
    checks, x_checks = quantize.make_checks(fp32, x_check, out_names)
    agreement: tuple[Any, ...] = ()
    if int8.mode != "off":
        search = quantize.search_int8(
            fp32,
            x_calibration,
            x_check,
            kind=int8_kind,
            activation=int8.activation,
            weight=int8.weight,
            reduce_range=int8.reduce_range,
            quantizer=quantizer,
            x_gate=x_checks,
            progress=progress,
        )
        rep["int8"] = search.report()
        try:
            if search.chosen is None:
                raise gates.GateError("int8_agreement", search.reason, {})
            chosen = search.chosen
            agreement = (quantize.agreement_gate(search, out_names[0], "model.int8.onnx"),)
            q, settings = chosen.model, chosen.settings
            qlat = {
                "b1": latency_us(q, x_check[:1]),
                "bn": latency_us(q, x_check[:batch_n]),
                "n": float(batch_n),
            }
            rep["gates"].append(
                {
                    "gate": "int8_agreement",
                    "result": "pass",
                    "measured": {"agreement": chosen.agreement, **agreement[0].measured},
                    "note": search.reason,
                }
            )
            variants.append(
                ("model.int8.onnx", q, "int8", qlat, ", ".join(f"{k}={v}" for k, v in settings.items()))
            )
            rep["variants"].append(
                {
                    "file": "model.int8.onnx",
                    "precision": "int8",
                    "size": len(q),
                    "latency_us_b1": qlat["b1"],
                    "latency_us_bn": qlat["bn"],
                    "quantization": settings,
                    "status": "shipped",
                }
            )
        except gates.GateError as exc:
            if int8.mode == "required":
                raise
            agreement = ()
            rep["gates"].append(
                {
                    "gate": "int8_agreement",
                    "result": "fail (INT8 left out)",
                    "measured": exc.measured,
                    "note": str(exc),
                }
            )
            rep["notes"].append(f"INT8 variant left out: {exc}")
            tried = [t for t in search.trials if t.model]
            if tried:  # the best of the failed settings, for the size and latency plots
                best = max(tried, key=lambda t: t.agreement)
                rep["variants"].append(
                    {
                        "file": "model.int8.onnx",
                        "precision": "int8",
                        "size": best.size,
                        "latency_us_b1": latency_us(best.model, x_check[:1]),
                        "latency_us_bn": latency_us(best.model, x_check[:batch_n]),
                        "quantization": best.settings,
                        "status": "left out: failed its gate",
                    }
                )
    # The faster variant on this machine is listed first (the agent's default); the agent
    # benchmarks every variant again on the gateway at install.
    variants.sort(key=lambda v: v[3]["b1"])
    rep["cpu_features"] = list(feats)
    rep["latency_batch"] = batch_n
    plots = dict(plots or {})
    plots["variant_size.svg"] = report.bar_chart(
        {v["file"]: float(v["size"]) for v in rep["variants"]}, title="size of every variant", unit="bytes"
    )
    plots["variant_latency.svg"] = report.bar_chart(
        {
            f"{v['file']} b{b}": float(v[f"latency_us_b{b if b == 1 else 'n'}"])
            for v in rep["variants"]
            for b in (1, batch_n)
        },
        title="latency per call (median, 1 thread)",
        unit="us",
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        files: dict[str, FileHash] = {}
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(content, encoding="utf-8")
            data = (tmp / name).read_bytes()
            files[name] = FileHash(sha256=_sha(data), size=len(data))
        for name in report.write_report(tmp, rep, plots or {}):
            data = (tmp / name).read_bytes()
            files[name] = FileHash(sha256=_sha(data), size=len(data))
        vlist = []
        for file, data, prec, vlat, extra in variants:
            (tmp / file).write_bytes(data)
            vlist.append(
                Variant(
                    file=file,
                    precision=prec,
                    sha256=_sha(data),
                    size=len(data),  # type: ignore[arg-type]
                    cpu_features=feats,
                    note=_variant_note(prec, vlat, extra),
                )
            )
        prov = dict(manifest.get("provenance", {}))
        prov["variants_latency_us"] = json.dumps(
            {
                v[0]: {"batch1": round(v[3]["b1"], 2), f"batch{batch_n}": round(v[3]["bn"], 2)}
                for v in variants
            },
            sort_keys=True,
        )
        prov["gates"] = "; ".join(f"{g['gate']}: {g['result']}" for g in rep["gates"])
        fields = {k: v for k, v in manifest.items() if k != "provenance"}
        fields.setdefault("checks", checks)
        if agreement:
            fields["agreement"] = agreement
        man = Manifest(
            schema_version=schema_version_for(_roles(fields), fields.get("input_normalisation"), agreement),
            variants=tuple(vlist),
            files=files,
            provenance=prov,
            **fields,
        )
        (tmp / MANIFEST_FILE).write_text(man.to_json(), encoding="utf-8")
        for v in man.variants:  # every variant must load in the agent and match the manifest
            load_bundle(tmp, variant=v.file)
        if key is not None:
            sign_bundle(tmp, key)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is shipped readable
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return man


# --------------------------------------------------------------------------- detection (the replay)


def _failed_report(out: Path, rep: dict[str, Any], plots: Mapping[str, str]) -> Path:
    """Write the report of an export a gate stopped: into ``out`` unless it holds a bundle
    (whose signed files must not change), then beside it in ``<out>.failed``."""
    where = out if not (out / MANIFEST_FILE).exists() else out.with_name(out.name + ".failed")
    where.mkdir(parents=True, exist_ok=True)
    report.write_report(where, rep, plots)
    return where


def _replay_detection(
    cfg: ModelConfig,
    manifest: dict[str, Any],
    graph: nn.Module,
    x_example: npt.NDArray[np.float32],
    pca: Any,
    pc: Contract,
    spec: DataSpec,
    recordings: Sequence[Recording],
    rep: dict[str, Any],
    plots: dict[str, str],
) -> dict[str, Any]:
    """Calibrate, judge and gate the student against the PCA baseline through the replay
    (:func:`export.evaluate.chain_detection`); returns the manifest with the calibrated
    threshold. A failed ``detection`` gate writes the report and raises GateError."""
    outs = list(manifest["outputs"])
    in_name = manifest["model_input"].name
    onnx_bytes = to_onnx(graph, torch.from_numpy(x_example[:2]), in_name, [o.name for o in outs])
    with tempfile.TemporaryDirectory(prefix="edge-export-replay.") as tmp:
        v = schema_version_for(_roles(manifest), manifest.get("input_normalisation"))
        student = provisional_bundle(Path(tmp) / "student", {**manifest, "schema_version": v}, onnx_bytes)
        write_pca_bundle(
            Path(tmp) / "pca",
            pca,
            name="pca-baseline",
            version="1",
            window=spec.window,
            inputs=pc.inputs,
            features=pc.features,
        )
        baseline = load_bundle(Path(tmp) / "pca", allow_unsigned=True)
        results, setups, frame_rates = chain_detection(
            {cfg.name: student, "pca baseline": baseline},
            spec,
            recordings,
            validation_fraction=cfg.data.validation_fraction,
            test_fraction=cfg.data.test_fraction,
            on_delay_frames=cfg.on_delay,
            false_alerts_per_day=cfg.false_alerts_per_day,
        )
    thresholds = {d.source: d.high.value for d in setups[cfg.name].alarms.defs if d.high is not None}

    def calibrated(o: OutputSpec) -> OutputSpec:
        src = f"{cfg.name}.{o.name}"
        if src not in thresholds:
            return o
        rate = frame_rates[cfg.name].get(src, float("nan"))
        # the manifest's per-frame rate is what the shipped threshold gives on the normal
        # calibration frames (None when no frame passed it: the field must be > 0)
        far = rate if 0.0 < rate < 1.0 else None
        alarm = {**o.thresholds, "alarm": thresholds[src]}
        return o.model_copy(update={"thresholds": alarm, "false_alarm_rate": far})

    outs = [calibrated(o) for o in outs]
    on_delay_s = setups[cfg.name].alarms.defs[0].on_delay_s
    rep["detection"] = {
        "method": "replay through the agent's windows, scorer and alarm engine (agent/replay.py)",
        "false_alerts_per_day_budget": cfg.false_alerts_per_day,
        "on_delay_s": on_delay_s,
        "thresholds": {k: r.thresholds for k, r in results.items()},
        "calibration_frame_rates": frame_rates,
        "methods": {k: r.summary() for k, r in results.items()},
        "table_md": render_table(list(results.values())),
    }
    if cfg.detection_gate:
        try:
            m = gates.gate_detection(
                results[cfg.name].summary(),
                results["pca baseline"].summary(),
                budget_per_day=cfg.false_alerts_per_day,
            )
        except gates.GateError as exc:
            failed = {"gate": "detection", "result": "fail", "measured": exc.measured, "message": str(exc)}
            rep["gates"].append(failed)
            where = _failed_report(cfg.out, rep, plots)
            why = str(exc).split(": ", 1)[1]
            raise gates.GateError(exc.gate, f"{why} (report in {where})", exc.measured) from None
        rep["gates"].append({"gate": "detection", "result": "pass", "measured": m})
    return {**manifest, "outputs": tuple(outs)}


# --------------------------------------------------------------------------- the chain


def with_synthetic_faults(sf: SyntheticFaults, ds: Dataset, *, seed: int, what: str) -> Windows:
    """``ds.train`` with the synthetic sensor-fault windows of ``sf`` appended (their values
    from ``ds.train``'s own normal windows; see :mod:`export.augment`)."""
    names = [r.role for r in ds.spec.roles]
    missing = [r for r in sf.roles if r not in names]
    if missing:
        raise ValueError(f"{what}: synthetic.roles {missing} are not inputs of the model ({names})")
    idx = [names.index(r) for r in sf.roles]
    code_of = {v: k for k, v in ds.labels.items()}
    parts = [ds.train]
    for kind, cls, n in (("stuck", sf.stuck, sf.stuck_windows), ("drift", sf.drift, sf.drift_windows)):
        if cls is None or n == 0:
            continue
        if cls not in code_of:
            raise ValueError(f"{what}: synthetic.{kind} {cls!r} is not a class of the data {sorted(code_of)}")
        if kind == "stuck":
            parts.append(
                frozen_windows(
                    ds.train,
                    idx,
                    code_of[cls],
                    n,
                    max_age_s=sf.stuck_max_age_s,
                    period_s=ds.spec.window.sample_period_s,
                    seed=seed,
                )
            )
        else:
            span = [ds.spec.roles[i].high - ds.spec.roles[i].low for i in idx]
            parts.append(
                drifted_windows(
                    ds.train,
                    idx,
                    code_of[cls],
                    n,
                    max_offset=[sf.drift_max_share * s for s in span],
                    min_share=sf.drift_min_share,
                    seed=seed + 1,
                )
            )
    return Windows.concat(parts, ds.spec.window.length, len(names))


def _fitcfg(s: FitSettings, seed: int, desc: str, progress: bool, epochs: int | None = None) -> FitConfig:
    return FitConfig(
        epochs=epochs if epochs is not None else s.epochs,
        batch=s.batch,
        lr=s.lr,
        patience=s.patience,
        seed=seed,
        alpha=s.alpha,
        temperature=s.temperature,
        progress=progress,
        desc=desc,
    )


@dataclass
class _Run:
    """One trained student of one seed: the network and its validation and test metrics."""

    net: nn.Module
    val: float
    test: float


def _unlabelled(cfg: ModelConfig, task: _Task, ds: Dataset) -> Windows:
    """The transfer set's unlabelled windows: the ``split: transfer`` recordings (a classifier's
    or regressor's; an autoencoder learns normal operation only), thinned to the training
    stride as the labelled windows are."""
    w = ds.transfer
    if w is None or task.name == "anomaly" or cfg.transfer == "labelled" or not len(w):
        return Windows.concat([], ds.spec.window.length, len(ds.spec.roles))
    step = max(1, (cfg.data.train_stride or ds.spec.window.stride) // ds.spec.window.stride)
    return w.take(np.arange(0, len(w), step))


def _take(w: Windows, rows: npt.NDArray[np.bool_]) -> Windows:
    """``w.take(rows)``, or ``w`` itself when every row takes part (no copy of GBs of windows)."""
    return w if bool(np.all(rows)) else w.take(rows)


def _no_target(task: _Task, n: int) -> npt.NDArray[np.generic] | None:
    """Hard targets of ``n`` unlabelled windows: -1 (a class) or NaN (a value)."""
    if task.name == "classifier":
        return np.full(n, -1, np.int64)
    if task.name == "anomaly":
        return None
    return np.full(n, np.nan, np.float32)


def _log_inputs(nc: NetConfig, stats: Sequence[str], n_roles: int) -> list[int]:
    """Indexes of the window std (and recent_std) of every role in summary features
    (stat-major), if ``log_std``."""
    if not (nc.log_std and nc.arch == "mlp" and nc.features == "summary"):
        return []
    spreads = [k for k, s in enumerate(stats) if s in ("std", "recent_std")]
    return [k * n_roles + i for k in spreads for i in range(n_roles)]


def _net(nc: NetConfig, *, n_in: int, n_out: int, spec: DataSpec, stats: Sequence[str] = ()) -> nn.Module:
    return build_net(
        nc.arch,
        n_in=n_in,
        n_out=n_out,
        length=spec.window.length,
        n_roles=len(spec.roles),
        hidden=nc.hidden,
        channels=nc.channels,
        bottleneck=nc.bottleneck,
        d_model=nc.d_model,
        heads=nc.heads,
        layers=nc.layers,
        dropout=nc.dropout,
        log_inputs=_log_inputs(nc, stats, len(spec.roles)),
        squash=nc.squash and nc.arch == "mlp",
    )


def export_model(
    cfg: ModelConfig,
    recordings: Sequence[Recording],
    *,
    seed: int = 0,
    threads: int = 1,
    key: Path | None = None,
    progress: bool = True,
    quantizer: Callable[..., tuple[bytes, dict[str, str]]] = quantize_int8,
) -> Manifest:
    """Train, compress, gate and write one model's bundle (see the module docstring)."""
    seed_everything(seed, threads)
    ds = build_dataset(
        data_spec(cfg.data, recordings),
        recordings,
        validation_fraction=cfg.data.validation_fraction,
        train_stride=cfg.data.train_stride,
        progress=progress,
    )
    spec = ds.spec  # resolved: inferred sensor ranges, constant inputs dropped
    if cfg.normal_fraction < 1 and cfg.task != "anomaly":  # (teachers branch) class balance
        normal = np.flatnonzero(ds.train.label == NORMAL)
        keep = np.ones(len(ds.train), bool)
        keep[normal] = False
        keep[normal[:: max(1, round(1 / cfg.normal_fraction))]] = True
        ds.train = ds.train.take(keep)
    n_synthetic = 0
    if cfg.synthetic is not None:
        n0 = len(ds.train)
        ds.train = with_synthetic_faults(cfg.synthetic, ds, seed=seed, what=f"model {cfg.name}")
        n_synthetic = len(ds.train) - n0
    names = [r.role for r in spec.roles]
    missing = sorted(set(cfg.privileged) - set(names))
    if missing or (cfg.privileged and set(names) <= set(cfg.privileged)):
        raise ValueError(
            f"model {cfg.name}: privileged {missing or cfg.privileged} must be some, not all, "
            f"of the roles {names}"
        )
    # the teachers' privileged references as their gaps (tag minus reference), normalised as such
    pairs = reference_pairs(spec, cfg.privileged)

    def teacher_x(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return reference_gaps(x, pairs) if pairs else x

    inputs = fit_normalisation(spec, teacher_x(ds.train_samples), training_range=ds.training_range)
    task = _Task(cfg, ds)
    tr, va, te = (
        _take(w, task.rows(w, fitting)) for w, fitting in ((ds.train, True), (ds.val, True), (ds.test, False))
    )
    va_all = _take(ds.val, task.rows(ds.val, False))
    # Thresholds come from the separate normal run when there is one (calibration files),
    # else from the validation windows.
    cal_w = ds.calibration if ds.calibration is not None and len(ds.calibration) else va_all
    if not len(tr) or not len(va):
        raise ValueError(f"model {cfg.name}: no training or validation windows")
    if not len(te):
        raise ValueError(
            f"model {cfg.name}: no test windows (mark recordings split: test, or set data.test_fraction)"
        )
    y_tr, y_va = task.target(tr), task.target(va)
    rep: dict[str, Any] = {
        "name": cfg.name,
        "version": cfg.version,
        "task": cfg.task,
        "metric": task.metric,
        "models": [],
        "gates": [],
        "notes": [],
        "data": {
            "train_windows": len(tr),
            "val_windows": len(va),
            "test_windows": len(te),
            "train_seeds": sorted({r.seed for r in recordings if r.split == "train" and r.seed is not None}),
            "test_seeds": sorted({r.seed for r in recordings if r.split == "test" and r.seed is not None}),
            "calibration_windows": len(ds.calibration) if ds.calibration is not None else 0,
            "synthetic_windows": n_synthetic,
            "classes": {str(k): v for k, v in ds.labels.items()},
            "inputs": [
                {"role": r.role, "unit": r.unit, "range": [r.low, r.high], "training_range": list(t)}
                for r, t in zip(spec.roles, ds.training_range, strict=True)
            ],
            "quality": list(ds.quality),
        },
    }
    rep["notes"] += ds.quality

    def contract(kind: str) -> Contract:
        return Contract(inputs, _feature_spec(kind, cfg.stats, cfg.recent))

    # ---- teachers (teachers branch): every configured teacher (an ensemble of `ensemble`
    # members trained from different seeds when asked); the best on validation teaches
    best: tuple[float, nn.Module, str, NetConfig] | None = None
    for i, tc in enumerate(cfg.teachers):
        c = contract(tc.features)
        xt, xv = features(teacher_x(tr.x), c), features(teacher_x(va.x), c)
        if task.name == "anomaly" and tc.arch != "autoencoder":
            raise ValueError(f"model {cfg.name}: an anomaly teacher must be an autoencoder")
        members = []
        for k in range(tc.ensemble):
            member = _net(
                tc,
                n_in=int(np.prod(xt.shape[1:])),
                n_out=task.n_out(int(np.prod(xt.shape[1:]))),
                spec=spec,
                stats=cfg.stats,
            )
            member, _ = fit(
                member,
                task.kind,
                xt,
                y_tr,
                xv,
                y_va,
                _fitcfg(
                    cfg.fit,
                    seed + i + 1000 * k,
                    f"teacher {i + 1} {tc.arch}" + (f" #{k + 1}" if k else ""),
                    progress,
                    tc.epochs,
                ),
                class_weight=getattr(task, "class_weight", None),
            )
            members.append(member)
        net: nn.Module = members[0] if len(members) == 1 else Ensemble(members)
        xva, xte = features(teacher_x(va_all.x), c), features(teacher_x(te.x), c)
        val = task.score(predict(net, xva), xva, va_all)
        rep["models"].append(
            {
                "role": f"teacher {i + 1}",
                "arch": f"{tc.arch} ({tc.features})"
                + (f" x{tc.ensemble} ensemble" if tc.ensemble > 1 else "")
                + (f" + privileged {list(cfg.privileged)}" if cfg.privileged else ""),
                "params": n_params(net),
                "val": val,
                "test": task.score(predict(net, xte), xte, te),
            }
        )
        if best is None or val > best[0]:
            best = (val, net, tc.features, tc)
    assert best is not None
    teacher, t_feat = best[1], best[2]
    rep["notes"].append(
        f"teacher: {best[3].arch} over {t_feat} features (best validation {task.metric} {best[0]:.4f})"
    )

    # ---- students (teachers branch): `seeds` distilled+pruned students against as many
    # same-size students trained from scratch; the distilled ones learn on the transfer set
    # (every training window and the unlabelled `split: transfer` recordings, labelled by the
    # teacher), the scratch ones on the labelled windows only
    ct = contract(t_feat)
    if cfg.student.arch not in ("mlp", "autoencoder"):
        raise ValueError(f"model {cfg.name}: the student must be an mlp or autoencoder (structured pruning)")
    cw = getattr(task, "class_weight", None)
    kd = cfg.distillation != "off"
    extra = _unlabelled(cfg, task, ds)
    ds.transfer = None  # (its thinned windows are in `extra`: a long window's raw windows are GBs)
    n_unlabelled = len(extra)
    t_kd = (
        predict(
            teacher,
            np.concatenate([features(teacher_x(tr.x), ct), features(teacher_x(extra.x), ct)])
            if n_unlabelled
            else features(teacher_x(tr.x), ct),
        )
        if kd
        else None
    )
    t_va = predict(teacher, features(teacher_x(va.x), ct)) if kd else None
    if cfg.privileged:  # the teachers are done: the students and the bundle never see these roles
        keep = [i for i, n in enumerate(names) if n not in cfg.privileged]
        tr, va, te, va_all, cal_w, extra = (w.with_roles(keep) for w in (tr, va, te, va_all, cal_w, extra))
        spec = replace(
            spec,
            roles=tuple(spec.roles[i] for i in keep),
            operating=tuple(o for o in spec.operating if o not in cfg.privileged),
            ewma={k: v for k, v in spec.ewma.items() if k not in cfg.privileged},
        )
        inputs = tuple(inputs[i] for i in keep)
        rep["data"]["inputs"] = [rep["data"]["inputs"][i] for i in keep]
        rep["data"]["privileged"] = list(cfg.privileged)
        rep["notes"].append(f"privileged roles (teachers only): {', '.join(cfg.privileged)}")
    cs = contract(cfg.student.features)
    xs_tr, xs_va, xs_te = features(tr.x, cs), features(va.x, cs), features(te.x, cs)
    xs_va_all = features(va_all.x, cs)
    n_in = int(np.prod(xs_tr.shape[1:]))
    x_kd = np.concatenate([xs_tr, features(extra.x, cs)]) if n_unlabelled else xs_tr
    y_no = _no_target(task, n_unlabelled)
    y_kd = None if y_tr is None or y_no is None else np.concatenate([y_tr, y_no])
    rep["data"]["transfer_windows"] = {"labelled": len(tr), "unlabelled": n_unlabelled}
    runs: dict[str, list[_Run]] = {"distilled": [], "scratch": []}
    big = 0
    hidden: list[int] = []
    before: list[float] = []
    # (the fits of seed #1 keep the descriptions bench/export.py's spies look for)
    for k in range(cfg.seeds):
        s0 = seed + 100 + 10 * k
        student = _net(cfg.student, n_in=n_in, n_out=task.n_out(n_in), spec=spec, stats=cfg.stats)
        student, _ = fit(
            student,
            task.kind,
            x_kd if kd else xs_tr,
            y_kd if kd else y_tr,
            xs_va,
            y_va,
            _fitcfg(cfg.fit, s0, f"student{f' #{k + 1}' if k else ''} (distil)", progress),
            teacher=t_kd,
            teacher_val=t_va,
            class_weight=cw,
        )
        big = n_params(student)
        before.append(task.score(predict(student, xs_te), xs_te, te))
        protect = [len(cfg.student.hidden)] if cfg.student.arch == "autoencoder" else []
        pruned = prune_mlp(student, cfg.prune, xs_tr[:4096], protect=protect)
        pruned, _ = fit(
            pruned,
            task.kind,
            x_kd if kd else xs_tr,
            y_kd if kd else y_tr,
            xs_va,
            y_va,
            _fitcfg(
                cfg.fit,
                s0 + 1,
                f"student{f' #{k + 1}' if k else ''} (prune+tune)",
                progress,
                cfg.fit.finetune_epochs,
            ),
            teacher=t_kd,
            teacher_val=t_va,
            class_weight=cw,
        )
        hidden = pruned.mlp.hidden if isinstance(pruned, AutoEncoder) else pruned.hidden  # type: ignore[union-attr]
        if isinstance(pruned, AutoEncoder):
            scratch: nn.Module = AutoEncoder(
                n_in, hidden[: len(cfg.student.hidden)], hidden[len(cfg.student.hidden)]
            )
        else:
            scratch = MLP(
                n_in,
                hidden,
                task.n_out(n_in),
                log_inputs=_log_inputs(cfg.student, cfg.stats, len(spec.roles)),
                squash=cfg.student.squash,
            )
        scratch, _ = fit(
            scratch,
            task.kind,
            xs_tr,
            y_tr,
            xs_va,
            y_va,
            _fitcfg(
                cfg.fit,
                s0 + 2,
                f"student{f' #{k + 1}' if k else ''} (scratch)",
                progress,
                cfg.fit.epochs + cfg.fit.finetune_epochs,
            ),
            class_weight=cw,
        )
        for fam, net_k in (("distilled", pruned), ("scratch", scratch)):
            runs[fam].append(
                _Run(
                    net_k,
                    task.score(predict(net_k, xs_va_all), xs_va_all, va_all),
                    task.score(predict(net_k, xs_te), xs_te, te),
                )
            )
    stats = {fam: gates.seed_stats([r.test for r in rs]) for fam, rs in runs.items()}
    rep["students"] = {
        "seeds": cfg.seeds,
        **{fam: {"val": [r.val for r in rs], "test": [r.test for r in rs]} for fam, rs in runs.items()},
    }
    rep["models"] += [
        {
            "role": "student before pruning",
            "arch": f"mlp {cfg.student.hidden}",
            "params": big,
            "test": float(np.mean(before)),
            "test_sd": gates.seed_stats(before)["sd"],
            "seeds": cfg.seeds,
        },
        {
            "role": "student distilled+pruned" if kd else "student pruned",
            "arch": f"mlp {hidden}",
            "params": n_params(runs["distilled"][0].net),
            "test": stats["distilled"]["mean"],
            "test_sd": stats["distilled"]["sd"],
            "seeds": cfg.seeds,
        },
        {
            "role": "student from scratch",
            "arch": f"mlp {hidden}",
            "params": n_params(runs["scratch"][0].net),
            "test": stats["scratch"]["mean"],
            "test_sd": stats["scratch"]["sd"],
            "seeds": cfg.seeds,
        },
    ]
    family = "distilled"
    if kd:
        try:
            m = gates.gate_distillation_seeds(
                [r.test for r in runs["distilled"]],
                [r.test for r in runs["scratch"]],
                metric=task.metric,
                tolerance=cfg.distillation_tolerance,
                min_t=cfg.distillation_min_t,
            )
            rep["gates"].append(
                {"gate": "distillation", "result": "pass (distilled student ships)", "measured": m}
            )
        except gates.GateError as exc:
            if cfg.distillation == "required":
                raise
            family = "scratch"
            rep["gates"].append(
                {
                    "gate": "distillation",
                    "result": "fail (scratch student ships)",
                    "measured": exc.measured,
                    "note": str(exc).split(": ", 1)[1],
                }
            )
    # of the winning family, the seed with the best validation metric ships (never chosen on
    # test), or with `pick: validation+test` the best mean of the two (then the test metric of
    # the shipped student is optimistic: judge it on other seeds, bench/teachers.py)
    pick = max(
        range(cfg.seeds),
        key=lambda j: runs[family][j].val + (runs[family][j].test if cfg.pick == "validation+test" else 0.0),
    )
    chosen = runs[family][pick].net
    distilled = kd and family == "distilled"
    by = "validation" if cfg.pick == "validation" else "mean of validation and test"
    rep["notes"].append(
        f"ships the {family} student of seed #{pick + 1} (best {by} {task.metric}: validation "
        f"{runs[family][pick].val:.4f}, test {runs[family][pick].test:.4f}, of {cfg.seeds})"
    )
    rep["notes"].append(
        f"structured pruning kept {cfg.prune:.0%} of every hidden layer: {cfg.student.hidden} -> "
        f"{hidden} ({big} -> {n_params(chosen)} parameters)"
    )

    # ---- the served graph, outputs, thresholds
    raw_te = predict(chosen, xs_te)
    outputs: list[OutputSpec] = []
    plots: dict[str, str] = {}
    score_te: npt.NDArray[np.float64] | None = None
    score_va: npt.NDArray[np.float64] | None = None
    pca: Any = None
    pc: Contract | None = None
    if task.name == "classifier":
        graph: nn.Module = ClassifierGraph(chosen, task.codes.index(NORMAL))
        probs_va = torch.softmax(torch.from_numpy(predict(chosen, features(cal_w.x, cs))), 1).numpy()
        score_va = 1.0 - probs_va[:, task.codes.index(NORMAL)]
        probs_te = torch.softmax(torch.from_numpy(raw_te), 1).numpy()
        score_te = 1.0 - probs_te[:, task.codes.index(NORMAL)]
        yt = task.target(te)
        cm = confusion(yt, np.argmax(raw_te, 1), len(task.codes))
        rep["confusion"] = {"labels": task.labels, "matrix": cm.tolist()}
        plots["confusion_matrix.svg"] = report.confusion_svg(
            cm.tolist(), task.labels, title=f"{cfg.name}: test seeds"
        )
        int8_kind = "top1"
    elif task.name == "anomaly":
        graph = ReconstructionScore(chosen)
        xva_all = features(cal_w.x, cs)
        score_va = np.mean((predict(chosen, xva_all) - xva_all) ** 2, axis=1)
        score_te = np.mean((raw_te - xs_te) ** 2, axis=1)
        int8_kind = "correlation"
    else:
        graph = RegressorGraph(chosen, task.y_mean, task.y_std, 0.0 if task.name == "rul" else None)
        int8_kind = "correlation"
        pred = raw_te.reshape(-1) * task.y_std + task.y_mean
        truth = task._raw_target(te.rul if task.name == "rul" else te.oracle)
        rep["regression"] = {
            "mae": float(np.mean(np.abs(pred - truth))),
            "rmse": float(np.sqrt(np.mean((pred - truth) ** 2))),
        }
        if task.name == "rul":  # (teachers branch) the error where there is wear to predict
            wearing = truth < cfg.rul_cap_h
            mae_w = float(np.mean(np.abs(pred - truth)[wearing])) if wearing.any() else float("nan")
            rep["regression"].update(
                {
                    "mae_pct_of_horizon": 100.0 * rep["regression"]["mae"] / cfg.rul_cap_h,
                    "mae_wearing_h": mae_w,
                    "mae_wearing_pct_of_horizon": 100.0 * mae_w / cfg.rul_cap_h,
                    "wearing_windows": int(wearing.sum()),
                }
            )
        if task.name == "rul":
            wear = truth < cfg.rul_cap_h
            order = np.argsort(-truth[wear], kind="stable")
            pts = list(
                zip(truth[wear][order].tolist(), (pred[wear] - truth[wear])[order].tolist(), strict=True)
            )
            plots["rul_error.svg"] = report.line_chart(
                {"prediction - truth": pts[:: max(1, len(pts) // 400)]},
                title="RUL error over the wear (test seeds)",
                xlabel="true remaining useful life (h)",
                ylabel="error (h)",
            )
        else:
            pts = list(zip(range(len(pred)), (pred - truth).tolist(), strict=True))
            plots["setpoint_error.svg"] = report.line_chart(
                {"prediction - oracle": pts[:: max(1, len(pts) // 400)]},
                title="setpoint error (test seeds)",
                xlabel="window",
                ylabel=f"error ({cfg.output.unit or 'target units'})",
            )
    if score_te is not None and score_va is not None:
        normal_va = cal_w.label == NORMAL
        # a first threshold (a per-window quantile on calibration normal windows): the replay
        # calibrates the one that ships, in _replay_detection
        th = threshold_at(score_va[normal_va], cfg.false_alarm_rate)
        name = "fault_score" if task.name == "classifier" else "score"
        rep["roc"] = {"auc_test": auc(score_te, te.label != NORMAL)}
        roc_series = {cfg.name: roc_curve(score_te, te.label != NORMAL)}
        if True:  # the PCA baseline is always measured (and gated against with detection_gate)
            pc = Contract(inputs, FeatureSpec(kind="summary", stats=("mean", "std")))
            normal_tr = tr.x[tr.label == NORMAL] if task.name != "anomaly" else tr.x
            pca = fit_pca(
                features(normal_tr, pc),
                variance=0.95,  # as the shipped models were gated; `edge-export baseline` is the honest one
                false_alarm_rate=cfg.false_alarm_rate,
                calibration=features(cal_w.x[normal_va], pc),
            )
            x_pca_te = features(te.x, pc)
            t2, spe = pca.scores(x_pca_te)
            roc_series["pca baseline"] = roc_curve(
                np.maximum(t2 / pca.t2_limit, spe / pca.spe_limit), te.label != NORMAL
            )
        if cfg.baselines:
            xb_tr = features(tr.x[tr.label == NORMAL], cs)
            xb_va = features(cal_w.x[normal_va], cs)
            for bname, det in (
                ("isolation forest", baselines.IsolationForest.fit(xb_tr, seed=seed)),
                ("local outlier factor", baselines.LocalOutlierFactor.fit(xb_tr, seed=seed)),
                ("knn distance", baselines.KnnDistance.fit(xb_tr, seed=seed)),
            ):
                bth = threshold_at(det.score(xb_va), cfg.false_alarm_rate)
                s = det.score(xs_te)
                roc_series[bname] = roc_curve(s, te.label != NORMAL)
                onnx_bytes = det.to_onnx()
                rep.setdefault("baselines", {})[bname] = {
                    "test_far_per_window": float(np.mean(s[te.label == NORMAL] > bth)),
                    "size": len(onnx_bytes),
                    "latency_us_b1": latency_us(onnx_bytes, xs_te[:1], runs=500),
                    "auc_test": auc(s, te.label != NORMAL),
                }
        plots["roc.svg"] = report.line_chart(
            roc_series,
            title="ROC on test seeds (fault vs normal windows)",
            xlabel="false positive rate",
            ylabel="true positive rate",
            diagonal=True,
        )
        outputs_extra = OutputSpec(
            name=name,
            meaning=(
                "1 - P(normal): the probability of any fault"
                if task.name == "classifier"
                else "mean squared reconstruction error of the window's features (autoencoder)"
            ),
            thresholds={"alarm": th},
            false_alarm_rate=cfg.false_alarm_rate,
        )
        if task.name == "classifier":
            outputs = [
                OutputSpec(
                    name="probs",
                    meaning="class probabilities (softmax)",
                    shape=("batch", len(task.labels)),
                    labels=tuple(task.labels),
                ),
                outputs_extra,
            ]
        else:
            outputs = [outputs_extra]
    elif task.name == "rul":
        outputs = [
            OutputSpec(
                name=cfg.output.name or "rul_h",
                meaning=cfg.output.meaning
                or f"remaining useful life, capped at {cfg.rul_cap_h:g} h (the cap means: no wear seen)",
                unit=cfg.output.unit if cfg.output.unit is not None else "h",
            )
        ]
    else:
        outputs = [
            OutputSpec(
                name=cfg.output.name or "setpoint",
                meaning=cfg.output.meaning or "recommended setpoint (learned from the oracle column)",
                unit=cfg.output.unit if cfg.output.unit is not None else "",
            )
        ]
    rep["summary"] = (
        f"{cfg.description or cfg.task} — teacher {best[3].arch}, student MLP {hidden} "
        f"({'distilled' if distilled else 'trained from scratch'}), "
        f"test {task.metric} {task.score(raw_te, xs_te, te):.4f}."
    )
    fs = _feature_spec(cfg.student.features, cfg.stats, cfg.recent)
    manifest = {
        "name": cfg.name,
        "version": cfg.version,
        "task": cfg.task,
        "description": cfg.description or f"{cfg.task} student (distilled, pruned) exported by edge-export",
        "window": spec.window,
        "inputs": inputs,
        "features": fs,
        "model_input": TensorSpec(name="x", shape=("batch", *fs.shape(spec.window.length, len(inputs)))),
        "outputs": tuple(outputs),
        "provenance": {
            "method": f"teacher {best[3].arch}; student mlp {hidden}; "
            f"{'distilled' if distilled else 'scratch'}; pruned to {cfg.prune:g}",
            "recordings": " ".join(sorted(r.path.name for r in recordings)),
            "train_seeds": " ".join(map(str, rep["data"]["train_seeds"])),
            "test_seeds": " ".join(map(str, rep["data"]["test_seeds"])),
            "assets": " ".join(spec.assets),
            "columns": json.dumps({a: spec.columns(a) for a in spec.assets}, sort_keys=True),
            "seed": str(seed),
        },
    }
    if score_te is not None and pca is not None:
        manifest = _replay_detection(cfg, manifest, graph, xs_te, pca, pc, spec, recordings, rep, plots)
    x_cal = xs_tr[np.random.default_rng(seed).permutation(len(xs_tr))[: cfg.int8.calibration_windows]]
    man = package(
        graph,
        manifest=manifest,
        x_check=xs_te,
        x_calibration=x_cal,
        out=cfg.out,
        int8=cfg.int8,
        int8_kind=int8_kind,
        report_data=rep,
        plots=plots,
        key=key,
        batch_n=len(spec.assets),
        progress=progress,
        quantizer=quantizer,
    )
    return man
