"""Windows and features: the feature function, ring buffers, stride, bad-input policies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.modelstore.binding import ModelBinding
from agent.modelstore.manifest import Manifest
from agent.pipeline.features import FeatureFunction, FeatureWindows, sliding_windows, window_to_input
from agent.tagtable import TagTable
from agent.types import Frame, Quality, Sample

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ROLES = ("vibration", "current")


def manifest(
    *, length: int = 4, stride: int = 1, kind: str = "sequence", stats: tuple[str, ...] = (),
    norm: tuple[dict[str, Any], dict[str, Any]] | None = None, recent: int | None = None,
) -> Manifest:
    norm = norm or (
        {"kind": "standard", "mean": 2.0, "std": 0.5},
        {"kind": "minmax", "min": 0.0, "max": 20.0},
    )
    shape = {"sequence": [length, 2], "flatten": [2 * length], "summary": [2 * len(stats)]}[kind]
    return Manifest.model_validate({
        "schema_version": 1, "name": "m", "version": "1", "task": "anomaly",
        "window": {"sample_period_s": 1.0, "length": length, "stride": stride},
        "inputs": [
            {"role": "vibration", "unit": "mm/s", "range": [0.0, 50.0], "normalisation": norm[0]},
            {"role": "current", "unit": "A", "range": [0.0, 20.0], "normalisation": norm[1]},
        ],
        "features": {"kind": kind, "stats": list(stats), **({"recent": recent} if recent else {})},
        "model_input": {"name": "x", "shape": ["batch", *shape]},
        "outputs": [{"name": "y", "meaning": "score"}],
        "variants": [{"file": "model.onnx", "sha256": "0" * 64, "size": 1}],
    })


def binding(
    policy: str = "skip", hold: int | None = None, assets: tuple[str, ...] = ("p1", "p2")
) -> ModelBinding:
    data: dict[str, Any] = {
        "name": "m", "bundle": "b", "bad_input": policy,
        "assets": {a: {"vibration": f"{a}_vib", "current": f"{a}_cur"} for a in assets},
    }
    if hold is not None:
        data["hold_cycles"] = hold
    return ModelBinding.model_validate(data)


def good(v: float, tag: str = "t", mono: float = 0.0) -> Sample:
    return Sample(tag, v, Quality.good(), T0, mono)


def bad(v: float | None = None, reason: str = "timeout") -> Sample:
    return Sample("t", v, Quality.bad(reason), T0, 0.0)


def push_tick(w: FeatureWindows, tick: int, rows: dict[str, dict[str, Sample]]) -> Frame | None:
    for asset, samples in rows.items():
        w.push(asset, samples, float(tick))
    return w.frame(now_utc=T0)


def row(v: float, c: float) -> dict[str, Sample]:
    return {"vibration": good(v), "current": good(c)}


# --------------------------------------------------------------------------- window_to_input


def test_sequence_normalises_per_role() -> None:
    m = manifest()
    x = np.array([[2.0, 0.0], [2.5, 10.0], [1.5, 20.0], [3.0, 5.0]])
    out = window_to_input(x, m)
    assert out.dtype == np.float32 and out.shape == (4, 2)
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0, -1.0, 2.0])
    np.testing.assert_allclose(out[:, 1], [0.0, 0.5, 1.0, 0.25])


def test_flatten_is_time_major() -> None:
    m = manifest(kind="flatten", norm=({"kind": "none"}, {"kind": "none"}))
    x = np.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(window_to_input(x, m), np.arange(8.0))


def test_summary_stats_in_stat_major_order() -> None:
    m = manifest(kind="summary", stats=("mean", "std", "min", "max", "last", "slope"),
                 norm=({"kind": "none"}, {"kind": "none"}))
    x = np.array([[1.0, 4.0], [2.0, 4.0], [3.0, 4.0], [4.0, 4.0]])
    out = window_to_input(x, m)
    expected = np.array([2.5, 4.0, np.std([1, 2, 3, 4]), 0.0, 1.0, 4.0, 4.0, 4.0, 4.0, 4.0, 1.0, 0.0])
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=1e-6)


def test_recent_stats_cover_the_last_rows_only() -> None:
    # a long window with the last minute's statistics beside the whole window's
    m = manifest(length=6, kind="summary", recent=3,
                 stats=("mean", "recent_mean", "recent_std", "recent_min", "recent_max", "recent_slope"),
                 norm=({"kind": "none"}, {"kind": "none"}))
    x = np.array([[0.0, 9.0], [0.0, 9.0], [0.0, 9.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    out = window_to_input(x, m).astype(np.float64)
    whole = window_to_input(x, manifest(length=6, kind="summary", stats=("mean",),
                                        norm=({"kind": "none"}, {"kind": "none"})))
    last3 = window_to_input(x[-3:], manifest(length=3, kind="summary", stats=("mean", "std", "min", "max", "slope"),
                                             norm=({"kind": "none"}, {"kind": "none"})))
    np.testing.assert_allclose(out, np.concatenate([whole, last3]), rtol=1e-6)
    np.testing.assert_allclose(out[2:4], [2.0, 2.0])  # recent_mean
    np.testing.assert_allclose(out[-2:], [1.0, 0.0])  # recent_slope


def test_recent_needs_its_stats_and_fits_the_window() -> None:
    with pytest.raises(ValueError, match=r"recent_\* stats need recent"):
        manifest(length=6, kind="summary", stats=("recent_mean",))
    with pytest.raises(ValueError, match=r"recent_\* stats need recent"):
        manifest(length=6, kind="summary", stats=("mean",), recent=3)
    with pytest.raises(ValueError, match=r"features\.recent 8 is longer than the window"):
        manifest(length=6, kind="summary", stats=("recent_mean",), recent=8)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, (3, 5, 2), elements=st.floats(-1e3, 1e3)))
def test_batched_equals_one_by_one(x: np.ndarray) -> None:
    m = manifest(length=5, kind="summary", stats=("mean", "std", "slope"))
    batched = window_to_input(x, m)
    singles = np.stack([window_to_input(w, m) for w in x])
    np.testing.assert_allclose(batched, singles, rtol=1e-6, atol=1e-5)


def _numpy_summary(z: np.ndarray, stats: tuple[str, ...], recent: int | None) -> np.ndarray:
    # the statistics as numpy's own functions give them (what the bundles were trained on)
    parts = []
    for stat in stats:
        name, rows = (stat[len("recent_"):], z[..., -recent:, :]) if stat.startswith("recent_") else (stat, z)
        t = np.arange(rows.shape[-2], dtype=np.float64) - (rows.shape[-2] - 1) / 2.0
        parts.append({
            "mean": lambda r: r.mean(axis=-2), "std": lambda r: r.std(axis=-2),
            "min": lambda r: r.min(axis=-2), "max": lambda r: r.max(axis=-2), "last": lambda r: r[..., -1, :],
            "slope": lambda r, t=t: np.einsum("t,...tr->...r", t, r) / float(np.sum(t * t)),
        }[name](rows))
    return np.concatenate(parts, axis=-1).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, (2, 6, 2), elements=st.floats(-1e3, 1e3)))
def test_feature_function_is_bit_for_bit_the_numpy_statistics(x: np.ndarray) -> None:
    # the scorer's prepared feature function computes mean and std from one sum: it must
    # still give exactly what np.mean / np.std give, which the shipped bundles were trained on
    stats = ("mean", "std", "min", "max", "last", "slope", "recent_mean", "recent_std", "recent_slope")
    m = manifest(length=6, kind="summary", stats=stats, recent=3)
    z = (x - np.array([2.0, 0.0])) / np.array([0.5, 20.0])
    expected = _numpy_summary(z, stats, 3)
    assert np.array_equal(FeatureFunction(m)(x), expected)
    assert np.array_equal(window_to_input(x, m), expected)
    assert np.array_equal(window_to_input(x[0], m), expected[0])


def test_window_to_input_refuses_nan_and_wrong_shape() -> None:
    m = manifest()
    x = np.ones((4, 2))
    x[1, 1] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        window_to_input(x, m)
    with pytest.raises(ValueError, match=r"does not fit 2 roles"):
        window_to_input(np.ones((4, 3)), m)


def test_sliding_windows_match_the_agent_framing() -> None:
    m = manifest(length=4, stride=3)
    w = FeatureWindows(m, binding(assets=("p1",)))
    series = np.stack([np.linspace(1.0, 5.0, 20), np.linspace(2.0, 12.0, 20)], axis=1)
    frames = []
    for i, (v, c) in enumerate(series):
        f = push_tick(w, i, {"p1": row(v, c)})
        if f is not None:
            frames.append(np.asarray(f.values)[0])
    expected = sliding_windows(series, 4, 3)
    assert len(frames) == len(expected) == 6
    np.testing.assert_array_equal(np.stack(frames), expected)


# --------------------------------------------------------------------------- ring buffers


def test_frames_hold_every_ready_asset_in_order_with_stride() -> None:
    w = FeatureWindows(manifest(length=4, stride=2), binding())
    emitted = []
    for i in range(10):
        f = push_tick(w, i, {"p1": row(1.0 + i, 2.0), "p2": row(10.0 + i, 3.0)})
        if f is not None:
            emitted.append((i, f))
    assert [i for i, _ in emitted] == [3, 5, 7, 9]
    _, last = emitted[-1]
    assert last.assets == ("p1", "p2") and last.roles == ROLES
    values = np.asarray(last.values)
    assert values.shape == (2, 4, 2)
    np.testing.assert_array_equal(values[0, :, 0], [7.0, 8.0, 9.0, 10.0])  # oldest first
    np.testing.assert_array_equal(values[1, :, 0], [16.0, 17.0, 18.0, 19.0])
    assert np.asarray(last.good_mask).all()
    assert last.end_mono == 9.0 and last.end == T0
    assert w.counters.frames == 4 and w.counters.ticks == 10


def test_skip_policy_leaves_asset_out_until_bad_row_has_left() -> None:
    w = FeatureWindows(manifest(length=3), binding("skip"))
    seen: list[tuple[int, tuple[str, ...]]] = []
    for i in range(8):
        p1 = row(1.0, 1.0) if i != 4 else {"vibration": bad(), "current": good(1.0)}
        f = push_tick(w, i, {"p1": p1, "p2": row(2.0, 2.0)})
        assert f is not None or i < 2
        if f is not None:
            assert np.all(np.isfinite(np.asarray(f.values)))
            seen.append((i, f.assets))
    both = ("p1", "p2")
    assert dict(seen) == {2: both, 3: both, 4: ("p2",), 5: ("p2",), 6: ("p2",), 7: both}
    assert w.counters.not_ready == {"p1": 3, "p2": 0}
    assert w.counters.bad_values == 1 and w.counters.held_values == 0


def test_reason_names_the_bad_input() -> None:
    w = FeatureWindows(manifest(length=2), binding("skip", assets=("p1",)))
    push_tick(w, 0, {"p1": row(1.0, 1.0)})
    assert w.reason("p1") == "window not full yet (1/2)"
    push_tick(w, 1, {"p1": {"vibration": bad(reason="timeout"), "current": good(1.0)}})
    assert w.reason("p1") == "vibration: BAD (timeout)"


def test_no_frame_when_no_asset_is_ready() -> None:
    w = FeatureWindows(manifest(length=2), binding("skip", assets=("p1",)))
    push_tick(w, 0, {"p1": row(1.0, 1.0)})
    assert push_tick(w, 1, {"p1": {"vibration": bad(), "current": good(1.0)}}) is None
    assert w.counters.empty_frames == 1


def test_hold_policy_holds_last_good_for_n_cycles_then_skips() -> None:
    w = FeatureWindows(manifest(length=3), binding("hold", hold=2, assets=("p1",)))
    for i in range(3):
        assert (push_tick(w, i, {"p1": row(1.0 + i, 5.0)}) is None) == (i < 2)
    # vibration BAD for 3 ticks: held (3.0) for two of them, then the asset is skipped
    f3 = push_tick(w, 3, {"p1": {"vibration": bad(), "current": good(6.0)}})
    f4 = push_tick(w, 4, {"p1": {"vibration": bad(), "current": good(7.0)}})
    f5 = push_tick(w, 5, {"p1": {"vibration": bad(), "current": good(8.0)}})
    assert f3 is not None and f4 is not None and f5 is None
    np.testing.assert_array_equal(np.asarray(f4.values)[0], [[3.0, 5.0], [3.0, 6.0], [3.0, 7.0]])
    mask = np.asarray(f4.good_mask)[0]
    np.testing.assert_array_equal(mask, [[True, True], [False, True], [False, True]])  # held is not GOOD
    assert w.counters.held_values == 2 and w.counters.bad_values == 3
    # good again: the unheld row must leave the window (3 ticks) before the asset is back
    frames = [push_tick(w, i, {"p1": row(9.0, 9.0)}) for i in range(6, 9)]
    assert [f is not None for f in frames] == [False, False, True]
    last = frames[-1]
    assert last is not None
    assert np.all(np.isfinite(np.asarray(last.values)))


def test_hold_needs_a_good_value_to_hold() -> None:
    w = FeatureWindows(manifest(length=1), binding("hold", hold=5, assets=("p1",)))
    assert push_tick(w, 0, {"p1": {"vibration": bad(), "current": good(1.0)}}) is None


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (good(float("nan")), "not a finite number"),
        (good(float("inf")), "not a finite number"),
        (good(99.0), "outside plausible range [0, 50]"),
        (Sample("t", "text", Quality.good(), T0, 0.0), "not a finite number"),
        (Sample("t", 1.0, Quality.uncertain("sensor drift"), T0, 0.0), "UNCERTAIN (sensor drift)"),
    ],
)
def test_garbage_is_bad(sample: Sample, reason: str) -> None:
    w = FeatureWindows(manifest(length=1), binding("skip", assets=("p1",)))
    assert push_tick(w, 0, {"p1": {"vibration": sample, "current": good(1.0)}}) is None
    assert reason in w.reason("p1")


def test_missing_role_and_missing_asset_are_bad() -> None:
    w = FeatureWindows(manifest(length=1), binding("skip"))
    f = push_tick(w, 0, {"p1": {"current": good(1.0)}})  # p1 lacks vibration, p2 not pushed
    assert f is None
    assert "vibration: no sample this tick" in w.reason("p1")
    assert "no sample this tick" in w.reason("p2")


def test_stale_tag_from_the_table_is_bad() -> None:
    table = TagTable({"p1_vib": 2.0, "p1_cur": 2.0})
    table.update([good(1.0, "p1_vib", 0.0), good(1.0, "p1_cur", 0.0)])
    w = FeatureWindows(manifest(length=1), binding("skip", assets=("p1",)))
    assert w.tick(table, 1.0, T0) is not None
    table.update([good(1.0, "p1_cur", 5.0)])
    assert w.tick(table, 5.0, T0) is None
    assert "stale" in w.reason("p1")


def test_missed_ticks_are_inserted_as_bad_rows() -> None:
    w = FeatureWindows(manifest(length=3), binding("skip", assets=("p1",)))
    for i in range(3):
        push_tick(w, i, {"p1": row(1.0, 1.0)})
    w.push("p1", row(1.0, 1.0), 5.0)  # ticks 3 and 4 never happened
    assert w.frame(T0) is None
    assert w.counters.missed_ticks == 2 and w.counters.ticks == 6
    assert "no sample this tick" in w.reason("p1")


def test_unknown_asset_and_role_are_refused() -> None:
    w = FeatureWindows(manifest(), binding())
    with pytest.raises(ValueError, match="asset 'p9' is not bound"):
        w.push("p9", row(1.0, 1.0), 0.0)
    with pytest.raises(ValueError, match=r"unknown roles \['speed'\]"):
        w.push("p1", {"speed": good(1.0)}, 0.0)
    with pytest.raises(ValueError, match="pass now_mono"):
        w.frame()


def test_snapshot_and_restore_carry_the_window_and_add_missed_rows() -> None:
    w = FeatureWindows(manifest(length=4), binding("hold", hold=1, assets=("p1",)))
    for i in range(3):
        push_tick(w, i, {"p1": row(1.0 + i, 2.0)})
    saved = json.loads(json.dumps(w.snapshot()))  # what goes to the file
    again = FeatureWindows(manifest(length=4), binding("hold", hold=1, assets=("p1",)))
    again.restore(saved, missed=1)  # one tick nobody ran: held (hold 1)
    assert again.counters.ticks == 4 and again.counters.missed_ticks == 1
    frame = push_tick(again, 10, {"p1": row(9.0, 2.0)})  # no gap counted across the restart
    assert frame is not None and again.counters.ticks == 5
    np.testing.assert_array_equal(frame.values[0, :, 0], [2.0, 3.0, 3.0, 9.0])
    np.testing.assert_array_equal(frame.good_mask[0, :, 0], [True, True, False, True])


def test_restore_refuses_a_window_that_does_not_fit_and_changes_nothing() -> None:
    w = FeatureWindows(manifest(length=4), binding("skip", assets=("p1",)))
    push_tick(w, 0, {"p1": row(1.0, 2.0)})
    saved = w.snapshot()
    other = FeatureWindows(manifest(length=4), binding("skip", assets=("p2",)))
    with pytest.raises(ValueError, match="saved window does not fit model m v1"):
        other.restore(saved, missed=0)
    short = FeatureWindows(manifest(length=2), binding("skip", assets=("p1",)))
    for i in range(3):
        push_tick(w, i + 1, {"p1": row(1.0, 2.0)})
    with pytest.raises(ValueError, match="4 rows for a window of 2"):
        short.restore(w.snapshot(), missed=0)
    assert short.counters.ticks == 0 and short.reason("p1") == "window not full yet (0/2)"
