"""Recording training data through the agent: tags at a fixed period into rotating files.

A *recording* is a directory (the format every reader in ``export/`` and the replay loads)::

    recording.json                       the manifest (below), rewritten atomically
    wide-20261207T032633.000Z.csv        timestamp,<tag>,... one row per period; a cell is empty
                                         where the sample was not GOOD
    long-20261207T032633.000Z.csv.gz     timestamp,tag,value,quality,reason: one row per tag per
                                         period, with the quality (GOOD/UNCERTAIN/BAD) and reason

Timestamps are ISO 8601 UTC with milliseconds and ``Z`` (``2026-12-07T03:26:33.000Z``), on the
period's grid of the wall clock (a 180 s recording has rows at :00, :03, :06 ...). A file pair
shares its stamp (its first row); a new pair starts when the open one reaches ``rotate_mb`` or
``rotate_s``, and when a recording is continued. The long file is a series of complete gzip
members (one per flush; ``gzip``/``zcat`` read them as one stream), so a kill never leaves a
torn stream, and every flush is one ``write`` of complete rows.

``recording.json``::

    {"format": "edge-agent-recording", "format_version": 1, "agent_version": "0.1.0",
     "period_s": 1.0, "start_utc": "…Z", "end_utc": "…Z", "complete": true, "stopped": null,
     "tags": [{"name": "p1_flow", "unit": "m3/h",
               "counts": {"GOOD": 3598, "UNCERTAIN": 0, "BAD": 2}}],
     "gaps": [{"start_utc": "…Z", "end_utc": "…Z", "reason": "no GOOD sample"}],
     "files": [{"name": "wide-….csv", "kind": "wide", "bytes": 81234, "rows": 3600,
                "first_utc": "…Z", "last_utc": "…Z", "counts": [[3598, 0, 2]]},
               {"name": "long-….csv.gz", "kind": "long", "bytes": 20411, "rows": 3600, …}],
     "removed": {"files": 0, "bytes": 0}}

``start_utc``/``end_utc`` are the first and last row still on disk; ``counts`` (per tag, and
per wide file as ``[GOOD, UNCERTAIN, BAD]`` in the order of ``tags``) count the samples in the
files listed. A *gap* is a stretch of periods with no GOOD sample of any tag (``no GOOD
sample``), with no row at all (``not recorded``: the recorder was not running, or rows were
dropped), or with rows not written (``paused: free disk below the reserve``); its ``end_utc`` is
the first row after it with a GOOD sample (exclusive), or the end of the recording.
``complete`` is false while recording (or after a kill: the last file may then hold rows the
manifest does not count yet; continuing the recording counts them again). It is rewritten at
every new file, pause and removal, at the end, and at least every ``manifest_s`` (60 s)
between. ``stopped`` is the reason recording stopped on an error.

The disk, whatever happens, stays the audit log's first (a full audit disk stops automatic
writes): the recording never grows past ``quota_mb`` (its oldest file pair is removed, the
manifest first), and it pauses while the free space of its file system is below the reserve
(``reserve_percent`` of the file system or ``reserve_mb``, whichever is smaller), with one log
line each way. Any write error (ENOSPC, a read-only or vanished directory) stops the recording,
logged once and counted; it never raises into the agent.

* :class:`Recorder`: takes samples (:meth:`Recorder.observe`, a dict update: cheap enough for
  the agent's poll sink), a row every period on the event loop, and writes every ``flush_s`` in
  a thread (:class:`RecordingWriter`). Its buffer is bounded (the oldest rows are dropped and
  counted).
* :class:`RecordingWriter`: the files, rotation, quota, reserve and manifest (one thread at a
  time).
* :func:`tags_to_record`: which tags a config, ``--tag`` names and a model binding ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import io
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

from agent.errors import RecordError
from agent.recordconfig import MIB, RecordConfig
from agent.tagtable import TagTable
from agent.types import QualityCode, Sample

if TYPE_CHECKING:
    from agent.config import Config

__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "MIB",
    "FileInfo",
    "FreeSpace",
    "RecordConfig",
    "RecordTag",
    "Recorder",
    "RecorderStats",
    "RecordingWriter",
    "Row",
    "agent_version",
    "default_period",
    "disk_space",
    "format_utc",
    "tags_to_record",
]

log = structlog.get_logger("agent.record")

FORMAT = "edge-agent-recording"
FORMAT_VERSION = 1
MANIFEST_FILE = "recording.json"
_FINAL_DEADLINE_S = 10.0
_MAX_GAPS = 10_000

FreeSpace = Callable[[Path], tuple[int, int]]
"""``path`` → (bytes free for an unprivileged writer, bytes in the file system)."""


def disk_space(path: Path) -> tuple[int, int]:
    """Free and total bytes of the file system holding ``path`` (``statvfs``)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def agent_version() -> str:
    """The installed agent's version (``unknown`` when run from a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-inference-agent")
    except PackageNotFoundError:
        return "unknown"


def format_utc(t_ms: int) -> str:
    """Milliseconds since the epoch → ``2026-12-07T03:26:33.000Z``."""
    seconds, ms = divmod(t_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}Z"


def _parse_utc(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _stamp(t_ms: int) -> str:
    return format_utc(t_ms).replace("-", "").replace(":", "")


@dataclass(frozen=True, slots=True)
class RecordTag:
    """A tag to record: its unit, staleness limit and the poll interval of its device (s)."""

    name: str
    unit: str
    stale_s: float
    poll_s: float


def tags_to_record(config: Config, names: Iterable[str] = (), model: str | None = None) -> list[RecordTag]:
    """The tags ``names`` plus those bound to model binding ``model``'s roles (every asset, in
    binding order); neither given: every tag the agent reads. Raises RecordError naming unknown
    or write-only tags, or an unknown model binding."""
    wanted = list(dict.fromkeys(names))
    if model is not None:
        binding = next((m for m in config.models if m.name == model), None)
        if binding is None:
            known = ", ".join(m.name for m in config.models) or "none"
            raise RecordError(f"unknown model binding {model!r} (the config has: {known})")
        bound = [tag for roles in binding.assets.values() for tag in roles.values()]
        wanted = list(dict.fromkeys([*wanted, *bound]))  # a tag two assets share, once
    by_name = {t.name: (d, t) for d, t in config.iter_tags()}
    if not wanted and model is None:
        wanted = [name for name, (_, t) in by_name.items() if t.readable]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise RecordError(f"unknown tag(s): {', '.join(unknown)}")
    unreadable = [n for n in wanted if not by_name[n][1].readable]
    if unreadable:
        raise RecordError(f"tag(s) the agent only writes, never reads: {', '.join(unreadable)}")
    out = []
    for n in wanted:
        dev, tag = by_name[n]
        out.append(
            RecordTag(n, tag.engineering_unit, dev.stale_limit_s(tag), dev.poll_interval_ms / 1000)  # type: ignore[arg-type]
        )
    return out


def default_period(tags: Sequence[RecordTag], model_period_s: float | None = None) -> float:
    """The period of a recording that names none: the model's sample period, else the slowest
    poll interval of the tags' devices (one row per poll of the slowest)."""
    return model_period_s if model_period_s is not None else max(t.poll_s for t in tags)


