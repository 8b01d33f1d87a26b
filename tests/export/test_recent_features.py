"""A long window with the last minute's statistics beside it (``recent_*`` stats), as the
fault classifier uses them: the export chain's features and the agent's are the same values,
the bundle carries the spec, the agent runs it unchanged. Real recordings, torch, ONNX; seconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.modelstore.binding import ModelBinding
from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import FeatureSpec, WindowSpec, load_manifest
from agent.pipeline.features import FeatureWindows, normalise, sliding_windows, window_to_input
from agent.types import Quality, Sample
from bench.teachers import judge
from export.data import Contract, features, load_columns
from export.pipeline import FitSettings, NetConfig, export_model

from .conftest import pump_data, tiny_model

T0 = datetime(2024, 1, 1, tzinfo=UTC)
STATS = ("mean", "std", "slope", "recent_mean", "recent_std", "recent_min", "recent_max", "recent_slope")


def test_recent_config_is_checked_when_loaded(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="recent_\\* stats need recent"):
        tiny_model(tmp_path, "classifier", stats=["mean", "recent_mean"])
    with pytest.raises(ValidationError, match="recent 200 is longer than the window"):
        tiny_model(tmp_path, "classifier", stats=["mean", "recent_mean"], recent=200)


def test_chain_and_agent_compute_the_same_recent_features(recordings: list, tmp_path: Path) -> None:
    window = WindowSpec(sample_period_s=1.0, length=120, stride=10)
    cfg = tiny_model(
        tmp_path, "classifier", data=pump_data(window=window), stats=list(STATS), recent=30,
        teachers=[NetConfig(arch="mlp", hidden=[32], log_std=True)],
        student=NetConfig(hidden=[24, 12], log_std=True, squash=True),
        fit=FitSettings(epochs=2, finetune_epochs=1, batch=256), seeds=3, pick="validation+test",
        int8={"mode": "off"},  # the graph-side normalisation of recent_* stats: test_quantize.py
    )
    man = export_model(cfg, recordings, progress=False)
    assert man.features == FeatureSpec(kind="summary", stats=STATS, recent=30)
    assert man.window.length == 120 and man.model_input.shape == ("batch", len(STATS) * len(man.inputs))
    assert json.loads((cfg.out / "manifest.json").read_text())["features"]["recent"] == 30
    # the shipped seed: the best mean of validation and test of the winning family
    rep = json.loads((cfg.out / "report.json").read_text())
    family = "distilled" if "distilled" in man.provenance["method"].split("; ") else "scratch"
    both = np.add(rep["students"][family]["val"], rep["students"][family]["test"])
    assert f"student of seed #{int(np.argmax(both)) + 1} (best mean of validation and test" in " ".join(rep["notes"])
    bundle = load_bundle(cfg.out, allow_unsigned=True)
    # the agent's own framing of a recording: ring buffers fed sample by sample
    test_file = next(r.path for r in recordings if r.split == "test" and r.path.name.endswith(".wide.csv"))
    cols = json.loads(man.provenance["columns"])["Pump1"]
    (series,) = load_columns(test_file, [cols[r.role] for r in man.inputs], 1.0)
    series = series[:400]
    assert np.all(np.isfinite(series))
    binding = ModelBinding.model_validate(
        {"name": "m", "bundle": "b", "assets": {"Pump1": {r.role: f"t{i}" for i, r in enumerate(man.inputs)}}}
    )
    fw = FeatureWindows(load_manifest(cfg.out), binding)
    frames = []
    for i, row in enumerate(series):
        samples = {r.role: Sample(r.role, float(v), Quality.good(), T0, float(i))
                   for r, v in zip(man.inputs, row, strict=True)}
        fw.push("Pump1", samples, float(i))
        if (f := fw.frame(now_utc=T0, now_mono=float(i))) is not None:
            frames.append(window_to_input(f.values, man)[0])
    # the export chain's features of the same windows, through its own data path
    wins = sliding_windows(series, 120, 10)
    chain = features(wins.astype(np.float32), Contract(man.inputs, man.features))
    assert len(frames) == len(wins) > 20
    np.testing.assert_allclose(np.array(frames), chain, rtol=1e-5, atol=1e-5)
    last = normalise(series[-30:], man)
    np.testing.assert_allclose(frames[-1][3 * 14 : 4 * 14], last.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(frames[-1][5 * 14 : 6 * 14], last.min(axis=0), rtol=1e-5, atol=1e-5)
    probs = bundle.run({"x": np.array(frames, np.float32)})[0]
    assert probs.shape == (len(frames), len(man.outputs[0].labels or ()))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # and the holdout bench runs it as the agent does (the 120-sample window from the manifest)
    judged = judge(cfg.out, [test_file], label="pump{n}_fault_code", rul="pump{n}_rul_h", cap=2.0)
    assert judged["windows"] > 100 and 0.0 < judged["balanced_accuracy"] <= 1.0
