"""`edge-export evaluate` and a live `edge-agent run` give the same alarm times on one recording.

The recording (a row every 0.25 s, the model's sample period) is served row by row through a
real Modbus server (tests/replay_server.py) to the real Agent (in-process,
tests/e2e/plant_fixtures.running_agent) with a real ONNX bundle; the agent cycles (alarms)
every 50 ms and ticks the model every 0.25 s on the UTC grid, as it runs any model. The same
config file and bundle go to ``run_evaluation``. Rows go live half a model period after the
model's ticks, so each tick reads exactly one new row; a live alarm time is put on the
recording's time axis by the tick that read row 0. It must match the replay's within one
sample period. The delays are whole periods plus a half: a delay of exactly ``n`` periods
runs out on a tick or, with a live clock's jitter of a millisecond, a cycle later (both are
right; the replay's clock has no jitter).
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

from agent.config import load_config
from agent.replay import episodes
from export.evaluate import run_evaluation
from tests.e2e.plant_fixtures import running_agent
from tests.replay_fixtures import T0, make_bundle, step_series, write_wide_csv
from tests.replay_server import ReplayServer

PERIOD_S = 0.25  # the model's sample period and the recording's row spacing
CYCLE_MS = 50
TAGS = ("P1.Level", "P1.Temp")


def _recording() -> np.ndarray:
    n = 48
    level = step_series(n, [(10, 22, 5.0), (32, 40, 5.0)], seed=7)
    temp = 20.0 + step_series(n, [(26, 44, 20.0)], noise=0.3, seed=8)
    return np.stack([level, temp], axis=1)


def _config(tmp_path: Path, srv: ReplayServer) -> Path:
    data = {
        "agent": {"name": "replay-test", "state_dir": str(tmp_path / "state"), "cycle_ms": CYCLE_MS,
                  "log_level": "warning"},
        "devices": [{"name": "rec", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": srv.port, "units": [1],
                     "timeout_ms": 300, "poll_interval_ms": 50, "tags": srv.tag_configs()}],
        "models": [{"name": "tiny", "bundle": "tiny", "assets": {"p1": {"level": TAGS[0], "temp": TAGS[1]}}}],
        "models_trust": {"allow_unsigned": True},
        "assets": [{"name": "p1", "values": {"temp": TAGS[1]}}],
        "alarms": {"defs": [
            {"name": "score_high", "code": 1, "kind": "alert", "source": "tiny.score",
             "high": {"value": 3.0, "severity": 1}, "on_delay_s": 2.5 * PERIOD_S, "off_delay_s": 2.5 * PERIOD_S},
            {"name": "temp_high", "code": 2, "kind": "alarm", "response": "check the cooling", "source": "temp",
             "high": {"value": 30.0, "severity": 2}, "deadband": 1.0, "on_delay_s": 1.5 * PERIOD_S},
        ]},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _offsets(times: list[datetime | None], zero: datetime) -> list[float | None]:
    return [None if t is None else (t - zero).total_seconds() for t in times]


async def test_evaluate_matches_a_live_agent_on_the_same_recording(tmp_path: Path) -> None:
    make_bundle(tmp_path / "tiny", period_s=PERIOD_S)
    values = _recording()
    csv_path = write_wide_csv(tmp_path / "rec.csv", T0, PERIOD_S, dict(zip(TAGS, values.T, strict=True)))
    async with ReplayServer(TAGS, values, period_s=PERIOD_S) as srv:
        cfg_path = _config(tmp_path, srv)
        config = load_config(cfg_path)
        async with running_agent(config, config_path=cfg_path) as agent:
            # the model ticks at UTC multiples of its period: rows go live half a period after
            now_utc, now_mono = datetime.now(UTC).timestamp(), time.monotonic()
            first_tick = (math.floor(now_utc / PERIOD_S) + 4) * PERIOD_S
            srv.play(now_mono + (first_tick + PERIOD_S / 2 - now_utc))
            await srv.wait_done(timeout_s=len(values) * PERIOD_S + 10)
            await asyncio.sleep(6 * PERIOD_S)  # the last off-delays run out
            live = episodes(agent.view.alarms)
            skipped = agent.view.skipped_cycles
        assert srv.start_utc is not None
        zero = srv.start_utc

    _, doc = run_evaluation(tmp_path / "tiny", [csv_path], config=cfg_path, classical=False)
    (replayed,) = [m["alarms"] for m in doc["methods"]]
    assert skipped <= 2, f"the agent skipped {skipped} cycles: the machine was too busy for a live comparison"
    assert [(a["code"], a["asset"]) for a in replayed] == [(1, "p1"), (2, "p1"), (1, "p1")]
    assert [(e.code, e.asset) for e in live] == [(a["code"], a["asset"]) for a in replayed]
    rep_raised = [datetime.fromisoformat(a["raised"]) for a in replayed]
    rep_cleared = [datetime.fromisoformat(a["cleared"]) if a["cleared"] else None for a in replayed]
    zero += timedelta(seconds=PERIOD_S / 2)  # the model's tick that read row 0
    live_r = _offsets([e.raised for e in live], zero)
    live_c = _offsets([e.cleared for e in live], zero)
    rep_r = _offsets(rep_raised, T0)
    rep_c = _offsets(rep_cleared, T0)
    for lv, rp in [*zip(live_r, rep_r, strict=True), *zip(live_c, rep_c, strict=True)]:
        assert lv is not None and rp is not None
        assert abs(lv - rp) <= PERIOD_S, (live_r, rep_r, live_c, rep_c)
    # the replay's times are the engine's delays on the recording's rows: e.g. the first score
    # alert needs the third stepped sample (row 12) and its on-delay of 2.5 cycles (3 rows)
    assert rep_raised[0] == T0 + timedelta(seconds=(12 + 3) * PERIOD_S)
