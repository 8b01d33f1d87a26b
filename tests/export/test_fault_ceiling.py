"""bench/fault_ceiling.py: a day recorded with and without its sensor faults differs only where
and while a sensor fault is active, and the ceiling splits a real bundle's recall by what the
windows show. A real simulated half hour and the shipped fault-mlp bundle; seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.fault_ceiling import _record_pair, ceiling
from export.data import load_columns

ROOT = Path(__file__).resolve().parents[2]
TAGS = ["Flow", "DischargePressure", "MotorCurrent", "BearingTemp", "Vibration"]


def test_the_clean_day_differs_only_by_the_sensor_faults(tmp_path: Path) -> None:
    faulty, clean = _record_pair(5, 0.5, 2, tmp_path)
    for n in (1, 2):
        cols = [f"Pump{n}.{t}" for t in TAGS]
        (a,) = load_columns(faulty, [*cols, f"pump{n}_fault_code"], 1.0)
        (b,) = load_columns(clean, [*cols, f"pump{n}_fault_code"], 1.0)
        sensor = a[:, -1] >= 6  # the recordings' sensor fault codes
        differs = np.any(np.nan_to_num(a[:, :-1], nan=-1) != np.nan_to_num(b[:, :-1], nan=-1), axis=1)
        assert not np.any(differs & ~sensor)  # the physics and the noise are the same
        assert np.all(b[:, -1] < 6)  # the clean day holds no sensor fault
    r = ceiling(ROOT / "models" / "fault-mlp", [(faulty, clean)], run_model=True)
    for kind, part in (("sensor_spike", "_with_a_spike"), ("sensor_stuck", "_where_moved")):
        k = r[kind]
        assert k["windows"] > 0 and 0.0 <= k["recall"] <= 1.0
        other = "_without" if kind == "sensor_spike" else "_steady_anyway"
        assert k[f"windows{part}"] + k[f"windows{other}"] == k["windows"]
    assert r["sensor_stuck"]["by_tag"]
    for tag in r["sensor_stuck"]["by_tag"].values():  # every frozen window is called something
        assert sum(tag["called"].values()) == tag["windows"]
        assert tag["called"].get("sensor_stuck", 0) == round(tag["recall"] * tag["windows"])
    d = r["sensor_drift"]
    assert d["windows"] == sum(b["windows"] for b in d["by_minutes_after_onset"].values())
    # the first minutes of a drift are the windows it hides in
    first = d["by_offset_in_noise_sd"]["0-1"]
    assert first["windows"] == 0 or first["recall"] <= d["recall"]
