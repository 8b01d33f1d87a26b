"""Installing a bundle in place: a bad one is refused and the running model keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from agent.config import Config, load_config
from agent.modelstore.signing import sign_bundle
from agent.runtime import STATUS_BITS, Agent

ROOT = Path(__file__).resolve().parents[2]
DEV_KEY = ROOT / "export" / "keys" / "dev-ed25519.pem"
DEV_PUB = ROOT / "export" / "keys" / "dev-ed25519.pub"


def config(tmp_path: Path, bundle: Path) -> Config:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    pca = next(m for m in cfg.models if m.name == "pca-pump").model_copy(update={"bundle": bundle})
    trust = cfg.models_trust.model_copy(update={"public_keys": [DEV_PUB]})
    agent = cfg.agent.model_copy(update={"state_dir": tmp_path / "state"})
    assets = [a.model_copy(update={"fault_class_source": None, "rul_source": None}) for a in cfg.assets]
    return cfg.model_copy(update={"models": [pca], "models_trust": trust, "agent": agent, "assets": assets})


async def test_bad_bundle_refused_old_keeps_running_good_one_installed(tmp_path: Path) -> None:
    bundle = tmp_path / "pca-pump"
    shutil.copytree(ROOT / "models" / "pca-pump", bundle)
    agent = Agent(config(tmp_path, bundle), config_path=tmp_path / "agent.yaml")
    agent.audit.open()
    try:
        running = agent.models[0]
        assert (await agent.reload_models()) == ["pca-pump: unchanged (pca-pump v1)"]
        assert agent.models[0] is running  # windows kept

        onnx = bundle / "model.onnx"
        good = onnx.read_bytes()
        onnx.write_bytes(good[:-8] + b"tampered")  # a corrupt install
        lines = await agent.reload_models()
        assert lines[0].startswith("pca-pump: refused, pca-pump v1 stays:") and "sha256" in lines[0]
        assert agent.models[0] is running and agent.models[0].scorer.healthy

        onnx.write_bytes(good)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["version"] = "2"
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        lines = await agent.reload_models()
        assert "refused" in lines[0] and "signature" in lines[0].lower()  # unsigned change: refused
        assert agent.models[0] is running

        sign_bundle(bundle, DEV_KEY)
        lines = await agent.reload_models()
        assert lines == ["pca-pump: installed pca-pump v2 (was pca-pump v1)"]
        assert agent.models[0] is not running and agent.models[0].bundle.manifest.version == "2"
        events = [r.action for r in agent.audit.query(kinds=["event"])]
        assert events.count("model_refused") == 2 and events.count("model_installed") == 1

        # a re-signed manifest with a new threshold, same version and model file: a change
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["outputs"][0]["thresholds"]["alarm"] *= 2
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        sign_bundle(bundle, DEV_KEY)
        assert await agent.reload_models() == ["pca-pump: installed pca-pump v2 (was pca-pump v2)"]
        assert await agent.reload_models() == ["pca-pump: unchanged (pca-pump v2)"]
    finally:
        agent.audit.close()


def test_a_stale_model_is_unhealthy_for_the_guard_and_the_status_word(tmp_path: Path) -> None:
    bundle = tmp_path / "pca-pump"
    shutil.copytree(ROOT / "models" / "pca-pump", bundle)
    agent = Agent(config(tmp_path, bundle), config_path=tmp_path / "agent.yaml")
    (runner,) = agent.models
    now = agent.clock()
    assert agent._write_inputs(now).model_healthy  # window filling: nothing scored yet
    runner.scored_mono = now - 2.5 * runner.interval_s + 0.5  # pca-pump: a score every 10 s
    assert agent._write_inputs(now).model_healthy and runner.scorer.healthy
    runner.scored_mono = now - 2.5 * runner.interval_s - 0.5
    assert not agent._write_inputs(now).model_healthy
    word = agent.status_word()
    assert not word >> STATUS_BITS["models_healthy"] & 1 and word >> STATUS_BITS["degraded"] & 1
