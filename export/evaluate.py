"""``edge-export evaluate``: a bundle judged by the agent's own alarm path, beside baselines.

Everything here goes through :mod:`agent.replay` (the agent's feature windows, scorer
arithmetic, detectors and alarm engine as an agent config sets them): the evaluation, the
threshold calibration (:func:`calibrate`) and the export gates. There is no second
implementation of framing, scoring or alarm delays.

Data (:func:`load_recording`): wide CSV, long CSV (``timestamp,tag,value,quality[,reason]``)
or an agent recording directory (``recording.json`` + ``wide-*.csv``), read with
:mod:`export.data`'s readers and put on the cycle grid (the latest row at every cycle).
Labels (:func:`load_events`): an events file ``start,end,asset,class`` (ISO 8601 or seconds;
an empty asset means every asset), or a label column (``{asset}`` in its name for one column
per asset): a run of one value other than empty, ``0`` or ``normal`` is an episode of that
class. Class names are the data's own.

Per method and asset the report gives:

* **false alerts per day**: annunciations raised outside every labelled episode of the asset,
  per day of unlabelled time;
* **per-sample false-alarm rate**: the fraction of unlabelled cycles in which one of the
  method's false alerts is active (an alert raised in an episode that outlasts it by its
  off-delay is not false);
* **per episode**: detected when one of the method's alarms is raised between the episode's
  start and end (an alarm already active at the onset does not count), and the delay from
  the onset; summaries give the detection rate and the mean delay **over detected episodes**.

Without an agent config, :func:`derived_setup` builds the minimal one documented in
export/README.md: one asset per column set of the bundle's provenance (or one asset named
after the bundle, reading columns named after the roles), and one alert per output with an
``alarm`` threshold (``high`` = the threshold, on- and off-delay = two frames), or, for a
labelled output with a ``normal`` class and no threshold, while a fault class is the most likely.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import AssetConfig, DetectorBinding
from agent.modelstore.binding import ModelBinding
from agent.modelstore.bundle import Bundle
from agent.pipeline.alarms import AlarmDef, AlarmsConfig, Limit
from agent.pipeline.detectors import EwmaConfig, Sigma3Config
from agent.replay import AlarmEpisode, AlarmInputs, Recording, ReplaySetup, alarm_inputs, episodes, run_alarms
from export.data import NORMAL, DataSpec, Windows, events, read_long_csv, resample_hold
from export.data import Recording as DataRecording
from export.dataconfig import read_events
from export.tables import TimestampSpec, parse_times, read_table

__all__ = [
    "FAST_MARGIN",
    "CalibrationData",
    "Episode",
    "Labels",
    "MethodResult",
    "calibrate",
    "calibrated_setup",
    "chain_detection",
    "classical_setups",
    "derived_setup",
    "detection_delays",
    "evaluate_method",
    "false_alarm_rate",
    "false_alerts_per_day",
    "label_column_episodes",
    "load_events",
    "load_recording",
    "merge_results",
    "provisional_bundle",
    "render_table",
    "score_alarms",
    "score_method",
    "spec_assets",
    "spec_recordings",
    "summarise_delays",
    "sustained_peak",
    "threshold_at",
    "with_fast_limits",
]

FloatArray = npt.NDArray[np.float64]
_MAX_CODES = 16  # the alarm engine's codes per asset (HMI words of 16 bits)
_NORMAL_LABELS = {"", "0", "0.0", "normal", "nan"}


# --------------------------------------------------------------------------- data


def _files(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            if not (p / "recording.json").exists():
                raise ValueError(f"{p}: a directory is read as an agent recording and needs recording.json")
            wide = sorted(p.glob("wide-*.csv"))
            if not wide:
                raise ValueError(f"{p}: no wide-*.csv files in the recording")
            out.extend(wide)
        elif not p.exists():
            raise ValueError(f"{p}: no such file")
        else:
            out.append(p)
    return out


def _is_long(path: Path) -> bool:
    with path.open(encoding="utf-8") as fh:
        header = [h.strip().lower() for h in fh.readline().split(",")]
    return header[:3] == ["timestamp", "tag", "value"]


def load_recording(
    paths: Sequence[str | Path],
    tags: Sequence[str],
    period_s: float,
    timestamp: TimestampSpec | None = None,
) -> Recording:
    """Files → one :class:`Recording` of ``tags`` on the ``period_s`` grid (see the module doc).

    Rows from several files are merged in time order; each point of the grid (UTC multiples of
    ``period_s``) takes the latest row at or before it (a duplicated timestamp: the later row),
    held for at most 1.5 row spacings (longer is a gap: not GOOD). An empty or non-numeric cell
    (a long row not GOOD) is a sample that was not GOOD. Wide files are read by the export
    chain's one reader (``export/tables.py``) with ``timestamp``'s column, format and zone.
    """
    times: list[FloatArray] = []
    values: list[FloatArray] = []
    for f in _files(paths):
        if _is_long(f):
            series = read_long_csv(f, tags)
            grid_v = resample_hold(series, list(tags), period_s)
            start = max(float(series[c][0][0]) for c in tags)
            times.append(start + period_s * np.arange(len(grid_v)))
            values.append(grid_v)
        else:
            table = read_table(f, timestamp or TimestampSpec(), columns=list(tags))
            cols = [table.numeric(c) for c in tags]
            t = cols[0][0] if cols else np.empty(0)
            times.append(t)
            values.append(np.stack([v for _, v in cols], axis=1) if cols else np.empty((len(t), 0)))
    if not times:
        raise ValueError("no data files given")
    t = np.concatenate(times)
    v = np.concatenate(values)
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if len(t) == 0:
        raise ValueError(f"{', '.join(map(str, paths))}: no rows")
    # the cycle grid (UTC multiples of period_s): each point takes the latest row at or before
    # it, as a tick reads the latest sample; a row older than 1.5 row spacings is a gap (BAD)
    dt = float(np.median(np.diff(t))) if len(t) > 1 else period_s
    start = math.ceil(t[0] / period_s - 1e-9) * period_s
    grid = start + period_s * np.arange(math.floor((t[-1] - start) / period_s + 1e-9) + 1)
    idx = np.searchsorted(t, grid + 1e-6, side="right") - 1
    rows = v[np.maximum(idx, 0)]
    stale = (idx < 0) | (grid - t[np.maximum(idx, 0)] > 1.5 * dt + 1e-6)
    rows[stale] = np.nan
    t, v = grid, rows
    return Recording(t, tuple(tags), v, np.isfinite(v))


@dataclass(frozen=True)
class Episode:
    """One labelled episode: ``asset`` (None: every asset), start and end (POSIX s), class."""

    start: float
    end: float
    asset: str | None
    label: str


@dataclass(frozen=True)
class Labels:
    """The labelled episodes of a data set."""

    episodes: tuple[Episode, ...] = ()

    def for_asset(self, asset: str) -> list[Episode]:
        return [e for e in self.episodes if e.asset in (None, asset)]


def load_events(path: str | Path) -> Labels:
    """An events file: header ``start,end,asset,class``, one episode a row (read by the export
    chain's own reader, ``export.dataconfig.read_events``: one format, one set of errors)."""
    ranges = read_events(Path(path), TimestampSpec())
    return Labels(tuple(Episode(r.start, r.end, r.asset, r.what) for r in ranges))


def label_column_episodes(
    paths: Sequence[str | Path], template: str, assets: Sequence[str], period_s: float
) -> Labels:
    """Episodes from a label column of wide CSVs (``{asset}`` in ``template``: one per asset)."""
    out: list[Episode] = []
    targets = {a: template.format(asset=a) for a in assets} if "{asset}" in template else {None: template}
    for f in _files(paths):
        with f.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            idx: dict[str | None, int] = {}
            for a, col in targets.items():
                if col not in header:
                    raise ValueError(f"{f}:1: no label column {col!r}")
                idx[a] = header.index(col)
            rows = [(line, r) for line, r in enumerate(reader, start=2) if r]
        t = list(parse_times([r[0] for _, r in rows], TimestampSpec(), str(f), [line for line, _ in rows]))
        for a, j in idx.items():
            labels = [r[j].strip() if j < len(r) else "" for _, r in rows]
            k = 0
            while k < len(labels):
                lab = labels[k]
                if lab.lower() in _NORMAL_LABELS:
                    k += 1
                    continue
                e = k
                while e + 1 < len(labels) and labels[e + 1] == lab and t[e + 1] - t[e] <= 1.5 * period_s:
                    e += 1
                out.append(Episode(t[k], t[e], a, lab))
                k = e + 1
    return Labels(tuple(out))


# --------------------------------------------------------------------------- setups


def _provenance_columns(bundle: Bundle) -> dict[str, dict[str, str]]:
    m = bundle.manifest
    raw = m.provenance.get("columns")
    if raw:
        try:
            cols = json.loads(raw)
        except ValueError:
            cols = None
        if isinstance(cols, dict) and cols:
            out = {
                str(a): {r: str(c[r]) for r in m.roles}
                for a, c in cols.items()
                if isinstance(c, dict) and all(r in c for r in m.roles)
            }
            if out:
                return out
    return {m.name: {r: r for r in m.roles}}


def _frame_s(bundle: Bundle) -> float:
    w = bundle.manifest.window
    return w.stride * w.sample_period_s


def derived_setup(
    bundle: Bundle,
    assets: Mapping[str, Mapping[str, str]] | None = None,
    *,
    on_delay_s: float | None = None,
    hold_cycles: int | None = None,
) -> ReplaySetup:
    """The minimal agent config for one bundle (see the module docstring).

    ``assets``: asset → role → tag (default: the bundle's provenance ``columns``, else one
    asset named after the bundle reading columns named after the roles). ``hold_cycles``: the
    binding's ``bad_input: hold`` with that many ticks (default ``skip``): a sensor that stops
    delivering then reads as a frozen value until the hold runs out.
    """
    m = bundle.manifest
    bound = {a: {r: t[r] for r in m.roles} for a, t in (assets or _provenance_columns(bundle)).items()}
    if hold_cycles is None:
        binding = ModelBinding(name=m.name, bundle=Path("."), assets=bound)
    else:
        binding = ModelBinding(
            name=m.name, bundle=Path("."), assets=bound, bad_input="hold", hold_cycles=hold_cycles
        )
    delay = 2 * _frame_s(bundle) if on_delay_s is None else on_delay_s
    defs = []
    for o in m.outputs:
        th = o.thresholds.get("alarm")
        labels = [lab.lower() for lab in o.labels or ()]
        if th is None and "normal" in labels and len(defs) < _MAX_CODES:
            # a classifier without a score threshold: alert while the most likely class is a fault
            faults = tuple(i for i, lab in enumerate(labels) if lab != "normal")
            defs.append(
                AlarmDef(
                    name=f"{m.name}_{o.name}_class".replace(".", "_")[:64],
                    code=len(defs) + 1,
                    kind="alert",
                    source=f"{m.name}.{o.name}.class",
                    in_classes=faults,
                    severity=1,
                    on_delay_s=delay,
                    off_delay_s=delay,
                )
            )
            continue
        if th is None or len(defs) >= _MAX_CODES:
            continue
        defs.append(
            AlarmDef(
                name=f"{m.name}_{o.name}".replace(".", "_")[:64],
                code=len(defs) + 1,
                kind="alert",
                source=f"{m.name}.{o.name}",
                high=Limit(value=float(th), severity=1),
                on_delay_s=delay,
                off_delay_s=delay,
            )
        )
    if not defs:
        raise ValueError(
            f"bundle {m.ident}: no output has an alarm threshold (thresholds.alarm) or a 'normal' class "
            "to alert on; give --config with the alarms to evaluate"
        )
    assets_cfg = [AssetConfig(name=a) for a in bound]
    return ReplaySetup([(binding, bundle)], assets_cfg, AlarmsConfig(defs=tuple(defs)))


def classical_setups(
    tags: Mapping[str, Mapping[str, str]], period_s: float, on_delay_s: float
) -> dict[str, tuple[list[AssetConfig], AlarmsConfig]]:
    """The agent's built-in detectors on every bound tag: 3-sigma (window 10 min of samples)
    and EWMA (warm-up 30 min), each an alert on ``<detector>.outlier`` with the same delays."""
    window = max(10, min(100_000, round(600.0 / period_s)))
    warmup = max(10, min(1_000_000, round(1800.0 / period_s)))
    kinds: dict[str, Any] = {
        "3-sigma": Sigma3Config(window=window, k=3.0),
        "EWMA": EwmaConfig(lam=0.1, L=3.0, warmup=warmup),
    }
    out: dict[str, tuple[list[AssetConfig], AlarmsConfig]] = {}
    for label, det in kinds.items():
        roles = sorted({r for t in tags.values() for r in t})
        names = {r: f"d{i}" for i, r in enumerate(roles)}
        assets = [
            AssetConfig(
                name=a,
                values={f"v_{names[r]}": tag for r, tag in roles_.items()},
                detectors=[
                    DetectorBinding(name=names[r], source=f"v_{names[r]}", detector=det) for r in roles_
                ],
            )
            for a, roles_ in tags.items()
        ]
        defs = tuple(
            AlarmDef(
                name=f"{names[r]}_{r}"[:64].replace(".", "_").replace(" ", "_"),
                code=i % _MAX_CODES + 1,  # re-coded per engine of 16 (_run_episodes)
                kind="alert",
                source=f"{names[r]}.outlier",
                high=Limit(value=0.5, severity=1),
                on_delay_s=on_delay_s,
                off_delay_s=on_delay_s,
            )
            for i, r in enumerate(roles)
        )
        # more than 16 inputs: codes repeat across engines of 16, each chunk validated when run
        many = len(defs) > _MAX_CODES
        out[label] = (assets, AlarmsConfig.model_construct(defs=defs) if many else AlarmsConfig(defs=defs))
    return out


# --------------------------------------------------------------------------- alarms in chunks


def _run_episodes(alarms: AlarmsConfig, inputs: AlarmInputs) -> list[AlarmEpisode]:
    """Every annunciation of ``alarms`` (more than 16 definitions run in engines of 16)."""
    defs = alarms.defs
    out: list[AlarmEpisode] = []
    for lo in range(0, len(defs), _MAX_CODES):
        chunk = tuple(replace_code(d, i + 1) for i, d in enumerate(defs[lo : lo + _MAX_CODES]))
        out.extend(episodes(run_alarms(alarms.model_copy(update={"defs": chunk}), inputs)))
    return out


def replace_code(d: AlarmDef, code: int) -> AlarmDef:
    return d if d.code == code else d.model_copy(update={"code": code})


# --------------------------------------------------------------------------- scoring


@dataclass
class MethodResult:
    """One method's numbers on one data set (see the module docstring)."""

    method: str
    per_asset: dict[str, dict[str, Any]] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    alarms: list[dict[str, Any]] = field(default_factory=list)  # every annunciation, in time order

    @property
    def detected(self) -> int:
        return sum(1 for e in self.episodes if e["detected"])

    @property
    def detection_rate(self) -> float:
        return self.detected / len(self.episodes) if self.episodes else math.nan

    @property
    def mean_delay_s(self) -> float:
        """Mean delay over detected episodes only (a miss is counted in the rate, not here)."""
        d = [e["delay_s"] for e in self.episodes if e["detected"]]
        return float(np.mean(d)) if d else math.nan

    @property
    def false_alerts_per_day(self) -> float:
        n = sum(a["false_alerts"] for a in self.per_asset.values())
        days = sum(a["normal_days"] for a in self.per_asset.values())
        return n / days if days > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "false_alerts_per_day": self.false_alerts_per_day,
            "episodes": len(self.episodes),
            "detected": self.detected,
            "detection_rate": self.detection_rate,
            "mean_delay_detected_s": self.mean_delay_s,
            "per_asset": self.per_asset,
            "per_episode": self.episodes,
            "thresholds": self.thresholds,
            "alarms": self.alarms,
        }


