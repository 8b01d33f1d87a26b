"""The Prometheus endpoint: what the running agent is doing, read at scrape time.

``agent.metrics: {listen: "127.0.0.1:9108"}`` turns it on (off by default). It listens on a
loopback address only, unless ``allow_remote: true`` says otherwise: the endpoint has no
authentication, and a gateway sits on a plant network.

* :class:`AgentCollector` reads the agent's own state when Prometheus scrapes (driver and
  poller counters, the per-device poll statistics, scorers, the alarm engine, the write-back
  unit, the audit log): nothing is counted twice and nothing is done per cycle for metrics.
  It lives in a registry of its own (never the process-global one).
* :class:`MetricsServer` serves ``GET /metrics`` from the agent's event loop (no thread, so the
  collector reads the agent's state from the loop that changes it), one request per
  connection, each bounded in time and size; :meth:`MetricsServer.close` cancels what is in
  flight.

Every metric is prefixed ``edge_agent_``; :data:`METRICS` lists them with their help text.
There is no audit *backlog*: a decision is committed to the audit log before its write is sent,
so ``edge_agent_audit_healthy`` is the whole story.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Self

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.errors import AgentError
from agent.ops import status
from agent.ops.metrics_config import MetricsConfig, parse_listen
from agent.ops.serving import Connections
from agent.pipeline.alarms import ALARM_KINDS
from agent.stats import LatencyStats

if TYPE_CHECKING:
    from agent.runtime import Agent

__all__ = ["METRICS", "AgentCollector", "MetricsConfig", "MetricsServer", "make_registry", "parse_listen"]

log = structlog.get_logger("agent.metrics")

_REQUEST_TIMEOUT_S = 5.0
_MAX_HEAD = 16 * 1024
# Per-unit driver counters that count something going wrong (the rest are requests, connects,
# notifications): their key is the ``reason`` label.
_ERROR_KEYS = ("failures", "bad_replies", "skipped", "deferred", "reconnects", "resubscribes")


# name → (type, help); the collector emits exactly these (a test checks the list).
METRICS: dict[str, tuple[str, str]] = {
    "edge_agent": ("info", "The agent: its name and config file."),
    "edge_agent_cycles": ("counter", "Pipeline cycles run."),
    "edge_agent_cycles_skipped": ("counter", "Cycle ticks skipped because a cycle overran its interval."),
    "edge_agent_cycle_duration_seconds": ("gauge", "Duration of the last cycle."),
    "edge_agent_status_word": ("gauge", "The agent status word written to the HMI."),
    "edge_agent_poll_duration_seconds": ("histogram", "Duration of one poll of a device (all its units)."),
    "edge_agent_polls": ("counter", "Polls of a device."),
    "edge_agent_polls_overrun": ("counter", "Polls that overran their interval."),
    "edge_agent_polls_skipped": ("counter", "Poll ticks skipped after an overrun (polls never stack)."),
    "edge_agent_device_connected": ("gauge", "1 while the device's connection is up."),
    "edge_agent_last_good_sample_age_seconds": ("gauge", "Seconds since the device last gave a GOOD sample."),
    "edge_agent_samples": ("counter", "Samples read, by device and quality (GOOD, UNCERTAIN, BAD)."),
    "edge_agent_device_requests": ("counter", "Requests sent, by device and unit."),
    "edge_agent_device_errors": (
        "counter",
        "Requests that went wrong, by device, unit and reason: failures (no reply, unit down, "
        "connection lost), bad_replies, skipped (breaker open), deferred (no time left in the "
        "poll), reconnects, resubscribes (OPC UA).",
    ),
    "edge_agent_unit_up": ("gauge", "1 while the unit answers (state ok), 0 when lost or not yet known."),
    "edge_agent_breaker_open": ("gauge", "1 while the unit's circuit breaker is open or half-open."),
    "edge_agent_inference_duration_seconds": ("histogram", "Duration of one model call (all assets)."),
    "edge_agent_inference_calls": ("counter", "Model calls started."),
    "edge_agent_inference_errors": ("counter", "Model calls that failed."),
    "edge_agent_inference_skipped": ("counter", "Frames skipped because the model was still busy."),
    "edge_agent_model_healthy": ("gauge", "1 while the model's last call succeeded and its score is fresh."),
    "edge_agent_model": ("info", "The model bundle running: version, variant, precision, signature."),
    "edge_agent_alarms_active": ("gauge", "Active alarms (and alerts) by severity (1 low .. 4 critical)."),
    "edge_agent_guard_decisions": ("counter", "Guard decisions by action and first reason code."),
    "edge_agent_setpoint_writes": (
        "counter",
        "Setpoint writes by outcome (verified, mismatch = read-back differs, timed_out, "
        "unverified, refused, failed, not_sent).",
    ),
    "edge_agent_hmi_writes": ("counter", "HMI writes (display, heartbeat, status) by purpose and result."),
    "edge_agent_audit_healthy": ("gauge", "1 while the audit log records (automatic writes stop otherwise)."),
    "edge_agent_certificate_expiry_timestamp_seconds": (
        "gauge",
        "When an OPC UA client certificate expires (Unix time).",
    ),
    "edge_agent_config_reloads": ("counter", "Config reloads (SIGHUP) by result: applied, refused."),
    "edge_agent_recording_state": (
        "gauge",
        "1 for the recorder's state: recording, paused (free disk below the reserve), stopped (an error).",
    ),
    "edge_agent_recording_bytes": ("gauge", "Bytes in the recording's files (bounded by its quota)."),
    "edge_agent_recording_files": ("gauge", "Files in the recording."),
    "edge_agent_recording_rows": ("counter", "Rows in the recording's files."),
    "edge_agent_recording_write_errors": ("counter", "Write errors of the recorder (the first stops it)."),
    "edge_agent_plan_flow_m3h": ("gauge", "The tariff plan's station flow for now (recommender.tariff)."),
    "edge_agent_plan_energy_kwh": ("gauge", "The tariff plan's energy over its horizon."),
    "edge_agent_plan_specific_energy_kwh_per_m3": ("gauge", "The tariff plan's kWh per m³ pumped."),
    "edge_agent_plan_cost": ("gauge", "The tariff plan's energy cost over its horizon, by currency."),
}


def _doc(name: str, kind: str) -> str:
    declared, doc = METRICS[name]
    assert declared == kind, f"{name} is a {declared}"
    return doc


def _counter(name: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, _doc(name, "counter"), labels=labels)


def _gauge(name: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, _doc(name, "gauge"), labels=labels)


def _histogram(name: str, *labels: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, _doc(name, "histogram"), labels=labels)


def _info(name: str, *labels: str) -> InfoMetricFamily:
    return InfoMetricFamily(name, _doc(name, "info"), labels=labels)


def _buckets(stats: LatencyStats) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(b) else repr(b), float(n)) for b, n in stats.cumulative()]


class AgentCollector(Collector):
    """Reads the agent's state at scrape time (call from the agent's event loop)."""

    def __init__(self, agent: Agent, clock: Callable[[], float] = time.monotonic) -> None:
        self._agent = agent
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the names are fixed (METRICS)

    def collect(self) -> Iterator[Metric]:
        yield from self._agent_metrics()
        yield from self._device_metrics()
        yield from self._model_metrics()
        yield from self._alarm_metrics()
        yield from self._write_metrics()
        yield from self._recording_metrics()
        yield from self._plan_metrics()

    def _agent_metrics(self) -> Iterator[Metric]:
        a = self._agent
        info = _info("edge_agent", "name", "config")
        info.add_metric([a.config.agent.name, a.config_path], {})
        yield info
        cycles = _counter("edge_agent_cycles")
        cycles.add_metric([], a.view.cycles)
        skipped = _counter("edge_agent_cycles_skipped")
        skipped.add_metric([], a.view.skipped_cycles)
        yield from (cycles, skipped)
        for name, value in (
            ("edge_agent_cycle_duration_seconds", a.view.last_cycle_s),
            ("edge_agent_status_word", a.view.status_word),
            ("edge_agent_audit_healthy", 1.0 if a.audit.healthy else 0.0),
        ):
            gauge = _gauge(name)
            gauge.add_metric([], float(value))
            yield gauge
        reloads = _counter("edge_agent_config_reloads", "result")
        for result in ("applied", "refused"):
            reloads.add_metric([result], a.reloads[result])
        yield reloads
        expiry = _gauge("edge_agent_certificate_expiry_timestamp_seconds", "device", "path")
        for cert in a.certificates.current():
            if cert.not_after is not None:
                expiry.add_metric([cert.device, cert.path], cert.not_after.timestamp())
        yield expiry

    def _device_metrics(self) -> Iterator[Metric]:
        a = self._agent
        now = self._clock()
        duration = _histogram("edge_agent_poll_duration_seconds", "device")
        polls = _counter("edge_agent_polls", "device")
        overrun = _counter("edge_agent_polls_overrun", "device")
        skipped = _counter("edge_agent_polls_skipped", "device")
        connected = _gauge("edge_agent_device_connected", "device")
        age = _gauge("edge_agent_last_good_sample_age_seconds", "device")
        samples = _counter("edge_agent_samples", "device", "quality")
        requests = _counter("edge_agent_device_requests", "device", "unit")
        errors = _counter("edge_agent_device_errors", "device", "unit", "reason")
        up = _gauge("edge_agent_unit_up", "device", "unit")
        breaker = _gauge("edge_agent_breaker_open", "device", "unit")
        for dev in a.config.devices:
            name = dev.name
            driver = a.drivers[name]
            stats = a.device_stats[name]
            duration.add_metric([name], _buckets(stats.latency), stats.latency.sum_s)
            runner = a.runners.get(name)
            if runner is not None:
                polls.add_metric([name], runner.counters.polls)
                overrun.add_metric([name], runner.counters.overruns)
                skipped.add_metric([name], runner.counters.skipped_ticks)
            connected.add_metric([name], 1.0 if driver.connected else 0.0)
            if stats.last_good_mono is not None:
                age.add_metric([name], now - stats.last_good_mono)
            for quality, n in stats.quality_counts().items():
                samples.add_metric([name, quality], n)
            per_unit = driver.counters.per_unit
            for st in driver.unit_status():
                unit = str(st.unit)
                counts = per_unit.get(unit, {})
                requests.add_metric([name, unit], counts.get("requests", 0))
                for key in _ERROR_KEYS:
                    if key in counts:
                        errors.add_metric([name, unit, key], counts[key])
                up.add_metric([name, unit], 1.0 if st.state == "ok" else 0.0)
                breaker.add_metric([name, unit], 0.0 if st.breaker == "closed" else 1.0)
        yield from (duration, polls, overrun, skipped, connected, age, samples, requests, errors, up, breaker)

    def _model_metrics(self) -> Iterator[Metric]:
        duration = _histogram("edge_agent_inference_duration_seconds", "model")
        calls = _counter("edge_agent_inference_calls", "model")
        errors = _counter("edge_agent_inference_errors", "model")
        skipped = _counter("edge_agent_inference_skipped", "model")
        healthy = _gauge("edge_agent_model_healthy", "model")
        info = _info("edge_agent_model", "model")
        for m in self._agent.models:
            name, sc, b = m.binding.name, m.scorer, m.bundle
            duration.add_metric([name], _buckets(sc.latency), sc.latency.sum_s)
            calls.add_metric([name], sc.calls)
            errors.add_metric([name], sc.errors)
            skipped.add_metric([name], sc.skipped)
            healthy.add_metric([name], 1.0 if m.healthy(self._agent.clock()) else 0.0)
            info.add_metric(
                [name],
                {
                    "version": b.manifest.version,
                    "variant": b.variant.file,
                    "precision": b.variant.precision,
                    "signature": b.signature.state,
                },
            )
        yield from (duration, calls, errors, skipped, healthy, info)

    def _alarm_metrics(self) -> Iterator[Metric]:
        active = _gauge("edge_agent_alarms_active", "severity", "kind")
        counts: dict[tuple[str, str], int] = {(str(s), kind): 0 for s in range(1, 5) for kind in ALARM_KINDS}
        for row in status.alarm_rows(self._agent.alarms, self._agent.config):
            if row.active:
                counts[(str(row.severity), row.kind)] += 1
        for (sev, kind), n in counts.items():
            active.add_metric([sev, kind], n)
        yield active

    def _write_metrics(self) -> Iterator[Metric]:
        decisions = _counter("edge_agent_guard_decisions", "action", "reason")
        writes = _counter("edge_agent_setpoint_writes", "outcome")
        wb = self._agent.writeback
        if wb is not None:
            for (action, reason), n in sorted(wb.actions.items()):
                decisions.add_metric([action, reason], n)
            for outcome, n in sorted(wb.outcomes.items()):
                writes.add_metric([outcome], n)
        yield from (decisions, writes)
        hmi = _counter("edge_agent_hmi_writes", "purpose", "result")
        totals: dict[tuple[str, str], int] = {}
        for st in self._agent.hmi.stats.values():
            for result, n in (("written", st.written), ("failed", st.failed)):
                totals[(st.purpose, result)] = totals.get((st.purpose, result), 0) + n
        for (purpose, result), n in sorted(totals.items()):
            hmi.add_metric([purpose, result], n)
        yield hmi

    def _recording_metrics(self) -> Iterator[Metric]:
        state = _gauge("edge_agent_recording_state", "state")
        size = _gauge("edge_agent_recording_bytes")
        files = _gauge("edge_agent_recording_files")
        rows = _counter("edge_agent_recording_rows")
        errors = _counter("edge_agent_recording_write_errors")
        rec = self._agent.recorder
        if rec is not None:
            st = rec.status()
            for name in ("recording", "paused", "stopped"):
                state.add_metric([name], 1.0 if st["state"] == name else 0.0)
            size.add_metric([], st["bytes"])
            files.add_metric([], st["files"])
            rows.add_metric([], st["rows"])
            errors.add_metric([], st["write_errors"])
        yield from (state, size, files, rows, errors)


    def _plan_metrics(self) -> Iterator[Metric]:
        flow = _gauge("edge_agent_plan_flow_m3h")
        energy = _gauge("edge_agent_plan_energy_kwh")
        spec = _gauge("edge_agent_plan_specific_energy_kwh_per_m3")
        cost = _gauge("edge_agent_plan_cost", "currency")
        p = self._agent.view.plan
        if p is not None:
            flow.add_metric([], p.first_flow_m3h)
            energy.add_metric([], p.energy_kwh)
            spec.add_metric([], p.specific_energy_kwh_m3)
            cost.add_metric([p.currency], p.cost)
        yield from (flow, energy, spec, cost)


def make_registry(agent: Agent) -> CollectorRegistry:
    """A registry of its own: the agent's collector and the process's (memory, CPU, fds)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """``GET /metrics`` on ``config.listen``, served from the event loop; an async context
    manager (:attr:`port` is the bound port once entered)."""

    def __init__(self, config: MetricsConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._connections = Connections()
        self.host, self.port = parse_listen(config.listen)
        self.scrapes = 0

    async def __aenter__(self) -> Self:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, limit=_MAX_HEAD, reuse_address=True
            )
        except OSError as exc:
            raise AgentError(f"metrics endpoint {self.config.listen}: {exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics endpoint", url=f"http://{self.host}:{self.port}/metrics")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and end every connection in flight."""
        server, self._server = self._server, None
        if server is not None:
            await self._connections.close(server)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._connections.track(writer):
            try:
                async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                    await self._respond(reader, writer)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            writer.write(_reply(400, "text/plain", b"bad request\n"))
            return
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            writer.write(_reply(405, "text/plain", b"only GET\n", extra="Allow: GET, HEAD\r\n"))
        elif path != "/metrics":
            writer.write(_reply(404, "text/plain", b"see /metrics\n"))
        else:
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            body = encoder(self._registry)
            self.scrapes += 1
            writer.write(_reply(200, content_type, body if method == "GET" else b"", length=len(body)))
        await writer.drain()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _reply(code: int, content_type: str, body: bytes, *, length: int | None = None, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
