"""A shadow trial of a model whose live window is shared with another model (agent/inference.py
shares one FeatureWindows between models whose rows mean the same): the trial scores frames
under its own model's name and promotes a good version. A real agent, a real Modbus server,
real ONNX sessions."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from agent.config import load_config
from agent.modelstore.signing import sign_bundle
from agent.modelstore.store import Store
from agent.runtime import Agent
from tests.modbus_server import ModbusTestServer
from tests.store.kit import DEV_KEY, DEV_PUB, make_bundle, write_config
from tests.store.test_live import PERIOD, until

pytestmark = pytest.mark.timeout(120)


def renamed(src: Path, dst: Path, name: str) -> Path:
    """A copy of bundle ``src`` under another model name, signed again."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["name"] = name
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (dst / "signature.json").unlink(missing_ok=True)
    sign_bundle(dst, DEV_KEY)
    return dst


async def test_a_trial_of_a_model_sharing_its_window_promotes(tmp_path: Path) -> None:
    lead = renamed(make_bundle(tmp_path / "tiny-src", "1", period=PERIOD), tmp_path / "lead", "lead")
    # "lead" is bound first with the same inputs: "tiny" ticks lead's window
    extra_model = f"  - {{name: lead, bundle: {lead}, assets: {{p1: {{a: A, b: B}}}}}}\n"
    async with ModbusTestServer(units=[1], size=20) as srv:
        await srv.set_registers(1, 0, [50, 50])
        cfg_path = write_config(tmp_path, srv.port, cycle_ms=int(PERIOD * 1000))
        text = cfg_path.read_text().replace("models:\n", "models:\n" + extra_model)
        cfg_path.write_text(text)
        v1 = make_bundle(tmp_path / "v1", "1", period=PERIOD)
        await asyncio.to_thread(Store(tmp_path / "store").install, v1, trusted_keys=[DEV_PUB])
        agent = Agent(load_config(cfg_path), config_path=cfg_path)
        assert [m.name for m in agent.models] == ["lead", "tiny"]
        assert agent.models[1].windows is agent.models[0].windows  # the path under test
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: "tiny" in agent.view.scores and "lead" in agent.view.scores, 20)
            v2 = make_bundle(tmp_path / "v2", "2", period=PERIOD, alarm=5.0)
            res = await asyncio.to_thread(agent.model_store.install, v2, trusted_keys=[DEV_PUB], trial=12)
            assert res.state == "trial"
            watcher = agent.store_watcher
            assert watcher is not None
            await until(lambda: bool(watcher.outcomes), 20)
            assert "promoted" in watcher.outcomes[0], watcher.outcomes
            await until(lambda: agent.models[1].bundle.manifest.version == "2", 10)
            await until(lambda: agent.view.scores["tiny"]["p1"].version == "2", 10)
            assert agent.view.scores["lead"]["p1"].model == "lead"
        finally:
            stop.set()
            await task