def _normal_mask(t: FloatArray, eps: Sequence[Episode]) -> npt.NDArray[np.bool_]:
    normal = np.ones(len(t), dtype=np.bool_)
    for e in eps:
        normal &= ~((t >= e.start) & (t <= e.end))
    return normal


def score_method(
    method: str, inputs: AlarmInputs, found: Sequence[AlarmEpisode], labels: Labels, period_s: float
) -> MethodResult:
    """False alerts, per-sample false-alarm rate and per-episode detection of one method."""
    res = MethodResult(method)
    res.alarms = [
        {
            "code": a.code,
            "name": a.name,
            "asset": a.asset,
            "raised": _iso(a.raised.timestamp()),
            "cleared": _iso(a.cleared.timestamp()) if a.cleared is not None else None,
        }
        for a in sorted(found, key=lambda a: (a.raised, a.asset, a.code))
    ]
    t = inputs.t
    for asset in inputs.assets:
        eps = labels.for_asset(asset)
        mine = [a for a in found if a.asset == asset]
        normal = _normal_mask(t, eps)
        raised = [a.raised.timestamp() for a in mine]
        false_eps = [a for a in mine if not any(e.start <= a.raised.timestamp() <= e.end for e in eps)]
        false = [a.raised.timestamp() for a in false_eps]
        active = np.zeros(len(t), dtype=np.bool_)
        for a in false_eps:
            end = a.cleared.timestamp() if a.cleared is not None else math.inf
            active |= (t >= a.raised.timestamp()) & (t < end)
        n_normal = int(normal.sum())
        res.per_asset[asset] = {
            "false_alerts": len(false),
            "normal_days": n_normal * period_s / 86400.0,
            "false_alerts_per_day": len(false) / (n_normal * period_s / 86400.0) if n_normal else math.nan,
            "sample_false_alarm_rate": float(active[normal].mean()) if n_normal else math.nan,
        }
        for e in eps:
            hits = [r for r in raised if e.start <= r <= e.end]
            res.episodes.append(
                {
                    "asset": asset,
                    "class": e.label,
                    "start": _iso(e.start),
                    "end": _iso(e.end),
                    "detected": bool(hits),
                    "delay_s": (min(hits) - e.start) if hits else None,
                }
            )
    return res


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def evaluate_method(
    method: str, rec: Recording, setup: ReplaySetup, labels: Labels
) -> tuple[MethodResult, AlarmInputs]:
    """Replay ``rec`` through ``setup`` and score its alarms."""
    inputs, _ = alarm_inputs(rec, setup)
    return score_alarms(method, inputs, setup.alarms, labels, rec.period_s), inputs


