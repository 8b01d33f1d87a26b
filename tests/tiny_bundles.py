"""Tiny real model bundles for tests: an ONNX graph onnxruntime runs, a manifest, signed.

:func:`write_bundle` writes a bundle whose model takes the summary features ``last`` and
``mean`` of every role (normalisation none, so raw engineering values) and gives

* ``score``: their sum (one value per asset), with an ``alarm`` threshold, and
* ``echo``: the features themselves (``echo[0]`` is the newest row's value of the first role),

so a test can see exactly what the agent fed the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.modelstore.signing import sign_bundle

__all__ = ["DEV_KEY", "DEV_PUB", "Role", "write_bundle"]

ROOT = Path(__file__).resolve().parents[1]
DEV_KEY = ROOT / "export" / "keys" / "dev-ed25519.pem"
DEV_PUB = ROOT / "export" / "keys" / "dev-ed25519.pub"

Role = tuple[str, str, tuple[float, float], str]
"""(role, unit, plausible range, aggregation)."""


def _model(n_features: int) -> bytes:
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["score"], keepdims=0),
        helper.make_node("Identity", ["x"], ["echo"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_features])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("echo", TensorProto.FLOAT, ["batch", n_features]),
        ],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def write_bundle(
    path: Path,
    *,
    name: str,
    period_s: float,
    length: int,
    roles: Sequence[Role],
    stride: int = 1,
    version: str = "1",
    threshold: float = 1e9,
    sign: bool = True,
) -> Path:
    """Write (and sign with the development key) a tiny bundle; returns ``path``."""
    n = 2 * len(roles)
    model = _model(n)
    inputs = []
    for role, unit, (lo, hi), aggregation in roles:
        entry: dict[str, object] = {"role": role, "unit": unit, "range": [lo, hi]}
        if aggregation != "instant":
            entry["aggregation"] = aggregation
        inputs.append(entry)
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "task": "anomaly",
        "window": {"sample_period_s": period_s, "length": length, "stride": stride},
        "inputs": inputs,
        "features": {"kind": "summary", "stats": ["last", "mean"]},
        "model_input": {"name": "x", "shape": ["batch", n]},
        "outputs": [
            {"name": "score", "meaning": "sum of the features", "thresholds": {"alarm": threshold}},
            {"name": "echo", "meaning": "the features", "shape": ["batch", n]},
        ],
        "variants": [{"file": "model.onnx", "sha256": hashlib.sha256(model).hexdigest(), "size": len(model)}],
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(model)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if sign:
        sign_bundle(path, DEV_KEY)
    return path
