"""The user's files → time series: historian exports (wide or long CSV, optionally gzip) and the
agent's recording directories, with any timestamp format and any tag names.

* **wide**: a timestamp column and one column per tag, one row per sample (what a historian's
  "export to CSV" and the agent's ``wide-*.csv`` files hold);
* **long**: ``timestamp,tag,value[,quality[,reason]]``, one row per archived change
  (exception-based); a value whose quality is not GOOD is a gap;
* **a recording directory** (written by ``edge-agent record``): ``recording.json`` (tags with
  their units, period, files) and its rotating ``wide-*.csv`` (or ``long-*.csv.gz``) files.

Timestamps (:class:`TimestampSpec`): ISO 8601 with or without an offset, any ``strptime``
format (``%d/%m/%Y %H:%M:%S``), epoch seconds or milliseconds; a timestamp without an offset is
in ``timezone`` (UTC by default). Rows are sorted by time; rows sharing a timestamp keep the
last one (counted: :attr:`Table.duplicates`). A column whose cells are not all numbers is kept
as strings (a label column may be text); using it as a model input is refused naming the file,
row and column (:meth:`Table.numeric`).

Every problem is a :class:`DataError` whose message is one line ``file:row column 'X': ...``.
:meth:`Table.grid` brings the series onto one sample grid with a zero-order hold (the last
value stands until the next, for at most ``max_hold_s``; longer is a gap).
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, field_validator

__all__ = [
    "DataError",
    "Table",
    "TimestampSpec",
    "expand_paths",
    "parse_times",
    "read_header",
    "read_table",
    "read_units",
]

FloatArray = npt.NDArray[np.float64]

RECORDING_MANIFEST = "recording.json"
_LONG_HEADER = ["timestamp", "tag", "value"]


class DataError(ValueError):
    """A data file cannot be used; ``str()`` is one line naming file, row and column."""


class TimestampSpec(BaseModel):
    """Where the time is and how it is written.

    ``format``: ``auto`` (ISO 8601, or a number: epoch seconds, or milliseconds when above
    1e11), ``iso``, ``epoch_s``, ``epoch_ms``, or a ``strptime`` format such as
    ``%d/%m/%Y %H:%M:%S``. ``timezone`` (IANA name, e.g. ``Europe/Berlin``) applies to
    timestamps written without an offset; UTC when not given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str = "timestamp"
    format: str = "auto"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    def zone(self) -> tzinfo:
        """The timezone of naive timestamps."""
        return _zone(self.timezone)


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r} (an IANA name such as Europe/Berlin)") from None


_DEFAULT_TS = TimestampSpec()


def parse_times(
    cells: Sequence[str], spec: TimestampSpec, source: str, rows: Sequence[int] | None = None
) -> FloatArray:
    """Timestamp cells → seconds since the epoch (UTC); DataError at the first bad cell, naming
    its row (``rows[i]``, default: ``i + 2``, below a header)."""
    zone = spec.zone()
    fmt = spec.format
    out = np.empty(len(cells))
    for i, raw in enumerate(cells):
        cell = raw.strip()
        try:
            out[i] = _one_time(cell, fmt, zone)
        except (ValueError, OverflowError):
            want = {"auto": "ISO 8601 or epoch seconds/ms", "iso": "ISO 8601"}.get(fmt, fmt)
            raise DataError(
                f"{source}:{rows[i] if rows is not None else i + 2} column {spec.column!r}: "
                f"timestamp {cell!r} does not read as {want}"
            ) from None
    return out


def _one_time(cell: str, fmt: str, zone: tzinfo) -> float:
    if fmt in ("epoch_s", "epoch_ms"):
        v = float(cell)
        if not math.isfinite(v):
            raise ValueError(cell)
        return v / 1000.0 if fmt == "epoch_ms" else v
    if fmt == "auto":
        try:
            v = float(cell)
        except ValueError:
            pass
        else:
            if not math.isfinite(v):
                raise ValueError(cell)
            return v / 1000.0 if abs(v) > 1e11 else v
    if fmt in ("auto", "iso"):
        dt = datetime.fromisoformat(cell.replace("Z", "+00:00"))
    else:
        dt = datetime.strptime(cell, fmt)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return dt.timestamp()


