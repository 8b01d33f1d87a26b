"""The running agent and the store: a new `current` is picked up without a restart and without
a missed cycle (counted), windows carried over; shadow trials promote a good model and roll
back one that raises false alerts, with the outcome on the HMI's model-status register and an
audit row either way. A real agent, a real Modbus server, real ONNX sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ModelError
from agent.modelstore.store import Store
from agent.modelstore.trial import MODEL_STATUS_CODES
from agent.runtime import Agent
from tests.modbus_server import ModbusTestServer
from tests.store.kit import DEV_PUB, edge_agent, make_bundle, write_config

pytestmark = pytest.mark.timeout(120)

PERIOD = 0.25


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[tuple[Agent, ModbusTestServer]]:
    async with ModbusTestServer(units=[1], size=20) as srv:
        await srv.set_registers(1, 0, [50, 50])  # a = b = 50 bar: the score is the bias
        cfg_path = write_config(tmp_path, srv.port, cycle_ms=int(PERIOD * 1000))
        v1 = make_bundle(tmp_path / "v1", "1", period=PERIOD)
        await asyncio.to_thread(Store(tmp_path / "store").install, v1, trusted_keys=[DEV_PUB])
        agent = Agent(load_config(cfg_path), config_path=cfg_path)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: "tiny" in agent.view.scores, 20)
            yield agent, srv
        finally:
            stop.set()
            await task


async def until(cond: Callable[[], bool], timeout_s: float) -> None:
    """Poll the agent's own state (no event to wait on) until ``cond`` holds."""
    async with asyncio.timeout(timeout_s):
        while True:
            if cond():
                return
            await asyncio.sleep(0.02)


def version(agent: Agent) -> str:
    return agent.models[0].bundle.manifest.version


async def test_new_current_is_picked_up_without_a_missed_cycle(tmp_path: Path) -> None:
    async with running(tmp_path) as (agent, _):
        assert version(agent) == "1"
        windows = agent.models[0].windows
        start_cycles = agent.view.cycles
        v2 = make_bundle(tmp_path / "v2", "2", period=PERIOD, bias=0.5)
        # dropped into incoming/ (as a member of the service group does): the agent installs it
        incoming = agent.model_store.root / "incoming"
        assert incoming.is_dir() and incoming.stat().st_mode & 0o7777 == 0o2770
        queued = agent.model_store.drop(v2)
        await until(lambda: version(agent) == "2", 20)
        assert not queued.exists() and agent.model_store.current("tiny") == "2"
        swapped_at = agent.view.cycles
        last_tick = agent.models[0].last_tick_utc
        assert last_tick is not None
        # windows carried over: the new version scores the frame of the next tick, not one
        # after a refill (3 ticks: the window's length). Judged by the frame's tick, not by
        # cycles: the new version's first calls go through the executor, which a loaded
        # machine may delay by a cycle or two.
        await until(lambda: agent.view.scores["tiny"]["p1"].version == "2", 2 * PERIOD + 5)
        first = agent.view.scores["tiny"]["p1"]
        assert agent.models[0].windows is windows
        assert first.outputs["score"] == pytest.approx(0.5)
        assert (first.frame_end - last_tick).total_seconds() <= 2 * PERIOD + 1e-6
        # and SIGHUP's path (request_reload) with nothing new: unchanged, no cycle lost either
        agent.request_reload()
        await until(lambda: agent.view.cycles >= swapped_at + 4, 5)
        assert agent.view.skipped_cycles == 0, "a cycle was missed"
        assert agent.view.cycles > start_cycles
        events = [r.action for r in agent.audit.query(kinds=["event"])]
        assert "model_installed" in events and "model_install" in events


async def trial(tmp_path: Path, alarm: float) -> tuple[Agent, int, list[str]]:
    async with running(tmp_path) as (agent, srv):
        v2 = make_bundle(tmp_path / "v2", "2", period=PERIOD, alarm=alarm)
        res = await asyncio.to_thread(agent.model_store.install, v2, trusted_keys=[DEV_PUB], trial=12)
        assert res.state == "trial" and agent.model_store.current("tiny") == "1"
        with pytest.raises(ModelError, match="trial of v2 is running"):
            await asyncio.to_thread(agent.model_store.install, v2, trusted_keys=[DEV_PUB])
        watcher = agent.store_watcher
        assert watcher is not None
        await until(lambda: bool(watcher.trials), 5)
        assert version(agent) == "1"  # the live model serves while the trial runs in shadow
        await until(lambda: bool(watcher.outcomes), 20)
        await until(lambda: agent.audit.healthy and not watcher.trials, 5)
        await asyncio.sleep(3 * PERIOD)
        status = (await srv.get_registers(1, 10, 1))[0]
        actions = [r.action for r in agent.audit.query(kinds=["event"]) if r.model == "tiny"]
        assert agent.view.skipped_cycles == 0
        return agent, status, actions


async def test_trial_promotes_a_good_model(tmp_path: Path) -> None:
    agent, status, actions = await trial(tmp_path, alarm=5.0)
    assert agent.store_watcher is not None and "promoted" in agent.store_watcher.outcomes[0]
    assert agent.model_store.current("tiny") == "2" and version(agent) == "2"
    assert status == MODEL_STATUS_CODES["promoted"]
    assert "model_trial" in actions


async def test_trial_rolls_back_a_model_raising_false_alerts(tmp_path: Path) -> None:
    agent, status, actions = await trial(tmp_path, alarm=-1.0)  # every score above its threshold
    assert agent.store_watcher is not None
    line = agent.store_watcher.outcomes[0]
    assert "failed" in line and "binomial" in line and "calibrated rate 0.001" in line
    assert agent.model_store.current("tiny") == "1" and version(agent) == "1"
    assert agent.model_store.state("tiny").versions["2"].state == "rejected"
    assert status == MODEL_STATUS_CODES["rolled_back"]
    assert "model_trial" in actions


async def test_an_install_queued_in_incoming_is_done_by_the_service(tmp_path: Path) -> None:
    # What a member of the service group gets (it cannot write the store, only incoming/):
    # the running agent verifies, self-tests and switches; the CLI waits for the outcome.
    async with running(tmp_path) as (agent, _):
        cfg = tmp_path / "agent.yaml"
        v2 = make_bundle(tmp_path / "v2", "2", period=PERIOD, bias=0.5)
        out = await asyncio.to_thread(edge_agent, "models", "-c", cfg, "install", v2, "--queue", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout.splitlines()[-1])
        assert doc == {
            "ok": True,
            "name": "tiny",
            "version": "2",
            "state": "current",
            "variant": "model.onnx",
        }
        await until(lambda: version(agent) == "2", 10)
        bad = make_bundle(tmp_path / "v3", "3", period=PERIOD, checks="bad")
        out = await asyncio.to_thread(edge_agent, "models", "-c", cfg, "install", bad, "--queue")
        assert out.returncode == 1 and "refused: " in out.stdout and "no variant passed" in out.stdout
        assert agent.model_store.current("tiny") == "2" and agent.model_store.check() == []
        assert not list((agent.model_store.root / "incoming").iterdir())
        # a trial asked for through the queue runs on the service, and promotes a good model
        v4 = make_bundle(tmp_path / "v4", "4", period=PERIOD)
        args = ("models", "-c", cfg, "install", v4, "--queue", "--trial", "4", "--json")
        out = await asyncio.to_thread(edge_agent, *args)
        assert json.loads(out.stdout.splitlines()[-1])["state"] == "trial", out.stdout + out.stderr
        await until(lambda: version(agent) == "4", 15)