# --------------------------------------------------------------------------- the files


class Row(NamedTuple):
    """One period: its grid time (ms since the epoch, UTC) and a sample per recorded tag."""

    t_ms: int
    samples: tuple[Sample, ...]


@dataclass
class FileInfo:
    """One file of the recording, as the manifest lists it."""

    name: str
    kind: str  # "wide" | "long"
    bytes: int = 0
    rows: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    counts: list[list[int]] | None = None  # wide only: per tag [GOOD, UNCERTAIN, BAD]

    def as_json(self, tags: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "bytes": self.bytes,
            "rows": self.rows,
            "first_utc": None if self.first_ms is None else format_utc(self.first_ms),
            "last_utc": None if self.last_ms is None else format_utc(self.last_ms),
        }
        if self.counts is not None:
            out["counts"] = self.counts
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], tags: Sequence[str]) -> FileInfo:
        counts = d.get("counts")
        if counts is not None and len(counts) != len(tags):
            raise ValueError(f"{d['name']}: counts for {len(counts)} tags, not {len(tags)}")
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            bytes=int(d["bytes"]),
            rows=int(d["rows"]),
            first_ms=None if d.get("first_utc") is None else _parse_utc(d["first_utc"]),
            last_ms=None if d.get("last_utc") is None else _parse_utc(d["last_utc"]),
            counts=None if counts is None else [[int(x) for x in c] for c in counts],
        )


