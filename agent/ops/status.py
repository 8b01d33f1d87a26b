"""`edge-agent status`: what the running agent is doing, served over a unix socket.

The agent listens on ``status.sock`` in its runtime directory (``$RUNTIME_DIRECTORY``, which
systemd creates as ``/run/edge-agent``; else the config's ``state_dir``), mode 0660 so that the
service's group (``edge-agent``: the engineers) may read it. Every connection gets one JSON
document (:func:`status_document`) and is closed; nothing is read from the client.

Also here, because `status` and the metrics endpoint both read them:

* :class:`DeviceStats`: per device, what the pollers' counters do not keep (poll latency
  histogram, samples by quality, when the last GOOD sample came), fed once per poll;
* :func:`alarm_rows`: every alarm that is not normal, with its severity;
* :class:`Certificates`: when each OPC UA client certificate expires (read at most hourly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import structlog

from agent.errors import AgentError
from agent.ops.serving import Connections
from agent.stats import POLL_BUCKETS_S, LatencyStats
from agent.types import AlarmState, QualityCode, Sample, utcnow

if TYPE_CHECKING:
    from agent.config import AnyDevice, Config
    from agent.energyplan import PlanStatus
    from agent.pipeline.alarms import AlarmEngine
    from agent.runtime import Agent

__all__ = [
    "DEFAULT_RUNTIME_DIR",
    "SOCKET_NAME",
    "AlarmRow",
    "CertState",
    "Certificates",
    "DeviceStats",
    "StatusServer",
    "alarm_rows",
    "format_status",
    "read_status",
    "socket_candidates",
    "socket_path",
    "status_document",
    "summary_line",
]

log = structlog.get_logger("agent.status")

SOCKET_NAME = "status.sock"
DEFAULT_RUNTIME_DIR = Path("/run/edge-agent")
"""systemd's ``RuntimeDirectory=edge-agent``."""

_SOCKET_MODE = 0o660
_SEND_TIMEOUT_S = 5.0
_CERT_RECHECK_S = 3600.0


# --------------------------------------------------------------------------- what is tracked


@dataclass(slots=True)
class DeviceStats:
    """Per device: poll latency, samples by quality, the last GOOD sample. One poller feeds it
    (:meth:`observe`, once per poll); `status` and metrics read it."""

    latency: LatencyStats = field(default_factory=lambda: LatencyStats(window=256, buckets_s=POLL_BUCKETS_S))
    good: int = 0
    uncertain: int = 0
    bad: int = 0
    last_good_mono: float | None = None
    last_good_utc: datetime | None = None

    def observe(self, elapsed_s: float, samples: Sequence[Sample]) -> None:
        self.latency.record(elapsed_s)
        good = bad = 0
        newest: Sample | None = None
        for s in samples:
            code = s.quality.code
            if code is QualityCode.GOOD:
                good += 1
                if newest is None or s.mono > newest.mono:
                    newest = s
            elif code is QualityCode.BAD:
                bad += 1
        self.good += good
        self.bad += bad
        self.uncertain += len(samples) - good - bad
        if newest is not None:
            self.last_good_mono, self.last_good_utc = newest.mono, newest.received_at

    def quality_counts(self) -> dict[str, int]:
        return {"GOOD": self.good, "UNCERTAIN": self.uncertain, "BAD": self.bad}


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """One alarm (or alert) on one asset that is not normal."""

    asset: str
    code: int
    name: str
    kind: str  # an AlarmKind: "alarm", "alert" or "bad_pv"
    state: AlarmState
    severity: int

    @property
    def active(self) -> bool:
        return self.state in (AlarmState.UNACK, AlarmState.ACKED)