def score_alarms(
    method: str, inputs: AlarmInputs, alarms: AlarmsConfig, labels: Labels, period_s: float
) -> MethodResult:
    """Run ``alarms`` over a replay's engine inputs and score them (:func:`evaluate_method`
    without the replay: alarm settings compared on one replay of the models)."""
    res = score_method(method, inputs, _run_episodes(alarms, inputs), labels, period_s)
    res.thresholds = _thresholds(alarms)
    return res


def _thresholds(alarms: AlarmsConfig) -> dict[str, float]:
    return {d.source: d.high.value for d in alarms.defs if d.high is not None}


# --------------------------------------------------------------------------- calibration


def false_alerts_per_day(alarms: AlarmsConfig, inputs: AlarmInputs, period_s: float) -> float:
    """Annunciations per asset-day when every cycle of ``inputs`` is normal."""
    days = len(inputs.t) * period_s / 86400.0 * len(inputs.assets)
    return len(_run_episodes(alarms, inputs)) / days if days > 0 else math.nan


@dataclass(frozen=True)
class CalibrationData:
    """One calibration data set: the replay's alarm inputs, the cycle, and labelled episodes
    to leave out (alerts raised in them are not false, their time is not normal time)."""

    inputs: AlarmInputs
    period_s: float
    labels: Labels = Labels()

    def normal_days(self) -> float:
        days = 0.0
        for asset in self.inputs.assets:
            days += float(_normal_mask(self.inputs.t, self.labels.for_asset(asset)).sum()) * self.period_s
        return days / 86400.0

    def false_alerts(self, alarms: AlarmsConfig) -> int:
        n = 0
        for a in _run_episodes(alarms, self.inputs):
            r = a.raised.timestamp()
            n += not any(e.start <= r <= e.end for e in self.labels.for_asset(a.asset))
        return n


