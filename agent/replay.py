"""Replay a recording through the agent's own pipeline: one evaluation for every tool.

A :class:`Recording` (timestamps, and per tag a value and whether it was GOOD) is replayed
one agent cycle per row through the same parts, configured the same way, as
:meth:`agent.runtime.Agent.cycle`:

1. per model binding, :class:`~agent.pipeline.features.FeatureWindows` get each bound tag's
   sample of the row (a value that was not GOOD arrives BAD; the binding's ``bad_input``
   policy applies) and close the tick; a model whose sample period is ``m`` rows is ticked
   every ``m``-th row, phased on the UTC grid of its period as agent/inference.py ticks it,
   its ``mean`` roles the mean of the period's GOOD rows (``InputRole.aggregation``);
   (a regular recording is framed as whole arrays with the same result, see
   :func:`alarm_inputs`);
2. frames are scored as :class:`~agent.pipeline.scorer.Scorer` scores them
   (:func:`~agent.pipeline.features.window_to_input`, the bundle's session,
   :func:`~agent.pipeline.scorer.map_outputs`), batched over many frames: the model is pure
   per window, so batching changes the speed only;
3. per asset and cycle, :func:`agent.pipeline.sources.asset_values` and
   :func:`~agent.pipeline.sources.run_detectors` (the runtime's own functions) give the alarm
   engine's inputs: fresh model outputs, the asset's ``values`` tags, the detectors, and for
   bad-PV alarms whether a watched tag was GOOD in the row (the recording has no reason text);
4. the real :class:`~agent.pipeline.alarms.AlarmEngine` with the config's definitions (limits,
   deadbands, on/off delays, latching, ``enabled``) turns them into transitions.

Steps 1-3 do not depend on the alarm definitions: :func:`alarm_inputs` computes them once, and
:func:`run_alarms` can run any number of definitions over them (threshold calibration runs it
many times). :func:`replay` does both.

Time: ``now_mono`` is seconds since the first row, ``now_utc`` the row's timestamp. The replay
runs as fast as the CPU allows; nothing here reads a clock. No operator acts: nothing is
acknowledged or shelved, so an alarm that latches stays active to the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from agent.config import AssetConfig, Config
from agent.errors import ModelError
from agent.modelstore.binding import ModelBinding
from agent.modelstore.bundle import Bundle
from agent.modelstore.manifest import Manifest
from agent.pipeline.alarms import AlarmEngine, AlarmsConfig, bad_key
from agent.pipeline.detectors import Detector, make_detector
from agent.pipeline.features import FeatureWindows, ewma_rows, sliding_windows, window_to_input
from agent.pipeline.scorer import map_outputs
from agent.pipeline.sources import asset_values, run_detectors, watched_inputs
from agent.types import Alarm, AlarmState, Frame, Quality, Sample

__all__ = [
    "AlarmEpisode",
    "AlarmInputs",
    "Recording",
    "ReplayResult",
    "ReplaySetup",
    "ScoreSeries",
    "alarm_inputs",
    "episodes",
    "held_series",
    "replay",
    "run_alarms",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

_CHUNK = 2048  # frames per batched session call: bounded memory, far past the per-call overhead
_GOOD = Quality.good()
_BAD = Quality.bad("not GOOD in the recording")
_Q = {True: _GOOD, False: _BAD}


@dataclass(frozen=True)
class Recording:
    """Rows of tag values: ``t`` POSIX seconds (UTC) ``[N]``, ``values`` ``[N, C]`` in the order
    of ``tags``, ``good`` ``[N, C]`` True where the sample was GOOD (default: finite)."""

    t: FloatArray
    tags: tuple[str, ...]
    values: FloatArray
    good: BoolArray | None = None

    def __post_init__(self) -> None:
        n = len(self.t)
        if self.values.shape != (n, len(self.tags)):
            raise ValueError(f"recording: values {self.values.shape}, expected ({n}, {len(self.tags)})")
        if n > 1 and not np.all(np.diff(self.t) > 0):
            raise ValueError("recording: timestamps must increase")
        if self.good is None:
            object.__setattr__(self, "good", np.isfinite(self.values))

    @property
    def period_s(self) -> float:
        """The median time between rows (the replay's cycle)."""
        return float(np.median(np.diff(self.t))) if len(self.t) > 1 else math.nan

    @property
    def days(self) -> float:
        """Time covered, in days, counting one period per row."""
        return len(self.t) * self.period_s / 86400.0 if len(self.t) > 1 else 0.0

    def column(self, tag: str) -> int:
        try:
            return self.tags.index(tag)
        except ValueError:
            raise ValueError(f"recording has no tag {tag!r} (tags: {list(self.tags)})") from None


@dataclass(frozen=True)
class ReplaySetup:
    """What the replay runs: model bindings with their loaded bundles, assets, alarms."""

    models: Sequence[tuple[ModelBinding, Bundle]]
    assets: Sequence[AssetConfig]
    alarms: AlarmsConfig

    @classmethod
    def from_config(cls, config: Config, bundles: Mapping[str, Bundle]) -> ReplaySetup:
        """The config's models (``bundles`` by binding name), assets and alarms."""
        missing = [b.name for b in config.models if b.name not in bundles]
        if missing:
            raise ValueError(f"no bundle for model binding(s) {missing}")
        return cls([(b, bundles[b.name]) for b in config.models], list(config.assets), config.alarms)


@dataclass(frozen=True)
class ScoreSeries:
    """One model's scores for one asset: the row index of each scored frame and its outputs."""

    model: str
    asset: str
    rows: IntArray
    outputs: dict[str, FloatArray]


@dataclass
class AlarmInputs:
    """Per asset, what the alarm engine is fed every cycle: source → ``(values, present)``.

    ``present[k]`` False: the source was absent in cycle ``k`` (a model output between
    frames); a NaN value that is present is BAD input.
    """

    t: FloatArray
    assets: tuple[str, ...]
    sources: dict[str, dict[str, tuple[FloatArray, BoolArray]]] = field(default_factory=dict)

    def utc(self, k: int) -> datetime:
        return datetime.fromtimestamp(float(self.t[k]), UTC)


@dataclass(frozen=True)
class AlarmEpisode:
    """One annunciation: raised (into UNACK) and cleared (back to normal or return-to-normal
    unacknowledged; ``None``: still active at the end of the recording)."""

    code: int
    name: str
    asset: str
    is_alert: bool
    raised: datetime
    cleared: datetime | None


@dataclass(frozen=True)
class ReplayResult:
    """Every transition the engine reported, the episodes they form, and the scores."""

    transitions: list[Alarm]
    episodes: list[AlarmEpisode]
    scores: list[ScoreSeries]
    inputs: AlarmInputs


def _model_step(bundle: Bundle, period_s: float) -> int:
    mp = bundle.manifest.window.sample_period_s
    if not math.isfinite(period_s):
        return 1
    step = round(mp / period_s)
    if step < 1 or abs(step * period_s - mp) > 0.01 * mp:
        raise ValueError(
            f"model {bundle.manifest.ident} samples every {mp:g} s; rows every {period_s:g} s "
            "cannot feed it (its period must be a whole number of rows)"
        )
    return step


def _columns(rec: Recording, roles: Mapping[str, str], manifest: Manifest) -> IntArray:
    missing = [r for r in manifest.roles if r not in roles]
    if missing:
        raise ValueError(f"model {manifest.ident}: roles {missing} are not bound (bound: {sorted(roles)})")
    return np.array([rec.column(roles[r]) for r in manifest.roles], dtype=np.int64)


def _ticks(rec: Recording, bundle: Bundle, step: int) -> IntArray:
    """The rows a model ticks on: every ``step``-th, phased on the UTC grid of its period (tick
    ``k`` at UTC ``k × period``, as agent/inference.py schedules it) when rows fall on it."""
    mp = bundle.manifest.window.sample_period_s
    first = 0
    for r in range(min(step, len(rec.t))):
        x = float(rec.t[r]) / mp
        if abs(x - round(x)) * mp <= 0.01 * (rec.period_s if math.isfinite(rec.period_s) else mp):
            first = r
            break
    return np.arange(first, len(rec.t), step, dtype=np.int64)


def _tick_rows(
    rec: Recording, good: BoolArray, ticks: IntArray, cols: IntArray, manifest: Manifest, step: int
) -> tuple[FloatArray, BoolArray]:
    """Per tick, the row the model gets (roles in manifest order): an ``instant`` role the
    tick's sample; a ``mean`` role the mean of the GOOD finite samples of the ``step`` rows of
    the period that ends at the tick (none: not GOOD), as the agent's accumulator averages
    the polls of the period."""
    values = rec.values[np.ix_(ticks, cols)].copy()
    ok = good[np.ix_(ticks, cols)].copy()
    for j, role in enumerate(manifest.inputs):
        if role.aggregation != "mean":
            continue
        col = rec.values[:, cols[j]]
        use = good[:, cols[j]] & np.isfinite(col)
        total = np.concatenate([[0.0], np.cumsum(np.where(use, col, 0.0))])
        count = np.concatenate([[0], np.cumsum(use)])
        lo = np.maximum(ticks + 1 - step, 0)
        n = count[ticks + 1] - count[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            values[:, j] = (total[ticks + 1] - total[lo]) / n
        ok[:, j] = n > 0
    return values, ok


def _score_frames(bundle: Bundle, frames: Sequence[tuple[int, Frame]], out: dict[str, _Series]) -> None:
    """Scorer's arithmetic for many frames in one session call (the model is pure per window).

    A frame the Scorer would refuse (a non-finite output: ModelError) gives no scores, as in
    the runtime, which logs it and carries on."""
    m = bundle.manifest
    dtype = np.float32 if m.model_input.dtype == "float32" else np.float64
    values = np.concatenate([f.values for _, f in frames])
    try:
        x = window_to_input(values, m).astype(dtype, copy=False)
        results = map_outputs(m, len(x), bundle.run({m.model_input.name: x}))
    except (ModelError, ValueError):
        if len(frames) > 1:
            for one in frames:
                _score_frames(bundle, [one], out)
        return
    i = 0
    for row, f in frames:
        for asset in f.assets:
            s = out[asset]
            s.rows.append(row)
            for k, v in results[i][0].items():
                s.outputs.setdefault(k, []).append(v)
            i += 1


@dataclass
class _Series:
    rows: list[int] = field(default_factory=list)
    outputs: dict[str, list[float]] = field(default_factory=dict)


def held_series(values: FloatArray, good: BoolArray, manifest: Manifest, hold_limit: int) -> FloatArray:
    """A regular series ``[N, R]`` (roles in manifest order) as FeatureWindows' rings hold it:
    a value that is not GOOD, not finite or outside the role's plausible range is NaN, or,
    with ``hold_limit`` > 0 (``bad_input: hold``), the role's last good value for up to
    ``hold_limit`` consecutive ticks."""
    lo = np.array([r.range[0] for r in manifest.inputs])
    hi = np.array([r.range[1] for r in manifest.inputs])
    with np.errstate(invalid="ignore"):
        ok = good & np.isfinite(values) & (values >= lo) & (values <= hi)
    out: FloatArray = np.where(ok, values, np.nan)
    if hold_limit > 0 and not ok.all():
        rows = np.arange(len(values))[:, None]
        last_good = np.maximum.accumulate(np.where(ok, rows, -1), axis=0)
        hold = ~ok & (last_good >= 0) & (rows - last_good <= hold_limit)
        r, c = np.nonzero(hold)
        out[r, c] = values[last_good[r, c], c]
    return out


def _scores_vectorised(
    rec: Recording, good: BoolArray, binding: ModelBinding, bundle: Bundle, step: int
) -> list[ScoreSeries]:
    """FeatureWindows + Scorer on a regular recording, as whole arrays: the same frames (every
    ``stride`` ticks once the window is full), the same assets left out (a window still
    holding a bad value) and the same outputs; tests/unit/test_replay.py holds the two equal."""
    m = bundle.manifest
    length, stride = m.window.length, m.window.stride
    dtype = np.float32 if m.model_input.dtype == "float32" else np.float64
    ticks = _ticks(rec, bundle, step)
    out: list[ScoreSeries] = []
    for asset, roles in binding.assets.items():
        cols = _columns(rec, roles, m)
        held = held_series(*_tick_rows(rec, good, ticks, cols, m, step), m, binding.hold_limit)
        held = ewma_rows(held, m.inputs, m.window.sample_period_s)  # as FeatureWindows' rings
        view = sliding_windows(held, length, stride)
        ok = np.isfinite(view).all(axis=(1, 2))
        rows = ticks[length - 1 :: stride][: len(view)][ok]
        outputs: dict[str, list[float]] = {}
        kept: list[int] = []
        idx = np.flatnonzero(ok)
        for lo in range(0, len(idx), _CHUNK):
            part = idx[lo : lo + _CHUNK]
            x = window_to_input(view[part], m).astype(dtype, copy=False)
            try:
                results = map_outputs(m, len(x), bundle.run({m.model_input.name: x}))
            except ModelError:  # one bad frame must not cost the others: score them one by one
                results = []
                for j in range(len(x)):
                    try:
                        results.extend(map_outputs(m, 1, bundle.run({m.model_input.name: x[j : j + 1]})))
                    except ModelError:
                        results.append(({}, None))
            for j, (o, _) in enumerate(results):
                if not o:
                    continue
                kept.append(int(rows[lo + j]))
                for k, v in o.items():
                    outputs.setdefault(k, []).append(v)
        out.append(
            ScoreSeries(
                binding.name,
                asset,
                np.asarray(kept, dtype=np.int64),
                {k: np.asarray(v, dtype=np.float64) for k, v in outputs.items()},
            )
        )
    return out


def _regular(rec: Recording, step: int) -> bool:
    """Rows without gaps at the model's ticks: FeatureWindows would insert no missed tick."""
    if len(rec.t) < 2:
        return True
    d = np.diff(rec.t[::step])
    return bool(np.all(np.abs(d - step * rec.period_s) <= 1e-6 * step * rec.period_s + 1e-9))


def alarm_inputs(
    rec: Recording, setup: ReplaySetup, *, ticks: bool = False
) -> tuple[AlarmInputs, list[ScoreSeries]]:
    """Steps 1-3 of the module docstring: the engine's inputs per cycle, and the scores.

    A regular recording (no gaps) is framed as whole arrays (:func:`held_series`, the same
    frames and outputs as the tick path, much faster); ``ticks=True``, or a recording with
    gaps, pushes every row through FeatureWindows as the agent does.
    """
    n = len(rec.t)
    good = rec.good if rec.good is not None else np.isfinite(rec.values)
    mono = rec.t - (rec.t[0] if n else 0.0)
    period = rec.period_s
    scores: list[ScoreSeries] = []
    for binding, bundle in setup.models:
        step = _model_step(bundle, period)
        if not ticks and _regular(rec, step):
            scores.extend(_scores_vectorised(rec, good, binding, bundle, step))
            continue
        windows = FeatureWindows(bundle.manifest, binding)
        m = bundle.manifest
        tick_rows = _ticks(rec, bundle, step)
        rows_of = {
            asset: _tick_rows(rec, good, tick_rows, _columns(rec, roles, m), m, step)
            for asset, roles in binding.assets.items()
        }
        series = {a: _Series() for a in binding.assets}
        pending: list[tuple[int, Frame]] = []
        for ti, k in enumerate(tick_rows.tolist()):
            t = float(mono[k])
            utc = datetime.fromtimestamp(float(rec.t[k]), UTC)
            for name, roles in binding.assets.items():
                vals, oks = rows_of[name]
                samples = {
                    r: Sample(roles[r], float(vals[ti, j]), _Q[bool(oks[ti, j])], utc, t)
                    for j, r in enumerate(m.roles)
                }
                windows.push(name, samples, t)
            frame = windows.frame(utc, t)
            if frame is not None:
                pending.append((k, frame))
                if len(pending) >= _CHUNK:
                    _score_frames(bundle, pending, series)
                    pending = []
        if pending:
            _score_frames(bundle, pending, series)
        for name, ser in series.items():
            scores.append(
                ScoreSeries(
                    binding.name,
                    name,
                    np.asarray(ser.rows, dtype=np.int64),
                    {k: np.asarray(v, dtype=np.float64) for k, v in ser.outputs.items()},
                )
            )

    inputs = AlarmInputs(rec.t, tuple(a.name for a in setup.assets))
    for asset in setup.assets:
        if not asset.values and not asset.detectors:
            # only model outputs: present in the cycles they were scored, as asset_values gives
            cols_fast: dict[str, tuple[FloatArray, BoolArray]] = {}
            for sc in scores:
                if sc.asset != asset.name:
                    continue
                at_frames = np.zeros(n, dtype=np.bool_)
                at_frames[sc.rows] = True
                for o, v in sc.outputs.items():
                    by_row = np.full(n, np.nan)
                    by_row[sc.rows] = v
                    cols_fast[f"{sc.model}.{o}"] = (by_row, at_frames)
            inputs.sources[asset.name] = cols_fast | _bad_columns(rec, good, setup, asset)
            continue
        detectors: dict[tuple[str, str], Detector] = {
            (asset.name, d.name): make_detector(d.detector) for d in asset.detectors
        }
        mine = [sc for sc in scores if sc.asset == asset.name]
        fresh = {sc.model: dict(zip(sc.rows.tolist(), range(len(sc.rows)), strict=True)) for sc in mine}
        tag_cols = {tag: rec.column(tag) for tag in asset.values.values()}
        cols_out: dict[str, tuple[FloatArray, BoolArray]] = {}
        for k in range(n):
            outputs: dict[str, dict[str, float]] = {}
            for sc in mine:
                i = fresh[sc.model].get(k)
                if i is not None:
                    outputs[sc.model] = {o: float(v[i]) for o, v in sc.outputs.items()}
            row, ok = rec.values[k], good[k]

            def tag_value(
                tag: str, row: FloatArray = row, ok: BoolArray = ok, cols: dict[str, int] = tag_cols
            ) -> float | None:
                j = cols[tag]
                return float(row[j]) if ok[j] else None

            values = asset_values(asset, outputs, tag_value)
            run_detectors(asset, detectors, values)
            for src, val in values.items():
                col = cols_out.get(src)
                if col is None:
                    col = cols_out[src] = (np.full(n, np.nan), np.zeros(n, dtype=np.bool_))
                col[0][k] = math.nan if val is None else val
                col[1][k] = True
        inputs.sources[asset.name] = cols_out | _bad_columns(rec, good, setup, asset)
    return inputs, scores


def _bad_columns(
    rec: Recording, good: BoolArray, setup: ReplaySetup, asset: AssetConfig
) -> dict[str, tuple[FloatArray, BoolArray]]:
    """The bad-PV alarms' inputs (:func:`agent.pipeline.sources.watched_inputs`): 1 in the rows
    where a watched tag was not GOOD, every row (the runtime reads the tags every cycle)."""
    out: dict[str, tuple[FloatArray, BoolArray]] = {}
    for source, tags in watched_inputs(setup.alarms, asset, [b for b, _ in setup.models]).items():
        bad = np.asarray(~good[:, [rec.column(t) for t in tags]].all(axis=1), dtype=np.float64)
        out[bad_key(source)] = (bad, np.ones(len(rec.t), dtype=np.bool_))
    return out


def run_alarms(alarms: AlarmsConfig, inputs: AlarmInputs) -> list[Alarm]:
    """Step 4: one :class:`AlarmEngine` over the inputs, every asset every cycle (as the runtime
    evaluates them); returns every transition in order."""
    engine = AlarmEngine(alarms, list(inputs.assets))
    wanted = {d.input_key for d in alarms.defs}
    tables = {
        asset: [(src, v.tolist(), p.tolist()) for src, (v, p) in cols.items() if src in wanted]
        for asset, cols in inputs.sources.items()
    }
    mono = (inputs.t - inputs.t[0]).tolist() if len(inputs.t) else []
    out: list[Alarm] = []
    for k, now in enumerate(mono):
        utc = inputs.utc(k)
        for asset in inputs.assets:
            values = {src: v[k] for src, v, p in tables.get(asset, ()) if p[k]}
            out.extend(engine.evaluate(asset, values, now, utc))
    return out


_ACTIVE = {AlarmState.UNACK, AlarmState.ACKED}


def episodes(transitions: Sequence[Alarm]) -> list[AlarmEpisode]:
    """Transitions → annunciations: from entering UNACK to leaving the active states."""
    open_: dict[tuple[str, int], Alarm] = {}
    out: list[AlarmEpisode] = []
    for a in transitions:
        key = (a.asset, a.code)
        if key not in open_:
            if a.state is AlarmState.UNACK:
                open_[key] = a
            continue
        if a.state not in _ACTIVE:
            first = open_.pop(key)
            out.append(AlarmEpisode(a.code, a.name, a.asset, a.is_alert, first.at, a.at))
    out.extend(AlarmEpisode(a.code, a.name, a.asset, a.is_alert, a.at, None) for a in open_.values())
    out.sort(key=lambda e: (e.raised, e.asset, e.code))
    return out


def replay(rec: Recording, setup: ReplaySetup, *, ticks: bool = False) -> ReplayResult:
    """The whole replay (see the module docstring; ``ticks``: see :func:`alarm_inputs`)."""
    inputs, scores = alarm_inputs(rec, setup, ticks=ticks)
    transitions = run_alarms(setup.alarms, inputs)
    return ReplayResult(transitions, episodes(transitions), scores, inputs)
