"""`edge-agent demo` on a port another program holds: one clear line and exit 2, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_on_a_taken_port_says_so_in_one_line() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "agent", "demo", "-c", str(ROOT / "configs" / "demo.yaml"),
             "--duration", "5", "--modbus-port", str(port), "--no-console"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: cannot serve Modbus TCP on 127.0.0.1:{port}: address already in use"
    ]
    assert "Traceback" not in r.stderr
