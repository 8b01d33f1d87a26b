"""A Modbus server that plays a recording: row ``k`` in the input registers at ``start + k·period``.

``async with ReplayServer(tags, values, period_s=0.2) as srv:`` serves nothing but zeros
until :meth:`ReplayServer.play` starts the rows; each tag is a float32 (ABCD) in two input
registers of unit 1, tag ``i`` at address ``2·i`` (:meth:`tag_configs` gives the agent's tag
entries). A NaN is served as NaN (the driver reads it as not GOOD). ``scale`` speeds the
recording's clock up: a row every ``period_s / scale`` real seconds. :attr:`row_times` holds
the wall-clock (UTC) time each row went live, so a live agent's alarm times can be put on the
recording's time axis (:attr:`start_utc`: when row 0 was due).

The server is the real pymodbus one of :class:`tests.modbus_server.ModbusTestServer` on
127.0.0.1, port 0; the player is a task owned by the context (cancelled and awaited on exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import numpy as np

from tests.modbus_server import ModbusTestServer

__all__ = ["ReplayServer"]


def _words(values: np.ndarray) -> list[int]:
    raw = struct.pack(f">{len(values)}f", *values.astype(np.float32).tolist())
    return list(struct.unpack(f">{2 * len(values)}H", raw))


class ReplayServer:
    """Serves ``values[k]`` (``[N, len(tags)]``) from ``start + k·period_s/scale`` (see module doc)."""

    def __init__(self, tags: Sequence[str], values: np.ndarray, *, period_s: float, scale: float = 1.0) -> None:
        if values.shape[1:] != (len(tags),):
            raise ValueError(f"values {values.shape} do not fit {len(tags)} tags")
        self.tags = list(tags)
        self.values = values
        self.interval_s = period_s / scale
        self.server = ModbusTestServer(units=[1], size=max(2 * len(tags), 2))
        self.row_times: list[datetime] = []
        self.start_utc: datetime | None = None  # when row 0 was due (UTC)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def done(self) -> bool:
        return len(self.row_times) == len(self.values)

    def tag_configs(self, unit: str = "1", value_range: tuple[float, float] = (-100.0, 100.0)) -> list[dict[str, Any]]:
        """The agent's tag entries for the served tags (float32 ABCD input registers)."""
        return [
            {"name": t, "table": "input", "address": 2 * i, "type": "float32", "word_order": "ABCD",
             "engineering_unit": unit, "range": list(value_range)}
            for i, t in enumerate(self.tags)
        ]

    async def _play(self, start_mono: float) -> None:
        for k, row in enumerate(self.values):
            delay = start_mono + k * self.interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.server.set_registers(1, 0, _words(row), table="input")
            self.row_times.append(datetime.now(UTC))

    def play(self, start_mono: float | None = None) -> None:
        """Start serving rows, the first at ``start_mono`` (``time.monotonic()``; default now)."""
        if self._task is not None:
            raise RuntimeError("already playing")
        now = time.monotonic()
        start = now if start_mono is None else start_mono
        self.start_utc = datetime.now(UTC) + timedelta(seconds=start - now)
        self._task = asyncio.create_task(self._play(start))

    async def wait_done(self, timeout_s: float) -> None:
        assert self._task is not None, "not playing"
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(self._task)

    async def __aenter__(self) -> Self:
        await self.server.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.server.stop()
