"""`edge-agent status` against a running agent: the socket, its mode, the document, the CLI.

The agent runs in this process (the real Agent on the embedded plant, for exact comparisons
with its units' state) or as a process; the CLI always runs as a process (``python -m agent
status``), as an engineer would run it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.ops.status import SOCKET_NAME, read_status
from simulator import Plant, free_port, serve
from tests.e2e.plant_fixtures import modbus_test_config, running_agent, wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    full = {k: v for k, v in os.environ.items() if k != "RUNTIME_DIRECTORY"}
    full.update(PYTHONPATH=str(ROOT), **(env or {}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "status",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def short_tmp() -> Any:
    with tempfile.TemporaryDirectory(prefix="st") as d:  # sun_path holds 108 bytes
        yield Path(d)


async def test_status_of_a_running_agent(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    plant = Plant(seed=31, permissive=True)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=1) as station:
        state = short_tmp / "state"
        cfg = modbus_test_config(station.modbus_port, state)
        # a socket left behind by an agent that died is replaced
        state.mkdir()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            stale.bind(str(state / SOCKET_NAME))
        async with running_agent(cfg) as agent:
            path = state / SOCKET_NAME
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
            assert st.st_gid == os.getegid()  # the service's group
            await wait_until(lambda: agent.writeback.decisions, timeout_s=10, what="decisions")

            rc, out, err = await cli("--socket", str(path), "--json")
            assert rc == 0, err
            doc = json.loads(out)
            a = doc["agent"]
            assert a["name"] == "demo-gateway" and a["config"] == agent.config_path
            assert a["audit"]["healthy"] is True and a["guard"] == {"mode": "auto", "writes_enabled": True}
            (dev,) = doc["devices"]
            assert dev["name"] == "plant" and dev["connected"] is True
            assert 0 <= dev["last_good_age_s"] < 5
            assert dev["units"] == [
                {
                    "unit": 1,
                    "state": "ok",
                    "breaker": "closed",
                    "last_error": "",
                    "requests": dev["units"][0]["requests"],
                    "failures": 0,
                }
            ]
            assert dev["requests"] > 0 and dev["error_rate"] == 0.0
            assert {m["name"] for m in doc["models"]} == {"pca-pump", "fault-mlp", "rul-bearing", "seq-pump"}
            for m in doc["models"]:
                running = next(r for r in agent.models if r.binding.name == m["name"])
                assert m["version"] == running.bundle.manifest.version
                assert m["variant"] == running.bundle.variant.file and m["healthy"] is True
            decisions = {d["target"]: d for d in doc["decisions"]}
            assert set(decisions) == {"Pump1.ExternalSpeedSetpoint", "Pump2.ExternalSpeedSetpoint"}
            for d in decisions.values():
                assert d["action"] in ("WRITE", "CLAMP", "HOLD", "REJECT")
                assert d["action"] != "HOLD" or d["reasons"], d  # a hold always says why
            assert doc["certificates"] == []  # Modbus only
            assert doc["alarms"] == []

            rc, out, err = await cli("--socket", str(path))
            assert rc == 0, err
            # found through the config's state_dir (no RUNTIME_DIRECTORY, nothing in /run)
            config_file = short_tmp / "agent.yaml"
            config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
            rc, by_config, err = await cli("-c", str(config_file))
            assert rc == 0, err
            assert by_config.startswith(f"agent demo-gateway (pid {os.getpid()})") and "DEVICE" in by_config
            assert "agent demo-gateway" in out and "DEVICE" in out and "plant" in out
            assert "pca-pump" in out and "Pump1.ExternalSpeedSetpoint" in out and "no alarms" in out

            # the PLC goes away: the status says so
            await station.modbus.stop()
            await wait_until(
                lambda: agent.drivers["plant"].unit_status()[0].breaker == "open",
                timeout_s=10,
                what="breaker",
            )
            doc = await asyncio.to_thread(read_status, [path])
            (dev,) = doc["devices"]
            assert dev["connected"] is False
            assert dev["units"][0]["state"] == "lost" and dev["units"][0]["breaker"] == "open"
            assert dev["units"][0]["last_error"]
        assert not path.exists(), "the socket outlived the agent"


async def test_status_in_the_runtime_directory_and_found_through_the_config(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = short_tmp / "run"
    runtime.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    cfg = modbus_test_config(free_port(), short_tmp / "state")  # every PLC down
    async with running_agent(cfg, first_cycle_timeout_s=15) as agent:
        assert (runtime / SOCKET_NAME).exists() and not (short_tmp / "state" / SOCKET_NAME).exists()
        rc, out, err = await cli("--json", env={"RUNTIME_DIRECTORY": str(runtime)})
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["agent"]["pid"] == os.getpid() and doc["devices"][0]["connected"] is False
        assert doc["devices"][0]["last_good_age_s"] is None
        assert doc["agent"]["cycles"] >= agent.view.cycles - 5


async def test_no_agent_running_is_one_clear_line(short_tmp: Path) -> None:
    missing = short_tmp / "nothing.sock"
    rc, out, err = await cli("--socket", str(missing))
    assert rc == 1 and out == ""
    assert err.strip().count("\n") == 0
    assert err.startswith(f"edge-agent status: no agent running: no socket at {missing}")
    # a socket file nobody listens on
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(missing))
    rc, _, err = await cli("--socket", str(missing))
    assert rc == 1 and f"nothing listens on {missing}" in err and err.strip().count("\n") == 0


def test_certificate_expiry_is_read_and_reread_hourly(tmp_path: Path) -> None:
    from agent.drivers.opcua_config import OpcUaDevice
    from agent.ops.certs import create_certificate
    from agent.ops.status import Certificates

    cert, key = tmp_path / "cert.der", tmp_path / "key.pem"
    first = create_certificate(cert, key, application_uri="urn:test:agent", days=10)
    device = OpcUaDevice.model_validate(
        {
            "protocol": "opcua",
            "name": "ua",
            "endpoint": "opc.tcp://127.0.0.1:4840",
            "certificate": str(cert),
            "private_key": str(key),
            "trusted_server_certificates": [str(cert)],
            "tags": [{"name": "x", "node_id": "ns=2;s=x"}],
        }
    )
    now = [0.0]
    certs = Certificates([device], clock=lambda: now[0])
    (c,) = certs.current()
    assert c.device == "ua" and c.path == str(cert) and c.not_after == first.not_after
    assert c.warning is not None and "expires in" in c.warning  # within cert_warn_days (30)
    second = create_certificate(cert, key, application_uri="urn:test:agent", days=400, overwrite=True)
    now[0] = 3599.0
    assert certs.current()[0].not_after == first.not_after  # not read again within the hour
    now[0] = 3600.0
    (c,) = certs.current()
    assert c.not_after == second.not_after and c.warning is None
    cert.unlink()
    now[0] = 7200.0
    (c,) = certs.current()
    assert c.not_after is None and c.warning is not None and "cannot be read" in c.warning
