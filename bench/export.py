"""Export benchmark: teacher vs distilled, pruned student (FP32 and INT8) in onnxruntime, side by side.

Run ``python bench/export.py`` (about 4-5 minutes on 2 cores: the demo config's recordings and
epochs) or ``--quick`` (about 1 minute: 12 h recordings, 3 training seeds, 20 epochs).
Prints one table per task and a summary of the targets (OK / MISSED), and writes
``bench/results/export.json``. Everything is measured in one run on one machine; targets are
reported, never asserted (speed lives here, not in tests).

**Data and training** are export's own: ``configs/export-demo.yaml`` (tasks, roles, windows,
teachers, students, pruning, INT8 settings) with smaller seeded recordings of the simulator
(``record_all``, cached in ``build/recordings/bench-export-{quick,full}``) and fewer epochs in
``--quick`` (the full run uses the demo's own seeds, hours and epochs).
Each task runs the public chain :func:`export.pipeline.export_model` once, into a temporary
directory (never ``models/``). The chain does not return its networks, so the bench wraps
``export.pipeline.build_dataset`` and ``export.pipeline.fit`` (pass-through spies that keep what
they return) and passes a pass-through ``quantizer`` that keeps the INT8 bytes, so an INT8 that
fails its gate (left out of the bundle) is still measured, marked ``gate failed``. The
detection-delay gate is switched off (the bench reports, it does not stop); the pipeline's own
detection delays (student vs its refitted PCA) are read back from the bundle's ``report.json``.

**Measured per task** (test windows of the test seeds, as the chain selects them):

* teacher FP32 (the one that taught: best on validation), exported here with export's
  ``to_onnx`` inside the same served graph as the student (softmax / reconstruction error /
  de-normalisation); student FP32 (the bundle's ``model.onnx``: distilled + pruned, or the
  scratch student when the chain's distillation gate chose it); student INT8 (the quantizer's
  output, gate result from the chain's report); the other student (scratch or distilled)
  for quality only;
* size of every ONNX file; latency at batch 1 and 64 with export's ``latency_us`` (median of
  single calls, 1 intra-op thread), interleaved in rounds, the best round kept (load from
  other processes only adds time; the spread over rounds is reported); the call
  floor (an Identity graph on the same input shape) subtracted for the "net" speed-up; torch
  eager latency of the same served graphs (torch at 1 thread, as the chain sets it);
* quality from onnxruntime outputs: balanced accuracy (export's metric), accuracy and
  fault-score AUROC (classifier), AUROC (anomaly), MAE in hours of the capped RUL (rul);
* the PCA baseline ``models/pca-pump`` (its own normalisation and features) on the same test
  windows: AUROC of max(T^2/limit, SPE/limit) and detection delays at its shipped thresholds
  (classifier and anomaly tasks; not comparable for RUL). The test set holds the demo's
  long-form (historian, exception-based with deadbands) normal day, where held values make the
  window standard deviations small; pca-pump, fitted on 1 s data, alarms on nearly every window
  of it, so its AUROC is also given on the wide-form recordings only, beside the student's.

Targets (issue): FP32 student >= 20x smaller than the teacher, INT8 >= 30x, every student
<= 50 KB; best shippable student >= 1.5x faster at batch 1, >= 5x after subtracting the call
floor, <= 20 us absolute; quality: balanced accuracy <= 0.5 point lower, AUROC <= 0.005 lower,
RUL MAE within 5 % of the teacher's.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from torch import nn  # noqa: E402

import export.pipeline as pipeline  # noqa: E402
from agent.modelstore.bundle import load_bundle  # noqa: E402
from agent.modelstore.manifest import Manifest  # noqa: E402
from export import gates  # noqa: E402
from export.data import (  # noqa: E402
    NORMAL,
    Contract,
    Dataset,
    Windows,
    build_dataset,
    features,
    sniff_format,
)
from export.evaluate import detection_delays, false_alarm_rate, summarise_delays  # noqa: E402
from export.onnx_tools import (  # noqa: E402
    ClassifierGraph,
    ReconstructionScore,
    RegressorGraph,
    cpu_features,
    latency_us,
    normalise_in_graph,
    quantize_int8,
    run_onnx,
    to_onnx,
)
from export.pipeline import (  # noqa: E402
    ExportConfig,
    ModelConfig,
    RecordingSet,
    _feature_spec,  # private: the pipeline's FeatureSpec of a net's feature kind
    _Task,  # private: the pipeline's targets, test-row selection and normalised regression target
    export_model,
    load_config,
    record_all,
)
from export.quantize import feature_affine  # noqa: E402
from export.train import auc, balanced_accuracy, n_params  # noqa: E402
from export.train import fit as train_fit  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "export.json"
CONFIG = ROOT / "configs" / "export-demo.yaml"
PCA_BUNDLE = ROOT / "models" / "pca-pump"
DEV_PUB = ROOT / "export" / "keys" / "dev-ed25519.pub"
OPSET = 17
BATCH = 64

# issue targets
SIZE_FP32_X = 20.0
SIZE_INT8_X = 30.0
SIZE_MAX_B = 50 * 1024
SPEEDUP_B1 = 1.5
SPEEDUP_NET = 5.0
LATENCY_MAX_US = 20.0
ACC_DROP_PT = 0.5
AUROC_DROP = 0.005
MAE_RATIO = 1.05


# --------------------------------------------------------------------------- scale


@dataclass(frozen=True)
class Scale:
    """How much data and training a run uses (the demo config's settings otherwise)."""

    name: str
    hours: float
    train_fault_seeds: tuple[int, ...]
    train_normal_seeds: tuple[int, ...]
    test_fault_seeds: tuple[int, ...]
    test_normal_seeds: tuple[int, ...]
    epochs: int
    finetune_epochs: int
    patience: int
    rounds: int  # latency rounds (interleaved)
    runs: int  # calls per latency measurement
    warmup: int


QUICK = Scale("quick", 12.0, (1, 2, 3), (11,), (101,), (111,), 20, 6, 5, 5, 600, 100)
FULL = Scale("full", 24.0, (1, 2, 3, 4, 5, 6), (11, 12), (101, 102), (111,), 40, 10, 8, 5, 2000, 200)


def bench_config(scale: Scale) -> ExportConfig:
    """configs/export-demo.yaml with smaller recordings, the scale's epochs, no signing."""
    cfg = load_config(CONFIG)
    demo = {s.name: s for s in cfg.recordings.sets}

    def rset(name: str, seeds: Sequence[int]) -> RecordingSet:
        return demo[name].model_copy(update={"seeds": list(seeds), "hours": scale.hours})

    recordings = cfg.recordings.model_copy(
        update={
            "dir": ROOT / "build" / "recordings" / f"bench-export-{scale.name}",
            "sets": [
                rset("faults", scale.train_fault_seeds),
                rset("normal", scale.train_normal_seeds),
                rset("faults-test", scale.test_fault_seeds),
                rset("normal-test", scale.test_normal_seeds),
            ],
        }
    )
    models = []
    for m in cfg.models:
        fit = m.fit.model_copy(
            update={
                "epochs": scale.epochs,
                "finetune_epochs": scale.finetune_epochs,
                "patience": scale.patience,
            }
        )
        models.append(m.model_copy(update={"fit": fit, "detection_gate": False}))
    return cfg.model_copy(update={"recordings": recordings, "models": models, "key": None})


# --------------------------------------------------------------------------- the chain, observed


@dataclass
class Chain:
    """What one export_model call produced, with what it trained on the way."""

    cfg: ModelConfig
    ds: Dataset
    nets: dict[str, nn.Module]  # by the fit description: "teacher 1 mlp", "student (scratch)", ...
    int8: tuple[bytes, dict[str, str]] | None
    manifest: Manifest
    report: dict[str, Any]
    fp32: bytes  # the bundle's model.onnx
    seconds: float


def run_chain(
    cfg: ModelConfig, recordings: Sequence[Any], *, seed: int, threads: int, progress: bool
) -> Chain:
    """export_model into a temporary directory, keeping its dataset, networks and INT8 bytes."""
    nets: dict[str, nn.Module] = {}
    datasets: list[Dataset] = []
    quantized: list[tuple[bytes, dict[str, str]]] = []
    real_fit, real_build = train_fit, build_dataset  # what export.pipeline imported

    def fit_spy(*args: Any, **kwargs: Any) -> Any:
        out = real_fit(*args, **kwargs)
        fc = kwargs["cfg"] if "cfg" in kwargs else args[6]
        nets[fc.desc] = out[0]
        return out

    def build_spy(*args: Any, **kwargs: Any) -> Dataset:
        ds = real_build(*args, **kwargs)
        datasets.append(ds)
        return ds

    def quantizer(*args: Any, **kwargs: Any) -> tuple[bytes, dict[str, str]]:
        q = quantize_int8(*args, **kwargs)
        quantized.append(q)
        return q

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        out = Path(tmp) / cfg.name
        run_cfg = cfg.model_copy(update={"out": out})
        with (
            mock.patch.object(pipeline, "fit", fit_spy),
            mock.patch.object(pipeline, "build_dataset", build_spy),
        ):
            man = export_model(
                run_cfg,
                recordings,
                seed=seed,
                threads=threads,
                key=None,
                progress=progress,
                quantizer=quantizer,
            )
        rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
        fp32 = (out / "model.onnx").read_bytes()
        # the INT8 that ships (export/quantize.py tries many settings), else the last tried
        shipped = out / "model.int8.onnx"
        int8 = next((q for q in quantized if shipped.exists() and q[0] == shipped.read_bytes()), None)
        int8 = int8 or (quantized[-1] if quantized else None)
    return Chain(
        cfg,
        datasets[-1],
        nets,
        int8,
        man,
        rep,
        fp32,
        time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- measuring


def served(task: _Task, net: nn.Module) -> nn.Module:
    """The served graph around a raw network, as export_model wraps its student."""
    if task.name == "classifier":
        return ClassifierGraph(net, task.codes.index(NORMAL))
    if task.name == "anomaly":
        return ReconstructionScore(net)
    return RegressorGraph(net, task.y_mean, task.y_std, 0.0 if task.name == "rul" else None)


def identity_model(shape: Sequence[int]) -> bytes:
    """``y = x`` on an input of the model's shape: the cost of an onnxruntime call itself."""
    dims: list[Any] = ["batch", *shape[1:]]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "floor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def torch_latency_us(graph: nn.Module, x: np.ndarray, *, runs: int, warmup: int) -> float:
    """Median wall time of one eager call (inference mode), like ``latency_us`` for onnxruntime."""
    graph.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    times = np.empty(runs)
    with torch.inference_mode():
        for _ in range(warmup):
            graph(xt)
        for i in range(runs):
            t0 = time.perf_counter()
            graph(xt)
            times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e6)


def interleaved(jobs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Every job ``rounds`` times, the jobs run in turn inside each round (so a burst of
    background load hits every variant alike, not one of them)."""
    got: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(rounds):
        for k, job in jobs.items():
            got[k].append(job())
    return got


def quality(task: _Task, outs: list[np.ndarray], te: Windows) -> dict[str, float]:
    """Task metrics of served outputs (onnxruntime) on the test windows."""
    faulty = te.label != NORMAL
    if task.name == "classifier":
        y = task.target(te)
        assert y is not None
        pred = np.argmax(outs[0], axis=1)
        return {
            "balanced_accuracy": balanced_accuracy(y, pred, len(task.codes)),
            "accuracy": float(np.mean(pred == y)),
            "auroc": auc(outs[1], faulty),
        }
    if task.name == "anomaly":
        return {"auroc": auc(outs[0], faulty)}
    truth = task._raw_target(te.rul if task.name == "rul" else te.oracle)
    return {"mae": float(np.mean(np.abs(outs[0].reshape(-1) - truth)))}


PRIMARY = {"classifier": "balanced_accuracy", "anomaly": "auroc", "rul": "mae", "setpoint": "mae"}


def quality_target(task: str, teacher: dict[str, float], student: dict[str, float]) -> dict[str, Any]:
    """The issue's quality target for one student variant against the teacher."""
    key = PRIMARY[task]
    t, s = teacher[key], student[key]
    if task == "classifier":
        d = (s - t) * 100.0
        return {
            "metric": key,
            "value": d,
            "limit": -ACC_DROP_PT,
            "ok": d >= -ACC_DROP_PT,
            "text": f"{d:+.2f} pt",
        }
    if task == "anomaly":
        d = s - t
        return {"metric": key, "value": d, "limit": -AUROC_DROP, "ok": d >= -AUROC_DROP, "text": f"{d:+.4f}"}
    r = s / t if t > 0 else math.inf
    return {
        "metric": key,
        "value": r,
        "limit": MAE_RATIO,
        "ok": r <= MAE_RATIO,
        "text": f"{(r - 1) * 100:+.1f} %",
    }


@dataclass
class Pca:
    """The shipped PCA baseline bundle."""

    manifest: Manifest
    model: bytes

    @classmethod
    def load(cls) -> Pca:
        b = load_bundle(PCA_BUNDLE, trusted_keys=[DEV_PUB])
        return cls(b.manifest, (PCA_BUNDLE / b.variant.file).read_bytes())

    def features(self, te: Windows) -> np.ndarray:
        return features(te.x, Contract(self.manifest.inputs, self.manifest.features))

    def evaluate(
        self, te: Windows, x: np.ndarray, cfg: ModelConfig, ds: Dataset, student_score: np.ndarray
    ) -> dict[str, Any]:
        """AUROC (all test windows, and those of wide recordings only, beside the student's) and
        detection delays at the shipped thresholds."""
        t2, spe = run_onnx(self.model, x)
        lim = {o.name: o.thresholds["alarm"] for o in self.manifest.outputs}
        score = np.maximum(t2 / lim["t2"], spe / lim["spe"])
        alarms = (t2 > lim["t2"]) | (spe > lim["spe"])
        w = ds.spec.window
        d = summarise_delays(
            detection_delays(
                te,
                alarms,
                on_delay=cfg.on_delay,
                period_s=w.sample_period_s,
                stride=w.stride,
                names=ds.labels,
            )
        )
        d["test_far"] = false_alarm_rate(te, alarms)
        faulty = te.label != NORMAL
        long = np.array([sniff_format(r.path) == "long" for r in ds.recordings])[te.rec]
        wide = ~long
        return {
            "auroc": auc(score, faulty),
            "detection": d,
            "long_form_test_windows": int(long.sum()),
            "far_long_form": float(np.mean(alarms[long & ~faulty])) if (long & ~faulty).any() else None,
            "auroc_wide_only": auc(score[wide], faulty[wide]),
            "student_auroc_wide_only": auc(student_score[wide], faulty[wide]),
        }


@dataclass
class Row:
    name: str
    runtime: str  # "onnxruntime" or "torch eager"
    params: int | None = None
    size: int | None = None
    b1: float = math.nan
    bn: float = math.nan
    floor_b1: float = math.nan
    quality: dict[str, float] = field(default_factory=dict)
    note: str = ""


def measure(chain: Chain, pca: Pca, scale: Scale, log: Callable[[str], None]) -> dict[str, Any]:
    """Every variant of one task: size, latency (batch 1 and 64), quality; the targets."""
    cfg, ds, rep, man = chain.cfg, chain.ds, chain.report, chain.manifest
    task = _Task(cfg, ds)
    te = ds.test.take(task.rows(ds.test, False))
    out_names = [o.name for o in man.outputs]

    # which teacher taught (export_model: the first best on validation) and which student ships
    teachers = [m for m in rep["models"] if m["role"].startswith("teacher")]
    ti = max(range(len(teachers)), key=lambda i: (teachers[i]["val"], -i))
    tc = cfg.teachers[ti]
    teacher = chain.nets[f"teacher {ti + 1} {tc.arch}"]
    distilled, scratch = chain.nets["student (prune+tune)"], chain.nets["student (scratch)"]
    dist_gate = next((g for g in rep["gates"] if g["gate"] == "distillation"), None)
    scratch_ships = dist_gate is not None and dist_gate["result"].startswith("fail")
    student, other = (scratch, distilled) if scratch_ships else (distilled, scratch)
    other_name = "distilled" if scratch_ships else "scratch"

    # the networks take the trained (normalised) features; a schema-2 bundle's ONNX files take
    # raw features and normalise in the graph (export/quantize.py)
    trained = man.inputs
    if man.input_normalisation is not None:
        trained = tuple(
            r.model_copy(update={"normalisation": n})
            for r, n in zip(man.inputs, man.input_normalisation.roles, strict=True)
        )
    x_s = features(te.x, Contract(trained, man.features))
    x_raw = features(te.x, Contract(man.inputs, man.features))
    x_t = features(te.x, Contract(trained, _feature_spec(tc.features, cfg.stats)))
    g_teacher, g_student, g_other = served(task, teacher), served(task, student), served(task, other)
    t_bytes = to_onnx(g_teacher, torch.from_numpy(x_t[:2]), man.model_input.name, out_names)
    o_bytes = to_onnx(g_other, torch.from_numpy(x_s[:2]), man.model_input.name, out_names)
    s_bytes = to_onnx(g_student, torch.from_numpy(x_s[:2]), man.model_input.name, out_names)
    if man.input_normalisation is not None:
        affine = feature_affine(man.input_normalisation.roles, man.features, man.window.length)
        o_bytes, s_bytes = (normalise_in_graph(b, *affine) for b in (o_bytes, s_bytes))
        x_s = x_raw  # every ONNX student below takes raw features (the torch ones are timed only)
    same_bytes = s_bytes == chain.fp32

    int8_gate = next((g for g in rep["gates"] if g["gate"] == "int8_agreement"), None)
    int8_ok = int8_gate is not None and int8_gate["result"] == "pass"
    int8_note = (
        "no INT8"
        if int8_gate is None
        else ("gate passed" if int8_ok else "gate failed (left out of the bundle)")
        + " "
        + ", ".join(f"{k} {v:.4f}" for k, v in int8_gate["measured"].items())
    )

    # parity of the teacher export (the chain checks the student's)
    with torch.no_grad():
        t_torch = g_teacher(torch.from_numpy(x_t))
    t_torch_l = [t_torch] if isinstance(t_torch, torch.Tensor) else list(t_torch)
    outs_t = run_onnx(t_bytes, x_t)
    try:
        parity = gates.gate_fp32_parity([t.numpy() for t in t_torch_l], outs_t, out_names)["max_abs_diff"]
    except gates.GateError as exc:
        parity = exc.measured.get("max_abs_diff", math.nan)

    q = {
        "teacher": quality(task, outs_t, te),
        "student_fp32": quality(task, run_onnx(chain.fp32, x_s), te),
        "other": quality(task, run_onnx(o_bytes, x_s), te),
    }
    if chain.int8 is not None:
        q["student_int8"] = quality(task, run_onnx(chain.int8[0], x_s), te)
    pca_comparable = task.name in ("classifier", "anomaly") and pca.manifest.window == ds.spec.window
    x_p = pca.features(te) if pca_comparable else None

    # ---- latency, interleaved in rounds
    log(f"  latency ({scale.rounds} rounds x {scale.runs} calls per variant and batch)")
    floors: dict[tuple[int, ...], np.ndarray] = {}
    for x in (x_s, x_t, x_p):
        if x is not None:
            floors.setdefault(tuple(x.shape[1:]), x)
    kw = {"runs": scale.runs, "warmup": scale.warmup}
    ort_models: dict[str, tuple[bytes, np.ndarray]] = {
        "teacher": (t_bytes, x_t),
        "student_fp32": (chain.fp32, x_s),
    }
    if chain.int8 is not None:
        ort_models["student_int8"] = (chain.int8[0], x_s)
    if x_p is not None:
        ort_models["pca"] = (pca.model, x_p)
    for shape, x in floors.items():
        ort_models[f"floor {shape}"] = (identity_model(x.shape), x)
    jobs: dict[str, Callable[[], float]] = {}
    for key, (mb, x) in ort_models.items():
        for b in (1, BATCH):
            jobs[f"{key} b{b}"] = functools.partial(latency_us, mb, x[:b], **kw)
    for key, (g, x) in {"teacher_torch": (g_teacher, x_t), "student_torch": (g_student, x_s)}.items():
        for b in (1, BATCH):
            jobs[f"{key} b{b}"] = functools.partial(torch_latency_us, g, x[:b], **kw)
    per_round = interleaved(jobs, scale.rounds)
    # the best round: background load (other processes on 2 cores) only ever adds time
    lat = {k: min(v) for k, v in per_round.items()}
    spread = {k: max(v) / min(v) for k, v in per_round.items()}

    def floor(x: np.ndarray, b: int) -> float:
        return lat[f"floor {tuple(x.shape[1:])} b{b}"]

    # ---- rows
    rows = [
        Row(
            f"teacher {tc.arch} ({tc.features})",
            "onnxruntime",
            params=n_params(teacher),
            size=len(t_bytes),
            b1=lat["teacher b1"],
            bn=lat[f"teacher b{BATCH}"],
            floor_b1=floor(x_t, 1),
            quality=q["teacher"],
            note=f"fp32, torch/onnxruntime parity {parity:.1e}",
        ),
        Row(
            f"student fp32 mlp {_sizes(student)}",
            "onnxruntime",
            params=n_params(student),
            size=len(chain.fp32),
            b1=lat["student_fp32 b1"],
            bn=lat[f"student_fp32 b{BATCH}"],
            floor_b1=floor(x_s, 1),
            quality=q["student_fp32"],
            note=("scratch" if scratch_ships else "distilled+pruned") + " (ships)",
        ),
    ]
    if chain.int8 is not None:
        rows.append(
            Row(
                f"student int8 mlp {_sizes(student)}",
                "onnxruntime",
                params=n_params(student),
                size=len(chain.int8[0]),
                b1=lat["student_int8 b1"],
                bn=lat[f"student_int8 b{BATCH}"],
                floor_b1=floor(x_s, 1),
                quality=q["student_int8"],
                note=int8_note,
            )
        )
    rows += [
        Row(
            f"{other_name} fp32 mlp {_sizes(other)}",
            "onnxruntime",
            params=n_params(other),
            size=len(o_bytes),
            quality=q["other"],
            note="quality only (same shape as the student)",
        ),
        Row(
            "teacher fp32",
            "torch eager",
            params=n_params(teacher),
            b1=lat["teacher_torch b1"],
            bn=lat[f"teacher_torch b{BATCH}"],
            note="served graph, 1 thread",
        ),
        Row(
            "student fp32",
            "torch eager",
            params=n_params(student),
            b1=lat["student_torch b1"],
            bn=lat[f"student_torch b{BATCH}"],
            note="served graph, 1 thread",
        ),
    ]
    pca_res: dict[str, Any] | None = None
    if x_p is not None:
        s_score = run_onnx(chain.fp32, x_s)[-1]  # fault_score (classifier) or score (anomaly)
        pca_res = pca.evaluate(te, x_p, cfg, ds, s_score)
        rows.append(
            Row(
                "pca-pump (models/)",
                "onnxruntime",
                size=len(pca.model),
                b1=lat["pca b1"],
                bn=lat[f"pca b{BATCH}"],
                floor_b1=floor(x_p, 1),
                quality={"auroc": pca_res["auroc"]},
                note="shipped baseline, own normalisation",
            )
        )
    for shape in floors:
        rows.append(
            Row(
                f"call floor: Identity {list(shape)}",
                "onnxruntime",
                b1=lat[f"floor {shape} b1"],
                bn=lat[f"floor {shape} b{BATCH}"],
                note="onnxruntime call cost",
            )
        )

    # ---- targets
    t_b1, t_floor = lat["teacher b1"], floor(x_t, 1)
    shippable = {"student_fp32": lat["student_fp32 b1"]}
    if chain.int8 is not None and int8_ok:
        shippable["student_int8"] = lat["student_int8 b1"]
    best = min(shippable, key=lambda k: shippable[k])
    s_b1, s_floor = shippable[best], floor(x_s, 1)
    net = (t_b1 - t_floor) / (s_b1 - s_floor) if s_b1 > s_floor else math.inf
    sizes = {"student_fp32": len(chain.fp32)}
    if chain.int8 is not None:
        sizes["student_int8"] = len(chain.int8[0])
    targets: list[dict[str, Any]] = [
        _target("size_fp32", len(t_bytes) / len(chain.fp32), SIZE_FP32_X, ">=", "x"),
    ]
    if chain.int8 is not None:
        ratio = len(t_bytes) / len(chain.int8[0])
        note = "" if int8_ok else "INT8 gate failed"
        targets.append(_target("size_int8", ratio, SIZE_INT8_X, ">=", "x", note))
    else:
        targets.append({"name": "size_int8", "ok": None, "text": "n/a (no INT8)"})
    targets += [
        _target("size_max", max(sizes.values()) / 1024, SIZE_MAX_B / 1024, "<=", " KB"),
        _target("speedup_b1", t_b1 / s_b1, SPEEDUP_B1, ">=", "x"),
        _target("speedup_net", net, SPEEDUP_NET, ">=", "x"),
        _target("latency_b1", s_b1, LATENCY_MAX_US, "<=", " us"),
    ]
    for key in ("student_fp32", "student_int8"):
        if key in q:
            qt = quality_target(task.name, q["teacher"], q[key])
            extra = "" if key == "student_fp32" or int8_ok else "INT8 gate failed"
            if task.name == "classifier":
                d_acc = (q[key]["accuracy"] - q["teacher"]["accuracy"]) * 100
                extra = "; ".join(e for e in (f"accuracy {d_acc:+.2f} pt", extra) if e)
            targets.append({"name": f"quality_{key.split('_')[1]}", **qt, "note": extra})

    det = rep.get("detection", {}).get("detectors", {})
    return {
        "task": task.name,
        "model": cfg.name,
        "metric": task.metric,
        "data": rep["data"],
        "chain_seconds": chain.seconds,
        "teacher": {"index": ti + 1, "arch": tc.arch, "features": tc.features, "onnx_parity": parity},
        "teachers": [m for m in rep["models"] if m["role"].startswith("teacher")],
        "students": [m for m in rep["models"] if m["role"].startswith("student")],
        "student_ships": "scratch" if scratch_ships else "distilled+pruned",
        "student_fp32_matches_bundle": same_bytes,
        "sha256": {
            "teacher_fp32": hashlib.sha256(t_bytes).hexdigest(),
            "student_fp32": hashlib.sha256(chain.fp32).hexdigest(),
            "student_int8": hashlib.sha256(chain.int8[0]).hexdigest() if chain.int8 else None,
        },
        "gates": rep["gates"],
        "int8": {"settings": chain.int8[1] if chain.int8 else None, "gate": int8_gate, "gate_ok": int8_ok},
        "input_shapes": {"teacher": list(x_t.shape[1:]), "student": list(x_s.shape[1:])},
        "latency_us": lat,
        "latency_us_rounds": per_round,
        "latency_round_spread": spread,
        "best_student": best,
        "rows": [r.__dict__ for r in rows],
        "quality": q,
        "pca_pump": pca_res,
        "detection_chain": det,
        "targets": targets,
        "test_windows": len(te),
    }


def _sizes(net: nn.Module) -> str:
    """``in-hidden…-out`` of an MLP (or MLP autoencoder) student."""
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]  # in layer order
    return "-".join(str(n) for n in [layers[0].in_features, *(layer.out_features for layer in layers)])


def _target(name: str, value: float, limit: float, op: str, unit: str, note: str = "") -> dict[str, Any]:
    ok = value >= limit if op == ">=" else value <= limit
    digits = 2 if unit == "x" else 1  # a ratio of 1.48 must not print as the 1.5 it missed
    text = f"{value:.{digits}f}{unit}" if math.isfinite(value) else f"inf{unit}"
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "op": op,
        "ok": bool(ok),
        "text": text,
        "note": note,
    }


