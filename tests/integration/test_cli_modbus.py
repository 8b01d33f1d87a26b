"""The commissioning commands, run as a real process against a real Modbus server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from agent.drivers import modbus_codec as codec
from tests.modbus_server import ModbusTestServer

pytestmark = pytest.mark.timeout(60)


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(
        f"""
agent:
  state_dir: {tmp_path / "state"}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {port}
    units: [1, 2]
    timeout_ms: 200
    tags:
      - {{name: level, unit: 1, table: holding, address: 0, type: float32, word_order: CDAB, engineering_unit: m}}
      - {{name: count, unit: 1, table: input, address: 3, type: int32}}
      - {{name: sp, unit: 1, table: holding, address: 10, type: uint16, scale: 0.1, access: read-write}}
      - {{name: far, unit: 2, table: holding, address: 0, type: uint16}}
"""
    )
    return path


async def test_check_read_write_against_a_real_server(tmp_path: Path) -> None:
    async with ModbusTestServer(units=[1]) as srv:
        await srv.set_registers(1, 0, codec.encode(2.75, codec.DataType.FLOAT32, "CDAB"))
        await srv.set_registers(1, 3, codec.encode(-7, codec.DataType.INT32, "ABCD"), table="input")
        cfg = write_config(tmp_path, srv.port)

        rc, out, _ = await run_cli("check", "-c", str(cfg))
        assert rc == 0 and "OK (1 devices, 4 tags)" in out

        rc, out, _ = await run_cli("check", "-c", str(cfg), "--connect")
        assert rc == 1  # unit 2 is not there
        assert "plc unit 1: reachable" in out
        assert "plc unit 2: NOT REACHABLE" in out and "timeout" in out

        rc, out, _ = await run_cli("read", "-c", str(cfg), "--tag", "level", "--tag", "count", "--json")
        rows = [json.loads(line) for line in out.splitlines()]
        assert rc == 0
        assert {r["tag"]: r["value"] for r in rows} == {"level": 2.75, "count": -7}
        assert all(r["quality"] == "GOOD" and r["received_at"] for r in rows)

        # the running agent owns the audit log: a commissioning write is still audited beside it
        from agent.config import load_config
        from agent.ops.audit import AuditLog

        owner = AuditLog(load_config(cfg).audit_config())
        owner.open()
        owner.record_event("start", "a running agent")
        rc, out, err = await run_cli("write", "-c", str(cfg), "sp", "42.5")
        owner.close()
        assert rc == 0, err
        assert "sp (40011) = 42.5 (read back)" in out
        assert "commissioning write" in err and "user=" in err
        assert await srv.get_registers(1, 10, 1) == [425]
        rc, out, _ = await run_cli("audit", "-c", str(cfg), "--json")
        rows = [json.loads(line) for line in out.splitlines()]
        assert rc == 0 and rows[-1]["kind"] == "manual_write" and rows[-1]["tag"] == "sp"
        assert rows[-1]["value"] == 42.5 and rows[-1]["user"]

        rc, _, err = await run_cli("write", "-c", str(cfg), "level", "1")
        assert rc == 1 and "read-only" in err

        rc, out, _ = await run_cli("read", "-c", str(cfg), "--tag", "far", "--json")
        row = json.loads(out)
        assert rc == 1 and row["quality"] == "BAD" and "timeout" in row["reason"]


async def test_config_error_exit_code_and_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    port: 99999\n")
    rc, _, err = await run_cli("check", "-c", str(bad))
    assert rc == 2
    assert f"{bad}:5 devices[0].port:" in err
