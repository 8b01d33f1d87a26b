"""What the agent's small servers (status socket, metrics endpoint) share: their connections.

Each connection handler runs inside :meth:`Connections.track`, which registers its task and
closes its writer when it ends (bounded: a peer that never reads cannot hold it);
:meth:`Connections.close` stops the server and ends every connection in flight, so that
shutdown leaves no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["Connections"]

_CLOSE_TIMEOUT_S = 1.0


class Connections:
    """The connection handlers of one asyncio server (one owner: the server's event loop)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def track(self, writer: asyncio.StreamWriter) -> AsyncIterator[None]:
        """Around one handler: registered while it runs; its writer closed when it ends."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def close(self, server: asyncio.AbstractServer) -> None:
        """Stop listening, end every connection in flight, wait until the server is closed."""
        server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()
