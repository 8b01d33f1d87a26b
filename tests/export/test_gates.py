"""Every export gate, made to fail: the export stops with a clear message and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import export.pipeline as pipeline
from export import gates
from export.data import Recording
from export.nets import MLP
from export.onnx_tools import ClassifierGraph, quantize_int8
from export.pipeline import FitSettings, Int8Settings, NetConfig, export_model, package

from .conftest import tiny_model


def small_classifier() -> tuple[torch.nn.Module, dict, np.ndarray]:
    torch.manual_seed(0)
    net = MLP(6, [16], 3)
    graph = ClassifierGraph(net, 0)
    manifest = {
        "name": "gate-test", "version": "1", "task": "classifier",
        "window": {"sample_period_s": 1.0, "length": 1, "stride": 1},
        "inputs": [{"role": f"r{i}", "unit": "", "range": [-10.0, 10.0]} for i in range(6)],
        "features": {"kind": "flatten"},
        "model_input": {"name": "x", "shape": ["batch", 6]},
        "outputs": [{"name": "probs", "meaning": "p", "shape": ["batch", 3], "labels": ["normal", "a", "b"]},
                    {"name": "fault_score", "meaning": "1 - p(normal)"}],
    }
    x = np.random.default_rng(0).normal(size=(500, 6)).astype(np.float32)
    return graph, manifest, x


def test_gate_functions_pass_and_fail_with_numbers() -> None:
    assert gates.gate_fp32_parity([np.zeros(3)], [np.full(3, 5e-5)], ["y"])["max_abs_diff"] == pytest.approx(5e-5)
    with pytest.raises(gates.GateError, match=r"gate fp32_parity failed: .* differ by up to 0.001"):
        gates.gate_fp32_parity([np.zeros(3)], [np.array([0, 0, 1e-3])], ["y"])
    p = np.eye(3)[np.arange(1000) % 3]
    q = p.copy()
    q[:6] = np.roll(q[:6], 1, axis=1)  # 0.6 % disagree
    with pytest.raises(gates.GateError, match=r"top-1 agreement with FP32 is 99.40% \(needs >= 99.5%\)"):
        gates.gate_int8_agreement(p, q, kind="top1")
    s = np.linspace(0, 1, 1000)
    assert gates.gate_int8_agreement(s, s + 1e-4, kind="correlation")["score_correlation"] > 0.999
    with pytest.raises(gates.GateError, match="score correlation"):
        gates.gate_int8_agreement(s, s + np.random.default_rng(0).normal(scale=0.05, size=1000), kind="correlation")
    with pytest.raises(gates.GateError, match="does not match the same-size student trained from scratch"):
        gates.gate_distillation(0.80, 0.85, metric="balanced accuracy")
    assert gates.gate_distillation(0.85, 0.85, metric="balanced accuracy")["distilled"] == 0.85
    def d(rate: float, delay: float) -> dict[str, float]:
        return {"detection_rate": rate, "mean_delay_detected_s": delay, "false_alerts_per_day": 0.5}

    # detection rate first; a miss is never averaged in as a delay
    assert gates.gate_detection(d(0.8, 900.0), d(0.6, 30.0), budget_per_day=1)["student_detection_rate"] == 0.8
    with pytest.raises(gates.GateError, match=r"student detected 60% .* PCA baseline 80%"):
        gates.gate_detection(d(0.6, 30.0), d(0.8, 900.0), budget_per_day=1)
    assert gates.gate_detection(d(0.6, 30.0), d(0.6, 30.0), budget_per_day=1)
    with pytest.raises(gates.GateError, match="the student must be as fast"):
        gates.gate_detection(d(0.6, 31.0), d(0.6, 30.0), budget_per_day=1)
    with pytest.raises(gates.GateError, match="detected none"):
        gates.gate_detection(d(0.0, float("nan")), d(0.0, float("nan")), budget_per_day=1)


def test_fp32_parity_gate_stops_a_broken_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline.to_onnx

    def broken(*args: object, **kw: object) -> bytes:  # an exporter that gets one weight wrong
        model = onnx.load_from_string(real(*args, **kw))
        init = model.graph.initializer[0]
        w = numpy_helper.to_array(init).copy()
        w.flat[0] += 0.5
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        return model.SerializeToString()

    monkeypatch.setattr(pipeline, "to_onnx", broken)
    graph, manifest, x = small_classifier()
    with pytest.raises(gates.GateError, match="gate fp32_parity failed"):
        package(graph, manifest=manifest, x_check=x, x_calibration=x, out=tmp_path / "b", int8_kind="top1")
    assert not (tmp_path / "b").exists()


def broken_quantizer(model: bytes, calibration: np.ndarray, **kw: object) -> tuple[bytes, dict[str, str]]:
    """Quantizes with calibration data 1000x too small: every activation saturates."""
    return quantize_int8(model, calibration * 1e-3, **kw)  # type: ignore[arg-type]


def test_int8_gate_stops_a_broken_quantization_when_required(tmp_path: Path) -> None:
    graph, manifest, x = small_classifier()
    with pytest.raises(gates.GateError, match=r"gate int8_agreement failed: INT8 top-1 agreement"):
        package(graph, manifest=manifest, x_check=x, x_calibration=x, out=tmp_path / "b", int8_kind="top1",
                int8=Int8Settings(mode="required"), quantizer=broken_quantizer)
    assert not (tmp_path / "b").exists()


def test_int8_that_fails_its_gate_is_left_out_when_optional(tmp_path: Path) -> None:
    import json

    graph, manifest, x = small_classifier()
    man = package(graph, manifest=manifest, x_check=x, x_calibration=x, out=tmp_path / "b", int8_kind="top1",
                  quantizer=broken_quantizer)
    assert [v.file for v in man.variants] == ["model.onnx"]
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [v["status"] for v in rep["variants"]] == ["shipped", "left out: failed its gate"]
    # and the honest quantizer passes on the same model
    man = package(graph, manifest=manifest, x_check=x, x_calibration=x, out=tmp_path / "c", int8_kind="top1",
                  int8=Int8Settings(mode="required"))
    assert sorted(v.precision for v in man.variants) == ["fp32", "int8"]


def test_distillation_gate(recordings: list[Recording], tmp_path: Path) -> None:
    # a teacher that never trained, and a student that only listens to it (alpha 0)
    useless = [NetConfig(arch="mlp", hidden=[32], epochs=0)]
    fit = FitSettings(epochs=4, finetune_epochs=2, batch=128, alpha=0.0)
    cfg = tiny_model(tmp_path, "classifier", teachers=useless, fit=fit, distillation="required", int8={"mode": "off"})
    with pytest.raises(gates.GateError, match="gate distillation failed"):
        export_model(cfg, recordings, progress=False)
    assert not cfg.out.exists()
    cfg = tiny_model(tmp_path, "classifier", teachers=useless, fit=fit, distillation="auto", int8={"mode": "off"})
    man = export_model(cfg, recordings, progress=False)
    assert "scratch" in man.provenance["method"]


def test_detection_gate_failure_writes_its_report_and_no_bundle(recordings: list[Recording], tmp_path: Path) -> None:
    # an on-delay longer than any fault: the student never alerts, so it cannot match PCA
    cfg = tiny_model(tmp_path, "anomaly", detection_gate=True, on_delay=100_000, int8={"mode": "off"})
    with pytest.raises(gates.GateError, match=r"gate detection failed: the student detected none .*report in"):
        export_model(cfg, recordings, progress=False)
    assert sorted(p.name for p in cfg.out.iterdir() if p.suffix != ".svg") == ["report.json", "report.md"]
    rep = json.loads((cfg.out / "report.json").read_text())
    (failed,) = [g for g in rep["gates"] if g["gate"] == "detection"]
    assert failed["result"] == "fail" and failed["measured"]["student_detection_rate"] == 0.0
    assert "baseline_detection_rate" in failed["measured"]  # the numbers that failed, both sides
    assert "the agent's replay" in (cfg.out / "report.md").read_text()
    episodes = rep["detection"]["methods"]["pca baseline"]["per_episode"]
    assert episodes and {e["class"] for e in episodes} <= {str(c) for c in range(1, 10)}  # the data's codes
