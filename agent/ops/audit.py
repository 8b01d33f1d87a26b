"""The audit log: every write-back decision, alarm transition, commissioning write and lifecycle
event, committed to a SQLite file before the call returns.

The write path sends to the PLC only after ``record_decision`` has returned, so a record that
was not committed is never reported as recorded: any SQLite or OS error raises
:class:`~agent.errors.AuditError`, sets :attr:`AuditLog.healthy` to False (the Guard then holds
every write) and leaves nothing half-written behind. The next call tries again (reopening the
file), and a success sets ``healthy`` back to True.

Storage
    One SQLite file in WAL mode with ``synchronous=FULL`` (each record is fsynced at commit),
    schema versioned with ``PRAGMA user_version`` and marked with ``PRAGMA application_id``.
    When the file reaches ``max_bytes`` the next record first rotates it: the WAL is checkpointed
    into the file, the file is switched back to a rollback journal (so a rotated file is one
    self-contained file that opens read-only), closed and renamed ``<name>.1`` (older ones shift
    to ``.2`` … ``.keep``; the oldest is deleted), and a new file is started. Record ids continue
    across files, so an id names one record for the log's lifetime. Disk use stays below about
    ``(keep + 1) × max_bytes`` plus the WAL (at most about ``max_bytes / 8``).

Thread safety
    One :class:`AuditLog` per file and per process; it holds an exclusive ``flock`` on
    ``<name>.lock`` so that a second writer fails clearly. Every method may be called from any
    thread (the runtime calls it through ``asyncio.to_thread``): calls are serialised by one
    internal lock, and :attr:`healthy` may be read at any time without it. Readers in other
    processes (``edge-agent audit``) use :func:`query_audit`, which opens the files read-only.

Record columns (one table, ``records``)::

    id          global, increasing record id
    utc         ISO 8601 UTC time of recording (``2026-05-01T12:00:00.000000Z``)
    mono        monotonic seconds of the event (time.monotonic() unless given)
    kind        alarm | decision | outcome | manual_write | event
    target      alarm: asset; decision, outcome: setpoint tag; manual_write: tag
    tag         alarm: alarm name; decision, outcome: the tag written (NULL if none); manual_write: tag
    action      alarm: new state; decision: WRITE/CLAMP/HOLD/REJECT; manual_write: WRITE;
                outcome: verified | mismatch | timed_out | unverified | refused | failed | not_sent;
                event: the event's name (start, stop, model_loaded …)
    value       the recommended / written / alarm value, when a finite number; outcome: the
                value read back
    applied     decision: the value the Guard applied; outcome: the value sent
    reasons     JSON list of reasons
    qualities   JSON object tag → quality ("GOOD", "BAD (timeout)") of the model's inputs
    model       decision: the model that recommended
    user        manual_write: the OS user
    message     alarm message, recommendation reason, event message
    detail      JSON object: anything else (alarm code and severity; a value that is not a
                finite number, kept verbatim; extra fields the caller passes)
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import math
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Self, TypeVar

import structlog
from pydantic import Field

from agent.configbase import FrozenModel
from agent.errors import AuditError
from agent.types import Alarm, Decision, Quality, Value, utcnow

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "AuditConfig",
    "AuditLog",
    "AuditRow",
    "RecordKind",
    "format_rows",
    "parse_since",
    "query_audit",
]

SCHEMA_VERSION = 1
APPLICATION_ID = 0x45414744  # "EAGD": marks a file as an edge-agent audit log

_log = structlog.get_logger(__name__)

_T = TypeVar("_T")

_SCHEMA = (
    """CREATE TABLE records (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        utc       TEXT NOT NULL,
        mono      REAL NOT NULL,
        kind      TEXT NOT NULL,
        target    TEXT,
        tag       TEXT,
        action    TEXT,
        value     REAL,
        applied   REAL,
        reasons   TEXT NOT NULL DEFAULT '[]',
        qualities TEXT NOT NULL DEFAULT '{}',
        model     TEXT,
        user      TEXT,
        message   TEXT NOT NULL DEFAULT '',
        detail    TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX records_utc ON records (utc)",
    "CREATE INDEX records_kind ON records (kind, id)",
)
_COLUMNS = (
    "id, utc, mono, kind, target, tag, action, value, applied, reasons, qualities, model, user, message, "
    "detail"
)
_UTC_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_BUSY_MS = 5000


