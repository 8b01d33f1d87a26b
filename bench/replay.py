"""The pump station's recordings for the benchmark, through the product's replay (agent/replay.py).

Shared by ``tests/e2e/test_scoring_offline.py`` and ``bench/scoring.py`` (import it as
``bench.replay``), so the test and the benchmark measure the same thing the same way. The
replay itself lives in the product (:mod:`agent.replay`, used by ``edge-export evaluate``, the
export gates and this module): here are the simulator recordings, a vectorised scoring path
for weeks of data, and adapters from both to the agent's replay.
Everything is driven by a :class:`ModelBinding` (:func:`make_binding` is the demo's, see
``configs/demo.yaml``): its assets, its role → tag map and its bad-input policy.

Two scoring paths, checked against each other by the e2e test:

* **per tick** (:func:`replay_ticks`): what the agent does, :func:`agent.replay.alarm_inputs`.
  Each recorded row becomes one :class:`~agent.types.Sample` per bound tag (NaN: BAD, as a
  driver delivers a dropout), pushed into :class:`FeatureWindows`; frames are scored with the
  Scorer's arithmetic. Fine for hours, not weeks.
* **batched** (:func:`score_recording`): the bad-input policy applied to the whole series
  (:func:`bad_input`: a value that is not finite or outside the plausible range is bad; with
  ``hold`` the last good value stands in for ``hold_cycles`` ticks), the same frames cut with
  :func:`~agent.pipeline.features.sliding_windows`, a window left out when it still holds a
  bad value (the asset is not in that frame), features from
  :func:`~agent.pipeline.features.window_to_input`, thousands of windows per
  :meth:`Bundle.run` call, outputs named by :func:`~agent.pipeline.scorer.map_outputs`. The
  model is pure per window: batching changes the speed only.

Scores reach the real alarm engine through :func:`agent.replay.run_alarms`
(:func:`replay_alarms`) keyed as the runtime keys
them: ``"<binding name>.<output>"`` for model outputs, ``"<detector name>"`` for detector
scores. The runtime evaluates every asset's alarms on every cycle with the asset's latest
score (``agent/runtime.py``); :func:`model_streams` does the same with ``cycle_s``, or feeds
each new score once (``cycle_s=None``), which gives the same transitions when every frame
scores the asset and the delays are multiples of the frame period, and is ten times cheaper.
Time is the plant's simulated time: ``now_mono`` is seconds since the recording started,
``now_utc`` the plant's epoch plus that.

Recordings (:func:`record`) hold what :mod:`simulator.recorder` writes to a wide CSV (the
plant stepped by 1 s, the state read after every step, analog values rounded to their register
resolution, NaN where a sensor has no valid value), in memory and only for the tags asked for:
parsing days of CSV would cost more than simulating them. :func:`record_many` runs several in
worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.modelstore.binding import ModelBinding
from agent.modelstore.bundle import Bundle
from agent.modelstore.manifest import Manifest
from agent.pipeline.alarms import AlarmsConfig
from agent.pipeline.features import ewma_rows, sliding_windows, window_to_input
from agent.pipeline.scorer import map_outputs
from agent.replay import AlarmInputs, ReplaySetup, alarm_inputs, held_series, run_alarms
from agent.replay import Recording as AgentRecording
from agent.types import Alarm, AlarmState, Score
from simulator import Fault, FaultKind, Plant, ScenarioEvent, StationParams
from simulator.recorder import recorded_tags

__all__ = [
    "BINDING_NAME",
    "FAULT_CASES",
    "ONSET_S",
    "PCA_ANOMALY_ALERT",
    "PCA_BUNDLE",
    "ROLE_TAGS",
    "STATION_ROLES",
    "FaultCase",
    "FrameScores",
    "RecordSpec",
    "Recording",
    "Stream",
    "alert_episodes",
    "bad_input",
    "default_workers",
    "detection_delay",
    "latest_at",
    "make_binding",
    "model_streams",
    "record",
    "record_many",
    "replay_alarms",
    "replay_ticks",
    "score_recording",
    "score_series",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

ROOT = Path(__file__).resolve().parents[1]
PCA_BUNDLE = ROOT / "models" / "pca-pump"

ROLE_TAGS: dict[str, str] = {
    "speed": "{pump}.Speed",
    "flow": "{pump}.Flow",
    "suction_pressure": "{pump}.SuctionPressure",
    "discharge_pressure": "{pump}.DischargePressure",
    "motor_current": "{pump}.MotorCurrent",
    "motor_power": "{pump}.MotorPower",
    "winding_temperature": "{pump}.WindingTemp",
    "bearing_temperature": "{pump}.BearingTemp",
    "vibration": "{pump}.Vibration",
    "vibration_1x": "{pump}.Vib1x",
    "vibration_2x": "{pump}.Vib2x",
    "vibration_bearing": "{pump}.VibBearing",
    "vibration_hf": "{pump}.VibHF",
    "ambient_temperature": "Station.AmbientTemp",
}
"""Role → plant tag for one pump (``{pump}``: ``Pump1``, ``Pump2``): what the shipped pca-pump
bundle was fitted with (models/README.md, ``--role``) and what configs/demo.yaml binds."""

STATION_ROLES: tuple[str, ...] = (
    "speed:rpm:0:3000:{asset}.Speed",
    "flow:m3/h:0:300:{asset}.Flow",
    "suction_pressure:bar:-1:3:{asset}.SuctionPressure",
    "discharge_pressure:bar:0:10:{asset}.DischargePressure",
    "motor_current:A:0:60:{asset}.MotorCurrent",
    "motor_power:kW:0:30:{asset}.MotorPower",
    "winding_temperature:°C:0:150:{asset}.WindingTemp",
    "bearing_temperature:°C:0:150:{asset}.BearingTemp",
    "vibration:mm/s:0:25:{asset}.Vibration",
    "vibration_1x:mm/s:0:25:{asset}.Vib1x",
    "vibration_2x:mm/s:0:25:{asset}.Vib2x",
    "vibration_bearing:mm/s:0:25:{asset}.VibBearing",
    "vibration_hf:mm/s:0:25:{asset}.VibHF",
    "ambient_temperature:°C:-40:60:Station.AmbientTemp",
)
"""The same roles as ``--role`` specs (``role:unit:low:high:column``, ``{asset}``: ``Pump1``):
models/build.sh's list, which the export tests and benches train and judge with."""