def _calibration_sets(data: Sequence[CalibrationData | tuple[AlarmInputs, float]]) -> list[CalibrationData]:
    return [d if isinstance(d, CalibrationData) else CalibrationData(d[0], d[1]) for d in data]


def calibrate(
    alarms: AlarmsConfig,
    data: Sequence[CalibrationData | tuple[AlarmInputs, float]],
    target_per_day: float,
    sources: Sequence[str] | None = None,
) -> AlarmsConfig:
    """Set the ``high`` limit of each definition on ``sources`` (default: every definition with
    a ``high`` limit) so that the alarm engine, its delays included, raises at most
    ``target_per_day`` false alerts per asset-day on the calibration ``data`` (a
    :class:`CalibrationData`, or ``(inputs, period_s)`` of :func:`agent.replay.alarm_inputs`
    for data that is normal throughout).

    The budget is shared equally among the calibrated definitions. Bisection over the
    source's observed values: the lowest value whose replay stays within the budget (a higher
    threshold never raises more, up to the chatter of off-delays).
    """
    sets = _calibration_sets(data)
    todo = [d for d in alarms.defs if d.high is not None and (sources is None or d.source in sources)]
    if not todo:
        raise ValueError("nothing to calibrate: no alarm definition with a high limit on the sources")
    if not target_per_day > 0:
        raise ValueError(f"target false alerts per day must be > 0, got {target_per_day:g}")
    budget = target_per_day / len(todo)
    days = sum(c.normal_days() for c in sets)
    if not days > 0:
        raise ValueError("no normal calibration data")
    new = {d.code: d for d in alarms.defs}
    for d in todo:
        seen = [
            v[p & np.isfinite(v)]
            for c in sets
            for cols in c.inputs.sources.values()
            for s, (v, p) in cols.items()
            if s == d.source
        ]
        vals = np.concatenate(seen) if seen else np.empty(0)
        if not len(vals):
            raise ValueError(f"alarm {d.name}: its source {d.source!r} has no value in the calibration data")
        cand = np.unique(vals)

        def rate(th: float, d: AlarmDef = d) -> float:
            cfg = AlarmsConfig(defs=(_with_high(d, th),))
            return sum(c.false_alerts(cfg) for c in sets) / days

        lo, hi = 0, len(cand) - 1  # rate(cand[-1]) == 0: nothing is above the highest value
        while lo < hi:
            mid = (lo + hi) // 2
            if rate(float(cand[mid])) <= budget:
                hi = mid
            else:
                lo = mid + 1
        new[d.code] = _with_high(d, float(cand[lo]))
    return alarms.model_copy(update={"defs": tuple(new[c.code] for c in alarms.defs)})


