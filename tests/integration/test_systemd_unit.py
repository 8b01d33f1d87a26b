"""The service unit is checked by the real systemd-analyze."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edge-agent.service"


def _installed_copy(tmp_path: Path) -> Path:
    # verify checks that ExecStart= binaries exist: point them at this checkout's venv.
    exe = Path(sys.executable).parent / "edge-agent"
    assert exe.exists(), "edge-agent entry point not installed in the venv"
    text = UNIT.read_text().replace("/opt/edge-agent/.venv/bin/edge-agent", str(exe))
    out = tmp_path / "edge-agent.service"
    out.write_text(text)
    return out


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is required (.ci/run installs systemd)"
    unit = _installed_copy(tmp_path)
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "edge-agent.service" not in proc.stderr, proc.stderr  # no warning about our unit


def test_unit_is_hardened(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool
    unit = _installed_copy(tmp_path)
    proc = subprocess.run(
        [tool, "security", "--offline=true", str(unit)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    m = re.search(r"Overall exposure level for edge-agent.service: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout[-500:] + proc.stderr
    assert float(m.group(1)) <= 3.0, proc.stdout[-2000:]


def test_unit_runs_the_agent_with_watchdog_and_state_dir() -> None:
    text = UNIT.read_text()
    assert "ExecStart=/opt/edge-agent/.venv/bin/edge-agent run -c /etc/edge-agent/agent.yaml" in text
    assert "Type=notify" in text and "WatchdogSec=" in text
    assert "StateDirectory=edge-agent" in text
