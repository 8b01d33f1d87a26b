"""Historian recordings → labelled windows, through the agent's own feature code.

Input: CSV in *wide* form (``timestamp`` + one column per tag, one row per sample; what
``python -m simulator --record`` writes and :func:`export.pca_baseline.read_csv` reads) or
*long* form (``timestamp,tag,value,quality``, one row per archived change: irregular,
exception-based, what historians export). Both are brought onto the manifest's sample grid:
wide rows are decimated (:func:`export.pca_baseline.load_series`), long rows are resampled
with a zero-order hold (the last archived value stands until the next; a value whose
quality is not GOOD is a gap, as in the agent).

Per asset, the roles' columns (``{asset}`` and ``{n}`` - the asset's 1-based number - in the
column templates) give a series ``[N, R]``; values outside a role's plausible range become
gaps. :func:`agent.pipeline.features.sliding_windows` cuts windows exactly as the agent frames
them, windows holding a gap are dropped (the agent's ``skip`` policy), and every window gets
its targets from the row it ends on: a fault label, a remaining useful life, an oracle
setpoint (all optional).

Splits follow time and seeds: recordings are marked ``train`` or ``test`` (the test set uses
simulation seeds never seen in training); inside the training recordings the last
``validation_fraction`` of every segment is the validation set, cut *before* windowing so no
window straddles the split.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from agent.modelstore.manifest import FeatureSpec, InputRole, Normalisation, WindowSpec
from agent.pipeline.features import sliding_windows, window_to_input
from export.pca_baseline import RoleSpec, _parse_time, load_series

__all__ = [
    "Contract",
    "DataSpec",
    "Dataset",
    "Recording",
    "Windows",
    "build_dataset",
    "features",
    "fit_normalisation",
    "load_columns",
    "read_long_csv",
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
class DataSpec:
    """Which columns feed which role, per asset, and where the targets are.

    Column templates take ``{asset}`` (the asset name) and ``{n}`` (its 1-based number).
    ``label``/``rul``/``oracle`` are optional target columns (``None``: not used).
    """

    roles: tuple[RoleSpec, ...]
    assets: tuple[str, ...]
    window: WindowSpec
    label: str | None = None
    rul: str | None = None
    oracle: str | None = None

    def column(self, template: str, asset: str) -> str:
        return template.format(asset=asset, n=self.assets.index(asset) + 1)

    def columns(self, asset: str, targets: Mapping[str, str] | None = None) -> dict[str, str]:
        """Role → column for one asset, plus ``__label``/``__rul``/``__oracle`` target columns
        (``targets`` overrides the target templates, e.g. for a long CSV's tag names)."""
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
    """One CSV file with its split (``train`` or ``test``) and the seed that made it."""

    path: Path
    split: str = "train"
    seed: int | None = None
    kind: str = ""  # free text: "faults", "normal", ...
    targets: Mapping[str, str] = field(default_factory=dict)  # label/rul/oracle column overrides


# --------------------------------------------------------------------------- reading


def _open_text(path: Path) -> TextIO:
    """A CSV file, or a gzipped one (``.gz``: the agent's long recordings)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return path.open(newline="", encoding="utf-8")


def sniff_format(path: str | Path) -> str:
    """``long`` when the header is ``timestamp,tag,value,quality``, otherwise ``wide``."""
    with _open_text(Path(path)) as fh:
        header = [h.strip().lower() for h in fh.readline().split(",")]
    return "long" if header[:3] == ["timestamp", "tag", "value"] else "wide"


def read_long_csv(path: str | Path, tags: Sequence[str]) -> dict[str, tuple[FloatArray, FloatArray]]:
    """A long CSV (or ``.csv.gz``) → ``{tag: (times, values)}`` for ``tags``; a non-GOOD or empty
    value is NaN. Columns after ``quality`` (the agent's ``reason``) are ignored."""
    p = Path(path)
    wanted = set(tags)
    times: dict[str, list[float]] = {t: [] for t in tags}
    values: dict[str, list[float]] = {t: [] for t in tags}
    with _open_text(p) as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:3] != ["timestamp", "tag", "value"]:
            raise ValueError(f"{p}: a long CSV starts with timestamp,tag,value[,quality], got {header}")
        has_q = len(header) > 3 and header[3] == "quality"
        for line, row in enumerate(reader, start=2):
            if len(row) < 3 or row[1] not in wanted:
                continue
            q_good = not has_q or (len(row) > 3 and row[3].strip().upper() == "GOOD")
            try:
                v = float(row[2]) if q_good and row[2].strip() else math.nan
            except ValueError:
                v = math.nan
            times[row[1]].append(_parse_time(row[0], p, line))
            values[row[1]].append(v)
    missing = [t for t in tags if not times[t]]
    if missing:
        raise ValueError(f"{p}: no rows for tag(s) {missing}")
    return {t: (np.asarray(times[t]), np.asarray(values[t])) for t in tags}


def resample_hold(
    series: Mapping[str, tuple[FloatArray, FloatArray]],
    columns: Sequence[str],
    period_s: float,
    max_hold_s: float = 3600.0,
) -> FloatArray:
    """Exception-based series → ``[N, C]`` on one grid (zero-order hold, at most ``max_hold_s``).

    The grid starts where every column has a value and ends at the last archived change.
    """
    start = max(float(series[c][0][0]) for c in columns)
    end = max(float(series[c][0][-1]) for c in columns)
    n = math.floor((end - start) / period_s + 1e-9) + 1
    grid = start + period_s * np.arange(n)
    out = np.empty((n, len(columns)))
    for j, c in enumerate(columns):
        t, v = series[c]
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        idx = np.searchsorted(t, grid + 1e-6, side="right") - 1
        col = v[np.clip(idx, 0, None)]
        col[(idx < 0) | (grid - t[np.clip(idx, 0, None)] > max_hold_s)] = np.nan
        out[:, j] = col
    return out


def load_columns(path: str | Path, columns: Sequence[str], period_s: float) -> list[FloatArray]:
    """Gap-free segments ``[N, C]`` of ``columns`` on the ``period_s`` grid, wide or long CSV."""
    if sniff_format(path) == "long":
        return [resample_hold(read_long_csv(path, columns), columns, period_s)]
    return load_series(path, columns, period_s)


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
    """Windows split into train / validation (time) / test (unseen seeds), with the raw
    training samples for normalisation."""

    spec: DataSpec
    recordings: tuple[Recording, ...]
    train: Windows
    val: Windows
    test: Windows
    train_samples: FloatArray  # [N, R] every training row of normal operation (for normalisation)
    labels: dict[int, str] = field(default_factory=dict)  # fault code → name, when known


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
    last = view[:, -1, :]
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


def build_dataset(
    spec: DataSpec,
    recordings: Sequence[Recording],
    *,
    validation_fraction: float = 0.25,
    train_stride: int | None = None,
    progress: bool = False,
) -> Dataset:
    """Read every recording, cut windows per asset, split by seed (test) and time (validation).

    ``train_stride`` (default: the manifest stride) thins training windows (neighbours
    overlap heavily); validation and test windows use the manifest stride, as served.
    """
    from export.progress import Progress

    n_roles = len(spec.roles)
    stride = spec.window.stride
    tr_stride = train_stride or stride
    parts: dict[str, list[Windows]] = {"train": [], "val": [], "test": []}
    samples: list[FloatArray] = []
    bar = Progress(len(recordings), "read recordings", enabled=progress)
    for ri, rec in enumerate(recordings):
        if rec.split not in ("train", "test"):
            raise ValueError(f"{rec.path}: split must be train or test, got {rec.split!r}")
        cols_by_asset = [spec.columns(a, rec.targets) for a in spec.assets]
        columns = list(dict.fromkeys(c for cols in cols_by_asset for c in cols.values()))
        segments = load_columns(rec.path, columns, spec.window.sample_period_s)
        for ai, cols in enumerate(cols_by_asset):
            idx_roles = [columns.index(cols[r.role]) for r in spec.roles]
            offset = 0
            for seg in segments:
                x = _plausible(seg[:, idx_roles], spec.roles)
                tgt = np.full((len(seg), 3), np.nan)
                for j, key in enumerate(("label", "rul", "oracle")):
                    if f"__{key}" in cols:
                        tgt[:, j] = seg[:, columns.index(cols[f"__{key}"])]
                full = np.concatenate([x, tgt], axis=1)
                if rec.split == "test":
                    parts["test"].append(_windows_of(full, n_roles, spec.window, stride, ri, ai, offset))
                else:
                    cut = round(len(seg) * (1.0 - validation_fraction))
                    parts["train"].append(
                        _windows_of(full[:cut], n_roles, spec.window, tr_stride, ri, ai, offset)
                    )
                    parts["val"].append(
                        _windows_of(full[cut:], n_roles, spec.window, stride, ri, ai, offset + cut)
                    )
                    normal = np.nan_to_num(tgt[:cut, 0], nan=NORMAL) == NORMAL
                    samples.append(x[:cut][normal])
                offset += len(seg)
        bar.update()
    bar.close()
    if not samples:
        raise ValueError("no training recordings (every recording is marked test)")
    return Dataset(
        spec=spec,
        recordings=tuple(recordings),
        train=Windows.concat(parts["train"], spec.window.length, n_roles),
        val=Windows.concat(parts["val"], spec.window.length, n_roles),
        test=Windows.concat(parts["test"], spec.window.length, n_roles),
        train_samples=np.concatenate(samples),
    )


def fit_normalisation(spec: DataSpec, samples: FloatArray) -> tuple[InputRole, ...]:
    """Per-role standard normalisation from training samples of normal operation."""
    mean = np.nanmean(samples, axis=0)
    std = np.nanstd(samples, axis=0)
    bad = [r.role for r, m in zip(spec.roles, mean, strict=True) if not np.isfinite(m)]
    if bad:
        raise ValueError(f"no valid training samples for roles {bad}")
    return tuple(
        InputRole(
            role=r.role,
            unit=r.unit,
            range=(r.low, r.high),
            normalisation=Normalisation(kind="standard", mean=float(mean[i]), std=float(max(std[i], 1e-6))),
        )
        for i, r in enumerate(spec.roles)
    )


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