def alarm_rows(engine: AlarmEngine, config: Config) -> list[AlarmRow]:
    """Every alarm that is not NORMAL (active, returned unacknowledged, shelved, out of service)."""
    saved: dict[str, Any] = engine.state_dict()["assets"]
    rows: list[AlarmRow] = []
    for asset in config.assets:
        for d in config.alarms.defs:
            state = engine.state(asset.name, d.code)
            if state is AlarmState.NORMAL:
                continue
            slot = saved.get(asset.name, {}).get("alarms", {}).get(str(d.code), {})
            severity = int(slot.get("severity", 0))
            rows.append(AlarmRow(asset.name, d.code, d.name, d.kind, state, severity or d.nominal_severity))
    return rows


@dataclass(frozen=True, slots=True)
class CertState:
    device: str
    path: str
    not_after: datetime | None
    warning: str | None


class Certificates:
    """The OPC UA client certificates of the config's secure devices; each file read at most
    once per ``recheck_s`` (the first look reads them all)."""

    def __init__(
        self,
        devices: Sequence[AnyDevice],
        *,
        recheck_s: float = _CERT_RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from agent.drivers.opcua_config import OpcUaDevice

        self._devices = [
            (d.name, d.certificate, d.cert_warn_days)
            for d in devices
            if isinstance(d, OpcUaDevice) and d.certificate is not None and d.secure
        ]
        self._recheck_s = recheck_s
        self._clock = clock
        self._read_at: float | None = None
        self._states: list[CertState] = []

    def current(self) -> list[CertState]:
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._recheck_s:
            self._read_at = now
            self._states = [self._read(*d) for d in self._devices]
        return self._states

    @staticmethod
    def _read(device: str, path: Path, warn_days: int) -> CertState:
        from agent.ops import certs  # OPC UA only: a Modbus-only agent never loads it

        try:
            not_after: datetime | None = certs.show_certificate(path).not_after
        except (OSError, ValueError):
            not_after = None
        return CertState(device, str(path), not_after, certs.expiry_warning(path, warn_days))


# --------------------------------------------------------------------------- the document


def _ms(seconds: float) -> float | None:
    return None if not math.isfinite(seconds) else round(seconds * 1000, 3)


def _device(agent: Agent, dev: AnyDevice, now: float) -> dict[str, Any]:
    driver = agent.drivers[dev.name]
    stats = agent.device_stats[dev.name]
    runner = agent.runners.get(dev.name)
    units = driver.unit_status()
    requests = sum(u.requests for u in units)
    failures = sum(u.failures for u in units)
    counters = runner.counters if runner is not None else None
    return {
        "name": dev.name,
        "protocol": dev.protocol,
        "endpoint": dev.endpoint,
        "connected": bool(driver.connected),
        "last_good_age_s": None if stats.last_good_mono is None else round(now - stats.last_good_mono, 3),
        "last_good_utc": None if stats.last_good_utc is None else stats.last_good_utc.isoformat(),
        "requests": requests,
        "failures": failures,
        "error_rate": round(failures / requests, 4) if requests else None,
        "polls": counters.polls if counters else 0,
        "skipped_polls": counters.skipped_ticks if counters else 0,
        "samples": stats.quality_counts(),
        "poll_ms": {
            "last": _ms(stats.latency.last_s),
            "p50": _ms(stats.latency.p50_s),
            "p99": _ms(stats.latency.p99_s),
        },
        "units": [
            {
                "unit": u.unit,
                "state": u.state,
                "breaker": u.breaker,
                "last_error": u.last_error,
                "requests": u.requests,
                "failures": u.failures,
            }
            for u in units
        ],
    }


def _model(m: Any, now: float) -> dict[str, Any]:
    sc, b = m.scorer, m.bundle
    return {
        "name": m.binding.name,
        "ident": b.ident,
        "version": b.manifest.version,
        "variant": b.variant.file,
        "precision": b.variant.precision,
        "signature": b.signature.state,
        "healthy": m.healthy(now),
        "period_s": m.period_s,
        "stale": m.stale(now),
        "calls": sc.calls,
        "errors": sc.errors,
        "skipped": sc.skipped,
        "latency_ms": {
            "last": _ms(sc.latency.last_s),
            "p50": _ms(sc.latency.p50_s),
            "p99": _ms(sc.latency.p99_s),
        },
    }


def _plan(p: PlanStatus | None) -> dict[str, Any] | None:
    """The tariff plan (recommender.tariff), or None."""
    if p is None:
        return None
    return {
        "made_utc": p.made_utc.isoformat(),
        "forecast": p.forecast_source,
        "first_flow_m3h": round(p.first_flow_m3h, 2),
        "energy_kwh": round(p.energy_kwh, 2),
        "kwh_per_m3": round(p.specific_energy_kwh_m3, 5) if math.isfinite(p.specific_energy_kwh_m3) else None,
        "cost": round(p.cost, 2),
        "currency": p.currency,
        "feasible": p.feasible,
        "reason": p.reason,
        "prices": p.price_source,
    }


def status_document(agent: Agent, now: float | None = None) -> dict[str, Any]:
    """Everything `edge-agent status` shows, as JSON-ready data (read from the event loop)."""
    now = agent.clock() if now is None else now
    cfg = agent.config
    guard = cfg.guard
    decisions = agent.writeback.decisions if agent.writeback is not None else {}
    return {
        "agent": {
            "name": cfg.agent.name,
            "pid": os.getpid(),
            "config": agent.config_path,
            "started_utc": agent.started_utc.isoformat(),
            "uptime_s": round(now - agent.started_mono, 1),
            "cycles": agent.view.cycles,
            "skipped_cycles": agent.view.skipped_cycles,
            "last_cycle_ms": _ms(agent.view.last_cycle_s),
            "status_word": agent.view.status_word,
            "stopping": agent.stopping,
            "warnings": list(agent.view.warnings),
            "audit": {"healthy": agent.audit.healthy, "last_error": agent.audit.last_error},
            "guard": None if guard is None else {"mode": guard.mode, "writes_enabled": guard.writes_enabled},
            "reloads": dict(agent.reloads),
            "last_reload": agent.last_reload,
        },
        "devices": [_device(agent, d, now) for d in cfg.devices],
        "models": [_model(m, now) for m in agent.models],
        "energy_plan": _plan(agent.view.plan),
        "recommender": agent.view.recommender or None,
        "alarms": [
            {
                "asset": r.asset,
                "name": r.name,
                "code": r.code,
                "kind": r.kind,
                "state": str(r.state),
                "severity": r.severity,
            }
            for r in alarm_rows(agent.alarms, cfg)
        ],
        "decisions": [
            {
                "target": target,
                "action": str(d.action),
                "applied_value": d.applied_value,
                "proposed": d.proposed,
                "write_tag": d.write_tag,
                "recommended": d.decision.recommendation.value if d.decision.recommendation else None,
                "reasons": list(d.reasons),
            }
            for target, d in decisions.items()
        ],
        "recording": agent.recorder.status() if agent.recorder is not None else None,
        "certificates": [
            {
                "device": c.device,
                "path": c.path,
                "not_after": c.not_after.isoformat() if c.not_after else None,
                "days_left": None
                if c.not_after is None
                else round((c.not_after - utcnow()).total_seconds() / 86400, 1),
                "warning": c.warning,
            }
            for c in agent.certificates.current()
        ],
    }


def summary_line(agent: Agent) -> str:
    """The one-line ``STATUS=`` systemd shows (changes only when something an operator cares
    about changes)."""
    devices = agent.config.devices
    up = sum(1 for d in devices if agent.drivers[d.name].connected)
    parts = [f"{up}/{len(devices)} devices connected"]
    if agent.models:
        ok = sum(1 for m in agent.models if m.healthy(agent.clock()))
        parts.append(f"{ok}/{len(agent.models)} models healthy")
    active = sum(1 for r in alarm_rows(agent.alarms, agent.config) if r.active)
    parts.append(f"{active} alarms active")
    guard = agent.config.guard
    if guard is not None:
        writes = "writes on" if guard.writes_enabled else "writes off"
        holding = len(agent.writeback.holding()) if agent.writeback is not None else 0
        parts.append(f"guard {guard.mode} ({writes}, {holding} holding)")
    if not agent.audit.healthy:
        parts.append("AUDIT UNAVAILABLE")
    return ", ".join(parts)


# --------------------------------------------------------------------------- the socket


def socket_path(state_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where the running agent listens: ``$RUNTIME_DIRECTORY`` (its first entry), else
    ``state_dir``."""
    env = os.environ if env is None else env
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return (Path(runtime) if runtime else state_dir) / SOCKET_NAME


def socket_candidates(state_dir: Path | None, env: Mapping[str, str] | None = None) -> list[Path]:
    """Where `edge-agent status` looks, in order: ``$RUNTIME_DIRECTORY``, systemd's
    ``/run/edge-agent``, then the config's ``state_dir`` (an agent run by hand)."""
    env = os.environ if env is None else env
    out: list[Path] = []
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        out.append(Path(runtime) / SOCKET_NAME)
    out.append(DEFAULT_RUNTIME_DIR / SOCKET_NAME)
    if state_dir is not None:
        out.append(state_dir / SOCKET_NAME)
    return list(dict.fromkeys(out))


class StatusServer:
    """Serves ``document()`` as one JSON line per connection on a unix socket at ``path``;
    an async context manager (the socket file is removed on exit)."""

    def __init__(self, path: Path, document: Callable[[], Mapping[str, Any]]) -> None:
        self.path = path
        self._document = document
        self._server: asyncio.Server | None = None
        self._connections = Connections()
        self.served = 0

    async def __aenter__(self) -> Self:
        _remove_stale(self.path)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
            os.chmod(self.path, _SOCKET_MODE)
        except OSError as exc:
            await self.close()
            raise AgentError(f"status socket {self.path}: {exc.strerror or exc}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await self._connections.close(server)
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._connections.track(writer):
            try:
                try:
                    body = json.dumps(self._document(), default=str)
                except Exception as exc:  # a bug in the document must not reach the event loop
                    log.error("status document failed", error=f"{type(exc).__name__}: {exc}")
                    body = json.dumps({"error": f"status document failed: {type(exc).__name__}: {exc}"})
                writer.write(body.encode() + b"\n")
                async with asyncio.timeout(_SEND_TIMEOUT_S):
                    await writer.drain()
                self.served += 1
            except (TimeoutError, ConnectionError):
                pass


def _remove_stale(path: Path) -> None:
    """A socket left by an agent that died is removed; anything else at ``path`` is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AgentError(f"status socket {path}: something else is there (not a socket); not removed")
    os.unlink(path)


def read_status(candidates: Sequence[Path], timeout_s: float = 5.0) -> dict[str, Any]:
    """The running agent's status document from the first socket that answers. Raises
    AgentError with one line saying why none did."""
    problems: list[str] = []
    for path in candidates:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s)
                sock.connect(str(path))
                chunks: list[bytes] = []
                while chunk := sock.recv(1 << 16):
                    chunks.append(chunk)
        except FileNotFoundError:
            problems.append(f"no socket at {path}")
            continue
        except ConnectionRefusedError:
            problems.append(f"nothing listens on {path}")
            continue
        except PermissionError:
            problems.append(f"{path}: permission denied (is your user in the service's group?)")
            continue
        except TimeoutError:
            problems.append(f"{path}: no answer within {timeout_s:g} s")
            continue
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
            continue
        try:
            doc = json.loads(b"".join(chunks))
        except ValueError:
            problems.append(f"{path}: not a status document")
            continue
        if isinstance(doc, dict):
            return doc
        problems.append(f"{path}: not a status document")
    raise AgentError("no agent running: " + "; ".join(problems))


# --------------------------------------------------------------------------- the table


def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}{unit}"
    return f"{v}{unit}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Iterator[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    yield "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    for r in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()


_DEVICE_HEADERS: tuple[str, ...] = ("DEVICE", "CONNECTED", "LAST GOOD", "ERRORS", "POLL p50/p99")
_DEVICE_HEADERS += ("UNIT", "STATE", "BREAKER", "LAST ERROR")


def format_status(doc: Mapping[str, Any]) -> str:
    """The status document as tables for a terminal."""
    a = doc["agent"]
    guard = a.get("guard")
    lines = [
        f"agent {a['name']} (pid {a['pid']}), up {a['uptime_s']:.0f} s, config {a['config']}",
        f"  cycles {a['cycles']} (last {_num(a['last_cycle_ms'], ' ms')}, skipped {a['skipped_cycles']}), "
        f"status word 0x{a['status_word']:04x}, audit {'ok' if a['audit']['healthy'] else 'UNAVAILABLE'}"
        + (
            f", guard {guard['mode']} (writes {'on' if guard['writes_enabled'] else 'off'})"
            if guard
            else ", no guard"
        ),
    ]
    lines += [f"  warning: {w}" for w in a.get("warnings", [])]
    rec = doc.get("recording")
    if rec:
        why = f": {rec['reason']}" if rec.get("reason") else ""
        lines.append(
            f"  recording: {rec['state']}{why}, {rec['tags']} tags every {rec['period_s']:g} s into "
            f"{rec['dir']}, {rec['files']} files, {rec['bytes'] / 1e6:.1f} MB, {rec['rows']} rows"
        )
    lines.append("")
    rows = []
    for d in doc["devices"]:
        for i, u in enumerate(d["units"]):
            first = i == 0
            rows.append(
                [
                    d["name"] if first else "",
                    ("yes" if d["connected"] else "NO") if first else "",
                    _age(d["last_good_age_s"]) if first else "",
                    (f"{d['error_rate']:.1%}" if d["error_rate"] is not None else "-") if first else "",
                    f"{_num(d['poll_ms']['p50'])}/{_num(d['poll_ms']['p99'])} ms" if first else "",
                    str(u["unit"]),
                    u["state"],
                    u["breaker"],
                    u["last_error"] or "",
                ]
            )
    lines += _table(
        _DEVICE_HEADERS,
        rows,
    )
    if doc["models"]:
        lines.append("")
        lines += _table(
            ["MODEL", "VERSION", "VARIANT", "HEALTH", "LATENCY p50/p99", "CALLS", "ERRORS", "SKIPPED"],
            [
                [
                    m["name"],
                    m["version"],
                    f"{m['variant']} ({m['precision']})",
                    "ok" if m["healthy"] else "FAILING",
                    f"{_num(m['latency_ms']['p50'])}/{_num(m['latency_ms']['p99'])} ms",
                    str(m["calls"]),
                    str(m["errors"]),
                    str(m["skipped"]),
                ]
                for m in doc["models"]
            ],
        )
    lines.append("")
    if doc["alarms"]:
        lines += _table(
            ["ASSET", "ALARM", "KIND", "STATE", "SEVERITY"],
            [[r["asset"], r["name"], r["kind"], r["state"], str(r["severity"])] for r in doc["alarms"]],
        )
    else:
        lines.append("no alarms")
    if doc["decisions"]:
        lines.append("")
        lines += _table(
            ["TARGET", "ACTION", "VALUE", "RECOMMENDED", "REASONS"],
            [
                [
                    d["target"],
                    d["action"],
                    _num(d["applied_value"]),
                    _num(d["recommended"]),
                    "; ".join(d["reasons"]),
                ]
                for d in doc["decisions"]
            ],
        )
    if doc["certificates"]:
        lines.append("")
        lines += _table(
            ["DEVICE", "CERTIFICATE", "EXPIRES", "DAYS LEFT"],
            [
                [c["device"], c["path"], c["not_after"] or "unreadable", _num(c["days_left"])]
                for c in doc["certificates"]
            ],
        )
    return "\n".join(lines)
