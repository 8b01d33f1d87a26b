"""Isolation Forest, LOF and kNN distance: ONNX equals the numpy reference; IF is fast."""

from __future__ import annotations

import numpy as np
import pytest

from export.baselines import IsolationForest, KnnDistance, LocalOutlierFactor, c_factor
from export.onnx_tools import latency_us, run_onnx
from export.train import auc


def data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(0).normal(size=(4, 28))
    fit = rng.normal(size=(3000, 4)) @ mix + 0.3 * rng.normal(size=(3000, 28))
    normal = rng.normal(size=(400, 4)) @ mix + 0.3 * rng.normal(size=(400, 28))
    odd = normal[:100] + rng.normal(scale=2.0, size=(100, 28))
    return fit, normal.astype(np.float32), odd.astype(np.float32)


@pytest.mark.parametrize("cls", [IsolationForest, LocalOutlierFactor, KnnDistance])
def test_onnx_matches_numpy_and_separates_outliers(cls: type) -> None:
    fit, normal, odd = data(1)
    det = cls.fit(fit, seed=0)
    x = np.concatenate([normal, odd])
    ref = det.score(x)
    (got,) = run_onnx(det.to_onnx(), x)
    assert got.shape == (500,)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
    assert auc(ref, np.r_[np.zeros(400), np.ones(100)]) > 0.9  # IF is the weakest on broken correlations


def test_isolation_forest_is_one_tree_ensemble_and_fast() -> None:
    import onnx

    fit, normal, _ = data(2)
    det = IsolationForest.fit(fit, n_trees=100, psi=256, seed=0)
    model = onnx.load_from_string(det.to_onnx())
    assert [n.op_type for n in model.graph.node].count("TreeEnsembleRegressor") == 1
    assert det.score(normal).min() > 0 and det.score(normal).max() < 1
    assert latency_us(det.to_onnx(), normal[:1], runs=1000) <= 50.0  # FIELD.md: skl2onnx's takes ~1.4 ms


def test_c_factor() -> None:
    assert c_factor([0, 1, 2]).tolist() == [0.0, 0.0, 1.0]
    assert c_factor([256])[0] == pytest.approx(2 * (np.log(255) + np.euler_gamma) - 2 * 255 / 256)
