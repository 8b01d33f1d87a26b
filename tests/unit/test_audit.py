"""Tests for agent.ops.audit on real SQLite files: round trips, rotation, ids across files, readers
in other processes, kill -9, a full disk (a file-size quota, and a real tiny filesystem where this
machine lets us mount one), a read-only filesystem, and the CLI helpers.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.errors import AuditError
from agent.ops.audit import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    AuditConfig,
    AuditLog,
    AuditRow,
    RecordKind,
    format_rows,
    parse_since,
    query_audit,
)
from agent.types import Action, Alarm, AlarmState, Decision, Quality, Recommendation

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
SMALL = 64 * 1024  # the smallest max_bytes: a few hundred rows per file


class Clock:
    """An injected UTC clock that advances one second per reading."""

    def __init__(self, start: datetime = T0) -> None:
        self.t = start - timedelta(seconds=1)

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


def cfg(tmp_path: Path, **kw: object) -> AuditConfig:
    return AuditConfig(path=tmp_path / "state" / "audit.sqlite", **kw)  # type: ignore[arg-type]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    with AuditLog(cfg(tmp_path), clock=Clock()) as a:
        yield a


def _rec(value: float = 55.0, tag: str = "P1.speed_sp") -> Recommendation:
    return Recommendation(tag, value, "lower specific energy", "pump_energy@1.2", 10.0, 20.0, T0)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------- round trips


def test_round_trip_every_kind(log: AuditLog) -> None:
    assert log.healthy
    alarm = Alarm(301, "bearing_wear", "P1", 2, AlarmState.UNACK, "bearing vibration rising", T0, False, 7.1)
    ids = [
        log.record_alarm(alarm, mono=1.0),
        log.record_decision(
            Decision(_rec(), Action.CLAMP, 50.0, ("clamped to max: 50",)),
            target="P1.speed_sp",
            tag="P1.speed_sp",
            qualities={"P1.flow": Quality.good(), "P1.pressure": Quality.uncertain("held")},
            mono=2.0,
            extra={"proposed": 50.0, "mode": "auto"},
        ),
        log.record_decision(
            Decision(_rec(math.nan), Action.REJECT, None, ("value not finite: nan",)),
            target="P1.speed_sp",
            mono=3.0,
        ),
        log.record_decision(
            Decision(None, Action.HOLD, None, ("no recommendation", "stopping")), target="P1.speed_sp"
        ),
        log.record_manual_write("P1.speed_sp", 42.5, "alice", mono=5.0),
        log.record_manual_write("P1.enable", True, "bob", mono=6.0),
        log.record_manual_write("P1.label", "pump one", "bob", mono=7.0),
        log.record_event("start", "agent 0.1.0 started", mono=8.0, extra={"pid": 1234, "nan": math.inf}),
    ]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    rows = log.query()
    assert [r.id for r in rows] == ids
    a, clamp, reject, hold, w_num, w_bool, w_str, ev = rows

    assert a.kind == RecordKind.ALARM and a.utc == T0 and a.mono == 1.0
    assert (a.target, a.tag, a.action, a.value, a.message) == (
        "P1", "bearing_wear", "active_unacknowledged", 7.1, "bearing vibration rising"
    )  # fmt: skip
    assert a.detail == {"code": 301, "severity": 2, "is_alert": False, "at": "2026-05-01T12:00:00.123456Z"}

    assert clamp.kind == "decision" and clamp.utc == T0 + timedelta(seconds=1)
    assert (clamp.target, clamp.tag, clamp.action, clamp.value, clamp.applied) == (
        "P1.speed_sp", "P1.speed_sp", "CLAMP", 55.0, 50.0
    )  # fmt: skip
    assert clamp.reasons == ("clamped to max: 50",)
    assert clamp.qualities == {"P1.flow": "GOOD", "P1.pressure": "UNCERTAIN (held)"}
    assert (
        clamp.model == "pump_energy@1.2" and clamp.message == "lower specific energy" and clamp.user is None
    )
    assert clamp.detail["proposed"] == 50.0 and clamp.detail["mode"] == "auto"
    assert clamp.detail["recommended_for"] == "P1.speed_sp"

    assert reject.action == "REJECT" and reject.value is None and reject.detail["value"] == "nan"
    assert reject.applied is None and reject.reasons == ("value not finite: nan",)

    assert hold.action == "HOLD" and hold.model is None and hold.tag is None
    assert hold.reasons == ("no recommendation", "stopping")
    assert hold.mono > 0  # read from the monotonic clock when not given

    assert (w_num.kind, w_num.tag, w_num.value, w_num.user, w_num.action) == (
        "manual_write", "P1.speed_sp", 42.5, "alice", "WRITE"
    )  # fmt: skip
    assert w_bool.value == 1.0 and w_bool.detail == {"value": True}
    assert w_str.value is None and w_str.detail == {"value": "pump one"}

    assert (ev.kind, ev.action, ev.message) == ("event", "start", "agent 0.1.0 started")
    assert ev.detail == {"pid": 1234, "nan": "inf"}


def test_query_filters(log: AuditLog) -> None:
    for n in range(10):
        log.record_event("tick", f"n={n}")
        log.record_manual_write("P1.sp", n, "alice")
    assert len(log.query()) == 20
    assert [r.message for r in log.query(kinds=["event"], limit=3)] == ["n=7", "n=8", "n=9"]
    assert {r.kind for r in log.query(kinds={"manual_write"})} == {"manual_write"}
    assert log.query(kinds=[]) == []
    assert log.query(limit=0) == []
    since = T0 + timedelta(seconds=15)  # the clock advanced one second per record
    rows = log.query(since=since)
    assert len(rows) == 5 and all(r.utc >= since for r in rows)
    assert (
        log.query(since=since.astimezone(timezone(timedelta(hours=2)))) == rows
    )  # any zone means the same instant


def test_records_are_visible_to_a_reader_in_another_process(log: AuditLog, tmp_path: Path) -> None:
    ids = [log.record_event("tick", str(n)) for n in range(5)]
    code = (
        "import sys, json; from pathlib import Path; from agent.ops.audit import AuditConfig, query_audit; "
        "print(json.dumps([r.id for r in query_audit(AuditConfig(path=Path(sys.argv[1])))]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(log.path)],
        capture_output=True,
        text=True,
        env=_child_env(),
        check=True,
    )
    assert json.loads(out.stdout) == ids


def test_reopen_continues_ids(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    with AuditLog(c) as a:
        first = [a.record_event("tick", str(n)) for n in range(3)]
    with AuditLog(c) as a:
        second = a.record_event("tick", "again")
        assert [r.id for r in a.query()] == [*first, second]
    assert second > max(first)
    assert [r.id for r in query_audit(c)] == [*first, second]


# --------------------------------------------------------------------------- rotation


def _db_files(path: Path) -> list[Path]:
    return sorted(
        p for p in path.parent.iterdir() if re.fullmatch(re.escape(path.name) + r"(\.\d+)?", p.name)
    )


def test_rotation_keeps_the_bound_and_query_sees_rotated_rows(tmp_path: Path) -> None:
    c = cfg(tmp_path, max_bytes=SMALL, keep=2)
    with AuditLog(c) as a:
        ids = [a.record_event("tick", f"{n:05d} " + "x" * 150) for n in range(900)]
        files = _db_files(c.path)
        assert [p.name for p in files] == ["audit.sqlite", "audit.sqlite.1", "audit.sqlite.2"]
        page = 4096
        for p in files:
            assert p.stat().st_size <= SMALL + 2 * page, p  # one record past the bound, at most
        for p in files[1:]:  # rotated files are self-contained: no WAL beside them
            assert not p.with_name(p.name + "-wal").exists()
            with sqlite3.connect(f"file:{p}?mode=ro", uri=True) as conn:
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
                assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
                assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        rows = a.query()
        # the oldest rows went with the oldest file; the rest are all there, in order, from 3 files
        assert [r.id for r in rows] == ids[-len(rows) :]
        assert len(rows) > 2 * 100 and rows[0].id > 1  # two full rotated files; the oldest rows dropped
        assert rows[-1].message.startswith("00899")
        per_file = [
            sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            .execute("SELECT count(*) FROM records")
            .fetchone()[0]
            for p in files
        ]
        assert all(n > 0 for n in per_file) and sum(per_file) == len(rows)
        assert [r.id for r in a.query(limit=5)] == ids[-5:]
        assert [r.id for r in query_audit(c)] == [r.id for r in rows]
    # ids continue after a restart, and past the rotated files' even if the current file is lost
    with AuditLog(c) as a:
        assert a.record_event("tick", "after restart") == ids[-1] + 1
    c.path.unlink()
    newest_rotated = max(r.id for r in query_audit(c))
    with AuditLog(c) as a:
        assert a.record_event("tick", "current file lost") == newest_rotated + 1


def test_rotation_waits_for_a_reader_instead_of_failing(tmp_path: Path) -> None:
    c = cfg(tmp_path, max_bytes=SMALL, keep=3)
    with AuditLog(c) as a:
        a.record_event("tick", "first")
        reader = sqlite3.connect(f"file:{c.path}?mode=ro", uri=True, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM records").fetchone()  # holds a read snapshot
        for n in range(600):
            a.record_event("tick", f"{n} " + "x" * 150)
        assert a.healthy
        assert _db_files(c.path) == [c.path]  # deferred while the reader holds the file
        reader.execute("COMMIT")
        reader.close()
        for n in range(5):
            a.record_event("tick", f"late {n}")
        assert len(_db_files(c.path)) == 2
        assert len(a.query()) == 606


# --------------------------------------------------------------------------- refusals


def test_second_writer_is_refused(log: AuditLog) -> None:
    other = AuditLog(AuditConfig(path=log.path))
    with pytest.raises(AuditError, match="in use by another process"):
        other.open()
    assert not other.healthy
    assert log.record_event("tick", "still fine") > 0


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    with AuditLog(c) as a:
        a.record_event("tick", "x")
    with sqlite3.connect(c.path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    a = AuditLog(c)
    with pytest.raises(AuditError, match="schema version 2, newer than this agent's 1"):
        a.open()
    assert not a.healthy and a.last_error is not None
    with pytest.raises(AuditError, match="written by a newer agent"):
        query_audit(c)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sqlite", "not an audit log"),
        ("garbage", "file is not a database"),
        ("foreign", "not an edge-agent audit log"),
    ],
)
def test_foreign_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    c = cfg(tmp_path)
    c.path.parent.mkdir(parents=True)
    if content == "garbage":
        c.path.write_bytes(b"this is not a database, it is a text file" * 100)
    else:
        with sqlite3.connect(c.path) as conn:
            conn.execute("CREATE TABLE t (x)")
            if content == "foreign":
                conn.execute("PRAGMA user_version=1")
    a = AuditLog(c)
    with pytest.raises(AuditError, match=message):
        a.open()
    assert not a.healthy
    with pytest.raises(AuditError):
        a.record_event("tick", "x")


def test_closed_log_refuses_records(tmp_path: Path) -> None:
    a = AuditLog(cfg(tmp_path))
    assert not a.healthy  # not opened yet: the Guard holds
    a.open()
    a.close()
    a.close()
    assert not a.healthy
    with pytest.raises(AuditError, match="closed"):
        a.record_event("tick", "x")


def test_config_bounds() -> None:
    c = AuditConfig(path=Path("/var/lib/edge-agent/audit.sqlite"))
    assert (c.max_bytes, c.keep) == (64 * 1024 * 1024, 5)
    with pytest.raises(ValueError):
        AuditConfig(path=Path("a"), max_bytes=1000)
    with pytest.raises(ValueError):
        AuditConfig(path=Path("a"), keep=0)
    with pytest.raises(ValueError):
        AuditConfig(path=Path("a"), rotate=True)  # type: ignore[call-arg]


def test_threads_share_one_log(log: AuditLog) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for n in range(50):
            rid = log.record_event("tick", f"{k}/{n}")
            with lock:
                got.append(rid)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 300
    assert sorted(r.id for r in log.query()) == sorted(got)


# --------------------------------------------------------------------------- crashes


WRITER = r"""
import sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
from pathlib import Path
from agent.ops.audit import AuditConfig, AuditLog
log = AuditLog(AuditConfig(path=Path(sys.argv[1]), max_bytes=int(sys.argv[2]), keep=1000))
log.open()
n = 0
while True:
    rid = log.record_event("tick", f"n={n} " + "x" * 200)
    sys.stdout.write(f"{rid}\n")
    sys.stdout.flush()
    n += 1