# --------------------------------------------------------------------------- printing


TARGET_LABELS = {
    "size_fp32": f"size: FP32 student >= {SIZE_FP32_X:g}x smaller than the teacher",
    "size_int8": f"size: INT8 student >= {SIZE_INT8_X:g}x smaller",
    "size_max": f"size: every student <= {SIZE_MAX_B // 1024} KB",
    "speedup_b1": f"batch 1: best student >= {SPEEDUP_B1:g}x faster",
    "speedup_net": f"batch 1 minus call floor: >= {SPEEDUP_NET:g}x faster",
    "latency_b1": f"batch 1: best student <= {LATENCY_MAX_US:g} us",
    "quality_fp32": "quality FP32 vs teacher (bal.acc -0.5 pt / AUROC -0.005 / MAE +5 %)",
    "quality_int8": "quality INT8 vs teacher (same limits)",
}


def _delay(d: dict[str, Any]) -> str:
    return (
        f"{_f(d.get('mean_delay_s'), '.0f')} ({_f(d.get('detected'), '.0f')}/{_f(d.get('events'), '.0f')}; "
        f"{_f(d.get('test_far'), '.1e')})"
    )


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def print_task(res: dict[str, Any]) -> None:
    task = res["task"]
    qcols = {
        "classifier": [
            ("balanced_accuracy", "bal.acc", ".4f"),
            ("accuracy", "acc", ".4f"),
            ("auroc", "AUROC", ".4f"),
        ],
        "anomaly": [("auroc", "AUROC", ".4f")],
    }.get(task, [("mae", "MAE h", ".4f")])
    d = res["data"]
    print(
        f"\n{res['model']} ({task}): {res['test_windows']} test windows (seeds {d['test_seeds']}), "
        f"{d['train_windows']} train; teacher {res['teacher']['arch']} over {res['teacher']['features']} "
        f"{res['input_shapes']['teacher']}, student input {res['input_shapes']['student']}"
    )
    rows = res["rows"]
    teacher = rows[0]
    head = (
        f"{'variant':40} {'runtime':11} {'params':>7} {'bytes':>8} {'x smaller':>9} {'b1 us':>7} "
        f"{'x faster':>8} {'net x':>6} {'b64 us':>8} " + " ".join(f"{c[1]:>7}" for c in qcols) + "  note"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        versus = r is not teacher and not r["name"].startswith("call floor")
        smaller = teacher["size"] / r["size"] if r["size"] and versus else None
        faster = teacher["b1"] / r["b1"] if math.isfinite(r["b1"]) and versus else None
        net = None
        if faster is not None and r["runtime"] == "onnxruntime" and math.isfinite(r["floor_b1"]):
            own = r["b1"] - r["floor_b1"]
            net = (teacher["b1"] - teacher["floor_b1"]) / own if own > 0 else math.inf
        qv = " ".join(f"{_f(r['quality'].get(c[0]), c[2]):>7}" for c in qcols)
        print(
            f"{r['name'][:40]:40} {r['runtime'][:11]:11} {_f(r['params'], 'd'):>7} {_f(r['size'], 'd'):>8} "
            f"{_f(smaller, '.1f'):>9} {_f(r['b1'], '.1f'):>7} {_f(faster, '.2f'):>8} {_f(net, '.1f'):>6} "
            f"{_f(r['bn'], '.1f'):>8} {qv}  {r['note']}"
        )
    notes = []
    studs = {s["role"]: s for s in res["students"]}
    kd, sc = studs.get("student distilled+pruned"), studs.get("student from scratch")
    if kd and sc:
        notes.append(
            f"distilled {kd['test']:.4f} vs scratch {sc['test']:.4f} ({res['metric']}, torch, test seeds): "
            f"{res['student_ships']} ships"
        )
    lat = res["latency_us"]
    s1 = lat["student_torch b1"] / lat["student_fp32 b1"]
    sn = lat[f"student_torch b{BATCH}"] / lat[f"student_fp32 b{BATCH}"]
    t1 = lat["teacher_torch b1"] / lat["teacher b1"]
    notes.append(
        f"torch eager / onnxruntime time: student {s1:.1f}x at batch 1, {sn:.1f}x at batch {BATCH}; "
        f"teacher {t1:.1f}x at batch 1"
    )
    worst = max(res["latency_round_spread"], key=lambda k: res["latency_round_spread"][k])
    notes.append(
        f"latency spread over rounds (max/min): worst {res['latency_round_spread'][worst]:.2f} ({worst})"
    )
    det = res["detection_chain"]
    if res["pca_pump"] is not None:
        p = res["pca_pump"]
        s_auc = res["quality"]["student_fp32"]["auroc"]
        notes.append(
            f"AUROC fault vs normal: student fp32 {s_auc:.4f}, pca-pump {p['auroc']:.4f}; wide-form "
            f"recordings only (without the {p['long_form_test_windows']} windows of the long-form "
            f"historian day, where pca-pump alarms on {_f(p['far_long_form'], '.0%')} of normal windows): "
            f"student {p['student_auroc_wide_only']:.4f}, pca-pump {p['auroc_wide_only']:.4f}"
        )
        delays = [
            ("student", det.get(res["model"], {})),
            ("PCA refit by the chain", det.get("pca baseline", {})),
            ("pca-pump", p["detection"]),
        ]
        notes.append(
            "mean detection delay, s (detected/events; false-alarm rate on test normal windows): "
            + ", ".join(f"{name} {_delay(d)}" for name, d in delays)
        )
    else:
        notes.append("PCA baseline: not comparable (no fault score)")
    if not res["student_fp32_matches_bundle"]:
        notes.append("note: re-exporting the shipped student did not reproduce the bundle's bytes")
    for n in notes:
        print(f"  {n}")


def print_summary(results: list[dict[str, Any]]) -> tuple[int, int]:
    width = 22
    head = f"{'target':68}" + "".join(f" {r['model'][:width]:>{width}}" for r in results)
    print("\nTargets (reported, not asserted)")
    print(head)
    print("-" * len(head))
    ok = missed = 0
    for name, label in TARGET_LABELS.items():
        cells = []
        for r in results:
            t = next((t for t in r["targets"] if t["name"] == name), None)
            if t is None or t["ok"] is None:
                cells.append("n/a")
                continue
            ok += bool(t["ok"])
            missed += not t["ok"]
            cells.append(f"{'OK' if t['ok'] else 'MISSED'} {t['text']}")
        print(f"{label[:68]:68}" + "".join(f" {c:>{width}}" for c in cells))
    print(
        f"{'best student (batch 1, shippable)':68}"
        + "".join(f" {r['best_student']:>{width}}" for r in results)
    )
    for r in results:
        for t in r["targets"]:
            if t.get("note"):
                print(f"  {r['model']} {t['name']}: {t['note']}")
    return ok, missed


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--quick", action="store_true", help="12 h recordings, 20 epochs, 5 latency rounds (~1 min)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results (bench/results/export.json)")
    ap.add_argument("--task", action="append", default=[], help="only these tasks (classifier, anomaly, rul)")
    ap.add_argument("--progress", action="store_true", help="export's progress bars")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg()
    scale = QUICK if args.quick else FULL

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    cfg = bench_config(scale)
    t0 = time.perf_counter()
    recordings = record_all(cfg.recordings, progress=args.progress)
    record_s = time.perf_counter() - t0
    log(f"recordings ready in {record_s:.1f} s ({len(recordings)} x {scale.hours:g} h, {cfg.recordings.dir})")
    pca = Pca.load()
    results = []
    chain_s = measure_s = 0.0
    for m in cfg.models:
        if args.task and m.task not in args.task:
            continue
        log(f"{m.name}: export chain (teachers, distil, prune, scratch, ONNX, INT8, gates)")
        chain = run_chain(m, recordings, seed=cfg.seed, threads=cfg.threads, progress=args.progress)
        chain_s += chain.seconds
        log(f"{m.name}: chain done in {chain.seconds:.1f} s; measuring")
        t0 = time.perf_counter()
        results.append(measure(chain, pca, scale, log))
        measure_s += time.perf_counter() - t0

    print(
        f"\nonnxruntime {ort.__version__}, torch {torch.__version__}, 1 thread; "
        f"CPU {', '.join(cpu_features())}; latency = best of {scale.rounds} interleaved rounds "
        f"of {scale.runs} calls; x smaller / x faster / net x = teacher over the row; load average "
        f"{load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} now (other processes skew latency)"
    )
    for r in results:
        print_task(r)
    ok, missed = print_summary(results)
    total_s = time.perf_counter() - started
    print(
        f"\n{ok} OK, {missed} MISSED. run time {total_s:.1f} s (recording {record_s:.1f} s, export chains "
        f"{chain_s:.1f} s, measuring {measure_s:.1f} s){' [--quick]' if args.quick else ''}"
    )

    result = {
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_features": list(cpu_features()),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "threads": 1,
            "load_average_1_5_15_min": {"start": list(load_start), "end": list(os.getloadavg())},
        },
        "quick": args.quick,
        "scale": scale.__dict__,
        "targets": {
            "size_fp32_x": SIZE_FP32_X,
            "size_int8_x": SIZE_INT8_X,
            "size_max_bytes": SIZE_MAX_B,
            "speedup_b1": SPEEDUP_B1,
            "speedup_net": SPEEDUP_NET,
            "latency_b1_us": LATENCY_MAX_US,
            "balanced_accuracy_drop_pt": ACC_DROP_PT,
            "auroc_drop": AUROC_DROP,
            "mae_ratio": MAE_RATIO,
        },
        "summary": {"ok": ok, "missed": missed},
        "run_time_s": {"total": total_s, "recording": record_s, "chains": chain_s, "measuring": measure_s},
        "tasks": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(result), indent=2, default=_json) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _finite(o: Any) -> Any:
    """NaN and infinities as null: strict JSON."""
    if isinstance(o, float | np.floating):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def _json(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