def expand_paths(patterns: Sequence[str | Path], base: Path | None = None) -> list[Path]:
    """Paths or glob patterns (relative to ``base``) → existing paths, sorted per pattern;
    DataError for a pattern that matches nothing."""
    out: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if base is not None and not p.is_absolute():
            p = base / p
        if glob.has_magic(str(p)):
            hits = sorted(Path(h) for h in glob.glob(str(p)))
            if not hits:
                raise DataError(f"{pat}: no file matches this pattern")
            out += hits
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return list(dict.fromkeys(out))


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")  # type: ignore[return-value]


@dataclass
class Table:
    """Time series of one file (or one recording directory).

    ``series[column] = (times, values)``: times in epoch seconds, sorted and unique per column;
    values float64, or an object array of strings for a column that is not numeric.
    """

    source: str
    form: Literal["wide", "long"]
    series: dict[str, tuple[FloatArray, npt.NDArray[np.generic]]]
    units: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0  # rows dropped because a later row had the same timestamp (and tag)
    unsorted: int = 0  # rows that were out of time order (sorted)
    bad_cells: dict[str, tuple[str, str]] = field(default_factory=dict)  # column → first (file:row, cell)
    rows: dict[str, FloatArray] = field(default_factory=dict)  # column → file row of every sample
    available: list[str] = field(default_factory=list)  # every column of the file (read or not)

    @property
    def columns(self) -> list[str]:
        return list(self.series)

    def has(self, column: str) -> bool:
        return column in self.series

    def numeric(self, column: str, why: str = "a model input") -> tuple[FloatArray, FloatArray]:
        """``(times, values)`` of a numeric column; DataError naming file, row and column for a
        missing column or one holding text."""
        if column not in self.series:
            raise DataError(f"{self.source}: no column {column!r} (has {self._has()})")
        t, v = self.series[column]
        if v.dtype == object:
            where, cell = self.bad_cells[column]
            raise DataError(
                f"{where} column {column!r}: {cell!r} is not a number (a column of text cannot be {why})"
            )
        return t, v.astype(np.float64)

    def _has(self) -> str:
        cols = sorted(self.available or self.series)
        return ", ".join(cols[:20]) + (f" and {len(cols) - 20} more" if len(cols) > 20 else "")

    def span(self) -> tuple[float, float]:
        """First and last timestamp over every column."""
        return (
            min(float(t[0]) for t, _ in self.series.values() if len(t)),
            max(float(t[-1]) for t, _ in self.series.values() if len(t)),
        )

    def grid(
        self, columns: Sequence[str], period_s: float, max_hold_s: float | None = None
    ) -> tuple[FloatArray, list[npt.NDArray[np.generic]]]:
        """Every column on one grid of ``period_s`` (zero-order hold), from the first timestamp
        where every numeric column has a value to the last timestamp; a value older than
        ``max_hold_s`` (default: 2 periods or 2 median row spacings for wide files, an hour for
        long files) is a gap (NaN, or None for text)."""
        if not columns:
            raise DataError(f"{self.source}: no columns to read")
        for c in columns:
            if c not in self.series:
                raise DataError(f"{self.source}: no column {c!r} (has {self._has()})")
        starts = [float(self.series[c][0][0]) for c in columns if len(self.series[c][0])]
        if len(starts) < len(columns):
            empty = [c for c in columns if not len(self.series[c][0])]
            raise DataError(f"{self.source}: no values in column(s) {empty}")
        start = max(starts)
        end = max(float(self.series[c][0][-1]) for c in columns)
        if max_hold_s is None:
            if self.form == "long":
                max_hold_s = 3600.0
            else:
                t0 = self.series[columns[0]][0]
                dt = float(np.median(np.diff(t0))) if len(t0) > 1 else period_s
                max_hold_s = 2.0 * max(period_s, dt)
        # epoch seconds carry ~1e-7 s of float error: (end - start) / period may land just below
        # a whole number, which must not drop the last row
        n = max(0, math.floor((end - start) / period_s + 1e-3) + 1)
        grid = start + period_s * np.arange(n)
        out: list[npt.NDArray[np.generic]] = []
        for c in columns:
            t, v = self.series[c]
            idx = np.searchsorted(t, grid + 1e-6, side="right") - 1
            safe = np.clip(idx, 0, None)
            stale = (idx < 0) | (grid - t[safe] > max_hold_s + 1e-6)
            col = v[safe].copy()
            if col.dtype == object:
                col[stale] = None
            else:
                col = col.astype(np.float64)
                col[stale] = np.nan
            out.append(col)
        return grid, out