class AuditConfig(FrozenModel):
    """Where the audit log lives and how large it may grow."""

    path: Path
    max_bytes: Annotated[int, Field(ge=64 * 1024)] = 64 * 1024 * 1024
    """Rotate the file once it reaches this size."""
    keep: Annotated[int, Field(ge=1, le=1000)] = 5
    """Rotated files kept (``<name>.1`` newest … ``<name>.<keep>`` oldest)."""


class RecordKind(enum.StrEnum):
    """The ``kind`` column."""

    ALARM = "alarm"
    DECISION = "decision"
    OUTCOME = "outcome"
    MANUAL_WRITE = "manual_write"
    EVENT = "event"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One record as read back (see the module docstring for what each column holds)."""

    id: int
    utc: datetime
    mono: float
    kind: str
    target: str | None
    tag: str | None
    action: str | None
    value: float | None
    applied: float | None
    reasons: tuple[str, ...]
    qualities: Mapping[str, str]
    model: str | None
    user: str | None
    message: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (UTC time as ISO text; non-finite numbers as text)."""
        return {
            "id": self.id,
            "utc": _utc_text(self.utc),
            "mono": self.mono,
            "kind": self.kind,
            "target": self.target,
            "tag": self.tag,
            "action": self.action,
            "value": _json_value(self.value),
            "applied": _json_value(self.applied),
            "reasons": list(self.reasons),
            "qualities": dict(self.qualities),
            "model": self.model,
            "user": self.user,
            "message": self.message,
            "detail": dict(self.detail),
        }


# --------------------------------------------------------------------------- helpers


def _utc_text(t: datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime(_UTC_FORMAT)


def _json_value(v: Value) -> Value:
    """A JSON-safe scalar: non-finite floats become their text ("nan", "inf", "-inf")."""
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def _jsonable(obj: object) -> Any:
    """``obj`` with non-finite floats as text and unknown types as ``str()``: always dumpable."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)


def _number(v: object) -> float | None:
    """The value for a REAL column: finite numbers only (bools as 0/1)."""
    if isinstance(v, bool | int | float) and math.isfinite(v):
        return float(v)
    return None


def _verbatim(v: object) -> bool:
    """True if a value must also be kept in ``detail`` (it does not fit a REAL column as is)."""
    return v is not None and (isinstance(v, bool) or _number(v) is None)


def _rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _ro_uri(path: Path) -> str:
    return "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    text = str(exc) or type(exc).__name__
    return f"{text} ({name})" if name else text


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _detach_wal(conn: sqlite3.Connection) -> str | None:
    """Checkpoint the WAL into the file and switch it to a rollback journal, without waiting
    for readers. None on success; otherwise why not (the file then stays in WAL mode)."""
    try:
        _, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames != done:
            return "a reader holds part of the WAL"
        conn.execute("PRAGMA busy_timeout=200")
        try:
            if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                return "a reader blocks the checkpoint"
            mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        finally:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
    except sqlite3.Error as exc:
        return _describe(exc)
    return None if str(mode).lower() == "delete" else f"journal mode stayed {mode!r}"


def _connect_ro(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only. A file in WAL mode needs its ``-shm`` (which a read-only
    directory cannot give): when no WAL content exists, read the file as immutable instead."""
    conn = sqlite3.connect(_ro_uri(path), uri=True, timeout=_BUSY_MS / 1000)
    try:
        conn.execute("PRAGMA user_version").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise
    return sqlite3.connect(_ro_uri(path) + "&immutable=1", uri=True)


def _row(r: Sequence[Any]) -> AuditRow:
    detail = json.loads(r[14]) if r[14] else {}
    return AuditRow(
        id=int(r[0]),
        utc=datetime.strptime(r[1], _UTC_FORMAT).replace(tzinfo=UTC),
        mono=float(r[2]),
        kind=str(r[3]),
        target=r[4],
        tag=r[5],
        action=r[6],
        value=r[7],
        applied=r[8],
        reasons=tuple(json.loads(r[9])),
        qualities=json.loads(r[10]),
        model=r[11],
        user=r[12],
        message=r[13] or "",
        detail=detail,
    )


def _files(path: Path) -> list[Path]:
    """The log's files that exist, oldest first (rotated ``.N`` … ``.1``, then the current)."""
    rotated: dict[int, Path] = {}
    prefix = path.name + "."
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            suffix = p.name[len(prefix) :] if p.name.startswith(prefix) else ""
            if suffix.isdigit():
                rotated[int(suffix)] = p
    out = [rotated[n] for n in sorted(rotated, reverse=True)]
    if path.exists():
        out.append(path)
    return out


def _select(
    conn: sqlite3.Connection, since: datetime | None, kinds: Iterable[str] | None, limit: int | None
) -> list[AuditRow]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("utc >= ?")
        params.append(_utc_text(since))
    if kinds is not None:
        ks = list(kinds)
        where.append(f"kind IN ({', '.join('?' * len(ks))})" if ks else "0")
        params.extend(ks)
    sql = f"SELECT {_COLUMNS} FROM records"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_row(r) for r in conn.execute(sql, params)]


