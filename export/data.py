"""Historian recordings → labelled windows, through the agent's own feature code.

Input: CSV in *wide* form (a timestamp + one column per tag, one row per sample) or *long*
form (``timestamp,tag,value,quality``, one row per archived change: irregular,
exception-based, what historians export), or an agent recording directory. Every source is
brought onto the manifest's sample grid with a zero-order hold (the last value stands until
the next; a value whose quality is not GOOD is a gap, as in the agent).

Per asset, the roles' columns (``{asset}`` and ``{n}`` - the asset's 1-based number - in the
column templates) give a series ``[N, R]``; values outside a role's plausible (sensor) range
become gaps; values outside the training range stay (they are what an anomaly looks like).
:func:`agent.pipeline.features.sliding_windows` cuts windows exactly as the agent frames them,
windows holding a gap are dropped (the agent's ``skip`` policy), and every window gets its
targets from the row it ends on: a fault label, a remaining useful life, an oracle
setpoint (all optional).

Splits follow files and time: recordings are marked ``train``, ``test`` (e.g. simulation
seeds never seen in training) or ``calibration`` (a separate normal run, for thresholds);
inside the training recordings the last ``validation_fraction`` (and ``test_fraction``) of
every recording are the validation (and test) sets, cut *before* windowing, with ``gap_s``
dropped between the parts, so no window straddles a cut.

Every source is read by :mod:`export.tables` (wide or long CSV, agent recording directories,
any timestamp format). Inputs can be mapped in bulk (:func:`resolve_columns`); constant inputs
are refused or dropped and quantised ones reported (:func:`column_quality`); a sensor range not
given is inferred from the training data with a margin; labels and class names come from the
data (a label column, an events file).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.modelstore.manifest import FeatureSpec, InputRole, Normalisation, WindowSpec
from agent.pipeline.features import ewma_rows, sliding_windows, window_to_input
from export.pca_baseline import RoleSpec, resolution
from export.tables import DataError, Table, TimestampSpec, _open_text, read_table

__all__ = [
    "Contract",
    "DataSpec",
    "Dataset",
    "ReadOptions",
    "Recording",
    "TimeRange",
    "Windows",
    "build_dataset",
    "column_quality",
    "features",
    "fit_normalisation",
    "history_roles",
    "load_columns",
    "read_long_csv",
    "reference_gaps",
    "reference_pairs",
    "resolution",
    "resolve_columns",
    "role_name",
    "sniff_format",
]

FloatArray = npt.NDArray[np.float64]

NORMAL = 0  # fault code of normal operation
RUL_SENTINEL_H = 10000.0  # the simulator's "no wear active"


@dataclass(frozen=True)
class Contract:
    """What :func:`window_to_input` needs before a manifest exists (the InputContract)."""

    inputs: tuple[InputRole, ...]
    features: FeatureSpec


@dataclass(frozen=True)
class TimeRange:
    """``[start, end)`` in epoch seconds, for one asset or every asset (``asset=None``)."""

    start: float
    end: float
    asset: str | None = None
    what: str = ""  # an excluded range's reason, or an event's class


@dataclass(frozen=True)
class ReadOptions:
    """How the user's files are read, labelled, cleaned and split (all optional).

    ``exclude``: time ranges whose rows are gaps (maintenance, start-ups). ``events``: labelled
    episodes (``what`` = class name); rows inside one get its class. ``classes``: code → name
    of a numeric label column. ``test_fraction``/``gap_s``: the time split of training files
    (train | gap | validation | gap | test). ``range_margin``: an inferred sensor range is the
    training min/max widened by this many spans each side. ``constant``: ``refuse`` or
    ``drop`` a constant input. ``min_distinct``: fewer distinct values than this is constant.
    """

    timestamp: TimestampSpec = field(default_factory=TimestampSpec)
    max_hold_s: float | None = None
    exclude: tuple[TimeRange, ...] = ()
    events: tuple[TimeRange, ...] = ()
    classes: Mapping[int, str] = field(default_factory=dict)
    normal_class: str = "normal"
    test_fraction: float = 0.0
    gap_s: float = 0.0
    range_margin: float = 3.0
    constant: str = "refuse"
    min_distinct: int = 3


@dataclass(frozen=True)
class DataSpec:
    """Which columns feed which role, per asset, and where the targets are.

    Column templates take ``{asset}`` (the asset name) and ``{n}`` (its 1-based number);
    ``mapping`` (asset → role → column), when given, names every asset's columns outright
    (bulk mapping by pattern). ``label``/``rul``/``oracle`` are optional target columns
    (``None``: not used). A role whose ``low``/``high`` is NaN has its sensor range inferred
    from the training data (:attr:`ReadOptions.range_margin`).
    """

    roles: tuple[RoleSpec, ...]
    assets: tuple[str, ...]
    window: WindowSpec
    label: str | None = None
    rul: str | None = None
    oracle: str | None = None
    mapping: Mapping[str, Mapping[str, str]] | None = None
    operating: tuple[str, ...] = ()
    options: ReadOptions = field(default_factory=ReadOptions)
    aggregation: Mapping[str, str] = field(default_factory=dict)  # role → "mean" (default instant)
    ewma: Mapping[str, float] = field(default_factory=dict)  # role → time constant (s): ``aggregation: ewma``

    def column(self, template: str, asset: str) -> str:
        return template.format(asset=asset, n=self.assets.index(asset) + 1)

    def columns(self, asset: str, targets: Mapping[str, str] | None = None) -> dict[str, str]:
        """Role → column for one asset, plus ``__label``/``__rul``/``__oracle`` target columns
        (``targets`` overrides the target templates, e.g. for a long CSV's tag names)."""
        if self.mapping is not None:
            out = {r.role: self.mapping[asset][r.role] for r in self.roles}
        else:
            out = {r.role: self.column(r.column, asset) for r in self.roles}
        for key in ("label", "rul", "oracle"):
            t = getattr(self, key)
            if t is not None and targets and key in targets:
                t = targets[key]
            if t is not None:
                out[f"__{key}"] = self.column(t, asset)
        return out


@dataclass(frozen=True)
class Recording:
    """One file (or agent recording directory) with its split and the seed that made it.

    ``split``: ``train`` (cut in time into train / validation [/ test]), ``test``,
    ``calibration`` (a separate normal run: thresholds only) or ``transfer`` (unlabelled
    windows a teacher labels for distillation; never trained on with labels, nor judged on).
    """

    path: Path
    split: str = "train"
    seed: int | None = None
    kind: str = ""  # free text: "faults", "normal", ...
    targets: Mapping[str, str] = field(default_factory=dict)  # label/rul/oracle column overrides
    timestamp: TimestampSpec | None = None  # this file's own time format (default: the data's)


# --------------------------------------------------------------------------- roles in bulk

_ROLE_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def role_name(text: str) -> str:
    """A column (or its varying part) → a role name the manifest accepts."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"
    if not _ROLE_OK.match(name):
        name = "_" + name
    return name[:64]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(\*|\?)", pattern):
        out += "(.*?)" if part == "*" else "(.)" if part == "?" else re.escape(part)
    return re.compile(f"^{out}$")


def resolve_columns(
    header: Sequence[str],
    assets: Sequence[str],
    columns: str | Sequence[str] | Mapping[str, str | Sequence[str]],
    *,
    exclude: Sequence[str] = (),
    source: str = "",
) -> dict[str, dict[str, str]]:
    """Map columns to roles in bulk: asset → {role → column}, roles in header order.

    ``columns``: a glob (``{asset}.*``: the role is what the wildcards matched), a regular
    expression after ``re:`` (the role is the group ``role``, else group 1, else the match),
    or a list of column templates (``ROLE=TEMPLATE`` or ``TEMPLATE``: the role is the column
    without the asset's name); ``{asset}`` and ``{n}`` stand for the asset and its 1-based
    number. A mapping gives each asset its own. ``exclude``: globs of columns never used.
    Every asset must end up with the same roles (one model for identical assets).
    """
    import fnmatch

    skip = {c for c in header if any(fnmatch.fnmatchcase(c, g) for g in exclude)}
    out: dict[str, dict[str, str]] = {}
    for n, asset in enumerate(assets, start=1):
        spec = columns[asset] if isinstance(columns, Mapping) else columns
        if isinstance(columns, Mapping) and asset not in columns:
            raise DataError(f"data.columns: no pattern for asset {asset!r}")
        mapping: dict[str, str] = {}
        if isinstance(spec, str):
            try:
                text = spec.format(asset=re.escape(asset) if spec.startswith("re:") else asset, n=n)
                rx = re.compile(text[3:]) if text.startswith("re:") else _glob_regex(text)
            except (KeyError, IndexError, ValueError, re.error) as exc:
                raise DataError(
                    f"data.columns {spec!r}: not a pattern ({exc}); only {{asset}} and {{n}} are "
                    "placeholders, write a literal brace as {{ or }}"
                ) from None
            for c in header:
                m = rx.fullmatch(c) if text.startswith("re:") else rx.match(c)
                if m is None or c in skip:
                    continue
                if "role" in rx.groupindex:
                    varying = m.group("role")
                elif m.groups():
                    varying = "_".join(g for g in m.groups() if g)
                else:
                    varying = c
                role = role_name(varying)
                if role in mapping:
                    raise DataError(
                        f"{source}: columns {mapping[role]!r} and {c!r} both map to role {role!r} "
                        f"for asset {asset!r}: list the columns as ROLE=COLUMN"
                    )
                mapping[role] = c
        else:
            for item in spec:
                role_part, eq, template = item.partition("=")
                if not eq:
                    template, role_part = item, ""
                try:
                    c = template.format(asset=asset, n=n)
                except (KeyError, IndexError, ValueError) as exc:
                    raise DataError(f"data.columns {item!r}: not a column template ({exc})") from None
                if c not in header:
                    raise DataError(f"{source}: no column {c!r} (asset {asset!r}; has {list(header)[:12]})")
                role = role_name(role_part or c.replace(asset, "", 1))
                if role in mapping:
                    raise DataError(f"{source}: role {role!r} given twice for asset {asset!r}")
                mapping[role] = c
        if not mapping:
            raise DataError(f"{source}: no column matches {spec!r} for asset {asset!r}")
        out[asset] = mapping
    first = list(out[assets[0]])
    for asset in assets[1:]:
        if set(out[asset]) != set(first):
            missing = sorted(set(first) ^ set(out[asset]))
            raise DataError(
                f"{source}: assets {assets[0]!r} and {asset!r} do not have the same roles "
                f"(differ in {missing})"
            )
    return {a: {r: out[a][r] for r in first} for a in assets}


# --------------------------------------------------------------------------- reading


def sniff_format(path: str | Path) -> str:
    """``long`` when the header is ``timestamp,tag,value,quality``, otherwise ``wide``."""
    with _open_text(Path(path)) as fh:
        header = [h.strip().lower() for h in fh.readline().split(",")]
    return "long" if header[:3] == ["timestamp", "tag", "value"] else "wide"


def read_long_csv(path: str | Path, tags: Sequence[str]) -> dict[str, tuple[FloatArray, FloatArray]]:
    """A long CSV → ``{tag: (times, values)}`` for ``tags``; a non-GOOD or empty value is NaN."""
    table = read_table(path)
    if table.form != "long":
        raise DataError(f"{path}: a long CSV starts with timestamp,tag,value[,quality]")
    missing = [t for t in tags if not table.has(t)]
    if missing:
        raise DataError(f"{path}: no rows for tag(s) {missing}")
    return {t: table.numeric(t) for t in tags}


def resample_hold(
    series: Mapping[str, tuple[FloatArray, FloatArray]],
    columns: Sequence[str],
    period_s: float,
    max_hold_s: float = 3600.0,
) -> FloatArray:
    """Exception-based series → ``[N, C]`` on one grid (zero-order hold, at most ``max_hold_s``):
    :meth:`export.tables.Table.grid` of these series."""
    table = Table("<series>", "long", {c: (np.asarray(t), np.asarray(v)) for c, (t, v) in series.items()})
    _, values = table.grid(columns, period_s, max_hold_s)
    return np.stack([np.asarray(v, np.float64) for v in values], axis=1)


def load_columns(path: str | Path, columns: Sequence[str], period_s: float) -> list[FloatArray]:
    """``columns`` on the ``period_s`` grid (a gap is NaN), any file :func:`read_table` reads."""
    table = read_table(path, columns=columns)
    for c in columns:
        table.numeric(c)
    _, values = table.grid(columns, period_s)
    return [np.stack([np.asarray(v, np.float64) for v in values], axis=1)]


# --------------------------------------------------------------------------- windows


@dataclass
class Windows:
    """Raw windows ``x[W, T, R]`` (float32, engineering units) with their targets and where
    they come from (recording index, asset index, end row), in time order per asset."""

    x: npt.NDArray[np.float32]
    label: npt.NDArray[np.int64]
    rul: FloatArray
    oracle: FloatArray
    rec: npt.NDArray[np.int64]
    asset: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]  # row index (in sample periods) of the window's last row

    def __len__(self) -> int:
        return len(self.x)

    def take(self, mask: npt.ArrayLike) -> Windows:
        m = np.asarray(mask)
        return Windows(
            self.x[m], self.label[m], self.rul[m], self.oracle[m], self.rec[m], self.asset[m], self.end[m]
        )

    def with_roles(self, keep: Sequence[int]) -> Windows:
        """The same windows with only the roles (last axis) ``keep``, in that order."""
        return Windows(
            np.ascontiguousarray(self.x[:, :, list(keep)]),
            self.label,
            self.rul,
            self.oracle,
            self.rec,
            self.asset,
            self.end,
        )

    @staticmethod
    def concat(parts: Sequence[Windows], length: int, n_roles: int) -> Windows:
        if not parts:
            return Windows(
                np.empty((0, length, n_roles), np.float32),
                np.empty(0, np.int64),
                np.empty(0),
                np.empty(0),
                np.empty(0, np.int64),
                np.empty(0, np.int64),
                np.empty(0, np.int64),
            )
        return Windows(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("x", "label", "rul", "oracle", "rec", "asset", "end")
            )
        )


@dataclass
class Dataset:
    """Windows split into train / validation (time) / test (other files or seeds, or the end
    of every training file) / calibration (separate normal runs), the raw training samples of
    normal operation for normalisation, and what was found in the data.

    ``spec`` is the resolved spec: inferred sensor ranges filled in, dropped constant roles
    removed. ``quality`` holds one report line per finding (duplicates, constant, quantised
    columns, values outside a sensor range, excluded rows).
    """

    spec: DataSpec
    recordings: tuple[Recording, ...]
    train: Windows
    val: Windows
    test: Windows
    train_samples: FloatArray  # [N, R] every training row of normal operation (for normalisation)
    labels: dict[int, str] = field(default_factory=dict)  # class code → name (from the data)
    calibration: Windows | None = None
    quality: list[str] = field(default_factory=list)
    training_range: tuple[tuple[float, float], ...] = ()  # per role: min/max of the training rows
    transfer: Windows | None = None  # `split: transfer` recordings whole (their labels unused)


def _plausible(seg: FloatArray, roles: Sequence[RoleSpec]) -> FloatArray:
    lo = np.array([r.low for r in roles])
    hi = np.array([r.high for r in roles])
    out = seg.copy()
    out[(seg < lo) | (seg > hi)] = np.nan
    return out


def _windows_of(
    seg: FloatArray, n_roles: int, window: WindowSpec, stride: int, rec: int, asset: int, offset: int
) -> Windows:
    view = sliding_windows(seg, window.length, stride)
    if not len(view):
        return Windows.concat([], window.length, n_roles)
    ok = np.all(np.isfinite(view[:, :, :n_roles]), axis=(1, 2))
    ends = window.length - 1 + stride * np.arange(len(view))
    view = view[ok]
    ends = ends[ok]
    # a copy: views of the last row would keep every window's float64 copy alive (GBs)
    last = view[:, -1, :].copy()
    label = np.nan_to_num(last[:, n_roles], nan=NORMAL).astype(np.int64)
    return Windows(
        x=view[:, :, :n_roles].astype(np.float32),
        label=label,
        rul=last[:, n_roles + 1],
        oracle=last[:, n_roles + 2],
        rec=np.full(len(view), rec, np.int64),
        asset=np.full(len(view), asset, np.int64),
        end=(ends + offset).astype(np.int64),
    )


@dataclass
class _Part:
    """One asset of one recording on the sample grid, before cleaning."""

    rec: int
    asset: int
    times: FloatArray
    x: FloatArray  # [N, R] role values
    label: npt.NDArray[np.generic]  # [N] numeric codes or text (object)
    rul: FloatArray
    oracle: FloatArray


def _in_ranges(times: FloatArray, ranges: Sequence[TimeRange], asset: str) -> npt.NDArray[np.bool_]:
    m = np.zeros(len(times), bool)
    for r in ranges:
        if r.asset is None or r.asset == asset:
            m |= (times >= r.start) & (times < r.end)
    return m


def _read_parts(
    spec: DataSpec, recordings: Sequence[Recording], quality: list[str], progress: bool
) -> list[_Part]:
    from export.progress import Progress

    opts = spec.options
    parts: list[_Part] = []
    bar = Progress(len(recordings), "read recordings", enabled=progress)
    for ri, rec in enumerate(recordings):
        if rec.split not in ("train", "test", "calibration", "transfer"):
            raise DataError(f"{rec.path}: split must be train, test, calibration or transfer: {rec.split!r}")
        cols_by_asset = [spec.columns(a, rec.targets) for a in spec.assets]
        columns = list(dict.fromkeys(c for cols in cols_by_asset for c in cols.values()))
        table = read_table(rec.path, rec.timestamp or opts.timestamp, columns)
        if table.duplicates:
            quality.append(
                f"{rec.path}: {table.duplicates} row(s) repeat an earlier timestamp: the last one kept"
            )
        if table.unsorted:
            quality.append(f"{rec.path}: {table.unsorted} row(s) out of time order: sorted")
        for cols in cols_by_asset:
            for r in spec.roles:
                table.numeric(cols[r.role])
            for key in ("rul", "oracle"):
                if f"__{key}" in cols:
                    table.numeric(cols[f"__{key}"], f"a {key} target")
        grid, values = table.grid(columns, spec.window.sample_period_s, opts.max_hold_s)
        by_col = dict(zip(columns, values, strict=True))
        for ai, (asset, cols) in enumerate(zip(spec.assets, cols_by_asset, strict=True)):
            n = len(grid)
            x = (
                np.stack([by_col[cols[r.role]].astype(np.float64) for r in spec.roles], axis=1)
                if spec.roles
                else np.empty((n, 0))
            )
            label: npt.NDArray[np.generic] = (
                by_col[cols["__label"]] if "__label" in cols else np.full(n, np.nan)
            )
            if opts.events:
                label = label.astype(object)
                for ev in opts.events:
                    if ev.asset is None or ev.asset == asset:
                        label[(grid >= ev.start) & (grid < ev.end)] = ev.what
            excluded = _in_ranges(grid, opts.exclude, asset)
            if excluded.any():
                x[excluded] = np.nan
                quality.append(
                    f"{rec.path}: {int(excluded.sum())} sample(s) of {asset} in excluded time ranges: "
                    "not used"
                )
            parts.append(
                _Part(
                    ri,
                    ai,
                    grid,
                    x,
                    label,
                    by_col[cols["__rul"]].astype(np.float64) if "__rul" in cols else np.full(n, np.nan),
                    by_col[cols["__oracle"]].astype(np.float64) if "__oracle" in cols else np.full(n, np.nan),
                )
            )
        bar.update()
    bar.close()
    return parts


def _label_codes(parts: Sequence[_Part], opts: ReadOptions) -> tuple[dict[int, str], dict[str, int]]:
    """Class code → name: numeric codes named by ``opts.classes`` (0 is normal), class names
    (a text label column, the events file) numbered after them, normal first."""
    numeric: set[int] = set()
    names: set[str] = set()
    for p in parts:
        lab = p.label
        if lab.dtype == object:
            for v in lab:
                if isinstance(v, str):
                    names.add(v)
                elif v is not None and isinstance(v, float | int) and math.isfinite(v):
                    numeric.add(int(v))
        else:
            f = lab.astype(np.float64)
            numeric |= {int(v) for v in np.unique(f[np.isfinite(f)])}
    out = {c: opts.classes.get(c, opts.normal_class if c == NORMAL else f"class{c}") for c in sorted(numeric)}
    out.setdefault(NORMAL, opts.normal_class)
    by_name = {v: k for k, v in out.items()}
    nxt = max(out) + 1
    for name in sorted(names - set(by_name)):
        by_name[name] = nxt
        out[nxt] = name
        nxt += 1
    return dict(sorted(out.items())), by_name


def _codes(label: npt.NDArray[np.generic], by_name: Mapping[str, int]) -> FloatArray:
    if label.dtype != object:
        return label.astype(np.float64)
    return np.array(
        [by_name[v] if isinstance(v, str) else (math.nan if v is None else float(v)) for v in label],
        np.float64,
    )


def column_quality(values: npt.ArrayLike, min_distinct: int = 3) -> tuple[str, str]:
    """``(kind, detail)`` of one input's training values: kind ``constant`` (std below 1e-6 of
    the value, about 30 float32 round-offs, or fewer than ``min_distinct`` distinct values),
    ``quantised`` (few levels on a regular step), or ``ok``."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return "constant", "no valid value"
    u = np.unique(v)
    std = float(np.std(v))
    mean = float(np.mean(v))
    # float32 round-off over a fieldbus is about 6e-8 of the value: a std within a few dozen
    # of those is noise of the transport, not of the process.
    floor = 1e-6 * max(abs(mean), 1e-12)
    if len(u) < min_distinct or std <= floor:
        return "constant", f"{len(u)} distinct value(s), std {std:.3g} around {mean:.6g}"
    step = float(np.min(np.diff(u)))
    levels = (u - u[0]) / step
    if len(u) <= max(min_distinct, len(v) // 20) and np.allclose(levels, np.round(levels), atol=1e-3):
        return "quantised", f"{len(u)} levels, step {step:.6g} (std {std:.3g})"
    return "ok", f"std {std:.3g}"


def _time_cuts(n: int, spec: DataSpec, validation_fraction: float) -> tuple[int, int, int, int]:
    """Row bounds of a training recording: train [0, a), validation [a + g, b), test [b + g, n)."""
    opts = spec.options
    g = round(opts.gap_s / spec.window.sample_period_s)
    b = round(n * (1.0 - opts.test_fraction)) if opts.test_fraction > 0 else n
    a = round(n * (1.0 - validation_fraction - opts.test_fraction))
    return a, min(a + g, n), b, min(b + g, n) if opts.test_fraction > 0 else n


def _resolve_roles(
    spec: DataSpec,
    parts: Sequence[_Part],
    recordings: Sequence[Recording],
    quality: list[str],
    validation_fraction: float,
) -> tuple[DataSpec, list[int], tuple[tuple[float, float], ...]]:
    """Quality of every input on the training rows, constant inputs refused (or dropped),
    inferred sensor ranges; returns the resolved spec, the kept role indexes and the training
    ranges."""
    opts = spec.options
    rows: list[FloatArray] = []
    for p in parts:
        if recordings[p.rec].split == "train":
            a = _time_cuts(len(p.x), spec, validation_fraction)[0]
            rows.append(p.x[:a])
    if not rows:
        raise DataError("no training recordings (every recording is marked test or calibration)")
    train = np.concatenate(rows)
    first = next(r.path for r in recordings if r.split == "train")
    keep: list[int] = []
    roles: list[RoleSpec] = []
    ranges: list[tuple[float, float]] = []
    for i, r in enumerate(spec.roles):
        col = train[:, i]
        column = spec.columns(spec.assets[0])[r.role]
        kind, detail = column_quality(col, opts.min_distinct)
        if kind == "constant":
            msg = (
                f"{first}: column {column!r} (role {r.role}) is constant in the training data: {detail}; "
                "a constant input makes round-off look like a fault"
            )
            if opts.constant != "drop":
                two = " (data.min_distinct: 2 keeps a two-state input)" if detail.startswith("2 ") else ""
                raise DataError(msg + f": remove it from the inputs, or set data.constant: drop{two}")
            quality.append(msg + ": dropped (data.constant: drop)")
            continue
        if kind == "quantised":
            quality.append(f"column {column!r} (role {r.role}) is quantised: {detail}")
        fin = col[np.isfinite(col)]
        lo, hi = float(fin.min()), float(fin.max())
        low, high = r.low, r.high
        if math.isnan(low) or math.isnan(high):
            span = max(hi - lo, abs(hi) * 1e-6, 1e-12)
            low = lo - opts.range_margin * span if math.isnan(low) else low
            high = hi + opts.range_margin * span if math.isnan(high) else high
        else:
            outside = int(np.sum((fin < low) | (fin > high)))
            if outside:
                quality.append(
                    f"column {column!r} (role {r.role}): {outside} training value(s) outside the sensor "
                    f"range [{low:g}, {high:g}]: treated as BAD"
                )
        keep.append(i)
        roles.append(RoleSpec(r.role, r.unit, low, high, r.column))
        ranges.append((max(lo, low), min(hi, high)))
    if not roles:
        raise DataError("no usable model inputs left (every one is constant)")
    mapping = (
        {a: {r.role: m[r.role] for r in roles} for a, m in spec.mapping.items()} if spec.mapping else None
    )
    resolved = DataSpec(
        tuple(roles),
        spec.assets,
        spec.window,
        spec.label,
        spec.rul,
        spec.oracle,
        mapping,
        tuple(o for o in spec.operating if o in {r.role for r in roles}),
        spec.options,
        spec.aggregation,
        {k: v for k, v in spec.ewma.items() if k in {r.role for r in roles}},
    )
    return resolved, keep, tuple(ranges)


def history_roles(spec: DataSpec) -> tuple[InputRole, ...]:
    """The resolved spec's roles as the manifest's ``aggregation`` sees them (no normalisation):
    what :func:`agent.pipeline.features.ewma_rows` needs to smooth a recording's ``ewma`` roles."""
    return tuple(
        InputRole(
            role=r.role,
            unit=r.unit,
            range=(r.low, r.high),
            aggregation="ewma" if r.role in spec.ewma else "instant",
            time_constant_s=spec.ewma.get(r.role),
        )
        for r in spec.roles
    )


def build_dataset(
    spec: DataSpec,
    recordings: Sequence[Recording],
    *,
    validation_fraction: float = 0.25,
    train_stride: int | None = None,
    progress: bool = False,
) -> Dataset:
    """Read every recording, check the inputs, cut windows per asset and split.

    Splits: ``test`` and ``calibration`` recordings whole; every ``train`` recording in time
    (train | gap | validation [| gap | test], cut before windowing so no window straddles a
    cut). ``train_stride`` (default: the manifest stride) thins training windows (neighbours
    overlap heavily); the other sets use the manifest stride, as served. Windows holding a gap,
    an excluded row or a value outside the *sensor* range are dropped (the agent's ``skip``);
    a value outside the training range is kept (it is what an anomaly looks like).
    """
    quality: list[str] = []
    parts = _read_parts(spec, recordings, quality, progress)
    spec, keep, training_range = _resolve_roles(spec, parts, recordings, quality, validation_fraction)
    labels, by_name = _label_codes(parts, spec.options)
    n_roles = len(spec.roles)
    stride = spec.window.stride
    tr_stride = train_stride or stride
    out: dict[str, list[Windows]] = {"train": [], "val": [], "test": [], "calibration": [], "transfer": []}
    samples: list[FloatArray] = []
    history = history_roles(spec) if spec.ewma else ()
    for p in parts:
        rec = recordings[p.rec]
        x = _plausible(p.x[:, keep], spec.roles)
        if history:  # the agent's ewma over the whole recording (from its first row), before any cut
            x = ewma_rows(x, history, spec.window.sample_period_s)
        code = _codes(p.label, by_name)
        full = np.concatenate([x, np.stack([code, p.rul, p.oracle], axis=1)], axis=1)
        if rec.split != "train":
            out[rec.split].append(_windows_of(full, n_roles, spec.window, stride, p.rec, p.asset, 0))
            continue
        a, va, b, te = _time_cuts(len(full), spec, validation_fraction)
        out["train"].append(_windows_of(full[:a], n_roles, spec.window, tr_stride, p.rec, p.asset, 0))
        out["val"].append(_windows_of(full[va:b], n_roles, spec.window, stride, p.rec, p.asset, va))
        if te < len(full):
            out["test"].append(_windows_of(full[te:], n_roles, spec.window, stride, p.rec, p.asset, te))
        normal = np.nan_to_num(code[:a], nan=NORMAL) == NORMAL
        samples.append(x[:a][normal])
    parts.clear()  # the series are cut: only their windows and samples are needed now
    length = spec.window.length
    # one split at a time, its parts freed as it is joined: a long window's raw windows are GBs
    joined = {name: Windows.concat(out.pop(name), length, n_roles) for name in list(out)}
    return Dataset(
        spec=spec,
        recordings=tuple(recordings),
        train=joined["train"],
        val=joined["val"],
        test=joined["test"],
        train_samples=np.concatenate(samples),
        labels=labels,
        calibration=joined["calibration"],
        quality=quality,
        training_range=training_range,
        transfer=joined["transfer"],
    )


def fit_normalisation(
    spec: DataSpec,
    samples: FloatArray,
    *,
    training_range: Sequence[tuple[float, float]] = (),
) -> tuple[InputRole, ...]:
    """Per-role standard normalisation from training samples of normal operation.

    The std is floored at the column's resolution (its smallest step between distinct values,
    and 1e-6 of its value): a quantised or nearly constant input never turns round-off into
    hundreds of standard deviations. ``training_range`` (default: the samples' min/max) goes
    into the manifest beside the sensor ``range``.
    """
    mean = np.nanmean(samples, axis=0) if len(samples) else np.full(len(spec.roles), np.nan)
    std = np.nanstd(samples, axis=0) if len(samples) else mean
    bad = [r.role for r, m in zip(spec.roles, mean, strict=True) if not np.isfinite(m)]
    if bad:
        raise ValueError(f"no valid training samples for roles {bad}")
    out = []
    for i, r in enumerate(spec.roles):
        col = samples[:, i]
        floor = max(resolution(col), 1e-6 * abs(float(mean[i])), 1e-12)
        tr = training_range[i] if training_range else (float(np.nanmin(col)), float(np.nanmax(col)))
        out.append(
            InputRole(
                role=r.role,
                unit=r.unit,
                range=(r.low, r.high),
                normalisation=Normalisation(
                    kind="standard", mean=float(mean[i]), std=float(max(std[i], floor))
                ),
                training_range=tr,
                operating=r.role in spec.operating,
                aggregation=(
                    "ewma"
                    if r.role in spec.ewma
                    else "mean"
                    if spec.aggregation.get(r.role) == "mean"
                    else "instant"
                ),
                time_constant_s=spec.ewma.get(r.role),
            )
        )
    return tuple(out)


def reference_pairs(spec: DataSpec, refs: Sequence[str]) -> list[tuple[int, int]]:
    """``(reference, tag)`` role indexes of ``spec`` for every role in ``refs`` bound to the same
    column as a role not in ``refs`` (a ``data.ewma`` reference and its tag; same column for
    every asset)."""
    names = [r.role for r in spec.roles]
    cols = [spec.columns(a) for a in spec.assets]
    pairs = []
    for ref in refs:
        tags = [j for j, t in enumerate(names) if t not in refs and all(c[t] == c[ref] for c in cols)]
        if tags:
            pairs.append((names.index(ref), tags[0]))
    return pairs


def reference_gaps(x: npt.NDArray[np.generic], pairs: Sequence[tuple[int, int]]) -> npt.NDArray[np.generic]:
    """A copy of ``x`` (rows or windows, roles along the last axis) with each reference column
    of ``pairs`` replaced by its tag minus it: how far the tag moved from its own recent level,
    free of the level itself (a level late in a day may lie where training never was)."""
    out = x.copy()
    for ref, tag in pairs:
        out[..., ref] = x[..., tag] - x[..., ref]
    return out


_CHUNK = 8192


def features(x: npt.NDArray[np.float32], contract: Contract) -> npt.NDArray[np.float32]:
    """Model inputs of raw windows, in chunks, through :func:`window_to_input` (THE feature code)."""
    if not len(x):
        shape = contract.features.shape(x.shape[1] if x.ndim == 3 else 1, len(contract.inputs))
        return np.empty((0, *shape), np.float32)
    return np.concatenate([window_to_input(x[i : i + _CHUNK], contract) for i in range(0, len(x), _CHUNK)])


def events(w: Windows) -> Iterable[tuple[int, int, int, int, int]]:
    """Fault episodes in windows: ``(rec, asset, code, onset_end_row, last_end_row)`` per run of
    one non-normal label, in time order (used for detection delays)."""
    for rec in np.unique(w.rec):
        for asset in np.unique(w.asset[w.rec == rec]):
            m = (w.rec == rec) & (w.asset == asset)
            ends = w.end[m]
            labels = w.label[m]
            order = np.argsort(ends, kind="stable")
            ends, labels = ends[order], labels[order]
            i = 0
            while i < len(labels):
                if labels[i] == NORMAL:
                    i += 1
                    continue
                j = i
                while j + 1 < len(labels) and labels[j + 1] == labels[i]:
                    j += 1
                yield int(rec), int(asset), int(labels[i]), int(ends[i]), int(ends[j])
                i = j + 1
