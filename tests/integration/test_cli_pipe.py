"""A closed pipe and Ctrl-C end the command line quietly: exit 141 / 130, no traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from agent import cli
from tests.modbus_server import ModbusTestServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _config(tmp_path: Path, port: int, timeout_ms: int = 300) -> Path:
    tags = "\n".join(
        f"      - {{name: t{i}, table: holding, address: {i}, type: uint16}}" for i in range(40)
    )
    path = tmp_path / "plant.yaml"
    path.write_text(
        f"agent:\n  state_dir: {tmp_path / 'state'}\ndevices:\n  - name: plc\n    protocol: modbus_tcp\n"
        f"    host: 127.0.0.1\n    port: {port}\n    units: [1]\n    timeout_ms: {timeout_ms}\n    tags:\n{tags}\n"
    )
    return path


async def _run_into_closed_pipe(*args: str) -> tuple[int, str]:
    """Run ``edge-agent ARGS`` with a stdout whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", *args, stdout=write_end, stderr=asyncio.subprocess.PIPE, env=ENV
        )
    finally:
        os.close(write_end)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_check_into_a_closed_pipe_ends_quietly() -> None:
    rc, err = await _run_into_closed_pipe("check", "-c", str(ROOT / "configs" / "plant-example.yaml"))
    assert (rc, err) == (141, "")


async def test_read_json_into_a_closed_pipe_and_into_head(tmp_path: Path) -> None:
    async with ModbusTestServer(units=[1]) as srv:
        await srv.set_registers(1, 0, list(range(100, 140)))
        cfg = _config(tmp_path, srv.port)
        rc, err = await _run_into_closed_pipe("read", "-c", str(cfg), "--json")
        assert (rc, err) == (141, "")

        # As a person types it: the first line arrives, the rest ends without a word.
        script = f"set -o pipefail; {sys.executable} -m agent read -c {cfg} --json | head -1"
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV
        )
        out, err_b = await proc.communicate()
    assert err_b.decode() == ""
    assert out.decode().count("\n") == 1 and '"tag": "t0", "value": 100' in out.decode()
    assert proc.returncode in (0, 141)  # 0 when head read everything before it closed


async def test_ctrl_c_during_a_read_ends_with_130_and_no_traceback(tmp_path: Path) -> None:
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accepts, reads nothing, answers nothing: a hung device
        connected.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = _config(tmp_path, port, timeout_ms=20000)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "read", "-c", str(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV,
        )  # fmt: skip
        await asyncio.wait_for(connected.wait(), 20)
        await asyncio.sleep(0.3)  # the request is out, the reply will never come
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()
    assert proc.returncode == 130
    assert "Traceback" not in err.decode() and "KeyboardInterrupt" not in err.decode(), err.decode()


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def socket_broke(argv: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a PLC's socket, while stdout is fine

    monkeypatch.setattr(cli, "_main", socket_broke)
    with pytest.raises(BrokenPipeError):
        cli.main(["check", "-c", "x.yaml"])