def _read_files(
    path: Path,
    since: datetime | None,
    kinds: Iterable[str] | None,
    limit: int | None,
    current: sqlite3.Connection | None = None,
) -> list[AuditRow]:
    """Rows from the log at ``path`` (the newest ``limit`` of them), returned oldest first.

    ``current`` is the writer's own connection to ``path``, if the caller holds it. A file that
    vanishes while we read (rotated by the writer in another process) restarts the read.
    """
    kinds = None if kinds is None else list(kinds)
    found: dict[int, AuditRow] = {}
    for _attempt in range(3):
        vanished = False
        for p in reversed(_files(path)):
            remaining = None if limit is None else limit - len(found)
            if remaining is not None and remaining <= 0:
                break
            try:
                if current is not None and p == path:
                    rows = _select(current, since, kinds, remaining)
                else:
                    with contextlib.closing(_connect_ro(p)) as conn:
                        version = conn.execute("PRAGMA user_version").fetchone()[0]
                        if version > SCHEMA_VERSION:
                            raise AuditError(
                                f"audit file {p} has schema version {version}; this agent reads up to "
                                f"{SCHEMA_VERSION} (written by a newer agent)"
                            )
                        if version == 0:
                            continue  # created but never initialised (killed at birth): no records
                        rows = _select(conn, since, kinds, remaining)
            except sqlite3.Error as exc:
                if not p.exists():
                    vanished = True
                    continue
                raise AuditError(f"audit file {p} cannot be read: {_describe(exc)}") from exc
            for row in rows:
                found.setdefault(row.id, row)  # a file renamed while we read may show up twice
        if not vanished:
            break
        found.clear()
    rows_sorted = sorted(found.values(), key=lambda r: r.id)
    if limit is None:
        return rows_sorted
    return rows_sorted[-limit:] if limit > 0 else []