"""


def test_kill_9_loses_nothing_that_was_reported(tmp_path: Path) -> None:
    """A writer is SIGKILLed mid-run (several times, rotating small files as it goes): every id
    it printed after ``record_event`` returned is in the log afterwards."""
    c = cfg(tmp_path, max_bytes=SMALL, keep=1000)
    c.path.parent.mkdir(parents=True)
    printed: list[int] = []
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(c.path), str(SMALL)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        assert proc.stdout is not None
        lines: list[str] = []
        while len(lines) < 100 + 61 * round_:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err
        lines.extend(rest.splitlines(keepends=True))
        # only complete lines count: a line cut by the kill was never fully reported
        ids = [int(x) for x in lines if re.fullmatch(r"\d+\n", x)]
        assert ids, err
        printed.extend(ids)
    assert printed == sorted(printed) and len(set(printed)) == len(printed)
    found = {r.id for r in query_audit(c)}
    missing = sorted(set(printed) - found)
    assert not missing, f"{len(missing)} reported ids lost: {missing[:10]}"
    assert len(_db_files(c.path)) > 2  # the kills happened across rotations
    with AuditLog(c) as a:
        assert a.record_event("tick", "after the kills") > max(found)


FILLER = r"""
import os, resource, signal, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
from pathlib import Path
from agent.errors import AuditError
from agent.ops.audit import AuditConfig, AuditLog

