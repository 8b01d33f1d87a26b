"""Built-in detectors in the runtime: fed from an asset's values, read by alarms."""

from __future__ import annotations

import math
import random
from pathlib import Path

from agent.config import parse_config
from agent.runtime import Agent

CONFIG = """
agent: {{state_dir: {state}}}
devices:
  - name: p
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 1502
    tags:
      - {{name: v, table: holding, address: 0, type: float32}}
assets:
  - name: pump1
    values: {{vib: v}}
    detectors:
      - {{name: vib_z, source: vib, detector: {{kind: sigma3, window: 30}}}}
alarms:
  defs:
    - {{name: vib_change, code: 1, kind: alert, source: vib_z.outlier, high: {{value: 0.5, severity: 1}}}}
"""


def test_detector_scores_feed_the_alarm_engine(tmp_path: Path) -> None:
    agent = Agent(parse_config(CONFIG.format(state=tmp_path)), config_path=tmp_path / "c.yaml")
    asset = agent.config.assets[0]
    rng = random.Random(1)
    seen: list[dict[str, float | None]] = []
    for i in range(60):
        values: dict[str, float | None] = {"vib": 1.0 + rng.gauss(0, 0.01) if i != 45 else 5.0}
        if i == 50:
            values["vib"] = None  # a BAD input: the detector holds, alarms get nothing
        agent._run_detectors(asset, values)
        seen.append(values)
    assert seen[0]["vib_z"] is None and seen[0]["vib_z.outlier"] is None  # warming up
    assert seen[45]["vib_z.outlier"] == 1.0 and seen[45]["vib_z"] > 10
    assert all(v["vib_z.outlier"] == 0.0 for i, v in enumerate(seen[31:45], start=31))
    assert seen[50]["vib_z"] is None
    assert math.isfinite(seen[59]["vib_z"] or math.nan)
