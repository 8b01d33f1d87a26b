"""`edge-agent check --connect`, `read` and `write` as real processes against an OPC UA server."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.integration.test_cli_modbus import run_cli
from tests.opcua.conftest import PLANT, ServerFactory, secure_overrides


async def test_check_read_write_against_opcua(opcua_server: ServerFactory, tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    plant = await opcua_server(secure=True)
    device = {
        "protocol": "opcua",
        "name": "plc1",
        "endpoint": plant.url,
        "timeout_ms": 2000,
        "mode": "polling",
        "tags": [
            {"name": "dbl", "node_id": f"nsu={PLANT};s=Plant.Double", "access": "read-write", "purpose": "setpoint"},
            {"name": "ro", "node_id": f"nsu={PLANT};s=Plant.ReadOnly", "access": "read-write", "purpose": "setpoint"},
        ],
        **secure_overrides(pki),
    }
    cfg = tmp_path / "opcua.yaml"
    cfg.write_text(yaml.safe_dump({"agent": {"state_dir": str(tmp_path / "state")}, "devices": [device]}))

    rc, out, err = await run_cli("check", "-c", str(cfg), "--connect")
    assert rc == 0, out + err
    assert f"plc1 ({plant.url}): reachable" in out

    rc, out, err = await run_cli("write", "-c", str(cfg), "dbl", "12.25")
    assert rc == 0, err
    assert "dbl" in out and "12.25 (read back)" in out

    rc, out, err = await run_cli("read", "-c", str(cfg), "--tag", "dbl", "--json")
    row = json.loads(out)
    assert rc == 0, err
    assert row["value"] == 12.25 and row["quality"] == "GOOD"

    rc, _, err = await run_cli("write", "-c", str(cfg), "ro", "1.5")
    assert rc == 1 and ("BadUserAccessDenied" in err or "BadNotWritable" in err), err
