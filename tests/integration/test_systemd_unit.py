"""The service unit is checked by the real systemd-analyze, and its settings by what they mean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edge-agent.service"
START_UP_S = 2.0  # the least a start takes: ExecStartPre's check plus the agent's imports


def _settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, all sections, repeated keys in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


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
    assert tool, "systemd-analyze is required (scripts/system-deps.sh installs systemd)"
    unit = _installed_copy(tmp_path)
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "edge-agent.service" not in proc.stderr, proc.stderr  # no warning about our unit


def test_unit_security_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool
    unit = _installed_copy(tmp_path)
    proc = subprocess.run(
        [tool, "security", "--offline=yes", str(unit)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    m = re.search(r"Overall exposure level for edge-agent.service: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout[-500:] + proc.stderr
    assert float(m.group(1)) <= 1.5, proc.stdout[-3000:]


def test_unit_runs_the_agent_with_watchdog_and_notify() -> None:
    s = _settings(UNIT.read_text())
    assert s["ExecStart"] == ["/opt/edge-agent/.venv/bin/edge-agent run -c /etc/edge-agent/agent.yaml"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert 10 <= _seconds(s["WatchdogSec"][0]) <= 120
    assert s["User"] == ["edge-agent"] and s["Group"] == ["edge-agent"]
    # A minimal Debian has no /bin/kill (procps): reload goes through sh's kill builtin.
    assert s["ExecReload"] == ["/bin/sh -c 'kill -HUP \"$MAINPID\"'"]


def test_a_crash_loop_trips_the_start_limit() -> None:
    s = _settings(UNIT.read_text())
    assert s["Restart"] == ["on-failure"]
    restart = _seconds(s["RestartSec"][0])
    interval = _seconds(s["StartLimitIntervalSec"][0])
    burst = int(s["StartLimitBurst"][0])
    assert burst >= 2
    # An agent dying at start begins again every RestartSec + start-up: `burst` starts must
    # fit in the interval, or the limit never trips (systemd's default, 5 in 10 s, does not).
    assert burst * (restart + START_UP_S) <= interval, (burst, restart, interval)
    # ...and an agent that crashes after running a while (a watchdog hang) trips it too.
    watchdog = _seconds(s["WatchdogSec"][0])
    assert burst * (restart + START_UP_S + watchdog) <= interval


def test_the_agent_can_reach_plcs_serial_ports_and_its_state() -> None:
    s = _settings(UNIT.read_text())
    families = " ".join(s["RestrictAddressFamilies"]).split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert "PrivateNetwork" not in s and "IPAddressDeny" not in s
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["DevicePolicy"] == ["closed"]
    assert sorted(s["DeviceAllow"]) == ["char-ttyACM rw", "char-ttyS rw", "char-ttyUSB rw"]
    assert "PrivateDevices" not in s  # it would hide /dev/tty* whatever DeviceAllow says
    assert s["ProtectSystem"] == ["strict"]
    for kind in ("State", "Cache", "Logs", "Runtime", "Configuration"):
        assert s[f"{kind}Directory"] == ["edge-agent"], kind
        assert s[f"{kind}DirectoryMode"] == ["0750"], kind
    env = dict(item.split("=", 1) for line in s["Environment"] for item in line.split())
    # onnxruntime (and any library) caches under XDG_CACHE_HOME/HOME: both writable dirs of ours.
    assert env["XDG_CACHE_HOME"] == "/var/cache/edge-agent"
    assert env["HOME"] == "/var/lib/edge-agent"


def test_the_shipped_unit_loads_no_credential() -> None:
    # A LoadCredential= whose file is missing fails the start (243/CREDENTIALS): credentials
    # come only from the drop-in the install writes for the secrets the config names.
    s = _settings(UNIT.read_text())
    assert not any(k.startswith(("LoadCredential", "SetCredential")) for k in s)
