"""Student → ONNX (one self-contained file, metadata stripped), INT8 with onnxruntime, latency.

* :func:`to_onnx` uses the TorchScript exporter (``dynamo=False``): near-instant for small
  models and never writes external data (FIELD.md). The batch dimension is dynamic; opset 17,
  IR version 8 so every onnxruntime the agent accepts (>= 1.20) reads it.
* :func:`strip` removes what a bundle must not carry: doc strings, producer version,
  metadata properties, and any external-data reference (an exported file must be one file).
* :func:`quantize_int8`: static QDQ quantization with calibration data (MinMax). On CPUs without
  VNNI / dot-product, per-channel S8S8 lost accuracy in our measurements, so the default is
  per-tensor with ``reduce_range`` (7-bit weights, safe on every x86 path) — or U8U8. Only
  MatMul/Gemm/Conv are quantized: the error arithmetic around them stays in float.
* :func:`latency_us`: median of single calls on one intra-op thread, like the agent.
"""

from __future__ import annotations

import io
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.progress import Progress

__all__ = [
    "OPSET",
    "ClassifierGraph",
    "ReconstructionScore",
    "RegressorGraph",
    "cpu_features",
    "latency_us",
    "quantize_int8",
    "run_onnx",
    "strip",
    "to_onnx",
]

OPSET = 17
IR_VERSION = 8


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
    f = set(features if features is not None else cpu_features())
    return bool(f & {"avx512_vnni", "avx_vnni", "asimddp", "i8mm"})


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, with a progress bar."""

    def __init__(self, name: str, x: npt.NDArray[np.float32], batch: int, progress: bool) -> None:
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


def quantize_int8(
    model: bytes,
    calibration: npt.NDArray[np.float32],
    *,
    activation: str = "uint8",
    weight: str = "int8",
    reduce_range: bool | None = None,
    per_channel: bool = False,
    progress: bool = False,
    workdir: Path | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Static QDQ INT8 of an FP32 model with calibration inputs; returns (bytes, settings).

    ``reduce_range`` None means: on when the CPU lacks an INT8 dot-product instruction (and
    the weights are signed), so the result is safe on the gateways that lack one too.
    """
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    qtypes = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if reduce_range is None:
        reduce_range = weight == "int8"
    name = _session(model).get_inputs()[0].name
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            _Reader(name, calibration, 256, progress),
            quant_format=QuantFormat.QDQ,
            activation_type=qtypes[activation],
            weight_type=qtypes[weight],
            per_channel=per_channel,
            reduce_range=reduce_range,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        q = strip(onnx.load(str(dst)))
    q.ir_version = min(q.ir_version, IR_VERSION)
    onnx.checker.check_model(q, full_check=True)
    settings = {
        "format": "QDQ",
        "activation": activation,
        "weight": weight,
        "reduce_range": str(reduce_range).lower(),
        "per_channel": str(per_channel).lower(),
        "calibration": f"MinMax on {len(calibration)} training windows",
        "quantized_ops": "MatMul,Gemm,Conv",
    }
    return q.SerializeToString(), settings


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
