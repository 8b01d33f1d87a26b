"""A password reaches the OPC UA server and nothing else: not the log (at debug level), not
the audit log, not the status document, not the metrics.

The real agent as a subprocess (`python -m agent run`) against a real asyncua server that
requires user and password over SignAndEncrypt. One device logs in with the right password
(the proof that the secret was read and used), one with a wrong one (the error path, where
secrets usually leak). Everything the agent exposes is then searched for both passwords.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.agent_process import ROOT, agent_process
from tests.opcua.conftest import Pki, ServerFactory, free_port, plant_tags, secure_overrides

GOOD_PW = "Gd-s3cret-7f41c2-not-anywhere"
WRONG_PW = "Wr-s3cret-93ab01-not-anywhere"


async def _status(run_dir: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "status", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RUNTIME_DIRECTORY": str(run_dir)},
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out.decode() if proc.returncode == 0 else ""


async def test_passwords_are_in_no_log_audit_status_or_metrics(
    opcua_server: ServerFactory, pki: Pki, tmp_path: Path
) -> None:
    plant = await opcua_server(
        secure=True, insecure_endpoint=False, trusted_clients=pki.server_trust, users={"operator": GOOD_PW}
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for name, pw in (("good", GOOD_PW), ("wrong", WRONG_PW)):
        (secrets / name).write_text(pw + "\n")
        (secrets / name).chmod(0o600)
    tags = [t for t in plant_tags("read") if t["name"] == "t.Double"]
    base = {
        "protocol": "opcua", "endpoint": plant.url, "username": "operator", "timeout_ms": 2000,
        "poll_interval_ms": 200, "backoff_ms": 200, "backoff_max_ms": 400,
        **secure_overrides(pki, "Aes256_Sha256_RsaPss", "SignAndEncrypt"),
    }  # fmt: skip
    metrics_port = free_port()
    config = {
        "agent": {
            "name": "secrets-test", "log_level": "debug", "log_format": "json", "cycle_ms": 200,
            "state_dir": str(tmp_path / "state"), "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        },
        "devices": [
            {**base, "name": "good", "password": {"file": str(secrets / "good")}, "tags": tags},
            {**base, "name": "wrong", "password": {"file": str(secrets / "wrong")},
             "tags": [{**tags[0], "name": "w.Double"}]},
        ],
    }  # fmt: skip
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "agent.log"
    status = metrics = ""
    with log.open("wb") as stderr:
        async with agent_process(cfg, env={"RUNTIME_DIRECTORY": str(run_dir)}, stderr=stderr) as proc:
            for _ in range(150):
                await asyncio.sleep(0.2)
                assert proc.returncode is None, log.read_text()[-2000:]
                status = await _status(run_dir)
                if '"GOOD"' in status and "BadUserAccessDenied" in status:
                    break
            else:
                raise AssertionError(f"the agent never polled both devices: {status[-2000:]}")
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            )
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    logged = log.read_text()
    doc = json.loads(status)
    assert "good" in json.dumps(doc) and "edge_agent_polls_total" in metrics  # the real documents
    assert "BadUserAccessDenied" in logged  # the wrong password was tried and logged as refused
    audit = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("audit.sqlite*"))
    assert audit, "the audit log exists"
    for pw in (GOOD_PW, WRONG_PW):
        for where, text in (("log", logged), ("status", status), ("metrics", metrics)):
            assert pw not in text, f"{where} contains a password"
            assert pw[:12] not in text, f"{where} contains part of a password"
        assert pw.encode() not in audit and pw[:12].encode() not in audit, "the audit log contains a password"
