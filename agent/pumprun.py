"""Pump run state for the pump-energy rule: running feedback, run hours, start/stop limits.

One :class:`PumpRunTracker` per agent with a recommender. Every cycle :meth:`observe` reads,
per recommender pump, whether it runs (the running feedback of its ``guard.start_stop``
target, else its speed tag above zero) and its run hours (``recommender.pumps[].run_hours_tag``
when GOOD, else the agent's own count: the monotonic time between two observations that both
saw it running, a gap longer than :data:`MAX_GAP_S` not counted). Where the pump has a
start/stop target it also says what the target's limits allow now (minimum run and rest time,
starts per hour, from the start history the start/stop unit reads from the audit log): the rule
plans with it, the Guard enforces the same limits again on every request.

The agent's own counts are kept in ``state_dir/run_hours.json`` (temporary file, fsync, rename,
fsync of the directory) every ``save_every_s`` and at shutdown, so they survive restarts; a
file that cannot be read starts the counts at zero with a log line. Not thread-safe: call from
the event loop (the write itself runs in a thread, in the background: the cycle never waits
for it; at shutdown :meth:`PumpRunTracker.persist` with ``force`` waits).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.pipeline.guard import StartStopTarget, starts_in_last_hour
from agent.pipeline.policy import PumpRunState, RecommenderConfig
from agent.types import Sample

__all__ = ["MAX_GAP_S", "RUN_HOURS_FILE", "PumpRunTracker", "StartHistory", "write_json_atomic"]

log = structlog.get_logger("agent.pumprun")

RUN_HOURS_FILE = "run_hours.json"
MAX_GAP_S = 30.0
"""Two observations further apart than this add nothing (the agent was not watching)."""

StartHistory = tuple[tuple[float, ...], float | None, float | None]
"""(starts of the last hour, last start, last stop) in UTC seconds (StartStopUnit.history)."""


class _Table(Protocol):
    def get(self, tag: str, now: float | None = None) -> Sample: ...


def write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``document`` (temporary file, fsync, rename, fsync of the
    directory). Blocking: run it in a thread. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(json.dumps(document, indent=1, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    try:
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PumpRunTracker:
    """See the module docstring. ``state_dir`` None keeps the counts in memory only."""

    def __init__(
        self,
        rc: RecommenderConfig,
        targets: Sequence[StartStopTarget],
        state_dir: Path | None,
        *,
        save_every_s: float = 60.0,
    ) -> None:
        self.rc = rc
        self._targets = {t.tag: t for t in targets}
        self.path = state_dir / RUN_HOURS_FILE if state_dir is not None else None
        self.save_every_s = save_every_s
        self.hours: dict[str, float] = dict.fromkeys((p.asset for p in rc.pumps), 0.0)
        self._seen: dict[str, float] = {}  # asset → mono of the last observation that saw it run
        self._dirty = False
        self._next_save = -math.inf
        self._writing: asyncio.Task[None] | None = None
        self._load()

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
            hours = doc["hours"]
            for asset in self.hours:
                v = hours.get(asset, 0.0)
                if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0:
                    self.hours[asset] = float(v)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("run hours not restored: counting from zero", file=str(self.path), error=str(exc))

    def observe(
        self,
        table: _Table,
        now: float,
        now_utc_s: float,
        history: Callable[[str], StartHistory | None],
    ) -> dict[str, PumpRunState]:
        """Count this cycle and return the run state of every pump with a start/stop target
        (``history(request_tag)``: its start history, None when unknown)."""
        out: dict[str, PumpRunState] = {}
        for p in self.rc.pumps:
            target = self._targets.get(p.start_stop_tag) if p.start_stop_tag is not None else None
            running = self._running(table, now, p.speed_tag, target)
            hours = self._count(p.asset, running, now)
            if p.run_hours_tag is not None:
                s = table.get(p.run_hours_tag, now)
                v = s.as_float() if s.quality.is_good else math.nan
                hours = v if math.isfinite(v) else hours
            if target is None:
                continue
            h = history(target.tag)
            out[p.asset] = _limits(running, hours, target, h, now_utc_s)
        return out

    @staticmethod
    def _running(
        table: _Table, now: float, speed_tag: str | None, target: StartStopTarget | None
    ) -> bool | None:
        if target is not None:
            s = table.get(target.running_tag, now)
            if s.quality.is_good and isinstance(s.value, (bool, int, float)):
                return bool(s.value)
            return None
        if speed_tag is not None:
            s = table.get(speed_tag, now)
            return s.as_float() > 0.0 if s.quality.is_good else None
        return None

    def _count(self, asset: str, running: bool | None, now: float) -> float:
        last = self._seen.pop(asset, None)
        if running:
            if last is not None and 0.0 <= now - last <= MAX_GAP_S:
                self.hours[asset] += (now - last) / 3600.0
                self._dirty = True
            self._seen[asset] = now
        return self.hours[asset]

    async def persist(self, now: float, *, force: bool = False) -> None:
        """Write the counts when due (every ``save_every_s``) or ``force``; never raises for
        an I/O error (logged; the counts stay in memory and are written again when next due).

        A due write runs in the background (a task, the file in a thread): the cycle that
        found it due does not wait for the disk (two fsyncs, milliseconds), one write at a
        time (one due while the last still runs is made in a later cycle). ``force`` (at
        shutdown) waits for a write in flight, then writes and waits for that too."""
        if self.path is None:
            return
        if force:
            await self.flush()
        elif self._writing is not None or not self._dirty or now < self._next_save:
            return
        self._next_save = now + self.save_every_s
        doc = {"version": 1, "hours": dict(self.hours)}
        self._dirty = False  # counts added from now on make it dirty again
        if force:
            await self._write(self.path, doc)
            return
        task = asyncio.create_task(self._write(self.path, doc), name="save run hours")
        self._writing = task
        task.add_done_callback(self._written)

    async def flush(self) -> None:
        """Wait for the write in flight, if any (it is not cancelled with the caller)."""
        if self._writing is not None:
            await asyncio.wait([self._writing])

    async def _write(self, path: Path, doc: Mapping[str, Any]) -> None:
        try:
            await asyncio.to_thread(write_json_atomic, path, doc)
        except OSError as exc:
            self._dirty = True
            log.warning("run hours not saved", file=str(path), error=str(exc))

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing = None
        if not task.cancelled() and (exc := task.exception()) is not None:  # not an OSError: a bug
            self._dirty = True
            log.error("run hours not saved", file=str(self.path), error=repr(exc))


def _limits(
    running: bool | None, hours: float, t: StartStopTarget, h: StartHistory | None, now_utc_s: float
) -> PumpRunState:
    """What the target's limits allow now; an unknown history allows no stop (its run time is
    unknown) and no start beyond what the Guard would allow."""
    if h is None:
        return PumpRunState(running, hours, may_start=False, may_stop=False, starts_left=0)
    starts, started, stopped = h
    n = starts_in_last_hour(starts, now_utc_s)
    rested = stopped is None or now_utc_s - stopped >= t.min_stop_s
    ran = started is not None and now_utc_s - started >= t.min_run_s
    left = max(t.max_starts_per_hour - n, 0)
    return PumpRunState(running, hours, may_start=rested and left > 0, may_stop=ran, starts_left=left)
