"""Recordings → windows: wide and long CSV, resampling, the agent's feature path, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.modelstore.manifest import FeatureSpec, WindowSpec
from agent.pipeline.features import sliding_windows, window_to_input
from export.data import (
    Contract,
    DataSpec,
    Recording,
    build_dataset,
    events,
    features,
    fit_normalisation,
    load_columns,
    read_long_csv,
    resample_hold,
    sniff_format,
)
from export.pipeline import random_fault_schedule
from simulator.recorder import record

from .conftest import LONG_TARGETS, roles

WINDOW = WindowSpec(sample_period_s=1.0, length=60, stride=10)


def spec(**kw: object) -> DataSpec:
    return DataSpec(tuple(roles()), ("Pump1", "Pump2"), WINDOW, label="pump{n}_fault_code", rul="pump{n}_rul_h",
                    **kw)  # type: ignore[arg-type]


def test_long_form_resamples_onto_the_wide_grid(tmp_path: Path) -> None:
    record(tmp_path / "w.csv", hours=0.5, seed=5, fmt="wide")
    record(tmp_path / "l.csv", hours=0.5, seed=5, fmt="long")
    assert sniff_format(tmp_path / "w.csv") == "wide" and sniff_format(tmp_path / "l.csv") == "long"
    cols = ["Pump1.Speed", "Pump1.BearingTemp", "Station.TankLevel"]
    (wide,) = load_columns(tmp_path / "w.csv", cols, 1.0)
    (long,) = load_columns(tmp_path / "l.csv", cols, 1.0)
    n = min(len(wide), len(long))
    assert n > 1700
    # exception-based archiving keeps a value within its deadband: 5 rpm, 0.2 °C, 0.01 m
    dev = np.abs(wide[:n] - long[:n]).max(axis=0)
    assert dev[0] <= 5.0 + 1e-6 and dev[1] <= 0.2 + 1e-6 and dev[2] <= 0.01 + 1e-6


def test_resample_hold_marks_bad_quality_and_long_gaps() -> None:
    series = {"a": (np.array([0.0, 2.0, 5.0]), np.array([1.0, np.nan, 3.0])),
              "b": (np.array([0.0, 100.0]), np.array([7.0, 8.0]))}
    out = resample_hold(series, ["a", "b"], 1.0, max_hold_s=50.0)
    assert out[:2, 0].tolist() == [1.0, 1.0] and np.isnan(out[2:5, 0]).all() and out[5, 0] == 3.0
    assert out[50, 1] == 7.0 and np.isnan(out[51, 1]) and out[100, 1] == 8.0


def test_read_long_csv_names_a_missing_tag(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("timestamp,tag,value,quality\n0,a,1,GOOD\n1,a,,BAD\n")
    t, v = read_long_csv(p, ["a"])["a"]
    assert t.tolist() == [0.0, 1.0] and v[0] == 1.0 and np.isnan(v[1])
    with pytest.raises(ValueError, match=r"no rows for tag\(s\) \['b'\]"):
        read_long_csv(p, ["a", "b"])


def test_windows_are_the_agents_windows_and_splits_follow_time_and_seed(recordings: list[Recording]) -> None:
    s = spec()
    ds = build_dataset(s, recordings, validation_fraction=0.25, train_stride=20)
    train_recs = {i for i, r in enumerate(recordings) if r.split == "train"}
    assert set(np.unique(ds.train.rec)) <= train_recs and set(np.unique(ds.val.rec)) <= train_recs
    assert not set(np.unique(ds.test.rec)) & train_recs  # the test set: other seeds only
    for rec in train_recs:  # validation is the tail of each recording: after every training window
        for a in (0, 1):
            tr = ds.train.end[(ds.train.rec == rec) & (ds.train.asset == a)]
            va = ds.val.end[(ds.val.rec == rec) & (ds.val.asset == a)]
            assert tr.max() < va.min() - WINDOW.length + 1  # no window straddles the cut
    assert 0 in set(np.unique(ds.train.label)) and len(set(np.unique(ds.train.label))) >= 5
    # the first validation window of pump 1 equals the agent's own framing of the raw columns
    (seg,) = load_columns(recordings[0].path, [s.column(r.column, "Pump1") for r in s.roles], 1.0)
    m = (ds.val.rec == 0) & (ds.val.asset == 0)
    first = int(ds.val.end[m].min())
    np.testing.assert_allclose(ds.val.x[m][0], seg[first - 59 : first + 1], rtol=1e-6)
    inputs = fit_normalisation(s, ds.train_samples)
    contract = Contract(inputs, FeatureSpec(kind="summary", stats=("mean", "std", "slope")))
    np.testing.assert_array_equal(features(ds.val.x[m][:3], contract), window_to_input(ds.val.x[m][:3], contract))
    # long-form test recording: labels come from the Simulation.* tags, all normal
    long_idx = next(i for i, r in enumerate(recordings) if r.targets == LONG_TARGETS)
    assert (ds.test.label[ds.test.rec == long_idx] == 0).all() and (ds.test.rec == long_idx).sum() > 500


def test_sliding_windows_are_imported_not_copied() -> None:
    import export.data

    assert export.data.sliding_windows is sliding_windows
    assert export.data.window_to_input is window_to_input


def test_events_and_random_schedule_are_seeded() -> None:
    a = [e.describe() for e in random_fault_schedule(3, 24, 2)]
    assert a == [e.describe() for e in random_fault_schedule(3, 24, 2)]
    assert a != [e.describe() for e in random_fault_schedule(4, 24, 2)]
    assert len({d.split(" on ")[0] for d in a if d.startswith("inject")}) == 9

    class W:
        rec = np.array([0, 0, 0, 0, 0, 0])
        asset = np.zeros(6, np.int64)
        end = np.array([10, 20, 30, 40, 50, 60])
        label = np.array([0, 3, 3, 0, 1, 1])

    assert list(events(W())) == [(0, 0, 3, 20, 30), (0, 0, 1, 50, 60)]  # type: ignore[arg-type]