BINDING_NAME = "pca-pump"
"""The PCA binding's name in the config. ``check_binding`` requires it to be the manifest's
name, so its outputs reach the alarm engine as ``pca-pump.<output>`` (``pca-pump.anomaly`` ...)."""

PCA_ANOMALY_ALERT: dict[str, Any] = {
    "name": "pca_anomaly",
    "code": 1,
    "kind": "alert",
    "source": "pca-pump.anomaly",
    "high": {"value": 0.5, "severity": 1},
    "on_delay_s": 30.0,
    "off_delay_s": 60.0,
}
"""The anomaly alert of ``configs/demo.yaml`` (an entry of ``alarms: defs:``), as measured here.

An *alert*, not an alarm: an anomaly score asks for no defined operator response (ISA-18.2).
``pca-pump.anomaly`` is 1 while T² or SPE is above its threshold (``high: 0.5`` on a 0/1 flag).
A frame comes every 10 s and the on-delay runs from the first flagged frame, so 30 s means
four consecutive flagged frames: more than models/README.md's minimum of three (which is 20 s
in the engine), and on the fault-free test week it took the count from 3 alerts (20 s) to none,
for 10 s more detection delay. ``off_delay_s`` keeps one alert from chattering through a burst
of frames that dip below the thresholds.
"""

SAMPLE_PERIOD_S = 1.0  # the manifest's; recordings are made at exactly this period


def make_binding(
    pumps: int = 2,
    *,
    name: str = BINDING_NAME,
    bundle: Path = PCA_BUNDLE,
    bad_input: str = "hold",
    hold_cycles: int = 3,
) -> ModelBinding:
    """configs/demo.yaml's binding: assets ``pump1``.. bound to ``Pump1.*``.., one bundle."""
    assets = {
        f"pump{i}": {role: tag.format(pump=f"Pump{i}") for role, tag in ROLE_TAGS.items()}
        for i in range(1, pumps + 1)
    }
    extra: dict[str, Any] = {"hold_cycles": hold_cycles} if bad_input == "hold" else {}
    return ModelBinding.model_validate(
        {"name": name, "bundle": bundle, "assets": assets, "bad_input": bad_input, **extra}
    )


# --------------------------------------------------------------------------- recordings


@dataclass(frozen=True)
class RecordSpec:
    """One recording to make: seed, length, pumps, and scenario events (faults)."""

    seed: int
    hours: float
    pumps: int = 2
    events: tuple[ScenarioEvent, ...] = ()
    tags: tuple[str, ...] | None = None  # None: every tag ROLE_TAGS names, for every pump


