"""The PCA baseline on noisy data: components by parallel analysis, lags of a dynamic PCA, and a
bundle refused when it misses its own check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.pca_baseline import check_passes, choose_lags, fit_pca, main, parallel_analysis


def low_rank(n: int, seed: int, *, rank: int = 3, columns: int = 50, noise: float = 1.0) -> np.ndarray:
    """``rank`` latent factors seen by ``columns`` sensors, each with its own noise."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(rank, columns))
    return rng.normal(size=(n, rank)) @ loadings + rng.normal(scale=noise, size=(n, columns))


def test_parallel_analysis_keeps_the_true_rank_where_a_variance_fraction_keeps_noise() -> None:
    x = low_rank(3000, seed=0)
    assert parallel_analysis(x) == 3
    assert fit_pca(x).n_components == 3  # the default criterion
    assert fit_pca(x, variance=0.95).n_components > 30  # what the old default did: most of the noise
    assert fit_pca(low_rank(3000, seed=1, rank=1, columns=8)).n_components == 1
    pure_noise = np.random.default_rng(2).normal(size=(3000, 20))
    assert fit_pca(pure_noise).n_components == 1  # at least one; nothing real to keep


def test_dynamic_pca_lags_follow_the_process_dynamics() -> None:
    """y follows x one and two samples late: the lagged model needs at least one lag; white
    noise needs none beyond the minimum of one. (Ku's relation count with parallel analysis
    counts an independent sensor as a relation too, so the exact lag is not guaranteed.)"""
    rng = np.random.default_rng(0)
    n = 6000
    x = np.zeros(n)
    for t in range(1, n):
        x[t] = 0.9 * x[t - 1] + rng.normal()
    y = np.zeros(n)
    y[2:] = 0.7 * x[1:-1] + 0.7 * x[:-2]
    y += rng.normal(scale=0.05, size=n)
    z = rng.normal(size=n)  # an unrelated third sensor
    s = np.stack([x, y, z], axis=1)
    s = (s - s.mean(0)) / s.std(0)
    windows = np.lib.stride_tricks.sliding_window_view(s, 6, axis=0).transpose(0, 2, 1)[::3]
    assert 1 <= choose_lags(windows, max_lags=5) <= 3
    white = np.random.default_rng(1).normal(size=(2000, 6, 3))
    assert choose_lags(white, max_lags=5) == 1  # nothing to find: the smallest dynamic model


def test_check_limit() -> None:
    assert check_passes(0.01, 10_000, 0.01)[0] and check_passes(0.019, 10_000, 0.01)[0]
    assert not check_passes(0.0715, 10_000, 0.01)[0]  # the 7.15 % against a 1 % target


def write_csv(path: Path, n: int, seed: int, *, noise: float) -> None:
    rng = np.random.default_rng(seed)
    speed = np.full(n, 1450.0)  # a stationary operating point: both files see the same range
    for i in range(1, n):
        speed[i] = 1450 + 0.98 * (speed[i - 1] - 1450) + rng.normal(scale=4.0)
    cols = {
        "flow": 0.05 * speed + rng.normal(scale=0.5 * noise, size=n),
        "current": 0.02 * speed + rng.normal(scale=0.3 * noise, size=n),
        "vibration": 2.0 + rng.normal(scale=0.2 * noise, size=n),
    }
    lines = ["timestamp," + ",".join(cols)]
    lines += [f"{1_700_000_000 + i}," + ",".join(f"{c[i]:.5f}" for c in cols.values()) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(("noise", "code"), [(1.0, 0), (3.0, 1)])
def test_the_pca_tool_refuses_a_bundle_that_misses_its_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], noise: float, code: int
) -> None:
    write_csv(tmp_path / "fit.csv", 6000, 1, noise=1.0)
    write_csv(tmp_path / "fresh.csv", 3000, 2, noise=noise)
    out = tmp_path / "pca"
    argv = [
        "--csv", str(tmp_path / "fit.csv"), "--check", str(tmp_path / "fresh.csv"), "--out", str(out),
        "--name", "pca-x", "--role", "flow:m3/h:0:200:flow", "--role", "current:A:0:100:current",
        "--role", "vibration:mm/s:0:50:vibration", "--window", "30", "--stride", "10",
        "--false-alarm-rate", "0.01",
    ]  # fmt: skip
    assert main(argv) == code
    captured = capsys.readouterr()
    if code == 0:
        assert (out / "manifest.json").exists() and "components" in captured.out
        return
    assert not (out / "manifest.json").exists() and not (out / "model.onnx").exists()
    assert "above the limit" in captured.err and "no bundle written" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    report = (tmp_path / "pca.refused" / "report.md").read_text()
    assert "exceedance_rate" in report
