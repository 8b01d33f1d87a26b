"""`edge-agent check` validates each model's sample period against the poll intervals of its
tags: what `run` would refuse, `check` refuses first, at the binding's file, line and field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.config import check_models, load_config
from agent.errors import ModelError
from agent.inference import LoadContext, Models
from tests.tiny_bundles import DEV_PUB, write_bundle

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, *, poll_ms: int, fast_period: float, slow_period: float) -> Path:
    write_bundle(tmp_path / "fast", name="fast", period_s=fast_period, length=3, roles=[("v", "mm/s", (0, 50), "instant")])
    write_bundle(
        tmp_path / "slow",
        name="slow",
        period_s=slow_period,
        length=3,
        roles=[("v", "mm/s", (0, 50), "instant"), ("p", "bar", (0, 10), "mean")],
    )
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"""\
agent:
  state_dir: {tmp_path / "state"}
  cycle_ms: 1000
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 5020
    poll_interval_ms: {poll_ms}
    tags:
      - {{name: vib, table: input, address: 0, type: float32, engineering_unit: mm/s}}
      - {{name: pressure, table: input, address: 2, type: float32, engineering_unit: bar}}
models:
  - name: fast
    bundle: fast
    assets:
      pump:
        v: vib
  - name: slow
    bundle: slow
    assets:
      pump:
        v: vib
        p: pressure
models_trust:
  public_keys: [{DEV_PUB}]
assets:
  - name: pump
"""
    )
    return path


def line(path: Path, text: str, after: str) -> int:
    lines = path.read_text().splitlines()
    start = next(i for i, t in enumerate(lines) if after in t)
    return next(i for i, t in enumerate(lines) if i > start and text in t) + 1


def test_a_period_shorter_than_the_poll_interval_is_an_error_at_the_binding(tmp_path: Path) -> None:
    path = config(tmp_path, poll_ms=500, fast_period=0.2, slow_period=2.0)
    errors, warnings = check_models(load_config(path), path)
    assert errors == [
        f"{path}:{line(path, 'v: vib', 'name: fast')} models[0].assets.pump.v: model fast v1 role v expects a "
        f"sample every 0.2 s, tag vib ({path}) is polled every 0.5 s: poll it at least as often as the model samples"
    ]
    assert warnings == []
    # run refuses the same binding
    cfg = load_config(path)
    models = Models(
        LoadContext(lambda p: p if p.is_absolute() else tmp_path / p, cfg.models_trust, {"vib": "mm/s"}, {"vib": 0.5}, str(path))
    )
    try:
        models.load(cfg.models[0])
    except ModelError as exc:
        assert "expects a sample every 0.2 s, tag vib" in str(exc)
    else:
        raise AssertionError("run loaded a model sampled faster than its tag is polled")


def test_a_mean_over_fewer_than_two_polls_is_a_warning(tmp_path: Path) -> None:
    path = config(tmp_path, poll_ms=1000, fast_period=1.0, slow_period=1.5)
    errors, warnings = check_models(load_config(path), path)
    assert errors == []
    assert warnings == [
        f"{path}:{line(path, 'p: pressure', 'name: slow')} models[1].assets.pump.p: model slow v1 role p is the mean "
        f"over 1.5 s, tag pressure ({path}) is polled every 1 s: 1.5 polls per period, fewer than 2"
    ]


def test_the_check_command_refuses_it_and_shows_each_models_period(tmp_path: Path) -> None:
    path = config(tmp_path, poll_ms=500, fast_period=0.2, slow_period=2.0)
    run = subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        f"{path}:{line(path, 'v: vib', 'name: fast')} models[0].assets.pump.v: model fast v1 role v expects a "
        f"sample every 0.2 s, tag vib ({path}) is polled every 0.5 s: poll it at least as often as the model samples"
    ]
    path = config(tmp_path, poll_ms=100, fast_period=0.2, slow_period=2.0)
    run = subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "  model fast: a row every 0.2 s\n  model slow: a row every 2 s\n" in run.stdout