def read_header(path: str | Path, timestamp: TimestampSpec = _DEFAULT_TS) -> list[str]:
    """The tag names a file (or recording directory) holds, without reading its rows."""
    p = Path(path)
    if p.is_dir():
        files = _recording_files(p)
        p = files[0]
    with _open_text(p) as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
    if [h.lower() for h in header[:3]] == _LONG_HEADER:
        return sorted(read_table(p, timestamp).series)
    return [h for h in header if h != timestamp.column]


def read_units(path: str | Path) -> dict[str, str]:
    """Tag → unit where the source says (an agent recording's ``recording.json``), else empty."""
    p = Path(path)
    return _recording_units(p) if p.is_dir() else {}


def read_table(
    path: str | Path, timestamp: TimestampSpec = _DEFAULT_TS, columns: Sequence[str] | None = None
) -> Table:
    """Read a wide or long CSV (``.gz`` too) or an agent recording directory; only ``columns``
    (default: every column; a column the file lacks is simply absent)."""
    p = Path(path)
    if p.is_dir():
        return _read_recording(p, timestamp, columns)
    try:
        with _open_text(p) as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DataError(f"{p}:1: empty file (no header)")
            if [h.lower() for h in header[:3]] == _LONG_HEADER:
                return _read_long(p, header, reader, timestamp, columns)
            return _read_wide(p, header, reader, timestamp, columns)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason})") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{p}: cannot read: {exc}") from None
    except csv.Error as exc:
        raise DataError(f"{p}: not a CSV file: {exc}") from None


def _read_wide(
    p: Path, header: list[str], reader: Iterator[list[str]], ts: TimestampSpec, only: Sequence[str] | None
) -> Table:
    if ts.column not in header:
        raise DataError(
            f"{p}:1 column {ts.column!r}: no timestamp column (header: {header[:8]}); "
            "set timestamp.column in the config"
        )
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{p}:1 column {dup[0]!r}: given twice in the header")
    ti = header.index(ts.column)
    wanted = None if only is None else set(only)
    idx = [i for i in range(len(header)) if i != ti and (wanted is None or header[i] in wanted)]
    names = [header[i] for i in idx]
    stamps: list[str] = []
    cells: list[list[str]] = [[] for _ in names]
    lines: list[int] = []
    width = len(header)
    for line, row in enumerate(reader, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) > width:
            raise DataError(f"{p}:{line}: {len(row)} cells, the header has {width}")
        if len(row) < width:
            row = row + [""] * (width - len(row))
        stamps.append(row[ti])
        lines.append(line)
        for out, i in zip(cells, idx, strict=True):
            out.append(row[i])
    rows = np.asarray(lines, np.float64)
    times = parse_times(stamps, ts, str(p), lines)
    order = np.argsort(times, kind="stable")
    unsorted = int(np.sum(order != np.arange(len(order))))
    times = times[order]
    # Same timestamp: keep the last row (a historian's correction is written after the original).
    keep = np.ones(len(times), bool)
    if len(times) > 1:
        keep[:-1] = times[1:] != times[:-1]
    duplicates = int(len(times) - keep.sum())
    table = Table(str(p), "wide", {}, duplicates=duplicates, unsorted=unsorted, available=header)
    sel = order[keep]
    t_final = times[keep]
    for name, col in zip(names, cells, strict=True):
        values, bad = _to_numbers(col)
        v = values[sel]
        if bad is not None:
            table.bad_cells[name] = (f"{p}:{int(rows[bad[0]])}", bad[1])
        table.series[name] = (t_final, v)
        table.rows[name] = rows[sel]
    return table