@dataclass(frozen=True)
class Recording:
    """A wide recording in memory: one row per second, one column per tag."""

    spec: RecordSpec
    epoch: datetime
    t_s: FloatArray  # [N] simulated seconds, 0, 1, 2, ...
    tags: tuple[str, ...]
    values: FloatArray  # [N, C] at register resolution; NaN = no valid value
    fault_codes: IntArray  # [N, pumps] the label (lowest active fault code)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index.update({t: i for i, t in enumerate(self.tags)})

    @property
    def hours(self) -> float:
        """The time covered, first row to last."""
        return (len(self.t_s) - 1) * SAMPLE_PERIOD_S / 3600.0

    def column(self, tag: str) -> FloatArray:
        return self.values[:, self._index[tag]]

    def series(self, tags: Sequence[str]) -> FloatArray:
        """``[N, len(tags)]``, columns in the order given (e.g. an asset's tags in role order)."""
        return self.values[:, [self._index[t] for t in tags]]

    def utc(self, t_s: float) -> datetime:
        return self.epoch + timedelta(seconds=t_s)


def _default_tags(pumps: int) -> tuple[str, ...]:
    tags = {tag.format(pump=f"Pump{i}") for i in range(1, pumps + 1) for tag in ROLE_TAGS.values()}
    return tuple(sorted(tags))


def record(spec: RecordSpec) -> Recording:
    """Run the plant for ``spec.hours`` at 1 s and keep the tags (see the module docstring).

    Rows are the state at t = 0 and after every 1 s step, as :func:`simulator.recorder.record`
    writes them (``sample_s=1``), values rounded to the register's decimals.
    """
    params = StationParams(pumps=spec.pumps)
    plant = Plant(params, seed=spec.seed, scenario=list(spec.events))
    tags = spec.tags if spec.tags is not None else _default_tags(spec.pumps)
    decimals = {e.name: e.decimals for e in recorded_tags(spec.pumps)}
    missing = [t for t in tags if t not in decimals]
    if missing:
        raise ValueError(f"not recorded tags: {missing}")
    n = round(spec.hours * 3600.0 / SAMPLE_PERIOD_S) + 1
    values = np.empty((n, len(tags)), dtype=np.float64)
    codes = np.empty((n, spec.pumps), dtype=np.int64)
    t_s = np.empty(n, dtype=np.float64)
    for k in range(n):
        if k:
            plant.step(SAMPLE_PERIOD_S)
        st = plant.state
        row = st.tags
        values[k] = [row[t] for t in tags]
        codes[k] = st.fault_codes
        t_s[k] = st.t_s
    for j, t in enumerate(tags):
        values[:, j] = np.round(values[:, j], decimals[t])
    return Recording(spec, params.epoch_datetime, t_s, tuple(tags), values, codes)


def default_workers() -> int:
    """Worker processes for :func:`record_many`: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def record_many(specs: Sequence[RecordSpec], workers: int | None = None) -> list[Recording]:
    """:func:`record` for every spec (results in order), in ``workers`` spawned processes.

    Longest first, so the workers finish together. Spawned rather than forked: the caller may
    already run threads (onnxruntime, asyncio's executor), which a fork would copy mid-state.
    """
    n = default_workers() if workers is None else workers
    if n <= 1 or len(specs) <= 1:
        return [record(s) for s in specs]
    order = sorted(range(len(specs)), key=lambda i: -specs[i].hours)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(n, len(specs)), mp_context=ctx) as pool:
        futures = {i: pool.submit(record, specs[i]) for i in order}
        return [futures[i].result() for i in range(len(specs))]


# --------------------------------------------------------------------------- batched scoring


def bad_input(series: FloatArray, manifest: Manifest, hold_limit: int) -> FloatArray:
    """The series as the agent's windows hold it (:func:`agent.replay.held_series`; NaN = no
    valid value: bad, or held for ``hold_limit`` ticks)."""
    return held_series(series, np.ones(series.shape, dtype=np.bool_), manifest, hold_limit)


@dataclass(frozen=True)
class FrameScores:
    """One asset's frames: when they end, whether the asset was scored, and the outputs."""

    asset: str
    end_s: FloatArray  # [F] time of each frame (its last sample)
    scored: BoolArray  # [F] the window was valid (else the asset is left out of that frame)
    outputs: dict[str, FloatArray]  # output name (as map_outputs names it) → [F], NaN when not scored

    def __len__(self) -> int:
        return len(self.end_s)


_CHUNK = 4096  # windows per session call: bounded memory, and far past the per-call overhead


