"""What a plant run is, and the files a plant leaves behind: agent recordings and historian exports.

Every test plant (:mod:`tests.plants.cstr`, :mod:`tests.plants.progpy_source`) returns a
:class:`PlantRun`: sampled measurements (NaN where the sensor gave nothing), a per-sample fault
code, the fault episodes with their onsets and, optionally, a remaining-useful-life target.
The writers turn a run into what a user would bring to ``edge-export``:

* :func:`write_agent_recording`: the agent's recording directory (``recording.json``, rotating
  ``wide-<UTCstamp>.csv`` and ``long-<UTCstamp>.csv.gz``), in the format agreed for
  ``edge-agent record`` (BRIEF.md, "Recording format").
* :func:`write_historian_wide`: a historian's wide export with its quirks: local time in a
  day-first format with a UTC offset, irregular timestamps, gaps, duplicated rows and a column
  of strings (an operating mode).
* :func:`write_historian_long`: the long form (``timestamp,tag,value,quality``), exception based.
* :func:`write_events`: the maintenance log's fault episodes (``start,end,asset,class``).

Pure numpy and the standard library: nothing here knows the pump station or imports the agent.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "Episode",
    "PlantRun",
    "TagInfo",
    "iso_z",
    "merge_runs",
    "write_agent_recording",
    "write_events",
    "write_historian_long",
    "write_historian_wide",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TagInfo:
    """One measurement: tag name, engineering unit, the sensor's plausible range, what it is."""

    name: str
    unit: str
    low: float
    high: float
    description: str = ""
    operating: bool = False  # an operating variable (what the plant is asked to do)


@dataclass(frozen=True)
class Episode:
    """A labelled fault: class name and code, onset and end (seconds from the run's start)."""

    kind: str
    code: int
    start_s: float
    end_s: float
    asset: str
    tag: str | None = None  # the sensor a sensor fault affects
    severity: float = 1.0


@dataclass
class PlantRun:
    """Samples of one run on a fixed grid: ``values[tag]`` (NaN: no value), ``label`` (fault code
    per sample, 0 normal), ``rul_h`` (remaining useful life in hours, NaN where unknown)."""

    name: str
    start: datetime  # UTC, the first sample
    period_s: float
    tags: tuple[TagInfo, ...]
    values: dict[str, FloatArray]
    label: npt.NDArray[np.int64]
    classes: dict[int, str]  # fault code → class name (0: normal)
    episodes: tuple[Episode, ...]
    asset: str
    rul_h: FloatArray | None = None
    strings: dict[str, list[str]] = field(default_factory=dict)  # non-numeric columns (mode, batch id)

    def __len__(self) -> int:
        return len(self.label)

    @property
    def times_s(self) -> FloatArray:
        return self.period_s * np.arange(len(self), dtype=np.float64)

    def stamps(self) -> list[datetime]:
        return [self.start + timedelta(seconds=float(s)) for s in self.times_s]

    def matrix(self, tags: Sequence[str] | None = None) -> FloatArray:
        """``[N, C]`` of the given tags (default: all, in order)."""
        names = [t.name for t in self.tags] if tags is None else list(tags)
        return np.stack([self.values[n] for n in names], axis=1)

    def tag(self, name: str) -> TagInfo:
        return next(t for t in self.tags if t.name == name)

    def scaled(self, factor: float, start: datetime | None = None) -> PlantRun:
        """The same samples on a clock ``factor`` times faster (period and episode times
        divided by ``factor``; RUL stays in plant hours): what a test serves and trains on
        when an hour of plant time must pass in seconds."""
        return replace(
            self,
            period_s=self.period_s / factor,
            start=start or self.start,
            episodes=tuple(
                replace(e, start_s=e.start_s / factor, end_s=e.end_s / factor) for e in self.episodes
            ),
        )

    def slice(self, lo: int, hi: int) -> PlantRun:
        """Rows ``[lo, hi)``, with the episodes that overlap them, clipped and re-based."""
        t0, t1 = lo * self.period_s, hi * self.period_s
        eps = tuple(
            replace(e, start_s=max(e.start_s, t0) - t0, end_s=min(e.end_s, t1) - t0)
            for e in self.episodes
            if e.end_s > t0 and e.start_s < t1
        )
        return replace(
            self,
            start=self.start + timedelta(seconds=t0),
            values={k: v[lo:hi] for k, v in self.values.items()},
            label=self.label[lo:hi],
            episodes=eps,
            rul_h=None if self.rul_h is None else self.rul_h[lo:hi],
            strings={k: v[lo:hi] for k, v in self.strings.items()},
        )


