"""Offline install: the wheel folder `make wheelhouse` builds installs the agent with the network cut.

The folder is built by the same script for this machine's architecture (the package index is
reachable while building), then a fresh venv installs from it inside a network namespace of its
own, where no address but the loopback exists.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(240)


def _offline(*cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No pip configuration (its extra indexes and find-links would mask a missing wheel) and no
    # network (unshare --net: only a loopback that is down); not run from the checkout, whose
    # agent/ would otherwise be imported instead of the installed one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env["PIP_CONFIG_FILE"] = os.devnull
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is required"
    return subprocess.run(
        [unshare, "--net", "--map-root-user", *cmd], capture_output=True, text=True, env=env, cwd=cwd, check=False
    )


def test_wheelhouse_installs_offline_into_a_fresh_venv(tmp_path: Path) -> None:
    arch = platform.machine()
    assert arch in ("x86_64", "aarch64"), arch
    house = tmp_path / "wheelhouse"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "wheelhouse.py"), str(house), "--arch", arch], check=True)
    names = sorted(p.name for p in house.glob("*.whl"))
    assert any(n.startswith("edge_inference_agent-0.1.0-py3-none-any") for n in names), names
    for needed in ("onnxruntime-", "numpy-", "pydantic_core-", "asyncua-", "pymodbus-", "setuptools-", "wheel-"):
        assert any(n.startswith(needed) for n in names), (needed, names)
    assert all(p.suffix == ".whl" for p in house.iterdir())  # binary only: no compiler on a gateway

    probe = _offline(
        sys.executable, "-c", "import socket; socket.create_connection(('pypi.org', 443), 2)", cwd=tmp_path
    )
    assert probe.returncode != 0, "the namespace was meant to have no network"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    install = _offline(py, "-m", "pip", "install", "--no-index", "--find-links", str(house), "edge-inference-agent", cwd=tmp_path)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    # The installed agent (not this checkout: no PYTHONPATH) validates a config and loads its libraries.
    run = _offline(str(venv / "bin" / "edge-agent"), "check", "-c", str(ROOT / "configs" / "opcua-example.yaml"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "OK (1 devices, 5 tags)" in run.stdout
    libs = _offline(py, "-c", "import onnxruntime, asyncua, pymodbus, serial, agent.cli; print(agent.cli.__file__)", cwd=tmp_path)
    assert libs.returncode == 0, libs.stderr
    assert str(venv) in libs.stdout

    # The build backend is there too: the checkout itself builds with the network cut.
    built = _offline(
        py, "-m", "pip", "wheel", "--no-index", "--find-links", str(house), "--no-deps",
        "--wheel-dir", str(tmp_path / "built"), str(ROOT), cwd=tmp_path,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    assert len(list((tmp_path / "built").glob("edge_inference_agent-*.whl"))) == 1
