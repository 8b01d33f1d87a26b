"""The short soak in CI (``make soak`` runs 100,000 cycles): see tests/soak/soak.py.

It runs as ``make soak`` does, in a process of its own: the RSS it judges is the agent's, not
that of a test worker that has run other tests (torch, servers, threads of their own) before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(240)


def test_short_soak_leaks_nothing_and_audits_every_change(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "-m", "tests.soak.soak", "--cycles", "4000", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    print(run.stdout[-3000:])
    verdict = json.loads(out.read_text())
    assert verdict["problems"] == [], run.stdout[-3000:]
    assert run.returncode == 0, run.stderr[-3000:]
    # the schedule made it act, and every change is audited
    assert verdict["changed_decisions"] > 10 and verdict["plant_writes"] > 0
    assert verdict["audited_decisions"] == verdict["changed_decisions"]
