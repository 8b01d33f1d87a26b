"""SIGHUP reloads the config as well as the models; SIGTERM stops in order.

What may change live changes live (alarm limits and delays, HMI refresh, log level, detector
settings, model bindings); a config that does not validate, or that changes something needing a
restart (devices, credentials, any Guard setting), is refused as a whole with the reason, logged
and audited, and the running config goes on. Shown on the Agent in this process (to look at its
units) and on a real agent process with real signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentSection, Config, load_config
from agent.ops.audit import AuditConfig, query_audit
from agent.ops.reload import config_diff, restart_needed
from agent.ops.status import SOCKET_NAME, read_status
from agent.runtime import Agent
from agent.types import AlarmState
from simulator import Plant, free_port, serve
from tests.agent_process import agent_process as spawn
from tests.e2e.test_writeback_on_plant import agent_config

pytestmark = pytest.mark.timeout(120)



def edited(path: Path, edit: Callable[[dict[str, Any]], None]) -> Config:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def alarm(data: dict[str, Any], name: str) -> dict[str, Any]:
    d = next(d for d in data["alarms"]["defs"] if d["name"] == name)
    assert isinstance(d, dict)
    return d


# --------------------------------------------------------------------------- what changes live


def test_the_diff_names_field_paths_and_what_needs_a_restart(tmp_path: Path) -> None:
    path = agent_config(tmp_path, 5020)
    old = load_config(path)
    data = yaml.safe_load(path.read_text())

    def variant(edit: Callable[[dict[str, Any]], None]) -> Config:
        d = copy.deepcopy(data)
        edit(d)
        return Config.model_validate(d)

    live = variant(
        lambda d: (
            alarm(d, "bearing_temp_high")["high"].update(value=55.0),
            alarm(d, "vibration_high").update(on_delay_s=4.0),
            d["hmi"].update(refresh_s=10.0),
            d["agent"].update(log_level="debug"),
            d["assets"][0]["detectors"][0]["detector"].update(L=4.0),
            d["models"][0].update(hold_cycles=5),
        )
    )
    assert config_diff(old, live) == [
        "agent.log_level",
        "alarms.defs[3].on_delay_s",
        "alarms.defs[4].high.value",
        "assets[0].detectors[0].detector.L",
        "hmi.refresh_s",
        "models[0].hold_cycles",
    ]
    assert restart_needed(old, live) == []
    assert config_diff(old, old) == []

    guard = variant(lambda d: d["guard"]["targets"][0].update(rate_per_min=300.0))
    assert restart_needed(guard, old) == ["guard.targets[0].rate_per_min"]
    mixed = variant(
        lambda d: (
            d["devices"][0].update(port=5021),
            d["assets"][0]["hmi"].update(alarm_word="Pump2.AlarmWord"),
            d["assets"][1]["hmi"].update(alarm_word="Pump1.AlarmWord"),
            d["hmi"].update(refresh_s=5.0),
            d["recommender"].update(ttl_s=4.0),
        )
    )
    assert restart_needed(old, mixed) == [
        "assets[0].hmi.alarm_word",
        "assets[1].hmi.alarm_word",
        "devices[0].port",
        "recommender.ttl_s",
    ]
    one_more = variant(
        lambda d: d["alarms"]["defs"].append({**alarm(d, "suction_low"), "name": "x", "code": 9})
    )
    appended = f"alarms.defs[{len(old.alarms.defs)}]"  # the new last one
    assert config_diff(old, one_more) == [appended] and restart_needed(old, one_more) == []


async def test_reload_applies_live_changes_and_refuses_the_rest(tmp_path: Path) -> None:
    path = agent_config(tmp_path, free_port())
    applied: list[AgentSection] = []
    agent = Agent(load_config(path), config_path=path, apply_logging=applied.append)
    agent.audit.open()
    try:
        # an alarm active before the reload stays active after it
        engine, t0 = agent.alarms, time.monotonic()
        now_utc = datetime.now(UTC)
        engine.evaluate("pump1", {"bearing_temp": 70.0}, t0, now_utc)
        engine.evaluate("pump1", {"bearing_temp": 70.0}, t0 + 11, now_utc)
        assert engine.state("pump1", 4) is AlarmState.UNACK
        models = list(agent.models)
        detectors = dict(agent.detectors)
        running = agent.config

        new = edited(
            path,
            lambda d: (
                alarm(d, "bearing_temp_high").update(on_delay_s=20.0),
                d["hmi"].update(refresh_s=7.5),
                d["agent"].update(log_level="debug"),
                d["assets"][0]["detectors"][0]["detector"].update(L=4.0),
                d["models"][0].update(hold_cycles=5),
            ),
        )
        lines = await agent.reload()
        changed = [
            "agent.log_level",
            "alarms.defs[4].on_delay_s",
            "assets[0].detectors[0].detector.L",
            "hmi.refresh_s",
            "models[0].hold_cycles",
        ]
        assert lines[0] == f"config: applied: {', '.join(changed)}"
        assert agent.config == new and agent.config is not running
        assert agent.alarms is not engine and agent.alarms.config == new.alarms
        assert agent.alarms.state("pump1", 4) is AlarmState.UNACK
        assert agent.hmi.refresh_s == 7.5
        assert [s.log_level for s in applied] == ["debug"]
        assert agent.detectors[("pump1", "vibration_ewma")] is not detectors[("pump1", "vibration_ewma")]
        assert agent.detectors[("pump2", "vibration_ewma")] is detectors[("pump2", "vibration_ewma")]
        assert agent.models[0] is not models[0] and agent.models[0].binding.hold_cycles == 5
        assert all(a is b for a, b in zip(agent.models[1:], models[1:], strict=True))  # windows kept
        assert lines[1] == "pca-pump: installed pca-pump v1 (new binding)"
        assert lines[2:] == [
            "fault-mlp: unchanged (fault-mlp v3)",
            "rul-bearing: unchanged (rul-bearing v1)",
            "seq-pump: unchanged (seq-pump v5)",
        ]

        # a Guard setting: refused as a whole, even with a live change beside it
        kept = agent.config
        edited(
            path,
            lambda d: (
                d["guard"]["targets"][0].update(rate_per_min=300.0),
                d["hmi"].update(refresh_s=3.0),
            ),
        )
        lines = await agent.reload()
        assert lines[0] == (
            "config: refused, the running config stays: needs a restart: guard.targets[0].rate_per_min"
        )
        assert agent.config is kept and agent.hmi.refresh_s == 7.5

        # a config that does not validate: refused with file, line and field
        text = path.read_text().replace("refresh_s: 3.0", "refresh_s: -1")
        path.write_text(text)
        line = next(i for i, t in enumerate(text.splitlines(), 1) if "refresh_s: -1" in t)
        lines = await agent.reload()
        assert lines[0].startswith(
            f"config: refused, the running config stays: {path}:{line} hmi.refresh_s: "
        )
        assert agent.config is kept

        events = [r for r in agent.audit.query(kinds=["event"]) if r.action.startswith("config_")]
        assert [r.action for r in events] == ["config_reloaded", "config_refused", "config_refused"]
        assert events[0].detail["changed"] == changed
        assert events[1].detail["needs_restart"] == ["guard.targets[0].rate_per_min"]
        assert "needs a restart: guard.targets[0].rate_per_min" in events[1].message
        assert f"{path}:{line} hmi.refresh_s" in events[2].message
        assert agent.reloads == {"applied": 1, "refused": 2}
    finally:
        agent.audit.close()


# --------------------------------------------------------------------------- a real process


@contextlib.asynccontextmanager
async def agent_process(config: Path, runtime: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as err:  # a file, not a pipe: a full pipe would block the agent
        async with spawn(config, env={"RUNTIME_DIRECTORY": str(runtime)}, stderr=err) as proc:
            yield proc


async def status(runtime: Path) -> dict[str, Any]:
    return await asyncio.to_thread(read_status, [runtime / SOCKET_NAME], 5.0)


async def wait_status(runtime: Path, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await status(runtime)
            if pred(last):
                return last
        except Exception as exc:  # not up yet
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


async def test_sighup_good_and_bad_config_and_sigterm_on_a_real_process(tmp_path: Path) -> None:
    plant = Plant(seed=41, permissive=True)
    with tempfile.TemporaryDirectory(prefix="rl") as run_dir:
        runtime = Path(run_dir)
        log = tmp_path / "agent.log"
        async with serve(plant, modbus_port=0, opcua_port=None, speed=1) as station:
            path = agent_config(tmp_path, station.modbus_port)
            edited(path, lambda d: d["agent"].update(log_level="warning"))
            async with agent_process(path, runtime, log) as proc:
                await wait_status(runtime, lambda d: d["agent"]["cycles"] >= 2, "the first cycles")

                edited(
                    path,
                    lambda d: (
                        alarm(d, "vibration_high").update(on_delay_s=5.0),
                        d["agent"].update(log_level="info"),
                    ),
                )
                proc.send_signal(signal.SIGHUP)
                doc = await wait_status(
                    runtime, lambda d: d["agent"]["reloads"].get("applied") == 1, "applied"
                )
                assert doc["agent"]["last_reload"]["changed"] == [
                    "agent.log_level",
                    "alarms.defs[3].on_delay_s",
                ]

                good = path.read_text()
                path.write_text(good.replace("cycle_ms: 1000", "cycle_ms: fast"))
                proc.send_signal(signal.SIGHUP)
                doc = await wait_status(
                    runtime, lambda d: d["agent"]["reloads"].get("refused") == 1, "refused"
                )
                line = next(
                    i for i, t in enumerate(path.read_text().splitlines(), 1) if "cycle_ms: fast" in t
                )
                assert doc["agent"]["last_reload"]["reason"].startswith(f"{path}:{line} agent.cycle_ms: ")

                path.write_text(good)
                edited(path, lambda d: d["guard"].update(mode="shadow"))
                proc.send_signal(signal.SIGHUP)
                doc = await wait_status(
                    runtime, lambda d: d["agent"]["reloads"].get("refused") == 2, "refused"
                )
                assert doc["agent"]["last_reload"]["reason"] == "needs a restart: guard.mode"
                assert doc["agent"]["guard"]["mode"] == "auto"  # still the running config's
                cycles = doc["agent"]["cycles"]
                await wait_status(runtime, lambda d: d["agent"]["cycles"] >= cycles + 2, "cycles going on")

                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0
            assert not (runtime / SOCKET_NAME).exists()

    rows = [
        r for r in query_audit(AuditConfig(path=tmp_path / "state" / "audit.sqlite")) if r.kind == "event"
    ]
    actions = [r.action for r in rows]
    assert actions[0] == "start" and actions[-1] == "stop"
    config_rows = [r for r in rows if r.action.startswith("config_")]
    assert [r.action for r in config_rows] == ["config_reloaded", "config_refused", "config_refused"]
    assert config_rows[0].detail["changed"] == ["agent.log_level", "alarms.defs[3].on_delay_s"]
    assert config_rows[2].detail["needs_restart"] == ["guard.mode"]
    logged = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    refused = [e for e in logged if e["event"] == "config reload refused; the running config stays"]
    assert len(refused) == 2 and refused[1]["reason"] == "needs a restart: guard.mode"
    assert refused[0]["level"] == "error"
    # the reloaded log level took effect: info lines only from the first reload on
    events = [e["event"] for e in logged]
    assert "model loaded" in events  # info: the bundles reloaded after the first reload
    assert events.index("model loaded") > events.index("config reloaded")  # none at start
    assert any(e["event"] == "reload" and e["level"] == "info" for e in logged)
