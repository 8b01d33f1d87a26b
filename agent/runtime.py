"""The Agent: builds the pipeline sink-first and runs it in one structured-concurrency tree.

::

    sources (RunningSource per device) ─▶ TagTable (and the models' mean accumulators)
    models (agent.inference), each at its own sample period: FeatureWindows ─▶ Scorer (off the loop)
    every cycle: the models' newest scores ─▶ AlarmEngine
        HmiWriter (agent.hmi): display blocks, heartbeat, status word
        pump-energy rule ─▶ WriteBack (agent.writeback): Guard ─▶ audit ─▶ send ─▶ verify
    beside them: the sd_notify task (agent.ops.sdnotify: READY, WATCHDOG while every loop makes
    progress, STATUS), the status socket (agent.ops.status) and the Prometheus endpoint
    (agent.ops.metrics), both reading the units' own state when asked

``Agent`` orchestrates; each job is a unit of its own with its own tests: the HMI writer, the
write-back unit, the model runners (agent.inference: windows, scorer, each model at its own
period), the alarm engine, the watchdog, status and metrics, and what a config reload may
change live (agent.ops.reload).

READY is sent once config, models and the audit log are loaded and the status socket is up,
never after a first good poll: a PLC that is down at boot must not become a restart loop.
SIGHUP (:meth:`Agent.request_reload`) reloads the config, validated first and applied only when
everything that changed can change live (otherwise refused as a whole, naming what needs a
restart), then the model bundles installed in place; every reload is logged and audited.

Start-up builds everything that can fail on bad input first (models, bindings, audit), so a
bad bundle or config stops the agent before it touches a PLC. The pollers, the models'
scheduler and the cycle loop run in one task group: a poller that dies is a fault of the
agent, not something to run on without (the heartbeat and the watchdog stop with the cycle
loop, so the PLC falls back and systemd restarts the service; the reason goes to the log and
the audit, and ``run`` raises).
Shutdown follows ARCHITECTURE.md, each step with a deadline: stop sources → drain scorers → the
write-back unit refuses new writes (stopping) and the final HOLD is audited → the final status
word → flush and close the audit → close sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.config import AgentSection, Config, load_config
from agent.drivers import make_driver
from agent.errors import AgentError, AuditError, ConfigError, ModelError
from agent.hmi import HmiWriter, block_values, recommender_code, with_sources
from agent.inference import LoadContext, ModelRunner, Models
from agent.modelstore.station import StationManifest
from agent.modelstore.store import Store
from agent.ops import sdnotify
from agent.ops.audit import AuditLog
from agent.ops.host import boot_id, release_free_heap
from agent.ops.ownership import write_ownership
from agent.ops.reload import config_diff, restart_needed
from agent.ops.sdnotify import Notifier, Progress
from agent.ops.status import (
    Certificates,
    DeviceStats,
    StatusServer,
    socket_path,
    status_document,
    summary_line,
)
from agent.pipeline.alarms import AlarmEngine, HmiBlock
from agent.pipeline.detectors import Detector, make_detector
from agent.pipeline.guard import Guard, GuardDecision
from agent.pipeline.policy import PumpEnergyRule, StationState
from agent.pipeline.sources import asset_values, input_quality, run_detectors, watched_inputs
from agent.pumprun import PumpRunTracker
from agent.running import RunningSource, SampleSink
from agent.tagtable import TagTable
from agent.types import Alarm, Quality, Recommendation, Sample, Score, Value, utcnow
from agent.writeback import StartStopUnit, WriteBack, WriteInputs, grid_for

if TYPE_CHECKING:  # onnxruntime (~28 MB) only when a model is configured, prometheus-client
    # (~10 MB) only when the metrics endpoint is; the recorder, the tariff planner and the model
    # store's watcher only when configured (each a module or three of code a gateway keeps)
    from agent.energyplan import PlanStatus, TariffPlanner
    from agent.modelstore.watch import StoreWatcher
    from agent.ops.metrics import MetricsServer
    from agent.record import Recorder

__all__ = ["STATUS_BITS", "Agent", "AgentView", "freeze_startup_objects"]

log = structlog.get_logger("agent.runtime")

# The agent status word on the HMI (documented in README.md).
STATUS_BITS = {
    "running": 0,
    "degraded": 1,  # a device lost, a model unhealthy, or the audit unavailable
    "models_healthy": 2,
    "writes_enabled": 3,
    "auto": 4,
    "holding": 5,  # a setpoint target is in HOLD
    "audit_ok": 6,
    "stopping": 7,
}
_DEVICE_LOST_BIT0 = 8  # bits 8..15: device i (config order) lost
_NUMBER = (bool, int, float)  # built once: an ``int | float`` union is built on every call
_STOP_DEADLINE_S = 5.0


def freeze_startup_objects() -> None:
    """Move everything start-up built (modules, config, models: ~100k objects) out of the
    garbage collector's reach (:func:`gc.freeze`), after one collection of start-up garbage.

    Why: every poll makes a sample per tag, and those that survive into the oldest generation
    trigger a full collection every few dozen polls, which walked every start-up object each
    time (about 0.6 ms per 1,000-tag poll, in pauses of tens of ms; bench/REPORT.md). Frozen,
    they are never walked again; they live as long as the agent anyway (:meth:`Agent.run`
    unfreezes them when it returns). Then the C heap's free pages go back to the kernel
    (:func:`~agent.ops.host.release_free_heap`: about 0.5 MB of RSS with the demo's bundles)."""
    gc.collect()
    gc.freeze()
    release_free_heap()


@dataclass
class AgentView:
    """What the console and `status` show; refreshed every cycle (read-only for them)."""

    cycles: int = 0
    skipped_cycles: int = 0  # ticks skipped because a cycle overran its interval
    last_cycle_s: float = 0.0
    first_cycle_s: float | None = None
    tags: Mapping[str, Sample] = field(default_factory=dict)  # the table at the cycle's end
    scores: dict[str, dict[str, Score]] = field(default_factory=dict)
    hmi: dict[str, HmiBlock] = field(default_factory=dict)
    alarms: list[Alarm] = field(default_factory=list)  # recent transitions, newest last
    recommendations: dict[str, Recommendation] = field(default_factory=dict)
    decisions: dict[str, GuardDecision] = field(default_factory=dict)
    writes: int = 0
    verify_failures: int = 0
    status_word: int = 0
    devices_lost: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. an OPC UA certificate expiring soon
    plan: PlanStatus | None = None  # the tariff plan, when recommender.tariff is set
    recommender: str = ""  # the rule's last plan: reason codes and saving (PumpEnergyRule.summary)


class Agent:
    """The whole agent for one config. ``await agent.run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | Path = "config",
        clock: Callable[[], float] = time.monotonic,
        apply_logging: Callable[[AgentSection], None] | None = None,
    ) -> None:
        """``config_path`` is the file a reload reads again (and the base of relative bundle
        paths); ``apply_logging`` applies a reloaded log level and format (the process's
        logging is its owner's: `edge-agent run` passes it unless ``--log-level`` was given)."""
        self.config = config
        self.config_path = str(config_path)
        self._base = Path(config_path).resolve().parent
        self._clock = clock
        self._apply_logging = apply_logging
        self.started_mono, self.started_utc = clock(), utcnow()
        self.view = AgentView()
        self.stopping = False
        self.drivers: dict[str, Any] = {d.name: make_driver(d) for d in config.devices}
        self._device_of: dict[str, str] = {}
        units: dict[str, str] = {}  # tag → engineering unit, for model bindings
        periods: dict[str, float] = {}  # tag → refresh period (s), for model bindings
        limits: dict[str, float] = {}
        for dev in config.devices:
            for tag in dev.tags:
                self._device_of[tag.name] = dev.name
                units[tag.name] = tag.engineering_unit
                periods[tag.name] = dev.poll_interval_ms / 1000
                limits[tag.name] = dev.stale_limit_s(tag)  # type: ignore[arg-type]
        self.table = TagTable(limits, clock=clock)
        self.model_store = Store(
            self._resolve(config.models_store.dir), keep=config.models_store.keep, audit=self._store_audit
        )
        self._models_reload_requested = False
        context = LoadContext(
            self._resolve, config.models_trust, units, periods, self.config_path, config.agent.state_dir,
            store=self.model_store,
        )  # fmt: skip
        self.models = Models(context)
        self.models.replace(self.models.load(b) for b in config.models)
        self._fresh: dict[str, dict[str, Score]] = {}  # the models' scores new this cycle
        # this cycle's samples of the tags the alarms read, by asset (read once, at one time,
        # for the alarms and the HMI block)
        self._samples: dict[str, dict[str, Sample]] = {}
        # by asset: the tags each bad-PV alarm watches, and every tag the alarms read; for the
        # config they were made from
        self._alarm_inputs: tuple[Config | None, dict[str, _AlarmInputs]] = (None, {})
        self.alarms = AlarmEngine(config.alarms, [a.name for a in config.assets])
        self.detectors: dict[tuple[str, str], Detector] = {
            (a.name, d.name): make_detector(d.detector) for a in config.assets for d in a.detectors
        }
        self.rule = PumpEnergyRule(config.recommender) if config.recommender is not None else None
        self.audit = AuditLog(config.audit_config())
        self.station: StationManifest | None = None  # the identified station the rule plans on
        if self.rule is not None and self.rule.config.station_bundle is not None:
            try:
                self.station = self._load_station()
                self.rule.use_station(self.station)
                log.info("station loaded", station=self.station.ident)
            except (ModelError, ValueError) as exc:  # the datasheet values stay the fallback
                log.error("station bundle refused; the rule uses the datasheet values", error=str(exc))
        self.planner = self._build_planner()  # plans on the rule's curves (identified or datasheet)
        self.hmi = HmiWriter(config, self.drivers, self._device_of, clock=clock)
        self.writeback = self._build_writeback() if config.guard is not None else None
        self.start_stop = (
            self._build_start_stop() if config.guard is not None and config.guard.start_stop else None
        )
        self.pump_runs = (
            PumpRunTracker(
                config.recommender,
                config.guard.start_stop if config.guard is not None else [],
                config.agent.state_dir,
            )
            if config.recommender is not None
            else None
        )  # running state and run hours of the pumps, for the rule (agent.pumprun)
        self._state_file = config.agent.state_dir / "alarms.json"
        self._reload_requested = False
        self._source_failure: str | None = None
        self.runners: dict[str, RunningSource] = {}
        self.paced = True
        """False runs the cycles back to back instead of every ``cycle_ms`` (``make soak``)."""
        self.device_stats = {d.name: DeviceStats() for d in config.devices}
        self.certificates = Certificates(config.devices)
        self.progress = Progress(clock)
        self._cycle_beat = self.progress.register("cycle", config.agent.cycle_ms / 1000).beat
        self._models_beat = self.progress.register("models", 1.0).beat
        self.reloads: Counter[str] = Counter()
        self.last_reload: dict[str, Any] | None = None
        self.status_server: StatusServer | None = None
        self.store_watcher: StoreWatcher | None = None
        self.metrics_server: MetricsServer | None = None
        self.recorder: Recorder | None = self._build_recorder()
        """Records tags from the polls (the ``record`` section; agent.record), or None."""

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock every duration of this agent is measured on."""
        return self._clock

    @property
    def guard(self) -> Guard | None:
        """The Guard (inside the write-back unit), or None when the config has no guard."""
        return self.writeback.guard if self.writeback is not None else None

    def _build_writeback(self) -> WriteBack:
        cfg = self.config.guard
        assert cfg is not None
        grids, poll_s, sinks = {}, {}, {}
        for t in cfg.targets:
            for tag in (t.tag, t.recommendation_tag):
                if tag is None:
                    continue
                dev, tag_cfg = self.config.tag(tag)
                grids[tag] = grid_for(tag_cfg)
                poll_s[tag] = dev.poll_interval_ms / 1000
                sinks[tag] = self.drivers[dev.name]
        return WriteBack(
            Guard(cfg, grids),
            sinks,
            self.table,
            self.audit,
            grids=grids,
            poll_s=poll_s,
            clock=self._clock,
            boot_id=boot_id(),
        )

    def _build_recorder(self) -> Recorder | None:
        rc = self.config.record
        if rc is None or not rc.enabled:
            return None
        from agent.record import Recorder, default_period, tags_to_record

        tags = tags_to_record(self.config, rc.tags, rc.model)
        period = rc.period_s
        if period is None:
            model = next((m for m in self.models if m.binding.name == rc.model), None)
            period = default_period(tags, model.bundle.manifest.window.sample_period_s if model else None)
        return Recorder(rc.directory(self.config.agent.state_dir), tags, period, rc, clock=self._clock)

    def _build_start_stop(self) -> StartStopUnit:
        cfg = self.config.guard
        assert cfg is not None
        sinks = {t.tag: self.drivers[self.config.tag(t.tag)[0].name] for t in cfg.start_stop}
        return StartStopUnit(Guard(cfg), sinks, self.audit)

    # ------------------------------------------------------------------ start-up

    def _resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else (self._base / p).resolve()

    def _store_audit(self, action: str, model: str, message: str, detail: Mapping[str, Any]) -> None:
        audit: AuditLog | None = getattr(self, "audit", None)  # None while __init__ loads models
        log.warning("model store", action=action, model=model, message=message)
        if audit is not None:
            with contextlib.suppress(AuditError):
                audit.record_model(action, model, message, user=detail.get("user"), extra=detail)

    def request_model_reload(self) -> None:
        """Ask for :meth:`reload_models` at the start of the next cycle (the store watcher
        calls it when a store model's ``current`` changed)."""
        self._models_reload_requested = True

    def _store_watcher(self) -> StoreWatcher:
        from agent.modelstore.configcheck import binding_checker
        from agent.modelstore.watch import StoreWatcher

        trust = self.config.models_trust
        return StoreWatcher(
            self,
            self.model_store,
            trusted_keys=[self._resolve(k) for k in trust.public_keys],
            allow_unsigned=trust.allow_unsigned,
            check=binding_checker(self.config, self.config_path),
            poll_s=self.config.models_store.poll_s,
        )

    def _build_planner(self) -> TariffPlanner | None:
        rc = self.config.recommender
        if rc is None or rc.tariff is None or self.rule is None:
            return None
        from agent.energyplan import TariffPlanner, load_forecast_bundle

        trust = self.config.models_trust
        bundle = load_forecast_bundle(
            rc, self._resolve, [self._resolve(k) for k in trust.public_keys], trust.allow_unsigned
        )
        return TariffPlanner(rc, bundle, self.rule, self.config.agent.state_dir)

    def _load_station(self) -> StationManifest:
        """The recommender bundle, checked against ``models_trust`` like a model bundle."""
        from agent.modelstore.station import load_station_bundle

        assert self.config.recommender is not None and self.config.recommender.station_bundle is not None
        trust = self.config.models_trust
        return load_station_bundle(
            self._resolve(self.config.recommender.station_bundle),
            [self._resolve(k) for k in trust.public_keys],
            allow_unsigned=trust.allow_unsigned,
        )

    async def _reload_station(self) -> list[str]:
        """Load the recommender bundle again; a bad one is refused and the running one stays."""
        if self.rule is None or self.rule.config.station_bundle is None:
            return []
        old = self.station.ident if self.station is not None else "the datasheet values"
        try:
            new = await asyncio.to_thread(self._load_station)
            self.rule.use_station(new)
        except (ModelError, ValueError) as exc:
            log.error("station bundle refused; the running one stays", error=str(exc), running=old)
            with contextlib.suppress(AuditError):
                await asyncio.to_thread(
                    self.audit.record_event, "station_refused", f"station: {exc}; {old} stays"
                )
            return [f"station: refused, {old} stays: {exc}"]
        if self.station is not None and new == self.station:
            return [f"station: unchanged ({new.ident})"]
        self.station = new
        with contextlib.suppress(AuditError):
            await asyncio.to_thread(
                self.audit.record_event, "station_installed", f"{new.ident} replaces {old}"
            )
        return [f"station: installed {new.ident} (was {old})"]

    async def _restore_alarms(self) -> None:
        try:
            state = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("alarm state not restored", file=str(self._state_file), error=str(exc))
            return
        try:
            for a in self.alarms.restore(state, self._clock(), utcnow()):
                await self._alarm_transition(a)
        except AgentError as exc:
            log.warning("alarm state not restored", file=str(self._state_file), error=str(exc))

    def _save_alarms(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.alarms.state_dict()))
            tmp.replace(self._state_file)
        except OSError as exc:
            log.warning("alarm state not saved", file=str(self._state_file), error=str(exc))

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order. Raises on start-up errors, and
        :class:`AgentError` when a poller died (after the orderly shutdown)."""
        self.config.agent.state_dir.mkdir(parents=True, exist_ok=True)
        self.audit.open()
        if self.writeback is not None:
            self.writeback.restore_credit()
        self._write_ownership()
        await self._restore_alarms()
        self.audit.record_event(
            "start", f"agent {self.config.agent.name} starting", extra={"config": self.config_path}
        )
        async with contextlib.AsyncExitStack() as stack:
            for drv in self.drivers.values():
                await stack.enter_async_context(drv)
            stack.push_async_callback(self._close_audit)
            await self._serve(stack)
            freeze_startup_objects()
            # Config, models and audit are loaded: ready, whether or not any PLC answers.
            sdnotify.notify("READY=1", f"STATUS=started, polling {len(self.drivers)} devices")
            try:
                async with asyncio.TaskGroup() as tg:
                    self.runners = {}
                    for dev in self.config.devices:
                        drv, interval = self.drivers[dev.name], dev.poll_interval_ms / 1000
                        runner = RunningSource(drv, interval, self.table.update)
                        runner.sink = self._poll_sink(dev.name, runner)
                        self.runners[dev.name] = runner
                        tg.create_task(self._supervised(runner), name=f"poll {dev.name}")
                    tg.create_task(self._main(stop), name="cycle")
                    tg.create_task(self.models.run(self.table, self._clock, self._models_beat), name="models")
                    if self.recorder is not None:  # never raises: an error stops recording only
                        tg.create_task(self.recorder.run(), name="record")
                    if any(m.store is not None for m in self.config.models):
                        self.store_watcher = self._store_watcher()
                        tg.create_task(self.store_watcher.run(), name="model store")
                    if sdnotify.enabled():
                        notifier = Notifier(
                            self.progress,
                            lambda: summary_line(self),
                            watchdog_s=sdnotify.watchdog_interval_s(),
                            clock=self._clock,
                        )
                        tg.create_task(notifier.run(), name="sd_notify")
            except* _Stopped:
                pass
            except* Exception as group:
                # A poller died (or the cycle loop failed): the task group has already stopped
                # the cycle loop, so the heartbeat and the watchdog are stopping with it.
                self._source_failure = "; ".join(str(e) for e in group.exceptions)
                log.critical("agent fault: stopping so that the PLC falls back", error=self._source_failure)
                with contextlib.suppress(AuditError):
                    self.audit.record_event("fault", f"agent fault: {self._source_failure}")
            finally:
                try:
                    await self._shutdown()
                finally:
                    gc.unfreeze()  # collectable again once the agent is gone (a process that runs on)
        if self._source_failure is not None:
            raise AgentError(f"agent stopped on a fault: {self._source_failure}")

    async def _serve(self, stack: contextlib.AsyncExitStack) -> None:
        """The status socket and (when configured) the metrics endpoint, closed with ``stack``.
        Either failing is logged and audited; the agent runs on without it (control does not
        depend on being watched)."""
        path = socket_path(self.config.agent.state_dir)
        try:
            self.status_server = await stack.enter_async_context(
                StatusServer(path, lambda: status_document(self))
            )
        except AgentError as exc:
            await self._serve_failed("status socket", exc)
        metrics = self.config.agent.metrics
        if metrics is None:
            return
        from agent.ops.metrics import MetricsServer, make_registry

        try:
            self.metrics_server = await stack.enter_async_context(MetricsServer(metrics, make_registry(self)))
        except AgentError as exc:
            await self._serve_failed("metrics endpoint", exc)

    async def _serve_failed(self, what: str, exc: AgentError) -> None:
        log.error("not served; the agent runs without it", what=what, error=str(exc))
        with contextlib.suppress(AuditError):
            await asyncio.to_thread(self.audit.record_event, "service_failed", f"{what} not served: {exc}")

    def _poll_sink(self, name: str, runner: RunningSource) -> SampleSink:
        """What a poller hands its samples to: the per-device statistics, the poller's
        heartbeat (for the watchdog), the tag table, the models' mean accumulators, then the
        recorder (a dict update)."""
        observe = self.device_stats[name].observe
        beat = self.progress.register(f"poller {name}", runner.interval_s).beat
        update = self.table.update
        models = self.models
        record = self.recorder.observe if self.recorder is not None else None

        def sink(samples: Sequence[Sample]) -> None:
            observe(runner.counters.last_poll_s, samples)
            beat()
            update(samples)
            models.observe(samples)
            if record is not None:
                record(samples)

        return sink

    async def _supervised(self, runner: RunningSource) -> None:
        """A poller's loop; its end, for whatever reason, is a fault of the agent."""
        name = runner.source.name
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise AgentError(f"poller {name} died: {type(exc).__name__}: {exc}") from exc
        raise AgentError(f"poller {name} ended")

    async def _main(self, stop: asyncio.Event) -> None:
        self._cycle_beat()
        await self._first_polls()
        await self._cycle_loop(stop)
        raise _Stopped  # ends the task group: the pollers are cancelled

    async def _shutdown(self) -> None:
        """Drain scorers, refuse and audit the final HOLD, show the final status (bounded)."""
        sdnotify.notify("STOPPING=1", "STATUS=stopping")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_DEADLINE_S):
                await self.models.drain()
        self.stopping = True
        if self.writeback is not None:
            self.writeback.stopping = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_DEADLINE_S):
                if self.writeback is not None:
                    await asyncio.shield(self.writeback.step(self._write_inputs(self._clock())))
                self.view.status_word = self.status_word()
                await asyncio.shield(self.hmi.write_final_status(self.view.status_word))
        self._save_alarms()
        if self.pump_runs is not None:
            await self.pump_runs.persist(self._clock(), force=True)
        self._write_ownership(stopped=True)

    def _write_ownership(self, stopped: bool = False) -> None:
        """Tell `edge-agent write` which setpoints this agent owns, in which mode."""
        cfg = self.config.guard
        owned = {} if stopped or cfg is None else {t.tag: cfg.mode for t in cfg.targets}
        try:
            write_ownership(self.config.agent.state_dir, owned, os.getpid())
        except OSError as exc:
            log.error("ownership file not written", error=str(exc))

    async def _first_polls(self) -> None:
        """Wait (bounded) for every source's first poll, so the first cycle sees data; the
        cycle loop's heartbeat goes on while it waits."""
        await asyncio.sleep(0)  # let the sources start
        limit = max((d.timeout_ms / 1000 for d in self.config.devices), default=0.0) * 4 + 0.5
        deadline = self._clock() + limit
        step = self.config.agent.cycle_ms / 1000
        for runner in self.runners.values():
            while not runner.first_poll_done.is_set() and (left := deadline - self._clock()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, step)):
                        await runner.first_poll_done.wait()
                self._cycle_beat()

    async def _close_audit(self) -> None:
        with contextlib.suppress(AuditError):
            self.audit.record_event("stop", f"agent {self.config.agent.name} stopped")
        self.audit.close()

    async def _cycle_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.agent.cycle_ms / 1000
        start = self._clock()
        k = 0
        stop_wait = asyncio.create_task(stop.wait(), name="stop-wait")
        try:
            while not stop.is_set():
                t0 = self._clock()
                await self.cycle()
                self.view.last_cycle_s = self._clock() - t0
                if self.view.first_cycle_s is None:
                    self.view.first_cycle_s = self._clock() - start
                next_k = max(k + 1, int((self._clock() - start) / interval) + 1)
                self.view.skipped_cycles += next_k - k - 1
                k = next_k
                delay = start + k * interval - self._clock()
                if delay > 0 and self.paced:
                    await asyncio.wait({stop_wait}, timeout=delay)
                elif not self.paced:
                    await asyncio.sleep(0)  # back to back, but the pollers still get their turn
                self._cycle_beat()
        finally:
            stop_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop_wait

    # ------------------------------------------------------------------ reload (SIGHUP)

    def request_reload(self) -> None:
        """Ask for :meth:`reload` at the start of the next cycle (safe from a signal handler:
        `edge-agent run` calls it on SIGHUP)."""
        self._reload_requested = True

    async def reload(self) -> list[str]:
        """Reload the config file, then the model bundles installed in place. One line per
        outcome (the config's first)."""
        lines, fresh = await self.reload_config()
        return lines + await self._reload_bundles(skip=fresh)

    async def reload_config(self) -> tuple[list[str], list[ModelRunner]]:
        """Read and validate the config file again and apply it if everything that changed can
        change live (:mod:`agent.ops.reload`); otherwise refuse it as a whole. Every outcome is
        logged and audited (``config_reloaded`` with the changed field paths, or
        ``config_refused`` with the reason); a refused config leaves the running one as it is.
        Returns the lines and the models loaded for new bindings."""
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            return [await self._refuse_config(str(exc).replace("\n", "; "))], []
        restart = restart_needed(self.config, new)
        if restart:
            return [await self._refuse_config(f"needs a restart: {', '.join(restart)}", restart)], []
        changed = config_diff(self.config, new)
        fresh: list[ModelRunner] = []
        models: list[ModelRunner] = []
        try:
            for b in new.models:
                same = next((m for m in self.models if m.binding == b), None)
                if same is None:
                    same = await asyncio.to_thread(self.models.load, b)
                    fresh.append(same)
                models.append(same)
        except ModelError as exc:
            return [await self._refuse_config(str(exc))], []
        await self._apply_config(new, models)
        message = f"{self.config_path}: " + (f"changed {', '.join(changed)}" if changed else "unchanged")
        log.warning("config reloaded", config=self.config_path, changed=changed)
        self.reloads["applied"] += 1
        self.last_reload = {"utc": utcnow().isoformat(), "result": "applied", "changed": changed}
        with contextlib.suppress(AuditError):
            await asyncio.to_thread(
                self.audit.record_event,
                "config_reloaded",
                message,
                extra={"config": self.config_path, "changed": changed},
            )
        return [f"config: {'applied: ' + ', '.join(changed) if changed else 'unchanged'}"], fresh

    async def _refuse_config(self, reason: str, restart: list[str] | None = None) -> str:
        log.error("config reload refused; the running config stays", config=self.config_path, reason=reason)
        self.reloads["refused"] += 1
        self.last_reload = {"utc": utcnow().isoformat(), "result": "refused", "reason": reason}
        with contextlib.suppress(AuditError):
            await asyncio.to_thread(
                self.audit.record_event,
                "config_refused",
                f"{self.config_path}: {reason}; the running config stays",
                extra={"config": self.config_path, "reason": reason, "needs_restart": restart or []},
            )
        return f"config: refused, the running config stays: {reason}"

    async def _apply_config(self, new: Config, models: list[ModelRunner]) -> None:
        """Swap in a validated config whose changes are all live ones."""
        old, self.config = self.config, new
        if new.alarms != old.alarms:
            # A new engine for the new definitions, carrying every alarm's state over (an alarm
            # whose code or name changed starts normal); pending delays restart.
            engine = AlarmEngine(new.alarms, [a.name for a in new.assets])
            now, now_utc = self._clock(), utcnow()
            restored = engine.restore(self.alarms.state_dict(), now, now_utc)
            self.alarms = engine
            for t in restored:
                await self._alarm_transition(t)
            self._save_alarms()
        self.detectors = {
            (a.name, d.name): self._detector_for(old, a.name, d.name, d.detector)
            for a in new.assets
            for d in a.detectors
        }
        self.hmi.refresh_s = new.hmi.refresh_s
        kept = {id(m) for m in models}
        for m in self.models:
            if id(m) not in kept:
                await m.scorer.drain()
        self.models.replace(models)
        self.models.context = replace(self.models.context, trust=new.models_trust)
        names = {m.binding.name for m in models}
        self.view.scores = {k: v for k, v in self.view.scores.items() if k in names}
        logging_changed = (new.agent.log_level, new.agent.log_format) != (
            old.agent.log_level,
            old.agent.log_format,
        )
        if logging_changed and self._apply_logging is not None:
            self._apply_logging(new.agent)

    def _detector_for(self, old: Config, asset: str, name: str, cfg: Any) -> Detector:
        """The running detector when its settings did not change (it keeps what it learnt)."""
        for a in old.assets:
            if a.name == asset:
                for d in a.detectors:
                    if d.name == name and d.detector == cfg and (asset, name) in self.detectors:
                        return self.detectors[(asset, name)]
        return make_detector(cfg)

    async def reload_models(self) -> list[str]:
        """Load every bundle again from disk, after a new one was installed in its place.

        A bundle that fails any check (hashes, signature, session, binding) is refused with the
        reason, logged and audited, and the model already running keeps serving; an unchanged
        bundle keeps its windows. Returns one line per model.
        """
        return await self._reload_bundles(skip=[])

    async def _reload_bundles(self, skip: Sequence[ModelRunner]) -> list[str]:
        return await self.models.reload_bundles(skip, self._model_event) + await self._reload_station()

    async def _model_event(self, action: str, message: str) -> None:
        with contextlib.suppress(AuditError):
            await asyncio.to_thread(self.audit.record_event, action, message)

    # ------------------------------------------------------------------ one cycle

    async def cycle(self) -> None:
        """One pass of the pipeline over the current tag table."""
        if self._reload_requested:
            self._reload_requested = False
            self._models_reload_requested = False
            for line in await self.reload():
                log.info("reload", result=line)
            self._cycle_beat()
        if self._models_reload_requested:
            self._models_reload_requested = False
            for line in await self.reload_models():
                log.info("model store reload", result=line)
            self._cycle_beat()
        now, now_utc = self._clock(), utcnow()
        # The heartbeat leaves first: its write and read-back are under way while the alarms,
        # the HMI blocks, the recommendations and the Guard's decisions are worked out (the
        # driver serialises their requests), and it is done before any setpoint is written:
        # the PLC applies them only while it is alive.
        beat = asyncio.ensure_future(self.hmi.write_heartbeat(now))
        inputs: WriteInputs | None = None
        try:
            await asyncio.sleep(0)  # its request is sent before the work below
            self._fresh = self.models.take_fresh(now)
            self._samples = {}
            self.view.scores = self.models.latest()
            await self._evaluate_alarms(now, now_utc)
            await self._write_hmi(now)
            self._cycle_beat()
            self.view.status_word = self.status_word()
            if self.writeback is not None:
                inputs = self._write_inputs(now)
            await self.hmi.write_status(self.view.status_word, now)
            if self.writeback is not None and inputs is not None:
                self.view.recommendations = dict(inputs.recommendations)
                self.view.decisions = await self.writeback.step(inputs, after=beat)
            await beat
        finally:
            if not beat.done():  # an error above, or the cycle cancelled: no task left behind
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
            elif not beat.cancelled():
                beat.exception()  # retrieved: an error of its own is raised by ``await beat``
        self._cycle_beat()
        if self.writeback is not None and inputs is not None:
            if self.start_stop is not None:
                self.view.decisions |= await self.start_stop.step(
                    inputs.recommendations,
                    self.table,
                    now,
                    model_healthy=inputs.model_healthy,
                    stopping=self.stopping,
                )
            if self.pump_runs is not None:
                await self.pump_runs.persist(now)
            self.view.writes = sum(self.writeback.outcomes.values()) - self.writeback.outcomes["not_sent"]
            self.view.verify_failures = self.view.writes - self.writeback.outcomes["verified"]
        self.view.cycles += 1
        self.view.tags = self.table.at(now)  # staleness applied when the view reads a tag

    def _asset_values(self, asset_cfg: Any, now: float, *, fresh: bool = True) -> dict[str, float | None]:
        """Values by source name (:func:`agent.pipeline.sources.asset_values`). With ``fresh``,
        model outputs only from a frame scored since the last cycle: between frames (for an
        asset left out of a frame, or from a stale model) the alarm engine gets nothing for them
        and holds, rather than re-reading an old score. The ``values`` tags are read once per
        cycle (the alarms and the HMI block see the same ones)."""
        outputs: dict[str, Mapping[str, float]] = {}
        for m in self.models:
            score = (self._fresh.get(m.name, {}) if fresh else m.latest).get(asset_cfg.name)
            if score is not None:
                outputs[m.binding.name] = score.outputs
        samples = self._samples_of(asset_cfg, now)

        def tag_value(tag: str) -> float | None:
            s = samples[tag]
            return s.as_float() if s.quality.is_good else None

        return asset_values(asset_cfg, outputs, tag_value)

    def _samples_of(self, asset_cfg: Any, now: float) -> dict[str, Sample]:
        """The samples of every tag the asset's alarms read (its ``values`` tags and the bad-PV
        alarms' inputs), taken once per cycle at one ``now`` (:meth:`TagTable.snapshot`)."""
        samples = self._samples.get(asset_cfg.name)
        if samples is None:
            tags = self._alarm_inputs_of(asset_cfg).tags
            samples = self._samples[asset_cfg.name] = self.table.snapshot(tags, now)
        return samples

    def _run_detectors(self, asset_cfg: Any, values: dict[str, float | None]) -> None:
        run_detectors(asset_cfg, self.detectors, values)

    async def _alarm_transition(self, alarm: Alarm) -> None:
        log.warning(
            "alarm" if not alarm.is_alert else "alert",
            asset=alarm.asset,
            name=alarm.name,
            state=str(alarm.state),
            severity=alarm.severity,
            message=alarm.message,
        )
        self.view.alarms = [*self.view.alarms, alarm][-50:]  # recent transitions, for the views
        try:
            await asyncio.to_thread(self.audit.record_alarm, alarm)  # an fsync: off the loop
        except AuditError as exc:
            log.error("audit unavailable: alarm transition not recorded", error=str(exc))

    async def _evaluate_alarms(self, now: float, now_utc: datetime) -> None:
        ack_tag = self.config.alarms.ack_tag
        changed = False
        for a in self.config.assets:
            if ack_tag is not None:
                s = self.table.get(ack_tag, now)
                ack_value = s.value if s.quality.is_good and isinstance(s.value, _NUMBER) else None
                for t in self.alarms.on_ack_tag(a.name, ack_value, now, now_utc):
                    await self._alarm_transition(t)
                    changed = True
            values = self._asset_values(a, now)
            self._run_detectors(a, values)
            reasons: dict[str, str] = {}
            if watched := self._alarm_inputs_of(a).watched:  # bad-PV alarms
                samples = self._samples_of(a, now)
                bad, reasons = input_quality(watched, _quality_in(samples))
                values.update(bad)
            for t in self.alarms.evaluate(a.name, values, now, now_utc, reasons):
                await self._alarm_transition(t)
                changed = True
        if changed:
            self._save_alarms()

    def _alarm_inputs_of(self, asset_cfg: Any) -> _AlarmInputs:
        """What the asset's alarms read, made once per config (a reload makes it anew)."""
        made_for, by_asset = self._alarm_inputs
        if made_for is not self.config:
            c = self.config
            by_asset = {}
            for a in c.assets:
                watched = watched_inputs(c.alarms, a, c.models)
                tags = (*a.values.values(), *(t for ts in watched.values() for t in ts))
                by_asset[a.name] = _AlarmInputs(watched, tuple(dict.fromkeys(tags)))
            self._alarm_inputs = (c, by_asset)
        return by_asset[asset_cfg.name]

    async def _write_hmi(self, now: float) -> None:
        blocks: dict[str, dict[str, Value]] = {}
        for a in self.config.assets:
            shown = self._asset_values(a, now, fresh=False)  # the latest score, for display
            block = with_sources(self.alarms.hmi_block(a.name), a, shown)
            self.view.hmi[a.name] = block
            blocks[a.name] = block_values(block, a, shown, self._recommender_code(a.name))
        await self.hmi.write_blocks(blocks, now)

    def _recommender_code(self, asset: str) -> int | None:
        """The rule's last reason code for ``asset`` as the HMI shows it (None: not a pump)."""
        if self.rule is None or (p := self.rule.pump(asset)) is None:
            return None
        d = self.view.decisions.get(p.target)
        return recommender_code(self.rule.code(asset), d.decision if d is not None else None)

    def _severity_by_asset(self) -> dict[str, int]:
        return {name: block.highest_severity for name, block in self.view.hmi.items()}

    def _write_inputs(self, now: float) -> WriteInputs:
        """This cycle's recommendations and what they were made from."""
        recs: dict[str, Recommendation] = {}
        qualities: dict[str, Quality] = {}
        inputs_mono: float | None = None
        if self.rule is not None:
            rc = self.rule.config
            level, demand = self.table.get(rc.level_tag, now), self.table.get(rc.demand_tag, now)
            qualities = {rc.level_tag: level.quality, rc.demand_tag: demand.quality}
            good = level.quality.is_good and demand.quality.is_good
            inputs_mono = min(level.mono, demand.mono)
            suction: dict[str, tuple[float, float]] = {}
            for p in rc.pumps:
                if p.suction_pressure_tag is not None and p.flow_tag is not None:
                    ps, q = self.table.get(p.suction_pressure_tag, now), self.table.get(p.flow_tag, now)
                    if ps.quality.is_good and q.quality.is_good:
                        suction[p.asset] = (ps.as_float(), q.as_float())
            histories = self.start_stop.histories if self.start_stop is not None else {}
            pumps = (
                self.pump_runs.observe(self.table, now, utcnow().timestamp(), histories.get)
                if self.pump_runs is not None
                else {}
            )
            state = StationState(
                level_m=level.as_float() if good else None,
                demand_m3h=demand.as_float() if good else None,
                severity=self._severity_by_asset(),
                inputs_good=good,
                suction=suction,
                pumps=pumps,
            )
            planned = self._planned_flow(now, state)
            if self.planner is not None:  # the price it observed this cycle, for the stated saving
                state = replace(state, price_per_kwh=self.planner.price_now(utcnow()))
            for r in self.rule.recommend(state, now, planned):
                recs[r.target_tag] = r
            self.view.recommender = self.rule.summary()
        return WriteInputs(recs, qualities, inputs_mono, self.models.healthy(now))

    def _planned_flow(self, now: float, state: StationState) -> float | None:
        """The tariff plan's flow for now (None without a tariff): the planner's own unit."""
        if self.planner is None:
            return None
        fc = self.planner.rc.forecast
        temp = self.table.get(fc.temperature_tag, now) if fc.temperature_tag is not None else None
        now_utc = utcnow()
        price_tag = self.planner.tariff.price_tag
        self.planner.observe(
            now_utc,
            state.demand_m3h,
            temp.as_float() if temp is not None and temp.quality.is_good else None,
            self.table.get(price_tag, now) if price_tag is not None else None,
        )
        flow = self.planner.planned_flow(now, now_utc, state.level_m, state.demand_m3h)
        self.view.plan = self.planner.status
        return flow

    def status_word(self) -> int:
        lost = [
            i
            for i, dev in enumerate(self.config.devices)
            if any(st.state == "lost" for st in self.drivers[dev.name].unit_status())
        ]
        self.view.devices_lost = [self.config.devices[i].name for i in lost]
        self.view.warnings = [
            f"{name}: {w}" for name, drv in self.drivers.items() if (w := getattr(drv, "cert_warning", None))
        ]
        models_ok = self.models.healthy(self._clock())
        holding = self.writeback is not None and bool(self.writeback.holding())
        flags = {
            "running": not self.stopping,
            "degraded": bool(lost)
            or not models_ok
            or not self.audit.healthy
            or bool(self.view.warnings)
            or self._source_failure is not None,
            "models_healthy": models_ok,
            "writes_enabled": self.guard is not None and self.guard.config.writes_enabled,
            "auto": self.guard is not None and self.guard.config.mode == "auto",
            "holding": holding,
            "audit_ok": self.audit.healthy,
            "stopping": self.stopping,
        }
        word = sum(1 << bit for name, bit in STATUS_BITS.items() if flags[name])
        for i in lost[:8]:
            word |= 1 << (_DEVICE_LOST_BIT0 + i)
        return word


def _quality_in(samples: Mapping[str, Sample]) -> Callable[[str], Quality]:
    return lambda tag: samples[tag].quality


@dataclass(frozen=True, slots=True)
class _AlarmInputs:
    watched: dict[str, tuple[str, ...]]  # bad-PV source -> the tags it watches (watched_inputs)
    tags: tuple[str, ...]  # the values tags and the watched ones, each once


class _Stopped(Exception):
    """Raised by the cycle task when ``stop`` is set, to end the task group (and the pollers)."""
