"""Synthetic sensor-fault windows (export/augment.py, the chain's ``synthetic``): a frozen role
holds a value the tag really had before the window, a drift offsets one role within its bounds,
nothing else changes, and the chain refuses a role or class its data does not have. Milliseconds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from agent.modelstore.manifest import WindowSpec
from export.augment import drifted_windows, frozen_windows
from export.data import Windows
from export.pca_baseline import RoleSpec
from export.pipeline import SyntheticFaults, with_synthetic_faults


def _windows(n: int = 40, length: int = 10, stride: int = 5) -> Windows:
    """Two roles of one recording and asset: role 0 a ramp (row index), role 1 noise; the
    windows of a stride over it, the last 10 labelled 3 (a fault), the rest normal."""
    rng = np.random.default_rng(1)
    rows = np.arange(n * stride + length, dtype=np.float64)
    series = np.stack([rows, rng.normal(size=len(rows))], axis=1)
    x = np.stack([series[i * stride : i * stride + length] for i in range(n)]).astype(np.float32)
    label = np.where(np.arange(n) >= n - 10, 3, 0)
    return Windows(
        x,
        label,
        np.zeros(n),
        np.zeros(n),
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
        (length - 1 + stride * np.arange(n)).astype(np.int64),
    )


def test_a_frozen_role_holds_an_earlier_value_of_its_own_tag() -> None:
    w = _windows()
    out = frozen_windows(w, [0], 6, 50, max_age_s=60.0, period_s=1.0, seed=3)
    assert len(out) == 50 and np.all(out.label == 6)
    assert np.all(np.ptp(out.x[:, :, 0], axis=1) == 0)  # frozen: zero spread over the window
    start = out.end - 9  # the window's first row (the ramp's value there)
    held = out.x[:, 0, 0]
    # a value the ramp had at most max_age_s (60 rows) before the window's end, never after it
    assert np.all(held <= out.end) and np.all(held >= out.end - 60 - 9)
    assert np.any(held < start)  # some freezes began before the window
    # the other role and the targets are the source window's, untouched; only normal sources
    src = np.searchsorted(w.end, out.end)
    assert np.all(w.label[src] == 0)
    np.testing.assert_array_equal(out.x[:, :, 1], w.x[src, :, 1])
    assert np.all(w.x[:, :, 0] == np.arange(10) + (w.end[:, None] - 9))  # the source is unchanged


def test_a_drift_offsets_one_role_within_its_bounds() -> None:
    w = _windows()
    out = drifted_windows(w, [0, 1], 7, 400, max_offset=[10.0, 0.5], min_share=0.25, seed=0)
    src = np.searchsorted(w.end, out.end)
    diff = out.x - w.x[src]
    moved = np.abs(diff).max(axis=1) > 0  # [n, roles]: which role each copy offset
    assert np.all(moved.sum(axis=1) == 1) and moved[:, 0].any() and moved[:, 1].any()
    off = diff[np.arange(len(out)), 0, moved.argmax(axis=1)]
    np.testing.assert_allclose(diff[np.arange(len(out)), :, moved.argmax(axis=1)], off[:, None] * np.ones(10), atol=1e-5)
    bound = np.where(moved[:, 0], 10.0, 0.5)
    assert np.all(np.abs(off) <= bound + 1e-5) and np.all(np.abs(off) >= 0.25 * bound - 1e-5)
    assert (off > 0).any() and (off < 0).any() and np.all(out.label == 7)
    with pytest.raises(ValueError, match="one max_offset per role"):
        drifted_windows(w, [0, 1], 7, 5, max_offset=[1.0])


def test_the_chain_appends_them_by_class_name_and_refuses_unknown_ones() -> None:
    w = _windows()
    roles = (RoleSpec("level", "m", 0.0, 500.0, "L"), RoleSpec("noise", "", -5.0, 5.0, "N"))
    ds = SimpleNamespace(
        train=w,
        labels={0: "normal", 3: "leak", 6: "stuck"},
        spec=SimpleNamespace(roles=roles, window=WindowSpec(sample_period_s=1.0, length=10, stride=5)),
    )
    sf = SyntheticFaults(roles=["level"], stuck="stuck", stuck_windows=7, drift="leak", drift_windows=5)
    out = with_synthetic_faults(sf, ds, seed=0, what="model m")  # type: ignore[arg-type]
    assert len(out) == len(w) + 12
    assert list(np.bincount(out.label[len(w) :], minlength=7)[[3, 6]]) == [5, 7]
    drift = out.x[len(w) :][out.label[len(w) :] == 3]
    src = w.x[np.searchsorted(w.end, out.end[len(w) :][out.label[len(w) :] == 3])]
    off = np.abs(drift - src)[:, 0, 0]  # the level role, offset by at most 8 % of 0-500
    assert np.all(off <= 40.0 + 1e-3) and np.all(off >= 0.25 * 40.0 - 1e-3)
    with pytest.raises(ValueError, match=r"model m: synthetic.roles \['flow'\] are not inputs"):
        with_synthetic_faults(SyntheticFaults(roles=["flow"]), ds, seed=0, what="model m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"model m: synthetic\.drift .drift. is not a class of the data"):
        with_synthetic_faults(
            SyntheticFaults(roles=["level"], drift="drift", drift_windows=3), ds, seed=0, what="model m"  # type: ignore[arg-type]
        )


def test_the_synthetic_config_names_classes_and_roles_of_its_data() -> None:
    from pathlib import Path

    from export.dataconfig import data_spec
    from export.pipeline import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "export-teachers-synthetic.yaml")
    (m,) = cfg.models
    assert m.synthetic is not None and not str(m.out).startswith("models")  # never over the shipped bundle
    roles = {r.role for r in data_spec(m.data).roles}
    assert set(m.synthetic.roles) <= roles and len(m.synthetic.roles) == 5
    classes = set(m.data.classes.values())
    assert {m.synthetic.stuck, m.synthetic.drift} <= classes
    assert m.synthetic.stuck_windows > 0 and m.synthetic.drift_windows > 0
    # the test seeds are never trained on, in either form
    train = {s for st in cfg.recordings.sets if st.split != "test" for s in st.seeds}
    assert not train & {s for st in cfg.recordings.sets if st.split == "test" for s in st.seeds}