FAST_MARGIN = 2.0
"""How far above what normal operation held for the fast delay :func:`with_fast_limits` puts
the fast limit."""


def sustained_peak(
    data: Sequence[CalibrationData | tuple[AlarmInputs, float]], source: str, hold_s: float
) -> float:
    """The highest level ``source`` stayed above for ``hold_s`` on the calibration ``data``
    (normal time only): per asset, the engine's view of the source (a model output holds its
    last value between frames), its running minimum over ``hold_s``, the maximum of that."""
    from numpy.lib.stride_tricks import sliding_window_view

    sets = _calibration_sets(data)
    best = -math.inf
    for c in sets:
        n = max(1, round(hold_s / c.period_s)) + 1  # samples spanning hold_s
        for asset, cols in c.inputs.sources.items():
            if source not in cols:
                continue
            v, present = cols[source]
            last = np.maximum.accumulate(np.where(present, np.arange(len(v)), -1))  # index of the held value
            held = np.where(last >= 0, v[np.maximum(last, 0)], np.nan)
            held = np.where(np.isfinite(held), held, -np.inf)  # BAD input: the engine holds, raises nothing
            held[~_normal_mask(c.inputs.t, c.labels.for_asset(asset))] = -np.inf
            if len(held) >= n:
                best = max(best, float(sliding_window_view(held, n).min(axis=1).max()))
    return best


def with_fast_limits(
    alarms: AlarmsConfig,
    data: Sequence[CalibrationData | tuple[AlarmInputs, float]],
    delay_s: float,
    sources: Sequence[str] | None = None,
    margin: float = FAST_MARGIN,
) -> AlarmsConfig:
    """Give each calibrated alert on ``sources`` (default: every definition with a ``high``
    limit and none above it) a ``high_high`` limit with its own, shorter on-delay ``delay_s``:
    ``margin`` times the highest level the source held for ``delay_s`` in the normal
    calibration ``data`` (and at least ``margin`` times the ``high`` limit), one severity up.
    An exceedance that far beyond anything normal operation sustained is no transient: the
    alert annunciates after ``delay_s`` instead of its own on-delay, at the higher severity.
    Run it after :func:`calibrate` (the ``high`` limit is the calibrated one)."""
    new = []
    for d in alarms.defs:
        if d.high is None or d.high_high is not None or (sources is not None and d.source not in sources):
            new.append(d)
            continue
        if not 0 <= delay_s < d.on_delay_s:
            raise ValueError(
                f"alarm {d.name}: the fast delay {delay_s:g} s must be shorter than its {d.on_delay_s:g} s"
            )
        peak = sustained_peak(data, d.source, delay_s)
        if not math.isfinite(peak):
            raise ValueError(f"alarm {d.name}: its source {d.source!r} has no value in the calibration data")
        value = margin * max(peak, d.high.value)
        limit = Limit(value=value, severity=min(4, d.high.severity + 1), on_delay_s=delay_s)
        new.append(d.model_copy(update={"high_high": limit}))
    return alarms.model_copy(update={"defs": tuple(new)})


def _with_high(d: AlarmDef, value: float) -> AlarmDef:
    assert d.high is not None
    return d.model_copy(update={"high": d.high.model_copy(update={"value": value})})


def calibrated_setup(setup: ReplaySetup, cal: Sequence[Recording], target_per_day: float) -> ReplaySetup:
    """``setup`` with its alarm limits calibrated on the normal recordings ``cal``."""
    inputs = [(alarm_inputs(r, setup)[0], r.period_s) for r in cal]
    return replace(setup, alarms=calibrate(setup.alarms, inputs, target_per_day))


