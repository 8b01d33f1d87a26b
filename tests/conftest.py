"""Shared fixtures: an autouse check that no test leaks a task or a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

# Threads that libraries start once per process and keep (not owned by any test).
_PROCESS_THREADS = ("asyncio_", "ThreadPoolExecutor", "pydevd", "Dummy-")


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive() and not t.name.startswith(_PROCESS_THREADS)}


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    before = _threads()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = _threads() - before
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"test leaked threads: {sorted(t.name for t in leaked)}"


@pytest.fixture(autouse=True)
async def no_task_leak() -> AsyncIterator[None]:
    this = asyncio.current_task()
    before = asyncio.all_tasks() - {this}
    yield
    finalizer = asyncio.current_task()  # pytest-asyncio tears down in a task of its own
    leaked: set[asyncio.Task[object]] = set()
    for _ in range(50):
        await asyncio.sleep(0.01)
        leaked = {t for t in asyncio.all_tasks() - before - {this, finalizer} if not t.done()}
        if not leaked:
            break
    assert not leaked, f"test leaked tasks: {sorted(t.get_name() for t in leaked)}"
