"""The commissioning commands, run as a real process against a real Modbus server."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.drivers import modbus_codec as codec
from tests.modbus_server import ModbusTestServer

pytestmark = pytest.mark.timeout(60)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
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
      - {{name: sp, unit: 1, table: holding, address: 10, type: uint16, scale: 0.1, access: read-write, purpose: setpoint}}
      - {{name: far, unit: 2, table: holding, address: 0, type: uint16}}
      - {{name: far_sp, unit: 2, table: holding, address: 1, type: uint16, access: read-write, purpose: setpoint}}
"""
    )
    return path


async def test_check_read_write_against_a_real_server(tmp_path: Path) -> None:
    async with ModbusTestServer(units=[1]) as srv:
        await srv.set_registers(1, 0, codec.encode(2.75, codec.DataType.FLOAT32, "CDAB"))
        await srv.set_registers(1, 3, codec.encode(-7, codec.DataType.INT32, "ABCD"), table="input")
        cfg = write_config(tmp_path, srv.port)

        rc, out, _ = await run_cli("check", "-c", str(cfg))
        assert rc == 0 and "OK (1 devices, 5 tags)" in out

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
        # stderr is no terminal here: the log is JSON lines (journald's format)
        logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any(e["event"] == "commissioning write" and e.get("user") for e in logged), err
        assert await srv.get_registers(1, 10, 1) == [425]
        rows = await audit_rows(cfg)
        attempt, outcome = rows[-2], rows[-1]
        assert attempt["kind"] == "manual_write" and attempt["tag"] == "sp" and attempt["action"] == "WRITE"
        assert attempt["value"] == 42.5 and attempt["user"]
        assert outcome["kind"] == "event" and outcome["action"] == "manual_write_outcome"
        assert outcome["detail"]["attempt"] == attempt["id"] and outcome["detail"]["outcome"] == "written"
        assert outcome["detail"]["read_back"] == 42.5

        rc, _, err = await run_cli("write", "-c", str(cfg), "level", "1")
        assert rc == 1 and "read-only" in err

        rc, out, _ = await run_cli("read", "-c", str(cfg), "--tag", "far", "--json")
        row = json.loads(out)
        assert rc == 1 and row["quality"] == "BAD" and "timeout" in row["reason"]


async def audit_rows(cfg: Path) -> list[dict[str, Any]]:
    rc, out, err = await run_cli("audit", "-c", str(cfg), "--json")
    assert rc == 0, err
    return [json.loads(line) for line in out.splitlines()]


async def test_commissioning_write_validates_first_then_audits_attempt_and_outcome(tmp_path: Path) -> None:
    async with ModbusTestServer(units=[1]) as srv:  # unit 2 does not answer
        cfg = write_config(tmp_path, srv.port)
        # a value that does not encode (7000.0 is 70000 in the uint16 register) is refused
        # before anything is audited or sent
        rc, _, err = await run_cli("write", "-c", str(cfg), "sp", "7000")
        assert rc == 1 and "refused" in err and "70000" in err
        rc, _, err = await run_cli("write", "-c", str(cfg), "sp", "fast")
        assert rc == 1 and "not a number" in err
        assert await audit_rows(cfg) == []
        assert [r for r in srv.faults.requests if r[1] in (6, 16)] == []
        # sent to a unit that never answers: attempt and outcome (possibly applied) are audited
        rc, _, err = await run_cli("write", "-c", str(cfg), "far_sp", "5")
        assert rc == 1 and "possibly applied" in err
        attempt, outcome = await audit_rows(cfg)
        assert (attempt["kind"], attempt["tag"], attempt["value"]) == ("manual_write", "far_sp", 5)
        assert outcome["detail"]["outcome"] == "unconfirmed" and "timeout" in outcome["detail"]["reason"]
        assert outcome["detail"]["attempt"] == attempt["id"]
        # refused by the device: the outcome says so
        srv.faults.refuse_functions[6] = 4
        rc, _, err = await run_cli("write", "-c", str(cfg), "sp", "1")
        assert rc == 1 and "refused" in err and "exception 04" in err
        outcome = (await audit_rows(cfg))[-1]
        assert outcome["detail"]["outcome"] == "refused" and "exception 04" in outcome["message"]
        assert await srv.get_registers(1, 10, 1) == [0]


async def test_commissioning_write_user_comes_from_the_kernel_not_the_environment(tmp_path: Path) -> None:
    from agent.cli import os_user

    async with ModbusTestServer(units=[1]) as srv:
        cfg = write_config(tmp_path, srv.port)
        rc, out, err = await run_cli(
            "write", "-c", str(cfg), "sp", "12", env={"LOGNAME": "mallory", "USER": "mallory"}
        )
        assert rc == 0, err
        user = os_user()
        assert user and "mallory" not in user
        assert out.strip().endswith(f"written by {user}")
        assert (await audit_rows(cfg))[0]["user"] == user


def test_os_user_reads_the_login_uid_then_the_real_uid(tmp_path: Path) -> None:
    from agent.cli import os_user

    me = pwd.getpwuid(os.getuid()).pw_name
    loginuid = tmp_path / "loginuid"
    loginuid.write_text("4294967295")  # unset (a daemon, a container): the real uid
    assert os_user(loginuid) == me
    loginuid.write_text(str(os.getuid()))
    assert os_user(loginuid) == me
    other = next(p for p in pwd.getpwall() if p.pw_uid != os.getuid())
    loginuid.write_text(str(other.pw_uid))  # logged in as someone else, then sudo/su
    assert os_user(loginuid) == f"{other.pw_name} (as {me})"
    assert os_user(tmp_path / "missing") == me


async def test_a_setpoint_the_running_agent_owns_in_auto_is_refused_whatever_the_config(
    tmp_path: Path,
) -> None:
    from agent.ops.ownership import write_ownership

    async with ModbusTestServer(units=[1]) as srv:
        cfg = write_config(tmp_path, srv.port)  # its own guard section: none, so not owned per the config
        state = tmp_path / "state"
        write_ownership(state, {"sp": "auto", "far_sp": "shadow"}, os.getpid())  # this test is alive
        rc, _, err = await run_cli("write", "-c", str(cfg), "sp", "1")
        assert rc == 1 and "refused" in err and "mode auto" in err and "ownership.json" in err
        assert await audit_rows(cfg) == []
        assert [r for r in srv.faults.requests if r[1] in (6, 16)] == []
        # the agent that wrote it is gone: the file owns nothing
        dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await dead.wait()
        write_ownership(state, {"sp": "auto"}, dead.pid)
        rc, _, err = await run_cli("write", "-c", str(cfg), "sp", "1")
        assert rc == 0, err
        # an unreadable ownership file refuses, it does not open the setpoint
        (state / "ownership.json").write_text("{not json")
        rc, _, err = await run_cli("write", "-c", str(cfg), "sp", "2")
        assert rc == 1 and "ownership file" in err and "not valid" in err
        assert await srv.get_registers(1, 10, 1) == [10]


async def test_config_error_exit_code_and_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    port: 99999\n")
    rc, _, err = await run_cli("check", "-c", str(bad))
    assert rc == 2
    assert f"{bad}:5 devices[0].port:" in err
