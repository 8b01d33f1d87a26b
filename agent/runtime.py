"""The Agent: builds the pipeline sink-first and runs it in one structured-concurrency tree.

::

    sources (RunningSource per device) ─▶ TagTable ─▶ every cycle:
        FeatureWindows ─▶ Scorer (off the loop) ─▶ AlarmEngine ─▶ HMI block (sink writes)
        pump-energy rule ─▶ Guard ─▶ audit (committed) ─▶ setpoint write ─▶ verify by read-back
        heartbeat, status word, systemd watchdog

Start-up builds everything that can fail on bad input first (models, bindings, audit), so a
bad bundle or config stops the agent before it touches a PLC. Shutdown follows
ARCHITECTURE.md, each step with a deadline: stop sources → drain scorers → the Guard refuses
new writes (stopping) and the final HOLD is audited → flush and close the audit → close sinks.

Write path invariants: a setpoint write is sent only after its audit row is committed; when
the audit cannot be written, ``audit_ok`` is False and the Guard holds; a read-back that does
not match what was written makes the Guard hold for that target until a later write verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.config import Config
from agent.drivers import make_driver
from agent.errors import AgentError, AuditError, DriverError, ModelError
from agent.modelstore.binding import ModelBinding, check_binding
from agent.ops import sdnotify
from agent.ops.audit import AuditLog
from agent.pipeline.alarms import AlarmEngine, HmiBlock
from agent.pipeline.detectors import Detector, make_detector
from agent.pipeline.features import FeatureWindows
from agent.pipeline.guard import Guard, GuardDecision, GuardInputs, HoldTracker
from agent.pipeline.policy import PumpEnergyRule, StationState
from agent.running import RunningSource
from agent.tagtable import TagTable
from agent.types import Action, Alarm, Quality, Recommendation, Sample, Score, Value, utcnow

if TYPE_CHECKING:  # onnxruntime (~28 MB) is imported only when a model is configured
    from agent.modelstore.bundle import Bundle
    from agent.pipeline.scorer import Scorer

__all__ = ["STATUS_BITS", "Agent", "AgentView"]

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
_STOP_DEADLINE_S = 5.0


@dataclass
class _Model:
    binding: ModelBinding
    bundle: Bundle
    windows: FeatureWindows
    scorer: Scorer
    latest: dict[str, Score] = field(default_factory=dict)  # for display
    fresh: dict[str, Score] = field(default_factory=dict)  # scored this cycle: what alarms see


@dataclass
class AgentView:
    """What the console and `status` show; refreshed every cycle (read-only for them)."""

    cycles: int = 0
    last_cycle_s: float = 0.0
    first_cycle_s: float | None = None
    tags: dict[str, Sample] = field(default_factory=dict)
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


class Agent:
    """The whole agent for one config. ``await agent.run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | Path = "config",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.config_path = str(config_path)
        self._base = Path(config_path).resolve().parent
        self._clock = clock
        self.view = AgentView()
        self.stopping = False
        self.drivers: dict[str, Any] = {d.name: make_driver(d) for d in config.devices}
        self._device_of: dict[str, str] = {}
        self._units: dict[str, str] = {}  # tag → engineering unit, for model bindings
        self._periods: dict[str, float] = {}  # tag → refresh period (s), for model bindings
        limits: dict[str, float] = {}
        for dev in config.devices:
            for tag in dev.tags:
                self._device_of[tag.name] = dev.name
                self._units[tag.name] = tag.engineering_unit
                self._periods[tag.name] = dev.poll_interval_ms / 1000
                limits[tag.name] = dev.stale_limit_s(tag)  # type: ignore[arg-type]
        self.table = TagTable(limits, clock=clock)
        self.models = [self._load_model(b) for b in config.models]
        self.alarms = AlarmEngine(config.alarms, [a.name for a in config.assets])
        self.detectors: dict[tuple[str, str], Detector] = {
            (a.name, d.name): make_detector(d.detector) for a in config.assets for d in a.detectors
        }
        self.guard = Guard(config.guard) if config.guard is not None else None
        self.rule = PumpEnergyRule(config.recommender) if config.recommender is not None else None
        self.holds = HoldTracker()
        self.audit = AuditLog(config.audit_config())
        self._state_file = config.agent.state_dir / "alarms.json"
        self._written: dict[str, tuple[Value, float]] = {}
        self._verify_ok: dict[str, bool] = {}
        self._verify_retry: dict[str, tuple[float, float]] = {}  # target → (retry at, backoff s)
        self._last_write: dict[str, float] = {}
        self._heartbeat = 0
        self._runners: list[RunningSource] = []
        self._reload_requested = False

    # ------------------------------------------------------------------ start-up

    def _resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else (self._base / p).resolve()

    def _load_model(self, binding: ModelBinding) -> _Model:
        from agent.modelstore.bundle import load_bundle
        from agent.pipeline.scorer import Scorer

        path = self._resolve(binding.bundle)
        trust = self.config.models_trust
        bundle = load_bundle(
            path,
            threads=binding.threads,
            variant=binding.variant,
            trusted_keys=[self._resolve(k) for k in trust.public_keys],
            allow_unsigned=trust.allow_unsigned,
        )
        log.info("model loaded", model=bundle.manifest.ident, signature=bundle.signature.detail)
        check_binding(bundle.manifest, binding, self._units, self._periods, source=self.config_path)
        period = bundle.manifest.window.sample_period_s
        cycle = self.config.agent.cycle_ms / 1000
        if not math.isclose(period, cycle, rel_tol=1e-6):
            raise ModelError(
                f"model {bundle.manifest.ident} samples every {period:g} s, "
                f"agent.cycle_ms in {self.config_path} is {self.config.agent.cycle_ms} ms: they must match"
            )
        return _Model(binding, bundle, FeatureWindows(bundle.manifest, binding), Scorer(bundle))

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
        """Run until ``stop`` is set, then shut down in order. Raises on start-up errors."""
        self.config.agent.state_dir.mkdir(parents=True, exist_ok=True)
        self.audit.open()
        await self._restore_alarms()
        self.audit.record_event(
            "start", f"agent {self.config.agent.name} starting", extra={"config": self.config_path}
        )
        async with contextlib.AsyncExitStack() as stack:
            for drv in self.drivers.values():
                await stack.enter_async_context(drv)
            stack.push_async_callback(self._close_audit)
            sources = asyncio.create_task(self._run_sources(), name="sources")
            try:
                await self._first_polls()
                sdnotify.notify("READY=1", f"STATUS=polling {len(self.drivers)} devices")
                await self._cycle_loop(stop)
            finally:
                # 1. stop sources
                sources.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sources
                sdnotify.notify("STOPPING=1")
                # 2. drain scorers (bounded)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_STOP_DEADLINE_S):
                        for m in self.models:
                            await m.scorer.drain()
                # 3. the Guard refuses new writes; record the final HOLD
                self.stopping = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_STOP_DEADLINE_S):
                        await asyncio.shield(self._final_decisions())
                        await asyncio.shield(self._write_final_status())
                self._save_alarms()
            # 4. audit flushed and closed (callback), 5. sinks closed (exit stack)

    async def _first_polls(self) -> None:
        """Wait (bounded) for every source's first poll, so the first cycle sees data."""
        await asyncio.sleep(0)  # let the sources start
        limit = max((d.timeout_ms / 1000 for d in self.config.devices), default=0.0) * 4 + 0.5
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                for runner in self._runners:
                    await runner.first_poll_done.wait()

    async def _close_audit(self) -> None:
        with contextlib.suppress(AuditError):
            self.audit.record_event("stop", f"agent {self.config.agent.name} stopped")
        self.audit.close()

    async def _run_sources(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for dev in self.config.devices:
                runner = RunningSource(self.drivers[dev.name], dev.poll_interval_ms / 1000, self.table.update)
                self._runners.append(runner)
                tg.create_task(runner.run(), name=f"poll {dev.name}")

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
                k = max(k + 1, int((self._clock() - start) / interval) + 1)
                delay = start + k * interval - self._clock()
                if delay > 0:
                    await asyncio.wait({stop_wait}, timeout=delay)
        finally:
            stop_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop_wait

    # ------------------------------------------------------------------ model reload

    def request_reload(self) -> None:
        """Ask for :meth:`reload_models` at the start of the next cycle (safe from a signal
        handler: `edge-agent run` calls it on SIGHUP)."""
        self._reload_requested = True

    async def reload_models(self) -> list[str]:
        """Load every bundle again from disk, after a new one was installed in its place.

        A bundle that fails any check (hashes, signature, session, binding) is refused with the
        reason, logged and audited, and the model already running keeps serving; an unchanged
        bundle keeps its windows. Returns one line per model.
        """
        lines: list[str] = []
        for i, old in enumerate(self.models):
            name = old.binding.name
            try:
                new = await asyncio.to_thread(self._load_model, old.binding)
            except ModelError as exc:
                log.error(
                    "model reload refused; the running model stays", model=old.bundle.ident, error=str(exc)
                )
                with contextlib.suppress(AuditError):
                    await asyncio.to_thread(
                        self.audit.record_event, "model_refused", f"{name}: {exc}; {old.bundle.ident} stays"
                    )
                lines.append(f"{name}: refused, {old.bundle.ident} stays: {exc}")
                continue
            if new.bundle.ident == old.bundle.ident and new.bundle.hashes == old.bundle.hashes:
                lines.append(f"{name}: unchanged ({old.bundle.ident})")
                continue
            await old.scorer.drain()
            self.models[i] = new
            log.warning("model installed", model=new.bundle.ident, replaces=old.bundle.ident)
            with contextlib.suppress(AuditError):
                await asyncio.to_thread(
                    self.audit.record_event,
                    "model_installed",
                    f"{name}: {new.bundle.ident} replaces {old.bundle.ident}",
                )
            lines.append(f"{name}: installed {new.bundle.ident} (was {old.bundle.ident})")
        return lines

    # ------------------------------------------------------------------ one cycle

    async def cycle(self) -> None:
        """One pass of the pipeline over the current tag table."""
        if self._reload_requested:
            self._reload_requested = False
            await self.reload_models()
        now, now_utc = self._clock(), utcnow()
        await self._score(now, now_utc)
        await self._evaluate_alarms(now, now_utc)
        await self._write_hmi(now)
        # The heartbeat before the setpoints: the PLC applies them only while it is alive.
        await self._write_agent_status(now)
        await self._decide_and_write(now)
        self.view.cycles += 1
        self.view.tags = self.table.snapshot(now=now)
        sdnotify.notify("WATCHDOG=1")

    async def _score(self, now: float, now_utc: datetime) -> None:
        for m in self.models:
            m.fresh = {}
        frames = [(m, m.windows.tick(self.table, now, now_utc)) for m in self.models]
        pending = [(m, f) for m, f in frames if f is not None]
        if not pending:
            return
        results = await asyncio.gather(*(m.scorer.score(f) for m, f in pending), return_exceptions=True)
        for (m, _), res in zip(pending, results, strict=True):
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                log.error("model failed", model=m.binding.name, error=str(res))
                continue
            for score in res:
                m.latest[score.asset] = score
                m.fresh[score.asset] = score
            self.view.scores[m.binding.name] = dict(m.latest)

    def _asset_values(self, asset_cfg: Any, now: float, *, fresh: bool = True) -> dict[str, float | None]:
        """Values by source name. With ``fresh``, model outputs only from a frame scored this
        cycle: between frames (and for an asset left out of a frame) the alarm engine gets
        nothing for them and holds, rather than re-reading an old score."""
        values: dict[str, float | None] = {}
        for m in self.models:
            score = (m.fresh if fresh else m.latest).get(asset_cfg.name)
            if score is None:
                continue
            for out, v in score.outputs.items():
                values[f"{m.binding.name}.{out}"] = v
        for name, tag in asset_cfg.values.items():
            s = self.table.get(tag, now)
            values[name] = s.as_float() if s.quality.is_good else None
        return values

    def _run_detectors(self, asset_cfg: Any, values: dict[str, float | None]) -> None:
        """Feed each detector its source (once per new value: a model output only in the cycle
        it was scored) and add ``<name>`` and ``<name>.outlier`` to ``values``."""
        for d in asset_cfg.detectors:
            if d.source not in values:
                continue  # a model output between frames: nothing new to learn from
            result = self.detectors[(asset_cfg.name, d.name)].update(values[d.source])
            ready = result.ready and math.isfinite(result.score)
            values[d.name] = result.score if ready else None
            values[f"{d.name}.outlier"] = (1.0 if result.outlier else 0.0) if ready else None

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
                ack_value = s.value if s.quality.is_good and isinstance(s.value, bool | int | float) else None
                for t in self.alarms.on_ack_tag(a.name, ack_value, now, now_utc):
                    await self._alarm_transition(t)
                    changed = True
            values = self._asset_values(a, now)
            self._run_detectors(a, values)
            for t in self.alarms.evaluate(a.name, values, now, now_utc):
                await self._alarm_transition(t)
                changed = True
        if changed:
            self._save_alarms()

    async def _write_hmi(self, now: float) -> None:
        for a in self.config.assets:
            block = self.alarms.hmi_block(a.name)
            shown = self._asset_values(a, now, fresh=False)  # the latest score, for display
            fault = shown.get(a.fault_class_source) if a.fault_class_source else None
            rul = shown.get(a.rul_source) if a.rul_source else None
            block = dataclasses.replace(block, fault_class=int(fault) if fault is not None else 0, rul=rul)
            self.view.hmi[a.name] = block
            anomaly = shown.get(a.anomaly_source) if a.anomaly_source else None
            values: dict[str, Value] = {
                "alarm_word": block.alarm_word,
                "unacked_word": block.unacked_word,
                "shelved_word": block.shelved_word,
                "alert_word": block.alert_word,
                "highest_severity": block.highest_severity,
                "active_count": block.active_count,
                "first_out_code": block.first_out_code,
                "fault_class": block.fault_class,
                "anomaly_score": anomaly,
                "rul": rul,
            }
            # One transaction per run of adjacent registers where the driver can (Modbus FC16),
            # and the words last otherwise: an HMI that sees a new alarm bit finds its
            # severity, count and first-out already written.
            words = ("alarm_word", "unacked_word", "shelved_word", "alert_word")
            items = [
                (tag, values[f])
                for f, tag in sorted(a.hmi.items(), key=lambda kv: kv[0] in words)
                if values.get(f) is not None
            ]
            await self._write_displays(items, now)

    async def _write_displays(self, items: list[tuple[str, Value]], now: float) -> None:
        """Write HMI display values that changed (or are due for a refresh), per device in one
        call where the driver supports it (``write_many``)."""
        due: dict[str, list[tuple[str, Value]]] = {}
        for tag, value in items:
            last = self._written.get(tag)
            if last is None or last[0] != value or now - last[1] >= self.config.hmi.refresh_s:
                due.setdefault(self._device_of[tag], []).append((tag, value))
        for device, batch in due.items():
            driver = self.drivers[device]
            try:
                if len(batch) > 1 and hasattr(driver, "write_many"):
                    await driver.write_many(batch)
                else:
                    for tag, value in batch:
                        await driver.write(tag, value)
            except DriverError as exc:
                if any(self._written.get(tag, (None, 0.0))[1] != -1.0 for tag, _ in batch):
                    log.warning("HMI write failed", tags=[t for t, _ in batch], error=str(exc))
                for tag, _ in batch:
                    self._written[tag] = (None, -1.0)  # failed: retried next cycle, logged once
                continue
            for tag, value in batch:
                self._written[tag] = (value, now)

    def _severity_by_asset(self) -> dict[str, int]:
        return {name: block.highest_severity for name, block in self.view.hmi.items()}

    async def _decide_and_write(self, now: float) -> None:
        if self.guard is None:
            return
        recs: dict[str, Recommendation] = {}
        qualities: dict[str, Quality] = {}
        inputs_mono: float | None = None
        if self.rule is not None:
            rc = self.rule.config
            level, demand = self.table.get(rc.level_tag, now), self.table.get(rc.demand_tag, now)
            qualities = {rc.level_tag: level.quality, rc.demand_tag: demand.quality}
            good = level.quality.is_good and demand.quality.is_good
            inputs_mono = min(level.mono, demand.mono)
            state = StationState(
                level_m=level.as_float() if good else None,
                demand_m3h=demand.as_float() if good else None,
                severity=self._severity_by_asset(),
                inputs_good=good,
            )
            for r in self.rule.recommend(state, now):
                recs[r.target_tag] = r
        self.view.recommendations = recs
        healthy = all(m.scorer.healthy for m in self.models)
        for target, t in self.guard.targets.items():
            decision = self.guard.decide(
                target,
                GuardInputs(
                    now=now,
                    recommendation=recs.get(target),
                    permissive=self.table.get(self.guard.config.permissive_tag, now),
                    readback=self.table.get(t.tag, now),
                    input_qualities=qualities,
                    inputs_mono=inputs_mono,
                    model_healthy=healthy,
                    audit_ok=self.audit.healthy,
                    stopping=self.stopping,
                    last_verify_ok=self._verify_ok.get(target, True) or now >= self._verify_retry[target][0],
                    last_write_at=self._last_write.get(target),
                ),
            )
            self.view.decisions[target] = decision
            await self._apply(target, decision, qualities, now)

    async def _apply(
        self, target: str, d: GuardDecision, qualities: Mapping[str, Quality], now: float
    ) -> None:
        if self.holds.observe(d):
            try:
                # Committed before the write is sent (the write waits for this to return).
                await asyncio.to_thread(
                    self.audit.record_decision,
                    d.decision,
                    target=target,
                    tag=d.write_tag,
                    qualities=qualities,
                    mono=now,
                )
            except AuditError as exc:
                log.error("audit unavailable: automatic writes stop", error=str(exc))
                return
            if d.action is Action.HOLD:
                log.info("hold", target=target, reasons=list(d.reasons))
        if not d.writes or d.write_tag is None or d.applied_value is None:
            return
        if not self.audit.healthy:
            return
        tag, value = d.write_tag, d.applied_value
        try:
            back = await self.drivers[self._device_of[tag]].write(tag, value)
        except DriverError as exc:
            log.warning("setpoint write failed", tag=tag, error=str(exc))
            self._verify_failed(target, now)
            return
        self._last_write[target] = now
        self.view.writes += 1
        ok = isinstance(back, int | float) and math.isclose(float(back), value, rel_tol=1e-6, abs_tol=1e-3)
        if ok:
            self._verify_ok[target] = True
            self._verify_retry.pop(target, None)
            return
        self.view.verify_failures += 1
        retry_in = self._verify_failed(target, now)
        log.warning(
            "read-back mismatch: holding", tag=tag, written=value, read_back=back, retry_in_s=retry_in
        )
        with contextlib.suppress(AuditError):
            self.audit.record_event("verify_mismatch", f"{tag}: wrote {value}, read back {back}")

    def _verify_failed(self, target: str, now: float) -> float:
        """Hold the target; one retry after a backoff that doubles per failure (5 s .. 5 min).

        The PLC is the authority: it may refuse an external setpoint (permissive just dropped,
        heartbeat not yet seen, its own clamp). Holding until a retry keeps the agent from
        fighting it, and lets it resume once the PLC accepts again.
        """
        _, backoff = self._verify_retry.get(target, (0.0, 2.5))
        backoff = min(300.0, backoff * 2)
        self._verify_ok[target] = False
        self._verify_retry[target] = (now + backoff, backoff)
        return backoff

    async def _write_final_status(self) -> None:
        """Show "stopping" (running off) on the HMI; the heartbeat stops, so the PLC falls back."""
        if self.config.hmi.status_tag is None:
            return
        self.view.status_word = self.status_word()
        await self._write_displays([(self.config.hmi.status_tag, self.view.status_word)], self._clock())

    async def _final_decisions(self) -> None:
        if self.guard is None:
            return
        await self._decide_and_write(self._clock())

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
        models_ok = all(m.scorer.healthy for m in self.models)
        holding = any(d.action is Action.HOLD for d in self.view.decisions.values())
        flags = {
            "running": not self.stopping,
            "degraded": bool(lost) or not models_ok or not self.audit.healthy or bool(self.view.warnings),
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

    async def _write_agent_status(self, now: float) -> None:
        hmi = self.config.hmi
        self.view.status_word = self.status_word()
        items: list[tuple[str, Value]] = []
        if hmi.heartbeat_tag is not None:
            self._heartbeat = (self._heartbeat + 1) % 65536
            items.append((hmi.heartbeat_tag, self._heartbeat))
        if hmi.status_tag is not None:
            items.append((hmi.status_tag, self.view.status_word))
        await self._write_displays(items, now)
