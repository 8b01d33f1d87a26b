"""What decides the agent's writes cannot be changed by every user of the gateway.

Real files with real modes; `edge-agent check` and `edge-agent run` as subprocesses. Group
write stays allowed (the service's group installs models without root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config, unsafe_permissions
from agent.ops.permissions import writable_by_others

ROOT = Path(__file__).resolve().parents[2]


def test_the_path_itself_and_every_directory_above_it_are_checked(tmp_path: Path) -> None:
    top = tmp_path / "etc"
    (top / "edge-agent").mkdir(parents=True)
    cfg = top / "edge-agent" / "agent.yaml"
    cfg.write_text("x")
    for p in (tmp_path, top, top / "edge-agent", cfg):
        p.chmod(0o755 if p.is_dir() else 0o644)
    assert writable_by_others(cfg) is None
    cfg.chmod(0o666)
    assert writable_by_others(cfg) == f"{cfg} is writable by every user (mode 0666); chmod o-w {cfg}"
    cfg.chmod(0o664)  # the group may write: that is how the service's group installs
    assert writable_by_others(cfg) is None
    top.chmod(0o777)  # anyone could rename edge-agent/ away and put their own in its place
    assert writable_by_others(cfg) == (
        f"{cfg}: {top} (mode 0777) is writable by every user; chmod o-w {top}"
    )
    top.chmod(0o1777)  # sticky, like /tmp: nobody can replace another user's entry
    assert writable_by_others(cfg) is None
    missing = top / "edge-agent" / "state" / "audit.sqlite"
    assert writable_by_others(missing) is None  # created by the agent with its own modes
    (top / "edge-agent").chmod(0o1777)
    # the state directory itself world-writable is refused even with the sticky bit
    assert "is writable by every user" in (writable_by_others(top / "edge-agent") or "")


def _config(tmp_path: Path) -> Path:
    """The demo config with its bundles, key and state directory copied under tmp_path."""
    work = tmp_path / "site"
    work.mkdir()
    shutil.copytree(ROOT / "models", work / "models")
    shutil.copytree(ROOT / "export" / "keys", work / "keys")
    text = (ROOT / "configs" / "demo.yaml").read_text()
    text = text.replace("../models/", "models/").replace("../export/keys/", "keys/")
    text = text.replace("state_dir: ", f"state_dir: {work / 'state'}  # was: ", 1)
    cfg = work / "agent.yaml"
    cfg.write_text(text)
    for p in (work, *work.rglob("*")):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return cfg


def _edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_check_and_run_refuse_a_world_writable_config_bundle_key_or_state_dir(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    config = load_config(cfg)
    assert config.models and config.models_trust.public_keys, "the demo config has bundles and keys"
    assert unsafe_permissions(config, cfg) == []
    bundle = cfg.parent / "models" / "fault-mlp"
    key = cfg.parent / "keys" / "dev-ed25519.pub"
    state = cfg.parent / "state"
    state.mkdir()
    for p in (cfg, bundle, key, state):
        p.chmod(0o777 if p.is_dir() else 0o666)
    lines = unsafe_permissions(config, cfg)
    assert len(lines) == 4, lines
    assert any(line.startswith(f"{cfg}:") and "models[" in line and str(bundle) in line for line in lines)
    assert any("models_trust.public_keys[0]" in line and str(key) in line for line in lines)
    assert any("agent.state_dir" in line and str(state) in line for line in lines)
    assert any(line.startswith(f"{cfg}: the config file: {cfg} is writable by every user") for line in lines)
    check = _edge_agent("check", "-c", str(cfg))
    assert check.returncode == 2 and "Traceback" not in check.stderr
    assert all(line in check.stderr for line in lines)
    run = _edge_agent("run", "-c", str(cfg))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert all(line in run.stderr for line in lines)
    assert not (state / "audit.sqlite").exists()  # refused before anything was opened


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o664])
def test_modes_a_controls_engineer_uses_pass(tmp_path: Path, mode: int) -> None:
    cfg = _config(tmp_path)
    cfg.chmod(mode)
    assert unsafe_permissions(load_config(cfg), cfg) == []
