"""Tiny-data runs of the whole chain for every task: bundles load in the agent, are signed,
carry their report, and are reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import load_manifest
from agent.modelstore.signing import verify_bundle_signature
from agent.pipeline.features import window_to_input
from export.cli import main
from export.data import Recording
from export.pipeline import DataConfig, NetConfig, export_model

from .conftest import DEV_KEY, DEV_PUB, tiny_model


def check_bundle(out: Path, *, signed: bool = True) -> dict:
    man = load_manifest(out)
    names = {p.name for p in out.iterdir()}
    listed = {v.file for v in man.variants} | set(man.files)
    assert names - listed == ({"manifest.json", "signature.json"} if signed else {"manifest.json"})
    assert not [n for n in names if n.endswith(".data")]  # single-file ONNX
    assert {"report.json", "report.md"} <= set(man.files)
    for v in man.variants:
        b = load_bundle(out, variant=v.file)
        x = np.random.default_rng(0).normal(size=(2, *man.model_input.shape[1:])).astype(np.float32)
        outs = b.run({"x": x})
        assert all(np.isfinite(o).all() for o in outs)
    if signed:
        verify_bundle_signature(out, [DEV_PUB])
    return json.loads((out / "report.json").read_text())


def test_classifier_chain(recordings: list[Recording], tmp_path: Path) -> None:
    cfg = tiny_model(tmp_path, "classifier", teachers=[NetConfig(arch="mlp", hidden=[64, 64]),
                                                       NetConfig(arch="cnn", features="sequence", channels=8),
                                                       NetConfig(arch="transformer", features="sequence",
                                                                 d_model=16, layers=1, epochs=1)])
    man = export_model(cfg, recordings, key=DEV_KEY, progress=False)
    rep = check_bundle(cfg.out)
    assert man.task == "classifier" and man.outputs[0].labels is not None and man.outputs[0].labels[0] == "normal"
    assert man.outputs[1].name == "fault_score" and "alarm" in man.outputs[1].thresholds
    assert {"confusion_matrix.svg", "roc.svg", "variant_size.svg", "variant_latency.svg"} <= set(man.files)
    assert [g["gate"] for g in rep["gates"]][:2] == ["distillation", "fp32_parity"]
    assert rep["gates"][1]["measured"]["max_abs_diff"] <= 1e-4
    assert len([m for m in rep["models"] if m["role"].startswith("teacher")]) == 3
    assert {v["file"] for v in rep["variants"]} == {"model.onnx", "model.int8.onnx"}  # INT8 measured, shipped or not
    # pruning physically removed neurons: the shipped MLP is [16, 8]
    assert "[16, 8]" in man.provenance["method"]
    assert "pca baseline" in rep["detection"]["detectors"]
    # the ONNX input is exactly what the agent's feature function gives for a raw window
    raw = np.random.default_rng(1).uniform(10, 20, size=(2, 60, 14))
    b = load_bundle(cfg.out)
    probs, _ = b.run({"x": window_to_input(raw, man)})
    assert probs.shape == (2, len(man.outputs[0].labels)) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_anomaly_chain_with_classical_baselines(recordings: list[Recording], tmp_path: Path) -> None:
    cfg = tiny_model(tmp_path, "anomaly", baselines=True)
    man = export_model(cfg, recordings, key=DEV_KEY, progress=False)
    rep = check_bundle(cfg.out)
    assert man.outputs[0].name == "score" and man.outputs[0].false_alarm_rate == 3e-4
    assert set(rep["baselines"]) == {"isolation forest", "local outlier factor", "knn distance"}
    assert {"pca baseline", "isolation forest", "tiny-anomaly"} <= set(rep["detection"]["detectors"])
    assert "bottleneck" not in man.provenance["method"] and "[8, 8, 8]" in man.provenance["method"]


def test_rul_and_setpoint_chains(recordings: list[Recording], tmp_path: Path) -> None:
    cfg = tiny_model(tmp_path, "rul", rul_cap_h=2.0)
    man = export_model(cfg, recordings, progress=False)
    rep = check_bundle(cfg.out, signed=False)
    assert man.outputs[0].name == "rul_h" and man.outputs[0].unit == "h" and "rul_error.svg" in man.files
    assert rep["regression"]["mae"] < 2.0
    station = DataConfig(roles=["tank_level:m:0:5:{asset}.TankLevel", "outlet_flow:m3/h:0:500:{asset}.OutletFlow"],
                         assets=["Station"], oracle="oracle_speed_rpm", train_stride=20)
    recs = [Recording(r.path, r.split, r.seed, r.kind, {"oracle": "Simulation.OracleSpeed"} if r.targets else {})
            for r in recordings]
    cfg = tiny_model(tmp_path, "setpoint", data=station, stats=["mean", "last", "slope"],
                     output={"name": "speed_rpm", "unit": "rpm"})
    man = export_model(cfg, recs, progress=False)
    rep = check_bundle(cfg.out, signed=False)
    assert man.roles == ("tank_level", "outlet_flow") and man.outputs[0].unit == "rpm"
    assert rep["regression"]["mae"] < 400.0  # rpm, after a few epochs on 8 h of data


def test_export_is_deterministic(recordings: list[Recording], tmp_path: Path) -> None:
    a = tiny_model(tmp_path / "a", "classifier", int8={"mode": "off"})
    b = tiny_model(tmp_path / "b", "classifier", int8={"mode": "off"})
    ma = export_model(a, recordings, progress=False)
    mb = export_model(b, recordings, progress=False)
    assert ma.variants[0].sha256 == mb.variants[0].sha256
    assert (a.out / "model.onnx").read_bytes() == (b.out / "model.onnx").read_bytes()


def test_compress_a_user_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    template = {
        "name": "user-net", "version": "3", "task": "anomaly",
        "window": {"sample_period_s": 1.0, "length": 2, "stride": 1},
        "inputs": [{"role": "a", "unit": "bar", "range": [0, 10]}, {"role": "b", "unit": "bar", "range": [0, 10]}],
        "features": {"kind": "flatten"}, "model_input": {"name": "x", "shape": ["batch", 4]},
        "outputs": [{"name": "score", "meaning": "user score", "thresholds": {"alarm": 1.0}}],
    }
    (tmp_path / "m.json").write_text(json.dumps(template))
    torch.manual_seed(0)
    torch.save(user_net().state_dict(), tmp_path / "w.pt")
    rc = main(["compress", "--module", f"{__name__}:user_net", "--state-dict", str(tmp_path / "w.pt"),
               "--manifest", str(tmp_path / "m.json"), "--calibration", str(tmp_path / "calib.npy"),
               "--out", str(tmp_path / "user"), "--key", str(DEV_KEY)])
    assert rc == 0, capsys.readouterr().err
    check_bundle(tmp_path / "user")
    assert "model.onnx" in capsys.readouterr().out


def user_net() -> torch.nn.Module:
    class Score(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.f(x).reshape(-1)

    return Score()


def test_cli_reports_a_failed_gate_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("recordings: {sets: []}\nmodels: []\nunknown: 1\n")
    assert main(["all", "--config", str(cfg)]) == 2
    assert "unknown" in capsys.readouterr().err


def test_agent_never_imports_torch(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys; import agent.cli; from agent.modelstore.bundle import load_bundle; "
        "from agent.modelstore.signing import verify_bundle_signature; "
        "import pathlib; [load_bundle(p) for p in pathlib.Path('models').iterdir() if (p / 'manifest.json').exists()]; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'export')]; "
        "assert not bad, bad; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
