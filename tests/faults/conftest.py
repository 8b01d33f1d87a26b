"""Fixtures of the fault scenarios: no file descriptor leaks, and a log without tracebacks.

Every test here also runs under the autouse task and thread leak checks of tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.testing import capture_logs

# pytest's own stdout/stderr capture: unlinked temporary files it swaps between test phases
_PYTEST_CAPTURE = re.compile(r"/tmp/#\d+ \(deleted\)")
# onnxruntime opens its usage database once per process, with the first session, and keeps it
# (under $XDG_CACHE_HOME or ~/.cache): not a per-test leak.
_ORT_CACHE = re.compile(r".*/\.onnxruntime/onnxruntime\.db(-wal|-shm)?$")


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point to."""
    out: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used, closed since
    return out


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class AgentLog:
    """What the agent logged during a test: structlog events and stdlib records (>= WARNING)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    records: list[logging.LogRecord] = field(default_factory=list)

    def named(self, event: str, source: str = "") -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and str(e.get("source", "")).startswith(source)]


@pytest.fixture(autouse=True)
def agent_log(capfd: pytest.CaptureFixture[str]) -> Iterator[AgentLog]:
    """Capture the log as the agent configures it, and fail the test on any traceback in it.

    ``agent.ops.logging.setup_logging`` sets pymodbus's logger to CRITICAL (its per-request
    errors are the driver's to report, once): so here. asyncio's own logger is left as it is:
    an exception escaping a protocol callback or a task ("Fatal error: protocol.data_received()
    call failed", "Task exception was never retrieved") lands there, with its traceback.
    """
    pymodbus = logging.getLogger("pymodbus")
    level = pymodbus.level
    pymodbus.setLevel(logging.CRITICAL)
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    log = AgentLog(records=handler.records)
    try:
        with capture_logs() as events:
            log.events = events
            yield log
    finally:
        root.removeHandler(handler)
        pymodbus.setLevel(level)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, out + err
    bad = [r for r in handler.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


@pytest.fixture(autouse=True)
async def no_fd_leak(agent_log: AgentLog) -> AsyncIterator[None]:
    # after agent_log: its stdout and stderr capture holds descriptors of its own
    before = open_fds()
    yield
    leaked: dict[int, str] = {}
    for _ in range(100):  # transports finish closing in the loop's next passes
        leaked = {
            fd: target
            for fd, target in open_fds().items()
            if before.get(fd) != target and not _PYTEST_CAPTURE.match(target) and not _ORT_CACHE.match(target)
        }
        if not leaked:
            break
        await asyncio.sleep(0.01)
    assert not leaked, f"test leaked file descriptors: {sorted(leaked.items())}"