def score_series(
    bundle: Bundle, asset: str, series: FloatArray, t_s: FloatArray, hold_limit: int
) -> FrameScores:
    """Score every frame of one asset's gap-free raw series ``[N, R]`` (roles in manifest order)."""
    m = bundle.manifest
    length, stride = m.window.length, m.window.stride
    held = ewma_rows(bad_input(series, m, hold_limit), m.inputs, m.window.sample_period_s)  # as the rings
    view = sliding_windows(held, length, stride)
    ends = t_s[length - 1 :: stride][: len(view)]
    scored = np.zeros(len(view), dtype=np.bool_)
    outputs: dict[str, FloatArray] = {}
    dtype = np.float32 if m.model_input.dtype == "float32" else np.float64
    for lo in range(0, len(view), _CHUNK):
        w = view[lo : lo + _CHUNK]
        ok = np.isfinite(w).all(axis=(1, 2))
        scored[lo : lo + len(w)] = ok
        if not ok.any():
            continue
        x = window_to_input(w[ok], m).astype(dtype, copy=False)
        rows = map_outputs(m, len(x), bundle.run({m.model_input.name: x}))
        idx = np.flatnonzero(ok) + lo
        for name in rows[0][0]:
            out = outputs.setdefault(name, np.full(len(view), np.nan))
            out[idx] = [r[0][name] for r in rows]
    return FrameScores(asset, ends, scored, outputs)


def score_recording(bundle: Bundle, rec: Recording, binding: ModelBinding) -> dict[str, FrameScores]:
    """:func:`score_series` for every asset of the binding."""
    roles = bundle.manifest.roles
    return {
        asset: score_series(bundle, asset, rec.series([tags[r] for r in roles]), rec.t_s, binding.hold_limit)
        for asset, tags in binding.assets.items()
    }


# --------------------------------------------------------------------------- per-tick scoring


async def replay_ticks(rec: Recording, bundle: Bundle, binding: ModelBinding) -> list[Score]:
    """The agent's own path (:func:`agent.replay.alarm_inputs`): one Sample per tag per row into
    FeatureWindows, every frame scored. A NaN (no valid value) arrives as a BAD sample.
    Returns every Score in time order (assets in binding order within a frame)."""
    tags = tuple(dict.fromkeys(t for roles in binding.assets.values() for t in roles.values()))
    agent_rec = AgentRecording(rec.epoch.timestamp() + rec.t_s, tags, rec.series(tags))
    _, series = alarm_inputs(agent_rec, ReplaySetup([(binding, bundle)], [], AlarmsConfig()), ticks=True)
    m = bundle.manifest
    order = {a: i for i, a in enumerate(binding.assets)}
    out = [
        (int(row), order[s.asset], Score(m.name, m.version, s.asset, rec.utc(float(rec.t_s[row])),
                                         {k: float(v[i]) for k, v in s.outputs.items()}, 0.0))
        for s in series
        for i, row in enumerate(s.rows)
    ]
    return [score for _, _, score in sorted(out, key=lambda x: (x[0], x[1]))]


# --------------------------------------------------------------------------- alarms


@dataclass(frozen=True)
class Stream:
    """Values for one asset's alarm sources at given times: one ``evaluate`` call per row."""

    asset: str
    t_s: FloatArray  # [K]
    values: Mapping[str, FloatArray]  # source → [K]; NaN is passed on (BAD input: the engine holds)


def replay_alarms(config: AlarmsConfig, epoch: datetime, streams: Sequence[Stream]) -> list[Alarm]:
    """Feed streams to the agent's alarm engine (:func:`agent.replay.run_alarms`), merged in
    time order; return every transition. An asset without a row at a time gets nothing then."""
    times = np.unique(np.concatenate([s.t_s for s in streams]))
    inputs = AlarmInputs(epoch.timestamp() + times, tuple(dict.fromkeys(s.asset for s in streams)))
    for s in streams:
        idx = np.searchsorted(times, s.t_s)
        cols = inputs.sources.setdefault(s.asset, {})
        for src, v in s.values.items():
            values, present = np.full(len(times), np.nan), np.zeros(len(times), dtype=np.bool_)
            values[idx], present[idx] = v, True
            cols[src] = (values, present)
    return run_alarms(config, inputs)


def latest_at(t_grid: FloatArray, t_events: FloatArray, values: FloatArray) -> FloatArray:
    """The latest event value at or before each grid time (NaN before the first event)."""
    idx = np.searchsorted(t_events, t_grid, side="right") - 1
    out = np.where(idx >= 0, np.asarray(values, dtype=np.float64)[np.maximum(idx, 0)], np.nan)
    return np.asarray(out, dtype=np.float64)


