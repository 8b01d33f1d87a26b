"""Offline scoring end to end: plant recordings through the agent's scoring and alarm code.

The shipped ``models/pca-pump`` bundle (``load_bundle``), configs/demo.yaml's binding (pump1,
pump2; ``bad_input: hold``, 3 cycles), the agent's framing and features
(``agent/pipeline/features.py``), ``map_outputs`` and the real ``AlarmEngine`` with the demo's
anomaly alert (``bench.replay.PCA_ANOMALY_ALERT``, with its reasons; a test keeps it equal to
configs/demo.yaml). Recordings come from the embedded plant at the manifest's 1 s period, on
seeds never used to fit or check the model (models/README.md: 1-6 fit, 101-106 check).

* A fault-free week (7 seeds × 24 h, 2 pumps) raises at most one alert per pump-day.
* Each fault models/README.md says the model detects is detected within a bound derived from
  the delay it reports; the measured table is printed (``pytest -s``) and written to
  ``tests/e2e/results/pca_detection_delay.md``.

The week is scored in batches (``bench.replay.score_recording``: the bad-input policy over the
series, ``sliding_windows`` + ``window_to_input``, thousands of windows per session call). The
first tests show that the in-memory recordings are the simulator recorder's values, and that
the batches give exactly what the agent's own per-tick path (``FeatureWindows`` fed Samples,
``Scorer``) gives, sensor faults, held values and left-out windows included, down to the
alert transitions; and that feeding each score once gives the transitions of the runtime's
every-cycle feed when every frame scores every asset (asserted for the week).

Run time: the recordings (about 30 s of CPU for the week, spread over the CPUs) dominate.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import load_config
from agent.modelstore.binding import ModelBinding
from agent.modelstore.bundle import Bundle, load_bundle
from agent.pipeline.alarms import AlarmDef, AlarmsConfig
from agent.types import Score
from bench.replay import (
    BINDING_NAME,
    FAULT_CASES,
    ONSET_S,
    PCA_ANOMALY_ALERT,
    PCA_BUNDLE,
    Recording,
    RecordSpec,
    Stream,
    alert_episodes,
    detection_delay,
    make_binding,
    model_streams,
    record,
    record_many,
    replay_alarms,
    replay_ticks,
    score_recording,
)
from simulator import Fault, FaultKind, ScenarioEvent
from simulator.recorder import record as simulator_record

REPO = Path(__file__).resolve().parents[2]
ALARMS = AlarmsConfig(defs=(AlarmDef.model_validate(PCA_ANOMALY_ALERT),))
CODE = int(PCA_ANOMALY_ALERT["code"])
BINDING = make_binding()  # the demo's: pump1, pump2; bad_input hold, 3 cycles
CYCLE_S = 1.0  # the agent's cycle (configs/demo.yaml agent.cycle_ms), = the sample period
NORMAL_SEEDS = tuple(range(201, 208))  # 7 × 24 h: one simulated week
DAY_H = 24.0
FAULT_SEED = 301
MAX_ALERTS_PER_PUMP_DAY = 1
RESULTS = Path(__file__).parent / "results" / "pca_detection_delay.md"


def delay_bound_s(readme_s: float, stride_s: float) -> float:
    """How late a fault models/README.md reports as detected after ``readme_s`` may be here.

    README's figures are single runs (other seeds, fault at 1 h, on-delay of 3 frames). Here
    the onset is at 10 min on another seed, so the operating point differs: allow 50 % more,
    plus the whole on-delay of our alert and one frame stride for the phase of the frames
    against the onset (both already partly inside README's figure: the bound is generous).
    """
    return 1.5 * readme_s + float(PCA_ANOMALY_ALERT["on_delay_s"]) + stride_s


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(PCA_BUNDLE)


@pytest.fixture(scope="module")
def recordings() -> dict[str, list[Recording]]:
    """The week and the fault runs, recorded together by a pool of spawned processes."""
    week = [RecordSpec(seed, DAY_H) for seed in NORMAL_SEEDS]
    faults = [case.spec(FAULT_SEED) for case in FAULT_CASES]
    recs = record_many(week + faults)
    return {"week": recs[: len(week)], "faults": recs[len(week) :]}


def _fault_recording(recordings: dict[str, list[Recording]], name: str) -> Recording:
    return recordings["faults"][[c.name for c in FAULT_CASES].index(name)]


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


# --------------------------------------------------------------------------- the replay is the agent


def test_recordings_are_what_the_simulator_recorder_writes() -> None:
    """bench.replay.record keeps in memory the values simulator.recorder writes to its CSV."""
    events = (
        ScenarioEvent(120.0, Fault(FaultKind.SENSOR_SPIKE, pump=1, tag="Vibration")),
        ScenarioEvent(200.0, Fault(FaultKind.SENSOR_DROPOUT, pump=2, tag="MotorCurrent")),
        ScenarioEvent(300.0, Fault(FaultKind.CAVITATION, pump=1)),
    )
    rec = record(RecordSpec(seed=211, hours=0.15, events=events))
    buf = io.StringIO()
    simulator_record(buf, hours=0.15, seed=211, scenario=events)
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    header, body = rows[0], rows[1:]
    assert len(body) == len(rec.t_s)
    for tag in rec.tags:
        col = header.index(tag)
        expected = np.array([float(r[col]) if r[col] else math.nan for r in body])
        np.testing.assert_array_equal(rec.column(tag), expected, err_msg=tag)
    codes = np.array([[int(r[header.index(f"pump{i}_fault_code")]) for i in (1, 2)] for r in body])
    np.testing.assert_array_equal(rec.fault_codes, codes)
    assert np.isnan(rec.column("Pump2.MotorCurrent")).any()  # the dropout is in there


def _tick_streams(scores: list[Score], rec: Recording) -> list[Stream]:
    streams = []
    for asset in BINDING.assets:
        mine = [s for s in scores if s.asset == asset]
        t = np.array([(s.frame_end - rec.epoch).total_seconds() for s in mine])
        names = list(mine[0].outputs)
        values = {f"{BINDING_NAME}.{k}": np.array([s.outputs[k] for s in mine]) for k in names}
        streams.append(Stream(asset, t, values))
    return streams


def test_demo_config_is_the_tested_config() -> None:
    """configs/demo.yaml binds the model and configures the alert exactly as measured here."""
    cfg = load_config(REPO / "configs" / "demo.yaml")
    # the demo's anomaly alert reads op-pump (models/README.md; bench/operating_point.py), which
    # runs beside pca-pump: its limit and delays are the ones measured here
    (alert,) = [d for d in cfg.alarms.defs if d.code == CODE]
    assert alert.source == "op-pump.anomaly"
    measured = ALARMS.defs[0]
    assert alert.model_copy(update={"name": measured.name, "source": measured.source}) == measured, (
        "configs/demo.yaml's anomaly alert is not the one measured here "
        "(bench.replay.PCA_ANOMALY_ALERT): change both together and rerun this test"
    )
    (binding,) = [m for m in cfg.models if m.name == BINDING_NAME]
    assert (binding.assets, binding.bad_input, binding.hold_limit) == (
        BINDING.assets,
        BINDING.bad_input,
        BINDING.hold_limit,
    )
    assert cfg.agent.cycle_ms == CYCLE_S * 1000


@pytest.mark.parametrize(
    ("case", "policy"),
    [
        ("sensor_spike (Vibration)", "hold"),
        ("sensor_spike (Vibration)", "skip"),
        ("sensor_dropout (DischargePressure)", "hold"),
        ("cavitation", "hold"),
    ],
)
async def test_batched_scoring_is_the_agent_tick_path(
    bundle: Bundle, recordings: dict[str, list[Recording]], case: str, policy: str
) -> None:
    """Same frames, same left-out windows, same outputs and same alerts as FeatureWindows + Scorer."""
    rec = _fault_recording(recordings, case)
    binding: ModelBinding = make_binding(bad_input=policy)
    ticks = await replay_ticks(rec, bundle, binding)
    batch = score_recording(bundle, rec, binding)

    for asset, fs in batch.items():
        mine = [s for s in ticks if s.asset == asset]
        t_tick = np.array([(s.frame_end - rec.epoch).total_seconds() for s in mine])
        np.testing.assert_array_equal(t_tick, fs.end_s[fs.scored], err_msg=f"{asset}: scored frames differ")
        for name, values in fs.outputs.items():
            tick_values = np.array([s.outputs[name] for s in mine])
            if name.endswith("alarm") or name == "anomaly":
                np.testing.assert_array_equal(tick_values, values[fs.scored], err_msg=f"{asset} {name}")
            else:  # one window per call against thousands: float32 sums may differ in the last bit
                np.testing.assert_allclose(tick_values, values[fs.scored], rtol=1e-5, err_msg=f"{asset} {name}")
    if case.startswith("sensor_dropout") or (policy == "skip" and case.startswith("sensor_")):
        assert not batch["pump1"].scored.all(), "the sensor fault should leave windows out"

    def key(alarms: list[Any]) -> list[tuple[Any, ...]]:
        return [(a.asset, a.state, a.at) for a in alarms]

    via_ticks = replay_alarms(ALARMS, rec.epoch, _tick_streams(ticks, rec))
    via_batch = replay_alarms(ALARMS, rec.epoch, model_streams(BINDING_NAME, batch))
    assert key(via_ticks) == key(via_batch)
    if all(fs.scored.all() for fs in batch.values()):
        # every frame scores every asset: feeding each score once (the week below) gives the
        # transitions of the runtime, which feeds the latest score on every cycle
        every_cycle = model_streams(BINDING_NAME, batch, cycle_s=CYCLE_S, until_s=float(rec.t_s[-1]))
        assert key(replay_alarms(ALARMS, rec.epoch, every_cycle)) == key(via_batch)
        assert alert_episodes(via_batch), "expected alerts to compare"


# --------------------------------------------------------------------------- (a) a fault-free week


def test_fault_free_week_at_most_one_alert_per_pump_day(
    bundle: Bundle, recordings: dict[str, list[Recording]]
) -> None:
    stride_s = bundle.manifest.window.stride * bundle.manifest.window.sample_period_s
    per_day: dict[tuple[int, str], int] = {}
    scored_days = 0.0
    for rec in recordings["week"]:
        assert rec.hours >= DAY_H
        assert not rec.fault_codes.any()
        frames = score_recording(bundle, rec, BINDING)
        # every frame scores every asset (else the runtime's every-cycle feed could differ)
        assert all(fs.scored.all() for fs in frames.values()), f"seed {rec.spec.seed}: frames left out"
        scored_days += sum(len(fs) for fs in frames.values()) * stride_s / 86400.0
        alarms = replay_alarms(ALARMS, rec.epoch, model_streams(BINDING_NAME, frames))
        for asset in BINDING.assets:
            per_day[(rec.spec.seed, asset)] = len(alert_episodes(alarms, asset, CODE))
    total = sum(per_day.values())
    print(
        f"\nfault-free week: {total} anomaly alerts in {len(per_day)} pump-days "
        f"({total / len(per_day):.2f} per pump-day; {scored_days:.2f} pump-days of frames scored); "
        f"per (seed, pump): {per_day}"
    )
    assert len(per_day) == 7 * len(BINDING.assets)
    assert scored_days > 0.99 * 7 * len(BINDING.assets)
    worst = {k: n for k, n in per_day.items() if n > MAX_ALERTS_PER_PUMP_DAY}
    assert not worst, f"more than {MAX_ALERTS_PER_PUMP_DAY} alert per pump-day: {worst}"


# --------------------------------------------------------------------------- (b) detection delay


def test_pca_detection_delay(bundle: Bundle, recordings: dict[str, list[Recording]]) -> None:
    window = bundle.manifest.window
    stride_s = window.stride * window.sample_period_s
    lines = [
        "# PCA (pca-pump v1) detection delay",
        "",
        f"Written by `tests/e2e/test_scoring_offline.py` (seed {FAULT_SEED}, 2 pumps, fault on pump 1 "
        f"at {ONSET_S / 60:.0f} min), through configs/demo.yaml's binding (`bad_input: {BINDING.bad_input}`, "
        f"{BINDING.hold_limit} cycles) and alert `{json.dumps(PCA_ANOMALY_ALERT)}`, evaluated every "
        f"{CYCLE_S:g} s with the latest score as the runtime does. Delay: fault onset to the alert going "
        "active. *Bound* (asserted only where models/README.md reports a delay): "
        "1.5 × README + on-delay + one stride. *Frames left out*: windows still holding a bad value "
        "(missing or implausible) after the hold, which the agent does not score.",
        "",
        "| fault (pump 1) | README | bound | delay pump 1 | pump 2 (healthy) alerted | frames left out (pump 1) | result |",
        "|---|---|---|---|---|---|---|",
    ]
    failures = []
    for case, rec in zip(FAULT_CASES, recordings["faults"], strict=True):
        frames = score_recording(bundle, rec, BINDING)
        streams = model_streams(BINDING_NAME, frames, cycle_s=CYCLE_S, until_s=float(rec.t_s[-1]))
        alarms = replay_alarms(ALARMS, rec.epoch, streams)  # every cycle, as the runtime feeds it
        delay = detection_delay(alarms, "pump1", CODE, rec.epoch, ONSET_S)
        early = [a for a in alert_episodes(alarms, "pump1", CODE) if (a.at - rec.epoch).total_seconds() < ONSET_S]
        other = detection_delay(alarms, "pump2", CODE, rec.epoch, ONSET_S)
        after = frames["pump1"].end_s > ONSET_S
        left_out = int((~frames["pump1"].scored[after]).sum())
        bound = delay_bound_s(case.readme_s, stride_s) if case.readme_s is not None else None
        if bound is None:
            result = "not claimed" if delay is None else "detected (not claimed)"
        elif delay is not None and delay <= bound and not early:
            result = "ok"
        else:
            result = "FAIL"
            failures.append(f"{case.name}: delay {delay} s, bound {bound} s, alerts before onset {len(early)}")
        lines.append(
            f"| {case.name} | {_fmt_s(case.readme_s)} | {_fmt_s(bound)} | {_fmt_s(delay) if delay is not None else 'not detected'} "
            f"| {'after ' + _fmt_s(other) if other is not None else 'no'} | {left_out} / {int(after.sum())} | {result} |"
        )
    table = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table, encoding="utf-8")
    print("\n" + table)
    assert not failures, "\n".join(failures)
