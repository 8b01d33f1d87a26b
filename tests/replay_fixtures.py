"""Small real ONNX bundles and recordings for the replay, evaluate and live-agent tests.

:func:`make_bundle` writes a bundle whose score is the window mean of its first role
(normalised with mean 0, std 1, so in engineering units): a step of the input moves the
score by a known amount per sample, which makes every alarm time computable by hand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.modelstore.bundle import Bundle, load_bundle

ROLES = ("level", "temp")
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _model(n_roles: int) -> bytes:
    w = np.zeros(n_roles, dtype=np.float32)
    w[0] = 1.0
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["xw"]),
        helper.make_node("ReduceSum", ["xw", "axes"], ["score"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mean-of-first-role",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_roles])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def make_bundle(
    path: Path,
    *,
    name: str = "tiny",
    period_s: float = 1.0,
    length: int = 4,
    stride: int = 1,
    threshold: float = 3.0,
    roles: Sequence[str] = ROLES,
    columns: dict[str, dict[str, str]] | None = None,
    mean_roles: Sequence[str] = (),
) -> Bundle:
    """A bundle: ``score`` = mean of ``roles[0]`` over the window, alarm threshold ``threshold``.

    ``columns`` (asset → role → column) goes to the provenance, as the export chain writes it;
    ``mean_roles`` are fed the mean over each period (``InputRole.aggregation``).
    """
    model = _model(len(roles))
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": "1",
        "task": "anomaly",
        "window": {"sample_period_s": period_s, "length": length, "stride": stride},
        "inputs": [
            {
                "role": r,
                "unit": "1",
                "range": [-100.0, 100.0],
                "normalisation": {"kind": "standard", "mean": 0.0, "std": 1.0},
                "aggregation": "mean" if r in mean_roles else "instant",
            }
            for r in roles
        ],
        "features": {"kind": "summary", "stats": ["mean"]},
        "model_input": {"name": "x", "shape": ["batch", len(roles)]},
        "outputs": [{"name": "score", "meaning": "window mean of the first role", "thresholds": {"alarm": threshold}}],
        "variants": [{"file": "model.onnx", "sha256": hashlib.sha256(model).hexdigest(), "size": len(model)}],
        "provenance": {"columns": json.dumps(columns)} if columns else {},
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(model)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(path, allow_unsigned=True)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_wide_csv(path: Path, t0: datetime, period_s: float, columns: dict[str, np.ndarray]) -> Path:
    """A wide CSV as the recorder writes it (ISO 8601 UTC with Z and ms; NaN: an empty cell)."""
    n = len(next(iter(columns.values())))
    lines = ["timestamp," + ",".join(columns)]
    for k in range(n):
        cells = ["" if not np.isfinite(v[k]) else f"{v[k]:.6g}" for v in columns.values()]
        lines.append(iso(t0 + timedelta(seconds=k * period_s)) + "," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def step_series(n: int, steps: Sequence[tuple[int, int, float]], noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """``n`` samples of small noise, plus ``value`` on rows ``[start, end)`` for each step."""
    x = np.random.default_rng(seed).normal(0.0, noise, n)
    for start, end, value in steps:
        x[start:end] += value
    return x