def model_streams(
    binding_name: str,
    frames: Mapping[str, FrameScores],
    *,
    cycle_s: float | None = None,
    until_s: float | None = None,
) -> list[Stream]:
    """Streams of model outputs keyed ``"<binding name>.<output>"``.

    ``cycle_s=None``: one row per scored frame (an asset left out of a frame is not
    evaluated then). ``cycle_s``: as the runtime does, one row per cycle from the first score
    to ``until_s`` (default: the last frame), each with the asset's latest score.
    """
    out: list[Stream] = []
    for asset, fs in frames.items():
        keep = fs.scored
        t = fs.end_s[keep]
        values = {f"{binding_name}.{k}": v[keep] for k, v in fs.outputs.items()}
        if cycle_s is not None and len(t):
            end = fs.end_s[-1] if until_s is None else until_s
            grid = np.arange(t[0], end + cycle_s / 2, cycle_s)
            values = {k: latest_at(grid, t, v) for k, v in values.items()}
            t = grid
        out.append(Stream(asset, t, values))
    return out


def alert_episodes(alarms: Iterable[Alarm], asset: str | None = None, code: int | None = None) -> list[Alarm]:
    """The transitions that annunciate an alarm or alert (into active-unacknowledged)."""
    return [
        a
        for a in alarms
        if a.state is AlarmState.UNACK
        and (asset is None or a.asset == asset)
        and (code is None or a.code == code)
    ]


def detection_delay(
    alarms: Iterable[Alarm], asset: str, code: int, epoch: datetime, onset_s: float
) -> float | None:
    """Seconds from ``onset_s`` to the first annunciation at or after it (None: never)."""
    for a in alert_episodes(alarms, asset, code):
        t = (a.at - epoch).total_seconds()
        if t >= onset_s:
            return t - onset_s
    return None


# --------------------------------------------------------------------------- fault cases


ONSET_S = 600.0
"""Fault onset in the test's fault recordings: 10 min of normal operation first (windows
full, and a chance to see an alert before the fault, which would be a false one)."""


@dataclass(frozen=True)
class FaultCase:
    """One fault recording: the fault on pump 1 at the onset, observed for ``observe_s``.

    ``readme_s``: the PCA detection delay models/README.md reports for this fault (None: not
    reported there, i.e. not claimed).
    """

    name: str
    fault: Fault
    observe_s: float
    readme_s: float | None

    def spec(self, seed: int, onset_s: float = ONSET_S) -> RecordSpec:
        """The recording: ``onset_s`` of normal operation, then the fault for ``observe_s``."""
        return RecordSpec(seed, (onset_s + self.observe_s) / 3600.0, 2, (ScenarioEvent(onset_s, self.fault),))


def _case(name: str, kind: FaultKind, observe_s: float, readme_s: float | None, **kw: Any) -> FaultCase:
    return FaultCase(name, Fault(kind, pump=1, **kw), observe_s, readme_s)


FAULT_CASES: tuple[FaultCase, ...] = (
    _case("bearing_wear (ttf 6 h)", FaultKind.BEARING_WEAR, 3600.0, 25 * 60.0, time_to_failure_s=6 * 3600.0),
    _case("cavitation", FaultKind.CAVITATION, 600.0, 30.0),
    _case("imbalance", FaultKind.IMBALANCE, 600.0, 30.0),
    _case("motor_electrical", FaultKind.MOTOR_ELECTRICAL, 600.0, 30.0),
    _case("valve_blockage", FaultKind.VALVE_BLOCKAGE, 600.0, 30.0),
    _case("sensor_stuck (Flow)", FaultKind.SENSOR_STUCK, 900.0, 60.0, tag="Flow"),
    _case("sensor_spike (Vibration)", FaultKind.SENSOR_SPIKE, 1800.0, 5 * 60.0, tag="Vibration"),
    _case("sensor_drift (BearingTemp)", FaultKind.SENSOR_DRIFT, 3 * 3600.0, 105 * 60.0, tag="BearingTemp"),
    _case("sensor_stuck (DischargePressure)", FaultKind.SENSOR_STUCK, 900.0, None),
    _case("sensor_drift (DischargePressure)", FaultKind.SENSOR_DRIFT, 3600.0, None),
    _case("sensor_dropout (DischargePressure)", FaultKind.SENSOR_DROPOUT, 600.0, None),
)
"""The fault recordings of the detection-delay table: every fault class, the sensor faults on
the tags models/README.md measured plus the simulator's default sensor tag. Faults are on
pump 1 (the demo's asset ``pump1``)."""
