"""A port that is taken: serve() raises one clear ListenError, the command line prints one line
and exits 2, and no library traceback reaches the log (issue 16)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator import Plant, serve
from simulator.listen import ListenError

from .conftest import assert_no_other_tasks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on (a plain socket, bound to port 0 by the system)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.exc_info or r.levelno >= logging.WARNING]


async def test_modbus_port_in_use(taken_port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ListenError) as err:
        async with serve(Plant(), modbus_port=taken_port, speed=0):
            pass
    assert str(err.value) == f"cannot serve Modbus TCP on 127.0.0.1:{taken_port}: address already in use"
    assert err.value.address_in_use and err.value.__cause__ is None
    assert _tracebacks(caplog.records) == []  # pymodbus's own warning is not repeated
    assert_no_other_tasks()


async def test_opcua_port_in_use(taken_port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ListenError) as err:
        async with serve(Plant(), modbus_port=0, opcua_port=taken_port, speed=0):
            pass
    assert str(err.value) == f"cannot serve OPC UA on 127.0.0.1:{taken_port}: address already in use"
    assert _tracebacks(caplog.records) == []  # asyncua's logged traceback is dropped
    assert_no_other_tasks()


async def test_an_address_not_on_this_host_says_so() -> None:
    with pytest.raises(ListenError, match=r"cannot serve Modbus TCP on 192\.0\.2\.1:\d+: cannot assign requested"):
        async with serve(Plant(), modbus_port=0, host="192.0.2.1", speed=0):  # TEST-NET-1
            pass
    assert_no_other_tasks()


@pytest.mark.parametrize(
    ("command", "service"),
    [
        (["-m", "simulator", "--no-opcua", "--modbus-port", "{port}"], "Modbus TCP"),
        (["-m", "simulator", "--modbus-port", "0", "--opcua-port", "{port}"], "OPC UA"),
        (["-m", "agent", "simulate", "--no-opcua", "--modbus-port", "{port}"], "Modbus TCP"),
    ],
    ids=["simulator-modbus", "simulator-opcua", "edge-agent-simulate"],
)
def test_the_command_line_ends_with_one_line_and_exit_2(taken_port: int, command: list[str], service: str) -> None:
    argv = [sys.executable, *(a.format(port=taken_port) for a in command), "--duration", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: cannot serve {service} on 127.0.0.1:{taken_port}: address already in use "
        "(another program listens there: choose another port, or 0 for any free one)"
    )
    # Only the line of the server that did start may come before it.
    assert all("INFO simulator.modbus: Modbus TCP server on" in line for line in out.stderr.splitlines()[:-1])
    assert out.stdout == ""