def _to_numbers(cells: Sequence[str]) -> tuple[npt.NDArray[np.generic], tuple[int, str] | None]:
    """Cells → float64 (blank = NaN), or the strings as objects with the first non-number."""
    try:
        arr = np.asarray(cells, dtype=str)
        blank = np.char.str_len(np.char.strip(arr)) == 0
        return np.where(blank, "nan", arr).astype(np.float64), None
    except ValueError:
        pass
    for i, c in enumerate(cells):
        if c.strip():
            try:
                float(c)
            except ValueError:
                return np.array([c.strip() or None for c in cells], dtype=object), (i, c)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_long(
    p: Path, header: list[str], reader: Iterator[list[str]], ts: TimestampSpec, only: Sequence[str] | None
) -> Table:
    lower = [h.lower() for h in header]
    has_q = len(lower) > 3 and lower[3] == "quality"
    wanted = None if only is None else set(only)
    raw: dict[str, tuple[list[str], list[str], list[int]]] = {}
    for line, row in enumerate(reader, start=2):
        if len(row) < 3:
            if row and any(c.strip() for c in row):
                raise DataError(f"{p}:{line}: a long CSV row is timestamp,tag,value[,quality], got {row}")
            continue
        if wanted is not None and row[1] not in wanted:
            continue
        good = not has_q or (len(row) > 3 and row[3].strip().upper() == "GOOD")
        entry = raw.setdefault(row[1], ([], [], []))
        entry[0].append(row[0])
        entry[1].append(row[2] if good else "")
        entry[2].append(line)
    table = Table(str(p), "long", {})
    long_ts = ts.model_copy(update={"column": "timestamp"}) if ts.column != "timestamp" else ts
    for tag, (stamps, cells, lines) in raw.items():
        t = parse_times(stamps, long_ts, str(p), lines)
        values, bad = _to_numbers(cells)
        order = np.argsort(t, kind="stable")
        table.unsorted += int(np.sum(order != np.arange(len(order))))
        t = t[order]
        keep = np.ones(len(t), bool)
        if len(t) > 1:
            keep[:-1] = t[1:] != t[:-1]
        table.duplicates += int(len(t) - keep.sum())
        if bad is not None:
            table.bad_cells[tag] = (f"{p}:{lines[bad[0]]}", bad[1])
        table.series[tag] = (t[keep], values[order][keep])
        table.rows[tag] = np.asarray(lines, np.float64)[order][keep]
    if not table.series and only is None:
        raise DataError(f"{p}: no rows")
    return table


def _recording_files(d: Path) -> list[Path]:
    """The data files of a recording directory, wide form preferred, in time order."""
    man = d / RECORDING_MANIFEST
    if not man.exists():
        raise DataError(f"{d}: a directory must be an agent recording (no {RECORDING_MANIFEST})")
    wide = sorted(d.glob("wide-*.csv"))
    files = wide or sorted(d.glob("long-*.csv.gz")) or sorted(d.glob("long-*.csv"))
    if not files:
        raise DataError(f"{d}: the recording holds no wide-*.csv or long-*.csv.gz files")
    return files


def _recording_units(d: Path) -> dict[str, str]:
    try:
        meta = json.loads((d / RECORDING_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{d / RECORDING_MANIFEST}: not readable JSON: {exc}") from None
    tags = meta.get("tags", {}) if isinstance(meta, dict) else {}
    units: dict[str, str] = {}
    if isinstance(tags, dict):
        for name, info in tags.items():
            if isinstance(info, dict) and isinstance(info.get("unit"), str):
                units[str(name)] = info["unit"]
    elif isinstance(tags, list):
        for info in tags:
            if isinstance(info, dict):
                name = info.get("name", info.get("tag"))
                if isinstance(name, str) and isinstance(info.get("unit"), str):
                    units[name] = info["unit"]
    return units


def _read_recording(d: Path, ts: TimestampSpec, only: Sequence[str] | None) -> Table:
    """Every file of a recording directory, concatenated (files rotate in time order)."""
    own = ts.model_copy(update={"format": "auto", "timezone": "UTC", "column": "timestamp"})
    parts = [read_table(f, own, only) for f in _recording_files(d)]

    out = Table(str(d), parts[0].form, {}, units=_recording_units(d))
    names = list(dict.fromkeys(c for p in parts for c in p.series))
    for c in names:
        pieces = [p for p in parts if c in p.series]
        t = np.concatenate([p.series[c][0] for p in pieces])
        vals = [p.series[c][1] for p in pieces]
        v: npt.NDArray[np.generic] = (
            np.concatenate([x.astype(object) for x in vals])
            if any(x.dtype == object for x in vals)
            else np.concatenate(vals)
        )
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        keep = np.ones(len(t), bool)
        if len(t) > 1:
            keep[:-1] = t[1:] != t[:-1]
        out.duplicates += int(len(t) - keep.sum())
        out.series[c] = (t[keep], v[keep])
        for p in pieces:
            if c in p.bad_cells and c not in out.bad_cells:
                out.bad_cells[c] = p.bad_cells[c]
    out.duplicates += sum(p.duplicates for p in parts)
    out.unsorted = sum(p.unsorted for p in parts)
    return out
