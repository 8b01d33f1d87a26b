"""The log stream: JSON lines off a terminal, console on one; secrets never in a line; a
stderr whose reader is gone never stops the agent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

import agent.ops.logging as agent_logging
from agent.configbase import Secret
from agent.drivers.opcua import OpcUaDriver
from agent.ops.logging import REDACTED, register_secret, registers_secret, resolve_format, setup_logging
from agent.running import QualityLog, RunningSource
from agent.types import Sample

# A real OPC UA server (the fixtures of tests/opcua) for the run path of a refused login.
from tests.opcua.conftest import aspace_shelf, make_device, opcua_server, pki  # noqa: F401

log = structlog.get_logger("test")


@pytest.fixture(autouse=True)
def fresh_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without registered secrets and leaves logging as it found it."""
    monkeypatch.setattr(agent_logging, "_secrets", ())
    root = logging.getLogger()
    level = root.level
    yield
    structlog.reset_defaults()
    if agent_logging._handler is not None:
        root.removeHandler(agent_logging._handler)
        agent_logging._handler = None
    root.setLevel(level)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_json_lines_off_a_terminal_console_on_one_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = tmp_path / "journal"
    with out.open("w") as f:
        setup_logging("info", "auto", stream=f)
        log.info("polling", device="plc1", interval_ms=500)
        log.debug("not at info")
        logging.getLogger("pymodbus.client").critical("socket %s closed", "10.0.0.5:502")
    first, second = _lines(out)
    assert first["event"] == "polling" and first["device"] == "plc1" and first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert second == {**second, "event": "socket 10.0.0.5:502 closed", "logger": "pymodbus.client"}

    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert resolve_format("auto", tty) == "console" and resolve_format("json", tty) == "json"
        setup_logging("info", "auto", stream=tty)
        log.warning("on a terminal", device="plc1")
        on_tty = os.read(master, 4096).decode()
    os.close(master)
    assert "on a terminal" in on_tty and "device" in on_tty and "\x1b[" in on_tty  # colours
    with pytest.raises(json.JSONDecodeError):
        json.loads(on_tty)

    forced = tmp_path / "forced"
    with forced.open("w") as f:
        setup_logging("info", "console", stream=f)
        log.info("forced", device="plc1")
    text = forced.read_text()
    assert "forced" in text and "device=plc1" in text and not text.startswith("{") and "\x1b[" not in text
    with pytest.raises(ValueError, match="auto, console or json"):
        setup_logging("info", "text")


