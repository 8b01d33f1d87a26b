"""Student → ONNX (one self-contained file, metadata stripped), INT8 with onnxruntime, latency.

* :func:`to_onnx` uses the TorchScript exporter (``dynamo=False``): near-instant for small
  models and never writes external data (FIELD.md). The batch dimension is dynamic; opset 17,
  IR version 8 so every onnxruntime the agent accepts (>= 1.20) reads it.
* :func:`strip` removes what a bundle must not carry: doc strings, producer version,
  metadata properties, and any external-data reference (an exported file must be one file).
* :func:`quantize_int8`: static QDQ quantization of one setting (calibration method MinMax,
  Percentile or Entropy; per-channel or per-tensor symmetric weights; layers left in FP32 by
  name, see :func:`layers`). ``reduce_range`` (7-bit weights) is on only where the CPU lacks an
  INT8 dot-product instruction (VNNI / ``asimddp``): there U8S8 products can saturate the 16-bit
  intermediate; with VNNI it only costs resolution. Only MatMul/Gemm/Conv are quantized: the
  error arithmetic around them stays in float. :mod:`export.quantize` searches the settings.
* :func:`normalise_in_graph`: prepend ``(x - offset) / scale`` (graph initializers) to a model,
  so the first quantized op sees normalised values and the agent feeds raw features.
* :func:`latency_us`: median of single calls on one intra-op thread, like the agent;
  :func:`latency_pair_us` measures two models side by side (interleaved blocks).
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.progress import Progress

__all__ = [
    "INPUT_OFFSET",
    "INPUT_SCALE",
    "OPSET",
    "ClassifierGraph",
    "ReconstructionScore",
    "RegressorGraph",
    "cpu_features",
    "has_int8_dot",
    "latency_pair_us",
    "latency_us",
    "layers",
    "normalise_in_graph",
    "quantize_int8",
    "run_onnx",
    "strip",
    "to_onnx",
]

OPSET = 17
IR_VERSION = 8
INPUT_OFFSET = "input_offset"
INPUT_SCALE = "input_scale"
"""Names of the initializers :func:`normalise_in_graph` adds (the manifest names them too)."""
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class ClassifierGraph(nn.Module):
    """Served classifier: ``probs`` (softmax) and ``fault_score`` = 1 - P(normal)."""

    def __init__(self, net: nn.Module, normal_index: int) -> None:
        super().__init__()
        self.net = net
        self.normal_index = normal_index

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.net(x), dim=1)
        return probs, 1.0 - probs[:, self.normal_index]


class ReconstructionScore(nn.Module):
    """Served autoencoder: the mean squared reconstruction error per row (``score``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        err = self.net(x) - flat
        return (err * err).mean(dim=1)


class RegressorGraph(nn.Module):
    """Served regressor: the normalised output brought back to engineering units, floored."""

    def __init__(self, net: nn.Module, mean: float, std: float, floor: float | None = None) -> None:
        super().__init__()
        self.net = net
        self.mean = float(mean)
        self.std = float(std)
        self.floor = floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x).reshape(-1) * self.std + self.mean
        if self.floor is not None:
            y = torch.clamp(y, min=self.floor)
        return y


def strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove doc strings, producer version and metadata; refuse external data."""
    model.doc_string = ""
    model.producer_version = ""
    model.producer_name = "edge-export"
    del model.metadata_props[:]
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
        # the TorchScript exporter names nodes after Python source locations: drop them
        node.name = ""
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            raise ValueError(
                f"initializer {t.name} uses external data: a bundle ships one self-contained file"
            )
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        vi.doc_string = ""
    return model


def to_onnx(graph: nn.Module, example: torch.Tensor, input_name: str, output_names: Sequence[str]) -> bytes:
    """Export ``graph`` (eval mode) to a single stripped ONNX file's bytes (batch dynamic)."""
    graph.eval()
    buf = io.BytesIO()
    dynamic = {input_name: {0: "batch"}, **{o: {0: "batch"} for o in output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            buf,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = min(model.ir_version, IR_VERSION)
    model = strip(model)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _session(model: bytes, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(model: bytes, x: npt.NDArray[np.float32], batch: int = 4096) -> list[npt.NDArray[np.float32]]:
    """Every output of the model for ``x`` (in batches), as float32 arrays."""
    sess = _session(model)
    name = sess.get_inputs()[0].name
    outs: list[list[np.ndarray]] = []
    for i in range(0, max(len(x), 1), batch):
        outs.append(sess.run(None, {name: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)}))
    return [np.concatenate([o[k] for o in outs]).astype(np.float32) for k in range(len(outs[0]))]


def cpu_features() -> tuple[str, ...]:
    """The CPU flags that decide INT8 speed and safety (x86: avx2, fma, avx512f, vnni; arm: dot product)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp", "i8mm")
    return tuple(f for f in wanted if f in flags) or (platform.machine(),)


def has_int8_dot(features: Sequence[str] | None = None) -> bool:
    """Whether the CPU (``features``, default this one) multiplies INT8 with a dot-product
    instruction (x86 VNNI, arm ``asimddp``/``i8mm``): then ``reduce_range`` is not needed."""
    f = set(features if features is not None else cpu_features())
    return bool(f & {"avx512_vnni", "avx_vnni", "asimddp", "i8mm"})


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, with a progress bar."""

    def __init__(self, name: str, x: npt.NDArray[np.float32], batch: int, progress: bool) -> None:
        # equal batches: onnxruntime's histogram calibrators (Percentile, Entropy) stack every
        # batch's tensors into one array and fail on a shorter last batch
        batch = min(batch, len(x))
        x = x[: len(x) - len(x) % batch] if batch else x
        self.name, self.x, self.batch = name, x, batch
        self.i = 0
        self.bar = Progress((len(x) + batch - 1) // batch, "calibrate int8", enabled=progress)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.x):
            self.bar.close()
            return None
        out = {self.name: np.ascontiguousarray(self.x[self.i : self.i + self.batch], dtype=np.float32)}
        self.i += self.batch
        self.bar.update()
        return out

    def rewind(self) -> None:
        self.i = 0


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a stable name (``{index}_{op}``): :func:`strip` removes names,
    and ``nodes_to_exclude`` needs them."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{i}_{node.op_type}"
    return model


@contextlib.contextmanager
def _quiet_root_log() -> Iterator[None]:
    """onnxruntime's quantizer warns on the root logger that a 16-bit setting lifts the opset
    to 21 (it does, on purpose: that is the setting)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def layers(model: bytes) -> list[str]:
    """The names (as :func:`quantize_int8` gives them) of the quantizable nodes (MatMul, Gemm,
    Conv) in graph order: ``[0]`` is the first layer, ``[-1]`` the last."""
    m = _named(onnx.load_from_string(model))
    return [n.name for n in m.graph.node if n.op_type in QUANTIZED_OPS]


def quantize_int8(
    model: bytes,
    calibration: npt.NDArray[np.float32],
    *,
    activation: str = "uint8",
    weight: str = "int8",
    reduce_range: bool | None = None,
    per_channel: bool = False,
    method: str = "minmax",
    exclude: Sequence[str] = (),
    progress: bool = False,
    workdir: Path | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Static QDQ INT8 of an FP32 model with calibration inputs; returns (bytes, settings).

    ``method``: the activation calibration (``minmax``, ``percentile``: the 99.999th
    percentile of |x|, ``entropy``: the KL-optimal clip); weights are symmetric (per output
    channel with ``per_channel``). ``exclude``: node names (:func:`layers`) left in FP32.
    ``reduce_range`` None means: on when this CPU lacks an INT8 dot-product instruction (and
    the weights are signed); the gateway's own CPU is checked again by the install self-test.
    """
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    qtypes = {
        "uint8": QuantType.QUInt8,
        "int8": QuantType.QInt8,
        "uint16": QuantType.QUInt16,
        "int16": QuantType.QInt16,
    }
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r} (one of {', '.join(methods)})")
    if reduce_range is None:
        reduce_range = weight == "int8" and not has_int8_dot()
    known = set(layers(model))
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise ValueError(
            f"no quantizable node named {', '.join(unknown)} (nodes: {', '.join(sorted(known))})"
        )
    name = _session(model).get_inputs()[0].name
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(_named(onnx.load_from_string(model)).SerializeToString())
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_root_log():
            warnings.simplefilter("ignore")  # and the histogram calibrators print progress
            quantize_static(
                str(pre),
                str(dst),
                _Reader(name, calibration, 256, progress),
                quant_format=QuantFormat.QDQ,
                activation_type=qtypes[activation],
                weight_type=qtypes[weight],
                per_channel=per_channel,
                reduce_range=reduce_range,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=list(exclude),
                calibrate_method=methods[method],
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        q = strip(onnx.load(str(dst)))
    # the quantizer imports every domain onnxruntime knows; keep those a node uses (and the
    # default one), so the IR version is the opset's, not the training domain's
    used = {n.domain for n in q.graph.node} | {""}
    kept = [o for o in q.opset_import if o.domain in used]
    del q.opset_import[:]
    q.opset_import.extend(kept)
    # IR 8 where the opset allows (every onnxruntime >= 1.20 reads it); a 16-bit setting lifts
    # the opset to 21, which needs IR 10 (onnxruntime >= 1.20 reads both)
    q.ir_version = max(
        min(q.ir_version, IR_VERSION), onnx.helper.find_min_ir_version_for(list(q.opset_import), True)
    )
    onnx.checker.check_model(q, full_check=True)
    settings = {
        "format": "QDQ",
        "activation": activation,
        "weight": weight,
        "weight_symmetric": "true",
        "reduce_range": str(reduce_range).lower(),
        "per_channel": str(per_channel).lower(),
        "calibration": f"{method} on {len(calibration)} training windows",
        "quantized_ops": ",".join(QUANTIZED_OPS),
        "fp32_layers": ",".join(exclude) or "none",
    }
    return q.SerializeToString(), settings


def normalise_in_graph(
    model: bytes, offset: npt.ArrayLike, scale: npt.ArrayLike
) -> bytes:
    """``model`` with ``(x - offset) / scale`` in front of every use of its input ``x``.

    ``offset``/``scale`` broadcast against one input row (without the batch dimension); they
    become the initializers :data:`INPUT_OFFSET` and :data:`INPUT_SCALE`. The result takes raw
    features where ``model`` took normalised ones.
    """
    from onnx import helper, numpy_helper

    m = onnx.load_from_string(model)
    off = np.asarray(offset, np.float32)
    sc = np.asarray(scale, np.float32)
    if not (np.all(np.isfinite(off)) and np.all(np.isfinite(sc)) and np.all(sc > 0)):
        raise ValueError("in-graph normalisation needs finite offsets and positive finite scales")
    names = {t.name for t in m.graph.initializer} | {n for node in m.graph.node for n in node.output}
    if INPUT_OFFSET in names or INPUT_SCALE in names:
        raise ValueError("the model is already normalised in the graph")
    x = m.graph.input[0].name
    centred, normalised = f"{x}_centred", f"{x}_normalised"
    for node in m.graph.node:
        for i, inp in enumerate(node.input):
            if inp == x:
                node.input[i] = normalised
    m.graph.initializer.extend(
        [numpy_helper.from_array(off, INPUT_OFFSET), numpy_helper.from_array(sc, INPUT_SCALE)]
    )
    front = [
        helper.make_node("Sub", [x, INPUT_OFFSET], [centred]),
        helper.make_node("Div", [centred, INPUT_SCALE], [normalised]),
    ]
    nodes = [*front, *m.graph.node]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def latency_pair_us(
    a: bytes, b: bytes, x: npt.NDArray[np.float32], *, blocks: int = 20, per_block: int = 100
) -> tuple[float, float, float]:
    """Latency of ``a`` and ``b`` measured side by side: ``blocks`` interleaved blocks of
    single calls on ``x`` (one intra-op thread). Returns (median a, median b, noise), all in
    microseconds; ``noise`` is the median absolute deviation of the per-block differences
    (b - a): a difference within it is not a difference on this machine."""
    sa, sb = _session(a), _session(b)
    feeds = []
    for s in (sa, sb):
        feeds.append({s.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})
    for s, f in zip((sa, sb), feeds, strict=True):
        for _ in range(per_block):
            s.run(None, f)
    ta: list[float] = []
    tb: list[float] = []
    diffs = np.empty(blocks)
    for k in range(blocks):
        med = []
        for s, f, acc in ((sa, feeds[0], ta), (sb, feeds[1], tb)):
            t = np.empty(per_block)
            for i in range(per_block):
                t0 = time.perf_counter()
                s.run(None, f)
                t[i] = time.perf_counter() - t0
            acc.extend(t.tolist())
            med.append(float(np.median(t)))
        diffs[k] = med[1] - med[0]
    noise = float(np.median(np.abs(diffs - np.median(diffs))))
    return float(np.median(ta) * 1e6), float(np.median(tb) * 1e6), noise * 1e6


def latency_us(model: bytes, x: npt.NDArray[np.float32], *, runs: int = 2000, warmup: int = 200) -> float:
    """Median wall time of one session call on ``x`` (one intra-op thread), in microseconds."""
    sess = _session(model)
    name = sess.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(x, dtype=np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e6)
