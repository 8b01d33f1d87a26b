"""`python -m agent run -c CONFIG` as a real subprocess, for tests that signal or kill it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def agent_process(
    config: Path,
    *,
    env: Mapping[str, str] | None = None,
    stderr: int | IO[Any] = asyncio.subprocess.DEVNULL,
    preexec_fn: Callable[[], None] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The agent on ``config``, importing this checkout; killed (and reaped) when the block ends.

    The environment is this process's without any systemd notification variables, plus
    ``env``; ``stderr`` is DEVNULL, PIPE or a file (a pipe nobody reads can block the agent)."""
    full = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    full.update(PYTHONPATH=str(ROOT), **(env or {}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=stderr, env=full, preexec_fn=preexec_fn,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