def test_setting_up_again_replaces_the_stream(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with a.open("w") as fa, b.open("w") as fb:
        setup_logging("info", "json", stream=fa)
        setup_logging("info", "json", stream=fb)
        logging.getLogger("asyncua").critical("once")
        log.info("twice?")
    assert a.read_text() == ""
    assert [e["event"] for e in _lines(b)] == ["once", "twice?"]


def test_secrets_are_replaced_wherever_they_are(tmp_path: Path) -> None:
    register_secret("Pa55-registered")
    register_secret("ab")  # short: only a value equal to it is replaced
    out = tmp_path / "journal"
    with out.open("w") as f:
        setup_logging("info", "json", stream=f)
        log.info(
            "config",
            device={"username": "operator", "password": "Pa55-in-a-dict", "nested": [{"api_token": "t0k3n"}]},
            private_key_password="Pa55-by-key",
            key="Pa55-key",
            endpoint="https://operator:Pa55-in-url@10.0.0.5/api",
            reason="login failed for operator/Pa55-registered",
            short="ab",
            label="a tab of lab",
            keep=3,
            key_count=2,
        )
        try:
            raise ConnectionError("server said: bad password Pa55-registered")
        except ConnectionError as exc:
            log.exception("connect failed")
            log.warning("connect failed", error=exc)
        logging.getLogger("asyncua.client").critical("hello with Pa55-registered")
    text = out.read_text()
    assert "Pa55" not in text and "t0k3n" not in text
    config, traced, as_field, stdlib = _lines(out)
    assert config["device"] == {"username": "operator", "password": REDACTED, "nested": [{"api_token": REDACTED}]}
    assert config["private_key_password"] == config["key"] == REDACTED
    assert config["endpoint"] == "https://operator:***@10.0.0.5/api"
    assert config["reason"] == "login failed for operator/***"
    assert (config["short"], config["label"], config["keep"], config["key_count"]) == (REDACTED, "a tab of lab", 3, 2)
    assert "ConnectionError: server said: bad password ***" in traced["exception"]
    assert as_field["error"] == "ConnectionError('server said: bad password ***')"
    assert stdlib["event"] == "hello with ***"


def test_a_secret_read_through_the_config_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # agent/configbase.py decorates Secret.reveal with registers_secret (the wiring line); the
    # test applies it too, so that it holds before and after that line is merged (registering
    # twice is harmless).
    monkeypatch.setattr(Secret, "reveal", registers_secret(Secret.reveal))
    monkeypatch.setenv("PLC_PASSWORD", "from-the-environment")
    assert Secret(env="PLC_PASSWORD").reveal() == "from-the-environment"
    assert "from-the-environment" in agent_logging._secrets
    cap = structlog.testing.LogCapture()
    structlog.configure(processors=[agent_logging.redact_secrets, cap])
    log.info("echoed by a library: from-the-environment")
    assert cap.entries[0]["event"] == "echoed by a library: ***"


async def test_a_refused_opcua_login_logs_no_password(
    opcua_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The run path: a RunningSource over the OPC UA driver, a server that refuses the user,
    the whole log written as journald would get it."""
    monkeypatch.setattr(Secret, "reveal", registers_secret(Secret.reveal))  # the wiring line
    right, wrong = "Right-Pa55-4-opcua", "Wrong-Pa55-4-opcua"
    monkeypatch.setenv("OPCUA_PASSWORD", wrong)
    plant = await opcua_server(users={"operator": right})
    dev = make_device(plant.url, username="operator", password={"env": "OPCUA_PASSWORD"})
    out = tmp_path / "journal"
    with out.open("w") as f:
        setup_logging("debug", "json", stream=f)
        three_polls = asyncio.Event()

        def sink(samples: Sequence[Sample]) -> None:
            if runner.counters.polls >= 3:
                three_polls.set()

        async with OpcUaDriver(dev) as driver:
            runner = RunningSource(driver, 0.1, sink, quality=QualityLog(dev.name))
            task = asyncio.create_task(runner.run())
            await asyncio.wait_for(three_polls.wait(), 8)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        log.info("device config", device=dev.model_dump(mode="json"), password=wrong)
    text = out.read_text()
    assert "Pa55" not in text
    events = _lines(out)
    bad = [e for e in events if e["event"] == "tags BAD"]
    assert len(bad) == 1 and "refused user 'operator'" in bad[0]["reason"] and bad[0]["device"] == "plc1"
    assert any(e["event"] == "lost" and e["device"] == "plc1" for e in events)
    assert events[-1]["password"] == REDACTED


def test_a_stderr_whose_reader_is_gone_never_raises() -> None:
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w", buffering=1) as gone:
        setup_logging("info", "json", stream=gone)
        log.warning("journald restarted")  # BrokenPipeError inside: not raised here
        log.warning("and again")
        logging.getLogger("pymodbus").critical("stdlib too")
        # what is still buffered, and any later writer of the descriptor, now goes nowhere
        assert stat.S_ISCHR(os.fstat(w).st_mode) and os.fstat(w).st_rdev == os.stat(os.devnull).st_rdev
        handler = agent_logging._handler
        assert isinstance(handler, logging.StreamHandler) and handler.stream.broken
        assert handler.stream.dropped >= 2


def test_a_process_whose_stderr_reader_is_gone_exits_cleanly(tmp_path: Path) -> None:
    """Once the log stream has found stderr gone, the rest of the process writes to it without
    failing too: the CLI's own ``print(..., file=sys.stderr)`` of an error, at the end."""
    code = (
        "import logging, sys, structlog\n"
        "from agent.ops.logging import setup_logging\n"
        "import agent.ops.logging as L\n"
        "setup_logging('info', 'auto')\n"
        "for i in range(3):\n"
        "    structlog.get_logger().warning('lost journald', i=i)\n"
        "logging.getLogger('asyncua').critical('stdlib')\n"
        "print('broken' if L._handler.stream.broken else 'intact', flush=True)\n"
        "print('error: the agent stopped', file=sys.stderr, flush=True)\n"
    )
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            stderr=w,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            timeout=60,
            check=False,
        )
    finally:
        os.close(w)
    assert (proc.returncode, proc.stdout) == (0, b"broken\n")
