"""`edge-agent demo --duration` end to end, as a newcomer (and CI) runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_scripted_demo_shows_the_bearing_alarm_and_shifts_load(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "demo",
            "-c",
            str(ROOT / "configs" / "demo.yaml"),
            "--scenario",
            str(ROOT / "configs" / "scenarios" / "demo.yaml"),
            "--duration",
            "35",
            "--speed",
            "20",
            "--modbus-port",
            "0",
            "--no-console",
        ],
        cwd=tmp_path,  # the demo's state (audit log, alarm state) lands here
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    summary = out[out.index("=== demo summary ===") :]
    assert "pump1:bearing_defect" in summary
    assert "model_input_bad" not in summary  # every input GOOD: no instrument alarm
    assert "HMI pump1: alarm word 0x0000" not in summary  # the alarm is on the HMI word
    assert "HMI pump2: alarm word 0x0000" in summary  # and only on pump 1
    # the recommendation shifted load: pump 1 to its minimum-flow speed (above the 1,500 rpm at
    # which it would deliver nothing against the static head), pump 2 above it
    p1 = float(summary.split("last recommendation Pump1.ExternalSpeedSetpoint: ")[1].split(" rpm")[0])
    p2 = float(summary.split("last recommendation Pump2.ExternalSpeedSetpoint: ")[1].split(" rpm")[0])
    assert 1650 < p1 < 1900 and p2 > 2000
    assert "setpoint writes: 0," not in summary
    assert (tmp_path / ".state" / "demo" / "audit.sqlite").exists()
