"""The running agent's watch on the model store: new ``current``, ``incoming/``, trials.

:class:`StoreWatcher` runs as one task of the agent. Every ``models_store.poll_s`` it:

* installs the bundles members of the service group dropped into ``incoming/`` (when the
  store is writable by the agent; the self-test runs in a subprocess, the install in a
  thread: the cycle goes on), and removes each entry whatever the outcome (audited);
* reads each store model's ``current`` link and asks the agent for a model reload when it
  changed (the agent swaps the bundle at the start of its next cycle, between cycles; its
  windows carry over when the input contract is unchanged) — SIGHUP does the same at once;
* starts a shadow trial when a store model has one: the trial version scored beside the
  live one, every sample period, on a copy of the live windows, for N periods; then
  :func:`agent.modelstore.trial.decide` promotes it (switch, reload) or rolls it back, with
  an audit row and the outcome on ``hmi.model_status_tag``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.errors import AgentError, DriverError, ModelError
from agent.modelstore.manifest import Manifest
from agent.modelstore.store import Store
from agent.modelstore.trial import MODEL_STATUS_CODES, TrialPolicy, TrialStats, decide
from agent.types import utcnow

__all__ = ["StoreWatcher", "WatchedAgent", "same_input_contract"]

log = structlog.get_logger("agent.modelstore")


class WatchedAgent(Protocol):
    """What the watcher needs of the agent (``agent.runtime.Agent`` provides it)."""

    config: Any
    drivers: dict[str, Any]
    table: Any

    @property
    def models(self) -> Sequence[Any]: ...  # runners, each with .binding, .bundle, .windows

    @property
    def clock(self) -> Callable[[], float]: ...

    def request_model_reload(self) -> None: ...


def same_input_contract(a: Manifest, b: Manifest) -> bool:
    """True when windows built for ``a`` serve ``b`` as they are: same window, same roles with
    the same units and ranges (normalisation is applied at scoring, by the model's own)."""
    key = [(r.role, r.unit, r.range) for r in a.inputs]
    return a.window == b.window and key == [(r.role, r.unit, r.range) for r in b.inputs]


@dataclass
class _Snapshot:
    current: str | None
    trial: str | None


class StoreWatcher:
    """Polls the store for one agent (see the module docstring). ``run()`` until cancelled."""

    def __init__(
        self,
        agent: WatchedAgent,
        store: Store,
        *,
        trusted_keys: Sequence[Path],
        allow_unsigned: bool,
        check: Callable[[Manifest], None] | None,
        poll_s: float,
        policy: TrialPolicy | None = None,
    ) -> None:
        self.agent = agent
        self.store = store
        self.trusted_keys = list(trusted_keys)
        self.allow_unsigned = allow_unsigned
        self.check = check
        self.poll_s = poll_s
        self.policy = policy or TrialPolicy()
        self.names = sorted({m.store for m in agent.config.models if m.store is not None})
        self.trials: dict[str, str] = {}  # model → version on trial here
        self.outcomes: list[str] = []
        self.status_code = MODEL_STATUS_CODES["none"]

    def _snapshot(self, name: str) -> _Snapshot:
        try:
            st = self.store.state(name)
            return _Snapshot(self.store.current(name), str(st.trial["version"]) if st.trial else None)
        except ModelError:
            return _Snapshot(None, None)

    async def run(self) -> None:
        """Poll until cancelled (the agent's task group cancels it at shutdown)."""
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.store.ensure_layout)
        last = {n: await asyncio.to_thread(self._snapshot, n) for n in self.names}
        async with asyncio.TaskGroup() as tg:
            await self._write_status()
            while True:
                await asyncio.sleep(self.poll_s)
                try:
                    await self._incoming()
                except OSError as exc:  # an unreadable incoming/ must not stop the agent
                    log.error("model store: incoming/ not readable", error=str(exc))
                for name in self.names:
                    snap = await asyncio.to_thread(self._snapshot, name)
                    if snap.current != last[name].current:
                        log.warning("model store: new current", model=name, version=snap.current)
                        self.agent.request_model_reload()
                    if snap.trial is not None and name not in self.trials:
                        self.trials[name] = snap.trial
                        tg.create_task(self._trial(name, snap.trial), name=f"trial {name}")
                    last[name] = snap

    async def _incoming(self) -> None:
        if not os.access(self.store.root, os.W_OK):
            return
        for entry in await asyncio.to_thread(self.store.incoming):
            try:
                res = await asyncio.to_thread(
                    self.store.install,
                    entry,
                    trusted_keys=self.trusted_keys,
                    allow_unsigned=self.allow_unsigned,
                    check=self.check,
                    trial=self.store.trial_of(entry),
                    user=f"uid {entry.lstat().st_uid}",
                )
                log.warning("model store: installed from incoming", model=res.name, version=res.version)
            except (ModelError, OSError) as exc:
                log.error("model store: incoming bundle refused", path=str(entry), error=str(exc))
            finally:
                with contextlib.suppress(OSError):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()

    async def _write_status(self) -> None:
        tag = self.agent.config.hmi.model_status_tag
        if tag is None:
            return
        dev, _ = self.agent.config.tag(tag)
        try:
            await self.agent.drivers[dev.name].write_many([(tag, self.status_code)], purpose="status")
        except DriverError as exc:
            log.error("model status not written", tag=tag, error=str(exc))

    async def _trial(self, name: str, version: str) -> None:
        live = next(m for m in self.agent.models if m.binding.store == name)
        stats = TrialStats()

        def load() -> Any:
            return self.store.load(
                name,
                version=version,
                threads=live.binding.threads,
                trusted_keys=self.trusted_keys,
                allow_unsigned=self.allow_unsigned,
            )

        try:
            bundle = await asyncio.to_thread(load)
        except AgentError as exc:
            await self._end(name, False, f"cannot load v{version}: {exc}")
            return
        from agent.pipeline.features import FeatureWindows
        from agent.pipeline.scorer import Scorer

        manifest = bundle.manifest
        if same_input_contract(live.bundle.manifest, manifest):
            windows = copy.deepcopy(live.windows)
            windows.manifest = manifest  # frames named for the trial (a live window may be shared)
        else:
            windows = FeatureWindows(manifest, live.binding)
        scorer = Scorer(bundle)
        trial = self.store.state(name).trial
        periods = int(trial["periods"]) if trial else 0
        thresholds = {
            o.name: (o.thresholds["alarm"], o.false_alarm_rate)
            for o in manifest.outputs
            if "alarm" in o.thresholds
        }
        self.status_code = MODEL_STATUS_CODES["trial_running"]
        await self._write_status()
        log.warning("model trial started", model=name, version=version, periods=periods)
        period = manifest.window.sample_period_s
        try:
            await self._shadow(windows, scorer, stats, thresholds, periods, period)
        except (AgentError, ValueError) as exc:  # the trial fails; the live model is untouched
            await scorer.drain()
            await self._end(name, False, f"shadow run failed: {exc}")
            return
        decision = decide(stats, period, self.policy)
        await self._end(name, decision.promote, decision.reason)

    async def _shadow(
        self,
        windows: Any,
        scorer: Any,
        stats: TrialStats,
        thresholds: dict[str, tuple[float, float | None]],
        periods: int,
        period: float,
    ) -> None:
        """Score the trial version every ``period`` for ``periods`` ticks into ``stats``."""
        start = self.agent.clock()
        for k in range(1, periods + 1):
            delay = start + k * period - self.agent.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            stats.periods += 1
            frame = windows.tick(self.agent.table, self.agent.clock(), utcnow())
            if frame is None:
                continue
            try:
                scores = await scorer.score(frame)
            except ModelError:
                stats.errors += 1
                continue
            if scores:
                stats.latencies_s.append(scores[0].latency_s)  # one call scores every asset
                stats.add_scores([s.outputs for s in scores], thresholds)
        await scorer.drain()

    async def _end(self, name: str, promote: bool, reason: str) -> None:
        try:
            line = await asyncio.to_thread(self.store.end_trial, name, promote, reason)
        except ModelError as exc:
            line = f"{name}: trial not ended: {exc}"
        self.outcomes.append(line)
        (log.warning if promote else log.error)("model trial ended", result=line)
        self.status_code = MODEL_STATUS_CODES["promoted" if promote else "rolled_back"]
        await self._write_status()
        self.trials.pop(name, None)
        if promote:
            self.agent.request_model_reload()