@dataclass
class _Pair:
    """The wide and long file of one stretch (the open one has file descriptors)."""

    wide: FileInfo
    long: FileInfo
    fds: tuple[int, int] | None = None

    @property
    def bytes(self) -> int:
        return self.wide.bytes + self.long.bytes

    def recount(self, directory: Path, tags: Sequence[str]) -> None:
        """Rows, time span and counts from the long file (after a kill the manifest may be
        behind it); a torn end (power loss) ends the count there."""
        index = {t: i for i, t in enumerate(tags)}
        counts = [[0, 0, 0] for _ in tags]
        rows, first, last = 0, None, None
        kinds = {"GOOD": 0, "UNCERTAIN": 1, "BAD": 2}
        path = directory / self.long.name
        with (
            contextlib.suppress(EOFError, OSError, ValueError, csv.Error),
            gzip.open(path, "rt", newline="", encoding="utf-8") as fh,
        ):
            reader = csv.reader(fh)
            next(reader, None)
            for r in reader:
                j = index.get(r[1]) if len(r) > 3 else None
                k = kinds.get(r[3]) if len(r) > 3 else None
                if j is None or k is None:
                    continue
                counts[j][k] += 1
                if r[0] != last:
                    rows += 1
                    last = r[0]
                    first = first or last
        for f in (self.wide, self.long):
            f.rows = rows
            f.first_ms = None if first is None else _parse_utc(first)
            f.last_ms = None if last is None else _parse_utc(last)
        self.wide.counts = counts


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


_CODES = (QualityCode.GOOD, QualityCode.UNCERTAIN, QualityCode.BAD)
_COUNT_INDEX = {QualityCode.GOOD: 0, QualityCode.UNCERTAIN: 1, QualityCode.BAD: 2}