def merge_runs(fast: PlantRun, slow: PlantRun, name: str = "site") -> PlantRun:
    """Two plants as one agent recording sees them: ``fast``'s grid, ``slow``'s tags held
    (zero-order) from its latest sample; labels, episodes and RUL are ``fast``'s, the slow
    plant's episodes follow (their class names stay apart by asset)."""
    t = fast.times_s + (fast.start - slow.start).total_seconds()
    idx = np.clip(np.floor(t / slow.period_s + 1e-9).astype(int), 0, len(slow) - 1)
    values = {**{k: v[idx] for k, v in slow.values.items()}, **fast.values}
    shift = (slow.start - fast.start).total_seconds()
    eps = fast.episodes + tuple(
        replace(e, start_s=e.start_s + shift, end_s=e.end_s + shift) for e in slow.episodes
    )
    return replace(fast, name=name, tags=(*slow.tags, *fast.tags), values=values, episodes=eps, strings={})


def iso_z(t: datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z`` (the recording format)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _stamp(t: datetime) -> str:
    return iso_z(t).replace("-", "").replace(":", "")


def _cell(v: float) -> str:
    return "" if not math.isfinite(v) else repr(round(float(v), 6))


def write_agent_recording(
    run: PlantRun,
    directory: str | Path,
    *,
    rows_per_file: int = 480,
    agent_version: str = "test-plant",
) -> Path:
    """The run as ``edge-agent record`` writes it (agent/record.py's format): ``recording.json``
    and rotating ``wide-<UTCstamp>.csv`` / ``long-<UTCstamp>.csv.gz`` pairs of at most
    ``rows_per_file`` rows.

    A NaN sample is not GOOD: an empty cell in the wide file, ``BAD`` with the reason
    ``no value`` in the long file, counted in the manifest's counts; runs of rows where no tag
    is GOOD are the manifest's ``gaps`` (``no GOOD sample``, end exclusive)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names = [t.name for t in run.tags]
    m = run.matrix(names)
    stamps = run.stamps()
    good = np.isfinite(m)
    files: list[dict[str, object]] = []
    for lo in range(0, len(run), rows_per_file):
        hi = min(lo + rows_per_file, len(run))
        stamp = _stamp(stamps[lo])
        wide, long = f"wide-{stamp}.csv", f"long-{stamp}.csv.gz"
        with (d / wide).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["timestamp", *names])
            for i in range(lo, hi):
                w.writerow([iso_z(stamps[i]), *(_cell(v) for v in m[i])])
        with gzip.open(d / long, "wt", newline="", encoding="utf-8") as gz:
            w = csv.writer(gz, lineterminator="\n")
            w.writerow(["timestamp", "tag", "value", "quality", "reason"])
            for i in range(lo, hi):
                ts = iso_z(stamps[i])
                for j, n in enumerate(names):
                    v = m[i, j]
                    w.writerow(
                        [ts, n, _cell(v), "GOOD", ""] if math.isfinite(v) else [ts, n, "", "BAD", "no value"]
                    )
        span = {"rows": hi - lo, "first_utc": iso_z(stamps[lo]), "last_utc": iso_z(stamps[hi - 1])}
        g = good[lo:hi]
        counts = {n: [int(g[:, j].sum()), 0, int((~g[:, j]).sum())] for j, n in enumerate(names)}
        files.append(
            {"name": wide, "kind": "wide", "bytes": (d / wide).stat().st_size, **span, "counts": counts}
        )
        files.append({"name": long, "kind": "long", "bytes": (d / long).stat().st_size, **span})
    gap_list: list[dict[str, str]] = []
    none = ~good.any(axis=1)
    i = 0
    while i < len(none):
        if none[i]:
            j = i
            while j + 1 < len(none) and none[j + 1]:
                j += 1
            end = stamps[j] + timedelta(seconds=run.period_s)
            gap_list.append(
                {"start_utc": iso_z(stamps[i]), "end_utc": iso_z(end), "reason": "no GOOD sample"}
            )
            i = j + 1
        else:
            i += 1
    meta = {
        "format": "edge-agent-recording",
        "format_version": 1,
        "agent_version": agent_version,
        "period_s": run.period_s,
        "start_utc": iso_z(stamps[0]),
        "end_utc": iso_z(stamps[-1]),
        "complete": True,
        "stopped": None,
        "tags": [
            {
                "name": t.name,
                "unit": t.unit,
                "counts": {"GOOD": int(good[:, j].sum()), "UNCERTAIN": 0, "BAD": int((~good[:, j]).sum())},
            }
            for j, t in enumerate(run.tags)
        ],
        "gaps": gap_list,
        "files": files,
        "removed": {"files": 0, "bytes": 0},
    }
    (d / "recording.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return d


LOCAL_FORMAT = "%d.%m.%Y %H:%M:%S"


@dataclass(frozen=True)
class HistorianQuirks:
    """What :func:`write_historian_wide` does to a clean run, and where (for the tests)."""

    utc_offset_h: float
    jitter_s: float
    gap_rows: tuple[tuple[int, int], ...]  # [start, end) sample index ranges left out
    duplicated_rows: tuple[int, ...]  # sample indexes written twice
    string_column: str
    time_format: str


def write_historian_wide(
    run: PlantRun,
    path: str | Path,
    *,
    seed: int = 0,
    utc_offset_h: float = 1.0,
    time_format: str = LOCAL_FORMAT,
    jitter_s: float = 20.0,
    n_gaps: int = 3,
    gap_rows: int = 40,
    n_duplicates: int = 12,
    string_column: str = "Mode",
) -> HistorianQuirks:
    """A historian's wide export: ``Time (UTC+01:00)`` as local, day-first time with the offset
    appended (``07.12.2026 05:33:12 +0100``), each row up to ``jitter_s`` off the grid, ``n_gaps``
    missing stretches, ``n_duplicates`` rows written twice, the string column (``run.strings`` or
    the run's mode: ``RUN`` / ``FAULT``) before the numbers, and ``NaN`` samples as empty cells."""
    rng = np.random.default_rng(seed)
    n = len(run)
    tz = timezone(timedelta(hours=utc_offset_h))
    starts = np.sort(rng.choice(np.arange(10, max(11, n - gap_rows - 10)), size=n_gaps, replace=False))
    gaps = tuple((int(s), int(min(n, s + gap_rows))) for s in starts)
    keep = np.ones(n, bool)
    for a, b in gaps:
        keep[a:b] = False
    dups = tuple(sorted(int(i) for i in rng.choice(np.nonzero(keep)[0], size=n_duplicates, replace=False)))
    jitter = rng.uniform(-jitter_s, jitter_s, size=n)
    jitter[0] = 0.0
    names = [t.name for t in run.tags]
    m = run.matrix(names)
    modes = run.strings.get(string_column) or ["RUN" if c == 0 else "FAULT" for c in run.label]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sign = "+" if utc_offset_h >= 0 else "-"
    off = abs(utc_offset_h)
    header_tz = f"UTC{sign}{int(off):02d}:{round((off % 1) * 60):02d}"
    with p.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\r\n")
        w.writerow([f"Time ({header_tz})", string_column, *names])
        for i in range(n):
            if not keep[i]:
                continue
            t = (run.start + timedelta(seconds=float(run.times_s[i] + jitter[i]))).astimezone(tz)
            row = [t.strftime(time_format + " %z"), modes[i], *(_cell(v) for v in m[i])]
            w.writerow(row)
            if i in dups:
                w.writerow(row)
    return HistorianQuirks(utc_offset_h, jitter_s, gaps, dups, string_column, time_format + " %z")


def write_historian_long(
    run: PlantRun, path: str | Path, *, deadband: float = 0.0, max_interval_s: float = 8 * 3600.0
) -> Path:
    """The long, exception-based form: ``timestamp,tag,value,quality`` (ISO 8601 UTC), a row
    only when a value changed by more than ``deadband`` (relative to the tag's span), its
    quality changed, or ``max_interval_s`` passed since the last row (a historian's maximum
    compression interval: 8 h by default, as PI's CompMax); a missing sample is a ``BAD`` row
    with an empty value."""
    every = max(1, round(max_interval_s / run.period_s))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    stamps = [iso_z(s) for s in run.stamps()]
    rows: list[tuple[int, int, str, str]] = []
    for j, t in enumerate(run.tags):
        v = run.values[t.name]
        band = deadband * (t.high - t.low)
        last: float | None = None
        last_bad = False
        since = 0
        for i, x in enumerate(v):
            since += 1
            if not math.isfinite(x):
                if not last_bad:
                    rows.append((i, j, "", "BAD"))
                    since = 0
                last_bad, last = True, None
                continue
            if last is None or last_bad or abs(x - last) > band or since >= every:
                rows.append((i, j, _cell(x), "GOOD"))
                last, last_bad, since = float(x), False, 0
    rows.sort()
    with p.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["timestamp", "tag", "value", "quality"])
        for i, j, val, q in rows:
            w.writerow([stamps[i], run.tags[j].name, val, q])
    return p


def write_events(runs: PlantRun | Sequence[PlantRun], path: str | Path) -> Path:
    """Fault episodes of one or more runs as ``start,end,asset,class`` (ISO 8601 UTC)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["start", "end", "asset", "class"])
        for run in [runs] if isinstance(runs, PlantRun) else runs:
            for e in run.episodes:
                w.writerow(
                    [
                        iso_z(run.start + timedelta(seconds=e.start_s)),
                        iso_z(run.start + timedelta(seconds=e.end_s)),
                        e.asset,
                        e.kind,
                    ]
                )
    return p
