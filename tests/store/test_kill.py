"""SIGKILL of a real `edge-agent models install` at several points: the store stays
consistent and a verified version is current (the old one before the switch, the new one
after it), and the next install cleans up and succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.modelstore.store import PAUSE_ENV, Store
from tests.store.kit import DEV_PUB, ROOT, edge_agent, make_bundle, write_config

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("point", "current_after"),
    [("before-copy", "1"), ("mid-copy", "1"), ("before-switch", "1"), ("after-switch", "2")],
)
def test_sigkill_during_install_leaves_a_consistent_store(
    tmp_path: Path, point: str, current_after: str
) -> None:
    cfg = write_config(tmp_path)
    assert edge_agent("models", "-c", cfg, "install", make_bundle(tmp_path / "v1", "1")).returncode == 0
    v2 = make_bundle(tmp_path / "v2", "2")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **{PAUSE_ENV: point})
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "models", "-c", str(cfg), "install", str(v2)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    marker = tmp_path / "store" / f".paused-{point}"
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, f"install ended ({proc.returncode}) before reaching {point}"
            assert time.monotonic() < deadline, f"install never reached {point}"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = Store(tmp_path / "store")
    assert store.check() == []
    assert store.current("tiny") == current_after
    bundle = store.load("tiny", trusted_keys=[DEV_PUB])  # verified, fingerprint as recorded
    assert bundle.manifest.version == current_after
    # the next install finds the leftovers, removes them and completes
    out = edge_agent("models", "-c", cfg, "install", v2)
    assert out.returncode == 0, out.stderr
    assert store.current("tiny") == "2" and store.check() == []
    assert not any((tmp_path / "store" / ".tmp").iterdir())
    assert store.load("tiny", trusted_keys=[DEV_PUB]).manifest.version == "2"