# --------------------------------------------------------------------------- report


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def _fmt_delay(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def render_table(results: Sequence[MethodResult]) -> str:
    """The Markdown table: one row per method and asset, then the summary per method."""
    lines = [
        "| method | asset | false alerts / day | sample false-alarm rate | episodes detected | "
        "mean delay (detected) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for asset, a in r.per_asset.items():
            eps = [e for e in r.episodes if e["asset"] == asset]
            det = [e["delay_s"] for e in eps if e["detected"]]
            lines.append(
                f"| {r.method} | {asset} | {_fmt(a['false_alerts_per_day'], '.2f')} | "
                f"{_fmt(a['sample_false_alarm_rate'], '.4f')} | {len(det)}/{len(eps)} | "
                f"{_fmt_delay(float(np.mean(det)) if det else math.nan)} |"
            )
        lines.append(
            f"| **{r.method}** | all | {_fmt(r.false_alerts_per_day, '.2f')} | | "
            f"{r.detected}/{len(r.episodes)} | {_fmt_delay(r.mean_delay_s)} |"
        )
    classes = sorted({e["class"] for r in results for e in r.episodes})
    if classes:
        lines += ["", "| class | " + " | ".join(r.method for r in results) + " |"]
        lines.append("|---|" + "---:|" * len(results))
        for c in classes:
            cells = []
            for r in results:
                eps = [e for e in r.episodes if e["class"] == c]
                det = [e["delay_s"] for e in eps if e["detected"]]
                mean = float(np.mean(det)) if det else math.nan
                cells.append(f"{len(det)}/{len(eps)} {_fmt_delay(mean) if det else ''}".strip())
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- per-frame (export chain)
# The export chain's per-window summaries on labelled test windows (export.data.Windows), kept
# for its ROC and per-class tables; thresholds and the detection gate use the replay above.


def threshold_at(normal_scores: npt.ArrayLike, far: float) -> float:
    """The ``1 - far`` empirical quantile of scores on normal windows."""
    s = np.asarray(normal_scores, np.float64)
    if not len(s):
        raise ValueError("no normal windows to calibrate a threshold on")
    return float(np.quantile(s, 1.0 - far))


def false_alarm_rate(w: Windows, alarms: npt.ArrayLike) -> float:
    a = np.asarray(alarms, bool)
    normal = w.label == NORMAL
    return float(np.mean(a[normal])) if normal.any() else math.nan


def detection_delays(
    w: Windows,
    alarms: npt.ArrayLike,
    *,
    on_delay: int,
    period_s: float,
    stride: int,
    names: Mapping[int, str] | None = None,
) -> list[dict[str, float | str | bool]]:
    """Per fault event: code, label, delay in seconds, whether it was detected."""
    a = np.asarray(alarms, bool)
    out: list[dict[str, float | str | bool]] = []
    for rec, asset, code, onset, last in events(w):
        m = (w.rec == rec) & (w.asset == asset)
        ends = w.end[m]
        flags = a[m]
        order = np.argsort(ends, kind="stable")
        ends, flags = ends[order], flags[order]
        run = 0
        detected_at: int | None = None
        for e, f in zip(ends, flags, strict=True):
            run = run + 1 if f else 0
            if e < onset:
                continue
            if e > last:
                break
            if run >= on_delay:
                detected_at = int(e)
                break
        duration = (last - onset + stride) * period_s
        delay = duration if detected_at is None else (detected_at - onset) * period_s
        out.append(
            {
                "recording": float(rec),
                "asset": float(asset),
                "code": float(code),
                "label": (names or {}).get(code, str(code)),
                "delay_s": float(delay),
                "duration_s": float(duration),
                "detected": detected_at is not None,
            }
        )
    return out


def summarise_delays(delays: list[dict[str, float | str | bool]]) -> dict[str, float]:
    if not delays:
        return {"events": 0.0, "detected": 0.0, "mean_delay_s": math.nan}
    d = np.array([float(e["delay_s"]) for e in delays])
    return {
        "events": float(len(delays)),
        "detected": float(sum(bool(e["detected"]) for e in delays)),
        "mean_delay_s": float(d.mean()),
        "median_delay_s": float(np.median(d)),
    }


# --------------------------------------------------------------------------- the command


def _load(path: str | Path) -> Bundle:
    from agent.errors import AgentError
    from agent.modelstore.bundle import load_bundle

    try:
        # evaluation installs nothing: an unsigned bundle (fresh from the export) is judged too
        return load_bundle(path, allow_unsigned=True)
    except AgentError as exc:
        raise ValueError(f"{path}: {exc}") from None


def run_evaluation(
    bundle_path: str | Path,
    data: Sequence[str | Path],
    *,
    events: str | Path | None = None,
    label_column: str | None = None,
    config: str | Path | None = None,
    baselines: Sequence[str | Path] = (),
    classical: bool = True,
    calibration: Sequence[str | Path] = (),
    false_alerts_per_day: float = 1.0,
    fast_delay_s: float | None = None,
) -> tuple[list[MethodResult], dict[str, Any]]:
    """``edge-export evaluate``: every method on the same data; returns results and the JSON.
    ``fast_delay_s`` (with ``calibration``): the model's calibrated alerts get a fast level
    (:func:`with_fast_limits`), reported in the notes and judged with it."""
    bundle = _load(bundle_path)
    m = bundle.manifest
    notes: list[str] = []
    if config is not None:
        from agent.config import load_config
        from agent.errors import AgentError

        try:
            cfg = load_config(config)
        except AgentError as exc:
            raise ValueError(str(exc)) from None
        base = Path(config).resolve().parent
        bundles: dict[str, Bundle] = {}
        for b in cfg.models:
            bundles[b.name] = (
                bundle if b.name == m.name else _load(b.bundle if b.bundle.is_absolute() else base / b.bundle)
            )
        if m.name not in bundles:
            raise ValueError(
                f"{config}: no model binding named {m.name!r} (the bundle's name); bindings: {list(bundles)}"
            )
        setup = ReplaySetup.from_config(cfg, bundles)
        period = cfg.agent.cycle_ms / 1000.0
        main_tags = next(b.assets for b in cfg.models if b.name == m.name)
        notes.append(
            f"agent config {config}: its models, assets, detectors and alarms, one cycle every {period:g} s"
        )
    else:
        setup = derived_setup(bundle)
        period = m.window.sample_period_s
        main_tags = setup.models[0][0].assets
        d0 = setup.alarms.defs[0]
        notes.append(
            f"derived config: assets {list(main_tags)}; one alert per output with an alarm threshold "
            f"(high = threshold, on/off delay {d0.on_delay_s:g} s = two frames), one cycle every {period:g} s"
        )
    delay = 2 * _frame_s(bundle)
    methods: list[tuple[str, ReplaySetup]] = [(f"{m.name} v{m.version}", setup)]
    for bp in baselines:
        bb = _load(bp)
        roles = bb.manifest.roles
        assets = (
            {a: {r: t[r] for r in roles} for a, t in main_tags.items()}
            if all(r in t for t in main_tags.values() for r in roles)
            else None
        )
        methods.append((f"{bb.manifest.name} v{bb.manifest.version} (baseline)", derived_setup(bb, assets)))
    tags = sorted(
        {t for b, _ in setup.models for roles in b.assets.values() for t in roles.values()}
        | {t for a in setup.assets for t in a.values.values()}
        | {t for _, s in methods[1:] for b, _ in s.models for r in b.assets.values() for t in r.values()}
    )
    rec = load_recording(data, tags, period)
    if label_column is not None:
        labels = label_column_episodes(data, label_column, list(main_tags), period)
    elif events is not None:
        labels = load_events(events)
    else:
        labels = Labels()
    cal_recs = [load_recording(calibration, tags, period)] if calibration else []
    if fast_delay_s and not cal_recs:
        raise ValueError("a fast level is set from calibration data: give --calibrate with --fast-delay")
    if cal_recs:
        notes.append(
            f"thresholds calibrated on {', '.join(map(str, calibration))} for {false_alerts_per_day:g} "
            "false alerts per asset-day (through the replay, alarm delays included)"
        )
    results: list[MethodResult] = []
    for name, s in methods:
        if cal_recs:
            models = {b.name for b, _ in s.models}
            on_models = [d for d in s.alarms.defs if any(d.source.startswith(f"{n}.") for n in models)]
            srcs = [d.source for d in on_models if d.high is not None]
            if srcs:
                inputs = [(alarm_inputs(r, s)[0], r.period_s) for r in cal_recs]
                s = replace(s, alarms=calibrate(s.alarms, inputs, false_alerts_per_day, srcs))
                if fast_delay_s and name == methods[0][0]:
                    s = replace(s, alarms=with_fast_limits(s.alarms, inputs, fast_delay_s, srcs))
                    notes.extend(
                        f"{d.name}: fast level {d.high_high.value:.6g} on {d.source} "
                        f"({d.high_high.value / d.high.value:.2f}x its calibrated threshold "
                        f"{d.high.value:.6g}), raised after {fast_delay_s:g} s at severity "
                        f"{d.high_high.severity}"
                        for d in s.alarms.defs
                        if d.source in srcs and d.high is not None and d.high_high is not None
                    )
        results.append(evaluate_method(name, rec, s, labels)[0])
    if classical:
        for label, (assets, alarms) in classical_setups(main_tags, period, delay).items():
            res, _ = evaluate_method(label, rec, ReplaySetup([], assets, alarms), labels)
            results.append(res)
        notes.append(
            "classical detectors: the agent's 3-sigma (10 min window) and EWMA (lam 0.1, L 3, "
            f"30 min warm-up) on every bound tag, an alert on each outlier flag with on/off delay {delay:g} s"
        )
    doc = {
        "bundle": str(bundle_path),
        "model": m.ident,
        "data": [str(d) for d in data],
        "rows": len(rec.t),
        "start": _iso(float(rec.t[0])),
        "end": _iso(float(rec.t[-1])),
        "period_s": rec.period_s,
        "days": rec.days,
        "labels": "events file" if events else ("label column" if label_column else "none"),
        "notes": notes,
        "methods": [r.summary() for r in results],
    }
    return results, doc


# --------------------------------------------------------------------------- the export chain


def spec_assets(spec: DataSpec) -> dict[str, dict[str, str]]:
    """Asset → role → column of an export data spec (what a derived agent config binds)."""
    return {a: {r.role: spec.column(r.column, a) for r in spec.roles} for a in spec.assets}


def spec_recordings(
    spec: DataSpec,
    recordings: Sequence[DataRecording],
    split: str,
    *,
    tail: float | None = None,
    part: tuple[float, float] | None = None,
    names: Mapping[int, str] | None = None,
) -> list[tuple[Recording, Labels]]:
    """The ``split`` recordings of an export config as replay recordings with their labelled
    episodes (runs of one non-zero code of the label column per asset; class names from
    ``names``, else the code). ``tail``: only the last fraction of each recording (the
    validation part of training recordings); ``part``: the rows between these fractions of
    each recording (the time split of ``test_fraction``, as export/data.py cuts it)."""
    out: list[tuple[Recording, Labels]] = []
    period = spec.window.sample_period_s
    for r in recordings:
        if r.split != split:
            continue
        cols = {a: spec.columns(a, r.targets) for a in spec.assets}
        tags = sorted({c for a in cols.values() for c in a.values()})
        rec = load_recording([r.path], tags, period, r.timestamp)
        if tail is not None:
            keep = slice(len(rec.t) - max(1, round(len(rec.t) * tail)), None)
            rec = Recording(rec.t[keep], rec.tags, rec.values[keep])
        if part is not None:
            n = len(rec.t)
            keep = slice(round(n * part[0]), max(round(n * part[0]) + 1, round(n * part[1])))
            rec = Recording(rec.t[keep], rec.tags, rec.values[keep])
        eps: list[Episode] = []
        for asset, c in cols.items():
            if "__label" not in c:
                continue
            codes = rec.values[:, rec.column(c["__label"])]
            k = 0
            while k < len(codes):
                code = codes[k]
                if not np.isfinite(code) or code == 0:
                    k += 1
                    continue
                e = k
                while e + 1 < len(codes) and codes[e + 1] == code:
                    e += 1
                label = (names or {}).get(int(code), str(int(code)))
                eps.append(Episode(float(rec.t[k]), float(rec.t[e]), asset, label))
                k = e + 1
        out.append((rec, Labels(tuple(eps))))
    return out


def merge_results(method: str, parts: Sequence[MethodResult]) -> MethodResult:
    """One method's results on several recordings as one (false alerts and days summed)."""
    res = MethodResult(method, thresholds=parts[0].thresholds if parts else {})
    for p in parts:
        for asset, a in p.per_asset.items():
            m = res.per_asset.setdefault(asset, {"false_alerts": 0, "normal_days": 0.0, "_active": 0.0})
            m["false_alerts"] += a["false_alerts"]
            m["normal_days"] += a["normal_days"]
            rate = a["sample_false_alarm_rate"]
            m["_active"] += (rate if math.isfinite(rate) else 0.0) * a["normal_days"]
        res.episodes.extend(p.episodes)
        res.alarms.extend(p.alarms)
    for m in res.per_asset.values():
        days = m["normal_days"]
        m["false_alerts_per_day"] = m["false_alerts"] / days if days > 0 else math.nan
        m["sample_false_alarm_rate"] = m.pop("_active") / days if days > 0 else math.nan
    return res


def provisional_bundle(directory: Path, manifest: Mapping[str, Any], onnx_bytes: bytes) -> Bundle:
    """A loadable FP32 bundle (unsigned, no report) to replay before the real one is written."""
    import hashlib

    from agent.modelstore.manifest import MANIFEST_FILE, SCHEMA_VERSION, Manifest, Variant

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(onnx_bytes)
    fields = {k: v for k, v in manifest.items() if k not in ("schema_version", "variants", "files")}
    man = Manifest(
        schema_version=manifest.get("schema_version", SCHEMA_VERSION),  # 2: e.g. an ewma role
        variants=(
            Variant(
                file="model.onnx",
                precision="fp32",
                sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                size=len(onnx_bytes),
            ),
        ),
        **fields,
    )
    (directory / MANIFEST_FILE).write_text(man.to_json(), encoding="utf-8")
    return _load(directory)


def chain_detection(
    methods: Mapping[str, Bundle],
    spec: DataSpec,
    recordings: Sequence[DataRecording],
    *,
    validation_fraction: float,
    test_fraction: float = 0.0,
    on_delay_frames: int,
    false_alerts_per_day: float,
    names: Mapping[int, str] | None = None,
) -> tuple[dict[str, MethodResult], dict[str, ReplaySetup], dict[str, dict[str, float]]]:
    """The export chain's detection step for every bundle of ``methods`` (label → bundle):
    a derived agent config (alerts with an on/off delay of ``on_delay_frames - 1`` frames),
    thresholds calibrated through the replay on the separate normal run (``split: calibration``
    recordings) when there is one, else on the validation part of the training recordings
    (labelled episodes left out) for ``false_alerts_per_day``, then the replay of the test
    recordings. Returns the merged results, the calibrated setups and, per method and alert
    source, the share of normal calibration frames above the calibrated threshold."""
    assets = spec_assets(spec)
    # the same parts as export/data.py: [.. | validation | test] in time within training files
    val_part = (1.0 - validation_fraction - test_fraction, 1.0 - test_fraction)
    cal = spec_recordings(spec, recordings, "calibration", names=names) or spec_recordings(
        spec, recordings, "train", part=val_part, names=names
    )
    test = spec_recordings(spec, recordings, "test", names=names)
    if not test and test_fraction > 0:
        test = spec_recordings(spec, recordings, "train", part=(1.0 - test_fraction, 1.0), names=names)
    if not test:
        raise ValueError(
            "no test recordings to judge detection on (mark some split: test, or set data.test_fraction)"
        )
    results: dict[str, MethodResult] = {}
    setups: dict[str, ReplaySetup] = {}
    calibration: dict[str, dict[str, float]] = {}
    for label, bundle in methods.items():
        setup = derived_setup(bundle, assets, on_delay_s=max(0, on_delay_frames - 1) * _frame_s(bundle))
        data = [CalibrationData(alarm_inputs(r, setup)[0], r.period_s, lab) for r, lab in cal]
        setup = replace(setup, alarms=calibrate(setup.alarms, data, false_alerts_per_day))
        setups[label] = setup
        exceed: dict[str, list[float]] = {}
        for c in data:
            for asset, cols in c.inputs.sources.items():
                normal = _normal_mask(c.inputs.t, c.labels.for_asset(asset))
                for d in setup.alarms.defs:
                    if d.high is None or d.source not in cols:
                        continue
                    v, p = cols[d.source]
                    frames = v[p & normal & np.isfinite(v)]
                    exceed.setdefault(d.source, []).extend((frames > d.high.value).astype(float).tolist())
        calibration[label] = {k: float(np.mean(x)) if x else math.nan for k, x in exceed.items()}
        parts = [evaluate_method(label, r, setup, lab)[0] for r, lab in test]
        results[label] = merge_results(label, parts)
    return results, setups, calibration