def query_audit(
    config: AuditConfig,
    since: datetime | None = None,
    kinds: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[AuditRow]:
    """Read records from the current and rotated files without opening them for writing.

    For the CLI, while the agent may be running. Returns records with ``utc >= since`` whose
    kind is in ``kinds``; with ``limit``, the newest ``limit`` of them. Always oldest first.
    Raises :class:`AuditError` if a file cannot be read.
    """
    return _read_files(config.path, since, kinds, limit)


# --------------------------------------------------------------------------- the log


class AuditLog:
    """The audit log (see the module docstring for storage, columns and thread safety).

    Lifecycle: ``open()`` (or ``with AuditLog(cfg) as log:``), ``record_*`` any number of
    times, ``close()``. ``record_*`` return the new record's id once it is committed, and raise
    :class:`AuditError` (with ``healthy`` set to False) if it is not.
    """

    def __init__(
        self,
        config: AuditConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        guest: bool = False,
    ) -> None:
        """``guest=True`` is for a short-lived second writer beside the running agent (the
        commissioning CLI): it does not take the owner's lock and never rotates; SQLite's own
        locking orders its rows with the agent's."""
        self._guest = guest
        self._config = config
        self._path = config.path
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self._last_id = 0
        self._page_size = 4096
        self._healthy = False
        self._last_error: str | None = None
        self._rotation_deferred = False

    # ---- state

    @property
    def path(self) -> Path:
        return self._path

    @property
    def healthy(self) -> bool:
        """True while records can be committed (False before ``open()`` and after a failure)."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        """The message of the last failure (kept after recovery, for status pages)."""
        return self._last_error

    # ---- lifecycle

    def open(self) -> None:
        """Open (creating or upgrading) the log. Raises AuditError and sets healthy False."""
        with self._lock:
            if self._closed:
                raise AuditError(f"audit log {self._path} is closed")
            self._guarded(self._ensure_open)

    def close(self) -> None:
        """Checkpoint and close the file, release the lock file. Idempotent."""
        with self._lock:
            self._closed = True
            self._healthy = False
            if self._conn is not None:
                conn, self._conn = self._conn, None
                # A closed log is one self-contained file that any user can read, even read-only.
                why = _detach_wal(conn)
                if why is not None:
                    _log.warning("audit log left in WAL mode at close", path=str(self._path), reason=why)
                conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- records

    def record_alarm(self, alarm: Alarm, *, mono: float | None = None) -> int:
        """Record an alarm (or alert) transition."""
        detail: dict[str, Any] = {
            "code": alarm.code,
            "severity": alarm.severity,
            "is_alert": alarm.is_alert,
            "at": _utc_text(alarm.at),
        }
        if _verbatim(alarm.value):
            detail["value"] = _json_value(alarm.value)
        return self._insert(
            RecordKind.ALARM,
            mono,
            target=alarm.asset,
            tag=alarm.name,
            action=str(alarm.state),
            value=_number(alarm.value),
            message=alarm.message,
            detail=detail,
        )

    def record_decision(
        self,
        decision: Decision,
        *,
        target: str,
        tag: str | None = None,
        qualities: Mapping[str, Quality] | None = None,
        mono: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a Guard decision for the setpoint ``target``; ``tag`` is the tag written.

        Call it before sending the write: the write may go out only once this has returned.
        ``qualities`` are those of the model's inputs; ``extra`` lands in ``detail``.
        """
        rec = decision.recommendation
        detail: dict[str, Any] = dict(extra or {})
        value: float | None = None
        if rec is not None:
            value = _number(rec.value)
            if _verbatim(rec.value):
                detail["value"] = _json_value(rec.value)
            detail["recommended_at"] = _utc_text(rec.created_at)
            detail["recommended_for"] = rec.target_tag
        return self._insert(
            RecordKind.DECISION,
            mono,
            target=target,
            tag=tag,
            action=str(decision.action),
            value=value,
            applied=_number(decision.applied_value),
            reasons=list(decision.reasons),
            qualities={k: str(q) for k, q in (qualities or {}).items()},
            model=rec.model if rec is not None else None,
            message=rec.reason if rec is not None else "",
            detail=detail,
        )

    def record_outcome(
        self,
        outcome: str,
        *,
        target: str,
        tag: str,
        sent: float | None,
        read_back: Value = None,
        decision_id: int | None = None,
        message: str = "",
        mono: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """Record what became of a write whose decision was recorded (``decision_id``): the
        value ``sent``, the value read back after it, and ``outcome`` (verified, mismatch,
        timed_out, unverified, refused, failed, not_sent)."""
        detail: dict[str, Any] = dict(extra or {})
        if decision_id is not None:
            detail["decision_id"] = decision_id
        if _verbatim(read_back):
            detail["read_back"] = _json_value(read_back)
        return self._insert(
            RecordKind.OUTCOME,
            mono,
            target=target,
            tag=tag,
            action=outcome,
            value=_number(read_back),
            applied=_number(sent),
            message=message,
            detail=detail,
        )

    def last_sends(self, boot_id: str) -> dict[str, tuple[float, float | None]]:
        """Per setpoint target, the monotonic time and applied value of the last decision to
        write (WRITE or CLAMP) recorded during the boot ``boot_id``: the write-back unit's rate
        credit after a restart starts no earlier. Raises :class:`AuditError` if unreadable."""
        # SQLite takes the bare column ``applied`` from the row that holds max(mono).
        sql = (
            "SELECT target, max(mono), applied FROM records WHERE kind = 'decision' "
            "AND action IN ('WRITE', 'CLAMP') AND json_extract(detail, '$.boot_id') = ? GROUP BY target"
        )
        out: dict[str, tuple[float, float | None]] = {}
        with self._lock:
            for p in _files(self._path):
                try:
                    if p == self._path and self._conn is not None:
                        rows = self._conn.execute(sql, (boot_id,)).fetchall()
                    else:
                        with contextlib.closing(_connect_ro(p)) as conn:
                            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                                continue
                            rows = conn.execute(sql, (boot_id,)).fetchall()
                except sqlite3.Error as exc:
                    raise AuditError(f"audit file {p} cannot be read: {_describe(exc)}") from exc
                for target, mono, applied in rows:
                    if target is None or mono is None:
                        continue
                    if str(target) not in out or float(mono) > out[str(target)][0]:
                        out[str(target)] = (float(mono), None if applied is None else float(applied))
        return out

    def record_manual_write(self, tag: str, value: Value, user: str, *, mono: float | None = None) -> int:
        """Record a commissioning write (``edge-agent write``) by the OS user ``user``."""
        detail = {"value": _json_value(value)} if _verbatim(value) else {}
        return self._insert(
            RecordKind.MANUAL_WRITE,
            mono,
            target=tag,
            tag=tag,
            action="WRITE",
            value=_number(value),
            user=user,
            detail=detail,
        )

    def record_event(
        self, kind: str, message: str, *, mono: float | None = None, extra: Mapping[str, Any] | None = None
    ) -> int:
        """Record a lifecycle event (``kind`` e.g. start, stop, model_loaded, mode_changed)."""
        detail = dict(extra or {})
        return self._insert(RecordKind.EVENT, mono, action=kind, message=message, detail=detail)

    def record_model(
        self,
        action: str,
        model: str,
        message: str,
        *,
        user: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a model store change (``action`` e.g. model_install, model_switch,
        model_rollback, model_remove, model_refused, model_trial) for store model ``model``."""
        detail = dict(extra or {})
        return self._insert(
            RecordKind.EVENT, None, action=action, model=model, user=user, message=message, detail=detail
        )

    # ---- reading

    def query(
        self,
        since: datetime | None = None,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[AuditRow]:
        """Records from the current and rotated files, oldest first (see :func:`query_audit`)."""
        with self._lock:
            return _read_files(self._path, since, kinds, limit, self._conn)

    # ---- internals (all called with self._lock held)

    def _guarded(self, fn: Callable[[], _T]) -> _T:
        try:
            result = fn()
        except (sqlite3.Error, OSError, AuditError) as exc:
            message = str(exc) if isinstance(exc, AuditError) else f"audit log {self._path}: {_describe(exc)}"
            if self._healthy:
                _log.error("audit log failed: writes stop", path=str(self._path), error=message)
            self._healthy = False
            self._last_error = message
            self._drop_connection()
            if isinstance(exc, AuditError):
                raise
            raise AuditError(message + ": records cannot be committed, writes must stop") from exc
        if not self._healthy:
            if self._last_error is not None:
                _log.warning("audit log recovered", path=str(self._path))
            self._healthy = True
        return result

    def _insert(self, kind: RecordKind, mono: float | None, **cols: Any) -> int:
        detail = dict(cols.pop("detail", {}))
        if mono is not None and not math.isfinite(mono):
            detail["mono"] = repr(mono)  # a NaN would break the NOT NULL column: keep it as text
            mono = None
        row = {
            "utc": _utc_text(self._clock()),
            "mono": self._monotonic() if mono is None else mono,
            "kind": str(kind),
            "target": None,
            "tag": None,
            "action": None,
            "value": None,
            "applied": None,
            "reasons": [],
            "qualities": {},
            "model": None,
            "user": None,
            "message": "",
            "detail": {},
        }
        row.update(cols, detail=detail)
        for k in ("reasons", "qualities", "detail"):
            row[k] = json.dumps(_jsonable(row[k]), allow_nan=False)
        names = list(row)
        sql = f"INSERT INTO records ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"

        def insert() -> int:
            if self._closed:
                raise AuditError(f"audit log {self._path} is closed")
            self._ensure_open()
            if not self._guest:
                self._maybe_rotate()
            conn = self._ensure_open()  # a new file if it rotated
            cur = conn.execute(sql, [row[n] for n in names])  # autocommit: committed on return
            if conn.in_transaction:  # never expected; an open transaction would not be durable
                conn.execute("COMMIT")
            rid = cur.lastrowid
            if rid is None:
                raise AuditError(f"audit log {self._path}: insert returned no id")
            self._last_id = rid
            return rid

        with self._lock:
            return self._guarded(insert)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _take_lock_file(self) -> None:
        if self._lock_fd is not None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditError(
                f"audit log {self._path} is in use by another process (lock {lock_path}): "
                "only one agent may write it"
            ) from None
        self._lock_fd = fd

    def _ensure_open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self._guest:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._take_lock_file()
        created = not self._path.exists()
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=_BUSY_MS / 1000
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AuditError(f"audit log {self._path}: cannot use WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = max(16, min(1000, self._config.max_bytes // self._page_size // 8))
            conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            conn.execute(f"PRAGMA journal_size_limit={pages * self._page_size}")
            self._init_schema(conn)
        except BaseException:
            conn.close()
            raise
        if created:
            _fsync_dir(self._path.parent)
        self._conn = conn
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock: it also proves the file is writable now.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            if version == 0:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise AuditError(
                        f"{self._path} is a SQLite file but not an audit log (no schema version)"
                    )
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                seed = max(self._last_id, self._max_rotated_id())
                if seed:
                    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)", (seed,))
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif app != APPLICATION_ID:
                raise AuditError(f"{self._path} is not an edge-agent audit log (application_id {app:#x})")
            elif version > SCHEMA_VERSION:
                raise AuditError(
                    f"audit log {self._path} has schema version {version}, newer than this agent's "
                    f"{SCHEMA_VERSION}: move it aside or upgrade the agent"
                )
            # version < SCHEMA_VERSION: migrations go here when the schema changes.
            last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
            self._last_id = max(self._last_id, int(last[0]) if last else 0)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _max_rotated_id(self) -> int:
        best = 0
        for p in _files(self._path):
            if p == self._path:
                continue
            try:
                with contextlib.closing(_connect_ro(p)) as c:
                    best = max(best, int(c.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]))
            except sqlite3.Error as exc:  # ids then may repeat an unreadable file's; never fatal
                _log.warning("audit: rotated file unreadable", path=str(p), error=_describe(exc))
        return best

    def _maybe_rotate(self) -> None:
        conn = self._conn
        assert conn is not None
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        if pages * self._page_size < self._config.max_bytes:
            return
        why = _detach_wal(conn)
        if why is not None:
            # A reader (edge-agent audit) holds the file: rotate on a later record, never wait.
            if not self._rotation_deferred:
                _log.warning("audit rotation deferred", path=str(self._path), reason=why)
            self._rotation_deferred = True
            return
        self._rotation_deferred = False
        self._conn = None
        conn.close()
        for suffix in ("-wal", "-shm"):  # gone after a clean close in DELETE mode; be sure
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path.with_name(self._path.name + suffix))
        keep = self._config.keep
        for p in _files(self._path):  # the oldest, and any left beyond a smaller ``keep``
            number = p.name[len(self._path.name) + 1 :]
            if number.isdigit() and int(number) >= keep:
                p.unlink()
        for n in range(keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(_rotated(self._path, n), _rotated(self._path, n + 1))
        os.rename(self._path, _rotated(self._path, 1))
        _fsync_dir(self._path.parent)
        _log.info("audit log rotated", path=str(self._path), last_id=self._last_id, keep=keep)


# --------------------------------------------------------------------------- CLI helpers

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """Parse ``--since``: an ISO time or date (naive means UTC) or an age (``90s``, ``10m``,
    ``2h``, ``1d``, ``1w``) before ``now`` (default: the current UTC time). Raises ValueError."""
    m = _RELATIVE.match(text)
    if m:
        seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
        return (now or utcnow()) - timedelta(seconds=seconds)
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: give an ISO time (2026-05-01T12:00:00Z, 2026-05-01) "
            "or an age such as 10m, 2h, 1d"
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _num_text(v: float | None, verbatim: object) -> str | None:
    if v is not None:
        return f"{v:g}"
    if verbatim is not None:
        return str(verbatim)
    return None


def format_rows(rows: Iterable[AuditRow], as_json: bool = False) -> Iterator[str]:
    """Lines for ``edge-agent audit``: one JSON object per row, or one readable line per row."""
    for r in rows:
        if as_json:
            yield json.dumps(r.as_dict(), ensure_ascii=False, allow_nan=False)
            continue
        parts = [r.utc.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", f"#{r.id}", f"{r.kind:<12}"]
        if r.kind == RecordKind.DECISION:
            subject = r.target or ""
            if r.tag and r.tag != r.target:
                subject += f" -> {r.tag}"
            parts.append(subject)
        elif r.kind == RecordKind.ALARM:
            parts.append(f"{r.target}/{r.tag}")
        elif r.target:
            parts.append(r.target)
        if r.action:
            parts.append(r.action)
        value = _num_text(r.value, r.detail.get("value"))
        if value is not None:
            parts.append(f"value={value}")
        if r.applied is not None:
            parts.append(f"applied={r.applied:g}")
        if r.reasons:
            parts.append("[" + "; ".join(r.reasons) + "]")
        bad = {k: q for k, q in r.qualities.items() if q != "GOOD"}
        if bad:
            parts.append("inputs: " + ", ".join(f"{k} {q}" for k, q in sorted(bad.items())))
        if r.model:
            parts.append(f"model={r.model}")
        if r.user:
            parts.append(f"user={r.user}")
        if r.message:
            parts.append(repr(r.message) if r.kind != RecordKind.EVENT else r.message)
        yield "  ".join(parts)
