"""Small real bundles and configs for the model store tests.

``tiny`` is a real ONNX model (built with onnx.helper) over two roles ``a`` and ``b`` (bar,
0..100, normalised with mean 50 and std 10), a 3-sample window at 0.1 s, summary features
(mean): ``score = mean(za) + mean(zb) + bias``, alarm above ``alarm`` with a calibrated false
alarm rate of 0.001. Signed with the development key of export/keys/. (tests/tiny_bundles.py
makes the agent's raw-input bundles; these add what the store checks: expected outputs,
INT8 variants that agree or not, ONNX files whose shapes do not fit.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from agent.modelstore.signing import sign_bundle
from tests.tiny_bundles import DEV_KEY, DEV_PUB, ROOT

__all__ = [
    "DEV_KEY",
    "DEV_PUB",
    "ROOT",
    "edge_agent",
    "make_archive",
    "make_bundle",
    "onnx_model",
    "write_config",
]


def onnx_model(bias: float = 0.0, n_in: int = 2, skew: bool = False) -> bytes:
    w = np.ones((n_in,), dtype=np.float32)
    if skew:
        w[-1] = -1.0  # another model altogether: it disagrees with the FP32 build
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "w"], ["xw"]),
            helper.make_node("ReduceSum", ["xw", "axes"], ["s"], keepdims=0),
            helper.make_node("Add", ["s", "bias"], ["score"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array(bias, dtype=np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_bundle(
    dst: Path,
    version: str = "1",
    *,
    alarm: float = 5.0,
    bias: float = 0.0,
    checks: str | None = "good",
    int8: bool = False,
    int8_skew: bool = False,
    n_in: int = 2,
    key: Path | None = DEV_KEY,
    period: float = 0.1,
) -> Path:
    """Write a signed ``tiny`` bundle into ``dst`` (created). ``checks``: ``good`` (expected
    outputs computed by running the model), ``bad`` (expected outputs off by one) or None."""
    dst.mkdir(parents=True)
    model = onnx_model(bias, n_in)
    (dst / "model.onnx").write_bytes(model)
    variants = [{"file": "model.onnx", "precision": "fp32", "sha256": _sha(model), "size": len(model)}]
    if int8:
        q = onnx_model(bias, n_in, skew=int8_skew)
        (dst / "model-int8.onnx").write_bytes(q)
        variants.append({"file": "model-int8.onnx", "precision": "int8", "sha256": _sha(q), "size": len(q)})
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": "tiny",
        "version": version,
        "task": "anomaly",
        "window": {"sample_period_s": period, "length": 3, "stride": 1},
        "inputs": [
            {
                "role": r,
                "unit": "bar",
                "range": [0.0, 100.0],
                "normalisation": {"kind": "standard", "mean": 50.0, "std": 10.0},
            }
            for r in ("a", "b")
        ],
        "features": {"kind": "summary", "stats": ["mean"]},
        "model_input": {"name": "x", "shape": ["batch", 2], "dtype": "float32"},
        "outputs": [
            {
                "name": "score",
                "meaning": "sum of the normalised means",
                "shape": ["batch"],
                "thresholds": {"alarm": alarm},
                "false_alarm_rate": 0.001,
            }
        ],
        "variants": variants,
    }
    if checks is not None:
        x = np.array([[0.5, -1.0], [2.0, 1.5]], dtype=np.float32)
        sess = ort.InferenceSession(onnx_model(bias, 2), providers=["CPUExecutionProvider"])
        out = sess.run(["score"], {"x": x})[0]
        if checks == "bad":
            out = out + 1.0
        manifest["checks"] = [{"inputs": x.tolist(), "outputs": {"score": out.tolist()}, "tolerance": 1e-4}]
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if key is not None:
        sign_bundle(dst, key)
    return dst


def make_archive(bundle: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(bundle.iterdir()):
            tf.add(p, arcname=f"{bundle.name}/{p.name}")
    return out


def write_config(
    tmp: Path, port: int = 5020, *, store: Path | None = None, extra: str = "", cycle_ms: int = 100
) -> Path:
    """A config with one Modbus device (registers A=40001, B=40002, the model-status register
    40011) and the store model ``tiny`` bound to asset p1."""
    store = store or tmp / "store"
    text = f"""
agent: {{name: store-test, state_dir: {tmp / "state"}, cycle_ms: {cycle_ms}, log_format: json, log_level: warning}}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {port}
    units: [1]
    timeout_ms: 300
    poll_interval_ms: 100
    tags:
      - {{name: A, table: holding, address: 0, type: uint16, engineering_unit: bar}}
      - {{name: B, table: holding, address: 1, type: uint16, engineering_unit: bar}}
      - {{name: ModelStatus, table: holding, address: 10, type: uint16, access: read-write, purpose: status}}
models:
  - name: tiny
    store: tiny
    assets: {{p1: {{a: A, b: B}}}}
assets: [{{name: p1}}]
models_trust: {{public_keys: [{DEV_PUB}]}}
models_store: {{dir: {store}, keep: 3, poll_s: 0.2}}
hmi: {{model_status_tag: ModelStatus}}
{extra}
"""
    path = tmp / "agent.yaml"
    path.write_text(text)
    return path


def edge_agent(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` importing this checkout."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "agent", *map(str, args)],
        capture_output=True, text=True, env=full, timeout=timeout, check=False,
    )  # fmt: skip