path, how = Path(sys.argv[1]), sys.argv[2]
log = AuditLog(AuditConfig(path=path))
log.open()
for _ in range(5):
    print("OK", log.record_event("fill", "before the disk fills"), log.healthy, flush=True)
if how == "rlimit":
    # A file-size quota for this process: write() then fails with EFBIG (SIGXFSZ ignored).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    files = [p for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max(p.stat().st_size for p in files) + 3 * 4096, hard))
errors = 0
for n in range(20000):
    try:
        rid = log.record_event("fill", f"{n} " + "x" * 300)
    except AuditError as exc:
        errors += 1
        print("ERR", log.healthy, str(exc).replace("\n", " "), flush=True)
        if errors == 3:
            break
    else:
        print("OK", rid, log.healthy, flush=True)
if how == "rlimit":
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
else:
    os.unlink(how)  # free the space the filler file took
rid = log.record_event("recovered", "space again")
print("OK", rid, log.healthy, flush=True)
log.close()
"""


def _run_filler(path: Path, how: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FILLER, str(path), how],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    ok: list[int] = []
    errors: list[str] = []
    for line in out.stdout.splitlines():
        word, rest = line.split(" ", 1)
        if word == "OK":
            rid, healthy = rest.split()
            ok.append(int(rid))
            assert healthy == "True"
        else:
            assert word == "ERR"
            assert rest.startswith("False ")  # healthy is False once a record failed
            errors.append(rest)
    assert len(errors) == 3, out.stdout[-2000:]
    assert all("writes must stop" in e for e in errors)
    assert any(re.search(r"disk is full|disk I/O error|SQLITE_FULL|SQLITE_IOERR", e) for e in errors), errors
    rows = query_audit(AuditConfig(path=path))
    found = {r.id for r in rows}
    assert set(ok) <= found  # everything reported as recorded was committed ...
    assert {r.id for r in rows if r.action in ("fill", "recovered")} == set(ok)  # ... and nothing else
    assert rows[-1].action == "recovered"  # and it recovered once there was room again


def test_full_disk_file_size_quota(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    _run_filler(path, "rlimit")


# --------------------------------------------------------------------------- CLI helpers

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("1w", NOW - timedelta(days=7)),
        (" 3 H ", NOW - timedelta(hours=3)),
        ("2026-04-30T08:15:00Z", datetime(2026, 4, 30, 8, 15, tzinfo=UTC)),
        ("2026-04-30T10:15:00+02:00", datetime(2026, 4, 30, 8, 15, tzinfo=UTC)),
        ("2026-04-30T08:15", datetime(2026, 4, 30, 8, 15, tzinfo=UTC)),
        ("2026-04-30", datetime(2026, 4, 30, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    got = parse_since(text, now=NOW)
    assert got == expected and got.tzinfo is not None


@pytest.mark.parametrize("text", ["", "yesterday", "10x", "-5m", "2026-13-01", "m10"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="give an ISO time"):
        parse_since(text, now=NOW)


def test_parse_since_defaults_to_now() -> None:
    assert abs(parse_since("0s") - datetime.now(UTC)) < timedelta(seconds=5)


def test_format_rows(log: AuditLog) -> None:
    log.record_decision(
        Decision(_rec(60.0), Action.CLAMP, 50.0, ("clamped to max: 50", "rate limited: 6/min")),
        target="P1.speed_sp",
        tag="P1.speed_rec",
        qualities={"P1.flow": Quality.good(), "P1.temp": Quality.bad("timeout")},
    )
    log.record_decision(
        Decision(_rec(math.inf), Action.REJECT, None, ("value not finite: inf",)), target="P1.speed_sp"
    )
    log.record_alarm(Alarm(7, "cavitation", "P1", 1, AlarmState.NORMAL, "back to normal", T0))
    log.record_manual_write("P1.speed_sp", 40, "alice")
    log.record_event("stop", "shutting down")
    rows = log.query()
    text = list(format_rows(rows, as_json=False))
    assert len(text) == 5
    assert text[0] == (
        "2026-05-01T12:00:00.123Z  #1  decision      P1.speed_sp -> P1.speed_rec  CLAMP  value=60  applied=50  "
        "[clamped to max: 50; rate limited: 6/min]  inputs: P1.temp BAD (timeout)  model=pump_energy@1.2  "
        "'lower specific energy'"
    )
    assert "REJECT  value=inf" in text[1]
    assert "P1/cavitation  normal" in text[2]
    assert "manual_write  P1.speed_sp  WRITE  value=40  user=alice" in text[3]
    assert text[4].endswith("event         stop  shutting down")
    objs = [json.loads(line) for line in format_rows(rows, as_json=True)]
    assert [o["id"] for o in objs] == [r.id for r in rows]
    assert objs[0]["utc"] == "2026-05-01T12:00:00.123456Z"
    assert objs[0]["reasons"] == ["clamped to max: 50", "rate limited: 6/min"]
    assert objs[0]["qualities"] == {"P1.flow": "GOOD", "P1.temp": "BAD (timeout)"}
    assert objs[1]["value"] is None and objs[1]["detail"]["value"] == "inf"
    assert objs[3]["user"] == "alice"
    assert isinstance(rows[0], AuditRow) and rows[0].as_dict() == objs[0]


def test_a_non_finite_time_does_not_break_the_log(log: AuditLog) -> None:
    rid = log.record_event("tick", "clock broken", mono=math.nan)
    assert log.healthy
    (row,) = log.query()
    assert row.id == rid and math.isfinite(row.mono) and row.detail == {"mono": "nan"}