class RecordingWriter:
    """The files of one recording directory. Its methods take a lock: a flush whose awaiting
    task was cancelled still runs to its end in its thread before the final flush starts.

    :meth:`open` first (creates the directory, or continues the recording there), then
    :meth:`write` batches of rows, then :meth:`close`. Every method raises ``OSError`` on a write
    error and :class:`RecordError` when the directory holds another recording; the caller
    decides (the Recorder stops recording).
    """

    def __init__(
        self,
        directory: Path,
        tags: Sequence[RecordTag],
        period_s: float,
        config: RecordConfig,
        *,
        free_space: FreeSpace = disk_space,
        version: str | None = None,
    ) -> None:
        self.directory = directory
        self.tags = [t.name for t in tags]
        self.units = [t.unit for t in tags]
        self.period_s = period_s
        self.period_ms = max(1, round(period_s * 1000))
        self.config = config
        self._free_space = free_space
        self.version = version if version is not None else agent_version()
        self.pairs: list[_Pair] = []  # oldest first; the last one is open while recording
        self.gaps: list[dict[str, Any]] = []
        self._gap: dict[str, Any] | None = None  # the open gap
        self.last_ms: int | None = None
        self.paused = False
        self.removed_files = 0
        self.removed_bytes = 0
        self.rows_paused = 0
        self.stopped: str | None = None
        self.complete = False
        self._opened = False
        self._lock = threading.Lock()
        self._closed: list[tuple[FileInfo, FileInfo]] = []
        self._manifest_ms: int | None = None  # the row time of the last rewrite while writing

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory, or take over the recording in it (same tags and period).
        Once; a second call does nothing."""
        with self._lock:
            self._open()

    def _open(self) -> None:
        if self._opened:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / MANIFEST_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None
        if text is not None:
            self._resume(text, path)
        self._write_manifest(durable=True)
        self._opened = True

    def _resume(self, text: str, path: Path) -> None:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError("not an edge-agent recording")
            tags = [t["name"] for t in doc["tags"]]
            period = float(doc["period_s"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"{path}: cannot continue this recording: {exc}") from None
        if tags != self.tags or not math.isclose(period, self.period_s, rel_tol=1e-9):
            raise RecordError(
                f"{self.directory} holds a recording of other tags or another period "
                f"({len(tags)} tags every {period:g} s; asked: {len(self.tags)} tags every "
                f"{self.period_s:g} s): record into another directory"
            )
        try:
            files = [FileInfo.from_json(f, self.tags) for f in doc["files"]]
            self.gaps = list(doc.get("gaps", []))
            removed = doc.get("removed", {})
            self.removed_files, self.removed_bytes = int(removed["files"]), int(removed["bytes"])
            end = doc.get("end_utc")
            self.last_ms = None if end is None else _parse_utc(end)
            killed = not doc.get("complete", False)
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"{path}: cannot continue this recording: {exc}") from None
        by_stamp: dict[str, dict[str, FileInfo]] = {}
        for f in files:
            by_stamp.setdefault(f.name.split("-", 1)[1].split(".csv")[0], {})[f.kind] = f
        for pair in by_stamp.values():
            if "wide" not in pair or "long" not in pair:
                continue
            p = _Pair(pair["wide"], pair["long"])
            try:  # after a kill the last pair may be longer than the manifest says
                p.wide.bytes = (self.directory / p.wide.name).stat().st_size
                p.long.bytes = (self.directory / p.long.name).stat().st_size
            except FileNotFoundError:
                continue
            self.pairs.append(p)
        if killed and self.pairs:
            last = self.pairs[-1]
            last.recount(self.directory, self.tags)
            if last.wide.last_ms is not None:
                self.last_ms = max(self.last_ms or 0, last.wide.last_ms)
        log.info("recording continued", dir=str(self.directory), files=2 * len(self.pairs))

    def close(self) -> tuple[FileInfo, FileInfo] | None:
        """Close the open pair and mark the recording complete; the pair (wide, long), if any."""
        with self._lock:
            return self._close()

    def _close(self) -> tuple[FileInfo, FileInfo] | None:
        closed = self._close_pair()
        if self._gap is not None and self.last_ms is not None:
            self._end_gap(self.last_ms + self.period_ms)
        self.complete = self.stopped is None
        self._write_manifest(durable=True)
        return closed

    def abort(self, reason: str) -> None:
        """Stop after an error: close what is open and say why in the manifest (best effort:
        the disk may be what failed)."""
        with self._lock:
            self._abort(reason)

    def _abort(self, reason: str) -> None:
        self.stopped = reason
        if self.pairs and self.pairs[-1].fds is not None:
            for fd in self.pairs[-1].fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.pairs[-1].fds = None
        with contextlib.suppress(OSError):
            self._write_manifest(durable=False)

    # -- writing ------------------------------------------------------------------------

    def write(self, rows: Sequence[Row]) -> list[tuple[FileInfo, FileInfo]]:
        """Write ``rows`` (time order), rotating and keeping the quota and the reserve.
        Returns the file pairs (wide, long) closed by rotation (for a summary line each)."""
        with self._lock:
            return self._write(rows)

    def _write(self, rows: Sequence[Row]) -> list[tuple[FileInfo, FileInfo]]:
        if not rows:
            return []
        wide, long = self._encode(rows)
        estimate = sum(len(b) for b in wide) + sum(len(b) for b in long) // 4
        was_paused = self.paused
        if not self._room_for(estimate):
            self._track(rows, paused=True)
            self.rows_paused += len(rows)
            if not was_paused:
                self._write_manifest(durable=False)
            return []
        closed: list[tuple[FileInfo, FileInfo]] = []
        start, pending = 0, 0  # the rows not yet written, and their size (long: compressed ~4:1)
        for i, r in enumerate(rows):
            if self._must_rotate(rows[start].t_ms if i > start else None, pending, r.t_ms):
                self._append(rows[start:i], wide[start:i], long[start:i])
                info = self._close_pair()
                if info is not None:
                    closed.append(info)
                start, pending = i, 0
            pending += len(wide[i]) + len(long[i]) // 4
        self._append(rows[start:], wide[start:], long[start:])
        self._track(rows, paused=False)
        self._keep_quota()
        due = self._manifest_ms is None or rows[-1].t_ms - self._manifest_ms >= self.config.manifest_s * 1000
        if closed or was_paused or due:
            self._write_manifest(durable=bool(closed))
            self._manifest_ms = rows[-1].t_ms
        return closed

    def _room_for(self, estimate: int) -> bool:
        free, total = self._free_space(self.directory)
        reserve = self.config.reserve_bytes(total)
        if free - estimate >= reserve:
            if self.paused:
                self.paused = False
                log.warning("recording resumed", dir=str(self.directory), free_mb=round(free / MIB, 1))
            return True
        if not self.paused:
            self.paused = True
            log.warning(
                "recording paused: free disk below the reserve kept for the audit log",
                dir=str(self.directory),
                free_mb=round(free / MIB, 1),
                reserve_mb=round(reserve / MIB, 1),
            )
        return False

    def _must_rotate(self, pending_first: int | None, pending: int, t_ms: int) -> bool:
        """Does the row at ``t_ms`` start a new pair? ``pending``: bytes of the rows before it
        not yet written (from ``pending_first``)."""
        pair = self.pairs[-1] if self.pairs and self.pairs[-1].fds is not None else None
        first = pair.wide.first_ms if pair is not None else None
        if first is None:
            first = pending_first
        if first is None:
            return False
        size = (pair.bytes if pair is not None else 0) + pending
        return size >= self.config.rotate_mb * MIB or t_ms - first >= self.config.rotate_s * 1000

    def _encode(self, rows: Sequence[Row]) -> tuple[list[bytes], list[bytes]]:
        wide: list[bytes] = []
        long: list[bytes] = []
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        for row in rows:
            ts = format_utc(row.t_ms)
            out.writerow(
                [ts, *(_cell(s.value) if s.quality.code is QualityCode.GOOD else "" for s in row.samples)]
            )
            wide.append(buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
            for s in row.samples:
                out.writerow([ts, s.tag, _cell(s.value), s.quality.code.name, s.quality.reason])
            long.append(buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
        return wide, long

    def _open_pair(self, t_ms: int) -> _Pair:
        stamp = _stamp(t_ms)
        names = {p.wide.name for p in self.pairs}
        n = 1
        while f"wide-{stamp}.csv" in names or (self.directory / f"wide-{stamp}.csv").exists():
            n += 1
            stamp = f"{_stamp(t_ms)}-{n}"
        pair = _Pair(
            FileInfo(f"wide-{stamp}.csv", "wide", counts=[[0, 0, 0] for _ in self.tags]),
            FileInfo(f"long-{stamp}.csv.gz", "long"),
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        wfd = os.open(self.directory / pair.wide.name, flags, 0o644)
        try:
            lfd = os.open(self.directory / pair.long.name, flags, 0o644)
        except OSError:
            os.close(wfd)
            with contextlib.suppress(OSError):
                os.unlink(self.directory / pair.wide.name)
            raise
        pair.fds = (wfd, lfd)
        self.pairs.append(pair)
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(["timestamp", *self.tags])
        pair.wide.bytes += _write_all(wfd, header.getvalue().encode())
        pair.long.bytes += _write_all(lfd, gzip.compress(b"timestamp,tag,value,quality,reason\n", mtime=0))
        self._write_manifest(durable=False)  # a file on disk is always listed
        return pair

    def _append(self, rows: Sequence[Row], wide: Sequence[bytes], long: Sequence[bytes]) -> None:
        if not rows:
            return
        pair = (
            self.pairs[-1] if self.pairs and self.pairs[-1].fds is not None else self._open_pair(rows[0].t_ms)
        )
        assert pair.fds is not None and pair.wide.counts is not None
        # one write of complete rows per file: a kill leaves whole rows (and whole gzip members)
        pair.wide.bytes += _write_all(pair.fds[0], b"".join(wide))
        pair.long.bytes += _write_all(pair.fds[1], gzip.compress(b"".join(long), compresslevel=6, mtime=0))
        counts = pair.wide.counts
        for row in rows:
            for j, s in enumerate(row.samples):
                counts[j][_COUNT_INDEX[s.quality.code]] += 1
        for f in (pair.wide, pair.long):
            f.rows += len(rows)
            if f.first_ms is None:
                f.first_ms = rows[0].t_ms
            f.last_ms = rows[-1].t_ms

    def _close_pair(self) -> tuple[FileInfo, FileInfo] | None:
        if not self.pairs or self.pairs[-1].fds is None:
            return None
        pair = self.pairs[-1]
        assert pair.fds is not None
        fds, pair.fds = pair.fds, None
        try:
            for fd in fds:
                os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)
        self._closed.append((pair.wide, pair.long))
        return pair.wide, pair.long

    def take_closed(self) -> list[tuple[FileInfo, FileInfo]]:
        """The file pairs closed since the last call (rotation or close), oldest first: what a
        flush whose awaiting task was cancelled closed is not lost for the summary lines."""
        with self._lock:
            closed, self._closed = self._closed, []
            return closed

    def _keep_quota(self) -> None:
        quota = self.config.quota_mb * MIB
        while len(self.pairs) > 1 and sum(p.bytes for p in self.pairs) > quota:
            oldest = self.pairs.pop(0)
            self.removed_files += 2
            self.removed_bytes += oldest.bytes
            self._write_manifest(durable=True)  # listed no more before it goes
            for f in (oldest.wide, oldest.long):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / f.name)
            log.info("recording quota: oldest files removed", file=oldest.wide.name, bytes=oldest.bytes)
        first = self.first_ms
        if first is not None:
            self.gaps = [g for g in self.gaps if g["end_utc"] is None or _parse_utc(g["end_utc"]) > first]

    # -- gaps ---------------------------------------------------------------------------

    def _track(self, rows: Sequence[Row], *, paused: bool) -> None:
        period = self.period_ms
        for row in rows:
            if self.last_ms is not None and row.t_ms - self.last_ms > 1.5 * period and self._gap is None:
                self._start_gap(self.last_ms + period, "not recorded")
            good = not paused and any(s.quality.code is QualityCode.GOOD for s in row.samples)
            if good:
                if self._gap is not None:
                    self._end_gap(row.t_ms)
            elif self._gap is None:
                self._start_gap(
                    row.t_ms, "paused: free disk below the reserve" if paused else "no GOOD sample"
                )
            self.last_ms = row.t_ms

    def _start_gap(self, t_ms: int, reason: str) -> None:
        self._gap = {"start_utc": format_utc(t_ms), "end_utc": None, "reason": reason}
        if len(self.gaps) >= _MAX_GAPS:
            self.gaps.pop(0)
        self.gaps.append(self._gap)

    def _end_gap(self, t_ms: int) -> None:
        assert self._gap is not None
        self._gap["end_utc"] = format_utc(t_ms)
        self._gap = None

    # -- the manifest -------------------------------------------------------------------

    @property
    def first_ms(self) -> int | None:
        return next((p.wide.first_ms for p in self.pairs if p.wide.first_ms is not None), None)

    @property
    def bytes(self) -> int:
        """Bytes in the recording's files."""
        return sum(p.bytes for p in self.pairs)

    @property
    def files(self) -> int:
        return 2 * len(self.pairs)

    def counts(self) -> list[list[int]]:
        """Per tag [GOOD, UNCERTAIN, BAD] samples in the files."""
        total = [[0, 0, 0] for _ in self.tags]
        for p in self.pairs:
            for j, c in enumerate(p.wide.counts or []):
                for k in range(3):
                    total[j][k] += c[k]
        return total

    def manifest(self) -> dict[str, Any]:
        """The manifest as it would be written now."""
        first = self.first_ms
        end = self.last_ms
        gaps = [
            {**g, "end_utc": g["end_utc"] or (None if end is None else format_utc(end + self.period_ms))}
            for g in self.gaps
        ]
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "agent_version": self.version,
            "period_s": self.period_s,
            "start_utc": None if first is None else format_utc(first),
            "end_utc": None if end is None else format_utc(end),
            "complete": self.complete,
            "stopped": self.stopped,
            "tags": [
                {"name": n, "unit": u, "counts": dict(zip((c.name for c in _CODES), c3, strict=True))}
                for n, u, c3 in zip(self.tags, self.units, self.counts(), strict=True)
            ],
            "gaps": gaps,
            "files": [f.as_json(self.tags) for p in self.pairs for f in (p.wide, p.long)],
            "removed": {"files": self.removed_files, "bytes": self.removed_bytes},
        }

    def _write_manifest(self, *, durable: bool) -> None:
        path = self.directory / MANIFEST_FILE
        tmp = path.with_name(MANIFEST_FILE + ".tmp")
        data = _manifest_text(self.manifest()).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def _manifest_text(doc: Mapping[str, Any]) -> str:
    """JSON with one line per key and per list item (a tag, a gap, a file): readable, compact."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, list) and value:
            items = ",\n  ".join(json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f"{json.dumps(key)}: [\n  {items}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return len(data)


# --------------------------------------------------------------------------- the recorder


@dataclass
class RecorderStats:
    """What status and metrics show."""

    rows: int = 0  # rows taken
    rows_written: int = 0
    rows_dropped: int = 0  # buffer full: the oldest rows dropped
    rows_paused: int = 0  # not written: below the disk reserve
    write_errors: int = 0
    flush_s: float = 0.0  # duration of the last flush
    flushes: int = 0


@dataclass
class Recorder:
    """Records ``tags`` every ``period_s`` into ``directory``.

    :meth:`observe` takes every poll's samples (call it from the poll sink: it only keeps the
    latest sample per tag). :meth:`run` takes a row per period on the wall clock's grid from
    the first poll on (the latest sample of each tag; one older than its staleness limit is BAD
    ``stale``, as the agent's own tag table reads it) and writes every ``flush_s`` in a worker
    thread; cancelled, it writes what is left and closes the recording (complete manifest), within a deadline.
    ``run`` never raises but ``CancelledError``: an error stops the recording, not the caller.
    ``on_file`` is called (on the loop) with every file pair (wide, long) closed, the last one
    at the end.
    """

    directory: Path
    tags: Sequence[RecordTag]
    period_s: float
    config: RecordConfig = field(default_factory=RecordConfig)
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    free_space: FreeSpace = disk_space
    on_file: Callable[[FileInfo, FileInfo], None] | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        self.writer = RecordingWriter(
            self.directory,
            self.tags,
            self.period_s,
            self.config,
            free_space=self.free_space,
            version=self.version,
        )
        self.table = TagTable({t.name: t.stale_s for t in self.tags}, clock=self.clock)
        self._wanted = frozenset(t.name for t in self.tags)
        self._names = [t.name for t in self.tags]
        limit = max(1000, math.ceil(10 * self.config.flush_s / self.period_s))
        self._buffer: deque[Row] = deque(maxlen=limit)
        self.stats = RecorderStats()
        self.stopped: str | None = None
        self._last_t_ms: int | None = None
        self._overflowing = False
        self._first_poll = asyncio.Event()

    # -- the hot path -------------------------------------------------------------------

    def observe(self, samples: Sequence[Sample]) -> None:
        """Keep the latest sample of every recorded tag (a poll sink; never raises)."""
        wanted = self._wanted
        mine = [s for s in samples if s[0] in wanted]
        if mine:
            self.table.update(mine)
            self._first_poll.set()

    # -- status -------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``recording``, ``paused`` (below the disk reserve) or ``stopped`` (an error)."""
        if self.stopped is not None:
            return "stopped"
        return "paused" if self.writer.paused else "recording"

    def status(self) -> dict[str, Any]:
        """For `edge-agent status` and the metrics endpoint."""
        return {
            "dir": str(self.directory),
            "state": self.state,
            "reason": self.stopped,
            "tags": len(self.tags),
            "period_s": self.period_s,
            "files": self.writer.files,
            "bytes": self.writer.bytes,
            "rows": self.stats.rows_written,
            "rows_dropped": self.stats.rows_dropped,
            "rows_paused": self.writer.rows_paused,
            "write_errors": self.stats.write_errors,
            "gaps": len(self.writer.gaps),
        }

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Record until cancelled (see the class docstring)."""
        try:
            opened, _ = await self._guard(self.writer.open)
            if opened:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._tick_loop(), name="record ticks")
                    tg.create_task(self._flush_loop(), name="record flush")
        except Exception as exc:  # a bug here (even a log call failing) must not reach the agent
            self.stopped = self.stopped or f"{type(exc).__name__}: {exc}"
            self.stats.write_errors += 1
            with contextlib.suppress(Exception):
                log.error("recording stopped", dir=str(self.directory), reason=self.stopped)
        finally:
            await self._finish()

    def take_row(self) -> Row:
        """The row of the current period (on the loop: a dict lookup per tag)."""
        period_ms = self.writer.period_ms
        t_ms = round(self.wall() * 1000 / period_ms) * period_ms
        last = self._last_t_ms
        if last is not None and last - 2 * period_ms < t_ms <= last:
            t_ms = last + period_ms  # the wall clock slewed: keep the grid moving forward
        self._last_t_ms = t_ms
        now = self.clock()
        get = self.table.get
        row = Row(t_ms, tuple(get(n, now) for n in self._names))
        if len(self._buffer) == self._buffer.maxlen:
            self.stats.rows_dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.error("recording buffer full: oldest rows dropped", dir=str(self.directory))
        self._buffer.append(row)
        self.stats.rows += 1
        return row

    async def _tick_loop(self) -> None:
        await self._first_poll.wait()  # rows of "no value yet" before the first poll say nothing
        period = self.period_s
        wall, mono = self.wall(), self.clock()
        start = mono + (math.ceil(wall / period) * period - wall)  # on the wall clock's grid
        k = 0
        while self.stopped is None:
            now = self.clock()
            tick = start + k * period
            if now < tick:
                await asyncio.sleep(tick - now)
            self.take_row()
            k = max(k + 1, int((self.clock() - start) / period) + 1)

    async def _flush_loop(self) -> None:
        while self.stopped is None:
            await asyncio.sleep(self.config.flush_s)
            await self.flush()

    async def flush(self) -> None:
        """Write the rows taken so far (in a worker thread)."""
        if self.stopped is not None or not self._buffer:
            return
        rows = list(self._buffer)
        self._buffer.clear()
        self._overflowing = False
        t0 = time.perf_counter()
        await self._guard(self.writer.write, rows)
        self.stats.flush_s = time.perf_counter() - t0
        self.stats.flushes += 1
        self._announce_closed()

    def _announce_closed(self) -> None:
        self.stats.rows_written = sum(p.wide.rows for p in self.writer.pairs)
        for wide, long in self.writer.take_closed():
            self._announce(wide, long)

    async def _finish(self) -> None:
        """Write what is left and close, shielded from cancellation, within a deadline."""

        async def final() -> None:
            await self.flush()
            if self.stopped is None:
                await self._guard(self.writer.close)
            self._announce_closed()

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FINAL_DEADLINE_S):
                await asyncio.shield(final())

    def _announce(self, wide: FileInfo, long: FileInfo) -> None:
        if self.on_file is None:
            return
        try:
            self.on_file(wide, long)
        except Exception as exc:  # a reporting bug must not stop the recording
            log.error("recording: file callback failed", error=f"{type(exc).__name__}: {exc}")

    async def _guard(self, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """``fn(*args)`` in a worker thread: (True, its result), or (False, None) when it failed:
        the error stops the recording (logged once, counted)."""
        try:
            return True, await asyncio.to_thread(fn, *args)
        except (OSError, RecordError, ValueError) as exc:
            reason = _describe(exc)
        except Exception as exc:  # a bug in the recorder must never reach the agent
            reason = f"{type(exc).__name__}: {exc}"
        await self._stop(reason)
        return False, None

    async def _stop(self, reason: str) -> None:
        self.stats.write_errors += 1
        if self.stopped is not None:
            return
        self.stopped = reason
        self._buffer.clear()
        log.error("recording stopped", dir=str(self.directory), reason=reason)
        with contextlib.suppress(Exception):  # best effort: the disk may be what failed
            await asyncio.to_thread(self.writer.abort, reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc)
