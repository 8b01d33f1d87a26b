"""A fast and a slow model in one real Agent against the embedded plant, each at its own rate.

Real parts: the plant's Modbus server (``simulator.serve``), the Agent (``Agent.run``) with its
pollers, scheduler and cycle, tiny signed ONNX bundles run by onnxruntime, the state directory.
The "scaled clock" is the periods: the fast model samples every 0.1 s (a vibration model), the
slow one every 1 s, ten times slower (standing for a process model sampled every few minutes),
its vibration input the *mean* of the polls of each period as a historian would export it.

Shown: each model scored at its own cadence, on its own UTC grid; the mean the slow model gets
is the mean of the samples actually polled in its period; the slow window is written to the
state directory and a restarted agent scores the slow model at its first tick, instead of
waiting a full window.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.inference import ModelRunner
from agent.types import Sample
from simulator import Plant, serve
from tests.e2e.plant_fixtures import demo_config_data, running_agent, status_has, wait_until
from tests.tiny_bundles import DEV_PUB, write_bundle

pytestmark = pytest.mark.timeout(120)

FAST_S, SLOW_S = 0.1, 1.0
POLL_MS = 50
SLOW_LENGTH = 6
TAGS = ("Pump1.Vibration", "Pump1.BearingTemp")
VIB = "Pump1.Vibration"


def config(tmp_path: Path, port: int) -> Config:
    vib = ("vib", "mm/s", (0.0, 50.0))
    temp = ("temp", "°C", (-20.0, 200.0))
    fast = write_bundle(tmp_path / "fast", name="fast", period_s=FAST_S, length=5, roles=[(*vib, "instant"), (*temp, "instant")])
    slow = write_bundle(
        tmp_path / "slow", name="slow", period_s=SLOW_S, length=SLOW_LENGTH, roles=[(*vib, "mean"), (*temp, "instant")]
    )
    demo = demo_config_data()
    (device,) = demo["devices"]
    device.update(port=port, poll_interval_ms=POLL_MS, tags=[t for t in device["tags"] if t["name"] in TAGS])
    roles = {"vib": VIB, "temp": "Pump1.BearingTemp"}
    data: dict[str, Any] = {
        "agent": {"state_dir": str(tmp_path / "state"), "cycle_ms": 250, "log_level": "warning"},
        "devices": [device],
        "models": [
            {"name": "fast", "bundle": str(fast), "assets": {"pump1": roles}},
            {
                "name": "slow",
                "bundle": str(slow),
                "assets": {"pump1": roles},
                "bad_input": "hold",
                "hold_cycles": 5,
                "persist_window": True,
            },
        ],
        "models_trust": {"public_keys": [str(DEV_PUB)]},
        "assets": [{"name": "pump1"}],
    }
    return Config.model_validate(data)


def counts(fast: ModelRunner, slow: ModelRunner) -> tuple[float, int, int, int, int]:
    return time.monotonic(), fast.windows.counters.ticks, slow.windows.counters.ticks, fast.scorer.calls, slow.scorer.calls


async def test_a_fast_and_a_slow_model_each_at_its_own_rate_and_a_restart_keeps_the_slow_window(
    tmp_path: Path,
) -> None:
    async with serve(Plant(seed=3), modbus_port=0, speed=10) as station:
        port = station.modbus_port
        assert port is not None
        cfg = config(tmp_path, port)
        async with running_agent(cfg, config_path=tmp_path / "agent.yaml") as agent:
            polled: list[Sample] = []
            observe = agent.models.observe

            def record(samples: Any) -> None:  # every poll, as the poll sink hands it to the models
                polled.extend(s for s in samples if s.tag == VIB)
                observe(samples)

            agent.models.observe = record  # type: ignore[method-assign]
            fast, slow = agent.models
            await wait_until(lambda: slow.scorer.calls >= 1, timeout_s=SLOW_LENGTH * SLOW_S + 10, what="slow scores")

            # cadence: over ~3 s, ten fast ticks and scores per slow one
            t0, ft0, st0, fc0, sc0 = counts(fast, slow)
            await asyncio.sleep(3.0)
            t1, ft1, st1, fc1, sc1 = counts(fast, slow)
            elapsed = t1 - t0
            assert abs((ft1 - ft0) - elapsed / FAST_S) <= 0.2 * elapsed / FAST_S + 1
            assert abs((st1 - st0) - elapsed / SLOW_S) <= 1
            assert fc1 - fc0 >= 0.8 * (ft1 - ft0)  # stride 1: a score per tick (a busy skip at most)
            assert sc1 - sc0 == st1 - st0
            # each on its own UTC grid, the newest scores where the alarm engine reads them
            fs, ss = fast.latest["pump1"], slow.latest["pump1"]
            assert round(fs.frame_end.timestamp() / FAST_S, 6) % 1 == 0
            assert ss.frame_end.timestamp() % SLOW_S == 0
            assert set(agent.view.scores) == {"fast", "slow"}
            assert status_has(agent.view.status_word, "models_healthy")

            # the mean the slow model got is the mean of the good samples polled in its period
            before = slow.latest["pump1"].frame_end
            await wait_until(lambda: slow.latest["pump1"].frame_end > before, timeout_s=3, what="a slow score")
            agg, score = slow.aggregates[VIB], slow.latest["pump1"]
            assert score.frame_end == slow.last_tick_utc
            good = [float(s.value) for s in polled if s.quality.is_good and agg.first_mono <= s.mono <= agg.last_mono]  # type: ignore[arg-type]
            assert agg.count == len(good) >= 0.5 * SLOW_S / (POLL_MS / 1000)
            assert agg.mean == pytest.approx(sum(good) / len(good), rel=1e-12)
            assert max(good) > min(good)  # a real mean, not one value repeated
            assert score.outputs["echo[0]"] == pytest.approx(agg.mean, rel=1e-6)  # the newest row's vib
            saved_ticks = slow.windows.counters.ticks

        windows = tmp_path / "state" / "windows"
        assert [p.name for p in windows.iterdir()] == ["slow.json"]  # the fast window is not kept

        # a restart: the slow model scores at its first tick (its window restored, the ticks
        # missed while down held), not SLOW_LENGTH ticks later
        async with running_agent(cfg, config_path=tmp_path / "agent.yaml") as agent:
            fast, slow = agent.models
            first = await wait_until(lambda: slow.last_tick_utc, timeout_s=3 * SLOW_S, what="the first slow tick")
            score = await wait_until(lambda: slow.latest.get("pump1"), timeout_s=SLOW_S / 2, what="a slow score")
            assert score.frame_end == first
            assert slow.windows.counters.ticks > saved_ticks >= SLOW_LENGTH
            assert fast.scorer.calls == 0 or fast.windows.counters.ticks >= 5  # fast: a fresh window
