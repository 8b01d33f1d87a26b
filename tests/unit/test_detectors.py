"""Tests of the built-in streaming detectors: detection, false-alarm rates, batch == loop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from pydantic import ValidationError

from agent.pipeline.detectors import (
    Detector,
    EwmaConfig,
    EwmaDetector,
    IqrConfig,
    IqrDetector,
    Sigma3Config,
    Sigma3Detector,
    make_detector,
    parse_detector_config,
)

Cfg = Sigma3Config | IqrConfig | EwmaConfig

CONFIGS: list[Cfg] = [
    Sigma3Config(window=100),
    IqrConfig(window=100),
    EwmaConfig(lam=0.2, L=3.0, warmup=1000),
]
IDS = ["sigma3", "iqr", "ewma"]

# Per-value false-alarm rate on Gaussian noise with known parameters (3 sigma: 0.27 %;
# Tukey's fences at 1.5 IQR sit at ±2.698 sigma: 0.70 %; the EWMA statistic is Gaussian with
# the exact sigma_z: 0.27 %). Estimating from a finite window raises them a little: the bounds
# are loose on purpose (about 2x to 3x).
FALSE_ALARM_BOUND = {"sigma3": 0.008, "iqr": 0.02, "ewma": 0.01}


def noise(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(10.0, 2.0, n)


def warmup_of(cfg: Cfg) -> int:
    return cfg.warmup if isinstance(cfg, EwmaConfig) else cfg.window


def loop(det: Detector, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    results = [det.update(None if math.isnan(x) else float(x)) for x in xs]
    return (
        np.array([r.score for r in results]),
        np.array([r.outlier for r in results]),
        np.array([r.ready for r in results]),
    )


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_quiet_on_noise(cfg: Cfg) -> None:
    xs = noise(40_000)
    scores, outliers = make_detector(cfg).batch(xs)
    scored = np.isfinite(scores)
    assert scored.sum() == xs.size - warmup_of(cfg)
    rate = outliers[scored].mean()
    assert 0.0005 < rate < FALSE_ALARM_BOUND[cfg.kind], rate


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_flags_spike_and_step(cfg: Cfg) -> None:
    xs = noise(4_000)
    xs[1500] += 8 * 2.0  # an 8-sigma spike
    xs[3000:] += 4 * 2.0  # a 4-sigma step
    det = make_detector(cfg)
    _, outliers = det.batch(xs)
    assert outliers[1500]
    assert outliers[3000:3010].sum() >= 3
    assert outliers[1400:1500].sum() <= 2  # quiet just before


def test_ewma_catches_a_small_shift_the_window_detectors_miss() -> None:
    xs = noise(3_000, seed=3)
    xs[2000:] += 1.0 * 2.0  # a 1-sigma shift: the EWMA's reason to exist
    _, ewma = EwmaDetector(EwmaConfig(lam=0.1, L=3.0, warmup=1000)).batch(xs)
    _, sigma = Sigma3Detector(Sigma3Config(window=100)).batch(xs)
    assert ewma[2000:2100].sum() >= 20
    assert sigma[2000:2100].sum() <= 5


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_batch_equals_loop(cfg: Cfg) -> None:
    rng = np.random.default_rng(11)
    xs = noise(3_000, seed=5)
    xs[rng.integers(0, xs.size, 150)] = np.nan
    xs[rng.integers(0, xs.size, 20)] += 15.0
    xs[2000:] += 6.0
    ref_scores, ref_outliers, _ = loop(make_detector(cfg), xs)

    # one detector fed in uneven chunks (a chunk may end inside the warm-up), then by updates
    det = make_detector(cfg)
    cuts = [0, 1, 7, 350, 351, 800, 2990, xs.size]
    parts = [det.batch(xs[a:b]) for a, b in itertools.pairwise(cuts)]
    scores = np.concatenate([p[0] for p in parts])
    outliers = np.concatenate([p[1] for p in parts])
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(outliers, ref_outliers)
    # ... and leaves the state a loop would have left
    tail = noise(200, seed=9)
    np.testing.assert_allclose(
        loop(det, tail)[0], loop(_fed(cfg, xs), tail)[0], rtol=1e-9, atol=1e-12, equal_nan=True
    )


def _fed(cfg: Cfg, xs: np.ndarray) -> Detector:
    det = make_detector(cfg)
    loop(det, xs)
    return det


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_bad_input_ignored(cfg: Cfg) -> None:
    xs = noise(1_500)
    xs[700] += 20.0
    clean_scores, clean_outliers, _ = loop(make_detector(cfg), xs)
    det = make_detector(cfg)
    scores, outliers = [], []
    for i, x in enumerate(xs):
        if i % 5 == 0:  # garbage in between every few good values
            for bad in (None, math.nan, math.inf, -math.inf):
                r = det.update(bad)
                assert math.isnan(r.score) and not r.outlier
        r = det.update(float(x))
        scores.append(r.score)
        outliers.append(r.outlier)
    np.testing.assert_allclose(scores, clean_scores, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(outliers, clean_outliers)
    # in a batch, NaN and inf are BAD too
    with_bad = np.insert(xs, [3, 3, 600, 1200], [np.nan, np.inf, np.nan, -np.inf])
    b_scores, b_outliers = make_detector(cfg).batch(with_bad)
    good = np.isfinite(with_bad)
    assert np.isnan(b_scores[~good]).all() and not b_outliers[~good].any()
    np.testing.assert_allclose(b_scores[good], clean_scores, rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_warmup(cfg: Cfg) -> None:
    n = warmup_of(cfg)
    det = make_detector(cfg)
    xs = noise(n + 5)
    xs[n - 1] = 1e6  # a wild value inside the warm-up is never flagged (nothing to judge it by)
    for i, x in enumerate(xs[:n]):
        assert not det.ready
        assert det.update(None).ready is False
        r = det.update(float(x))
        assert not r.ready and math.isnan(r.score) and not r.outlier, i
    assert det.ready
    r = det.update(float(xs[n]))
    assert r.ready and math.isfinite(r.score)
    det.reset()
    assert not det.ready and not det.update(10.0).ready


def test_constant_signal_and_min_scale() -> None:
    flat = np.full(200, 5.0)
    for cfg in (Sigma3Config(window=20), IqrConfig(window=20), EwmaConfig(warmup=20)):
        det = make_detector(cfg)
        scores, outliers = det.batch(flat)
        assert (scores[np.isfinite(scores)] == 0).all() and not outliers.any()
        assert math.isinf(det.update(5.1).score)  # zero spread: any change is infinitely far
        floored = make_detector(cfg.model_copy(update={"min_scale": 0.5}))
        floored.batch(flat)
        assert floored.update(5.1).score < 1.0


def test_iqr_score_is_distance_outside_the_box_in_iqrs() -> None:
    def filled() -> IqrDetector:
        det = IqrDetector(IqrConfig(window=5, k=1.5))
        det.batch(np.array([5.0, 1.0, 4.0, 2.0, 3.0]))  # Q1 = 2, Q3 = 4, IQR = 2
        return det

    assert filled().update(3.9).score == 0.0
    r = filled().update(10.0)
    assert r.score == pytest.approx((10.0 - 4.0) / 2.0) and r.outlier
    r = filled().update(-0.5)
    assert r.score == pytest.approx((2.0 - -0.5) / 2.0) and not r.outlier  # 1.25 IQR below Q1


def test_sigma3_score_is_a_z_score() -> None:
    det = Sigma3Detector(Sigma3Config(window=4))
    det.batch(np.array([1.0, 2.0, 3.0, 4.0]))
    window = np.array([1.0, 2.0, 3.0, 4.0])
    r = det.update(10.0)
    assert r.score == pytest.approx((10.0 - window.mean()) / window.std(ddof=1))


def test_config_is_discriminated_on_kind() -> None:
    cfg = parse_detector_config({"kind": "ewma", "lam": 0.1, "L": 2.7, "warmup": 50})
    assert isinstance(cfg, EwmaConfig) and cfg.lam == 0.1
    assert isinstance(make_detector(cfg), EwmaDetector)
    assert isinstance(make_detector(parse_detector_config({"kind": "iqr"})), IqrDetector)
    assert isinstance(make_detector(parse_detector_config({"kind": "sigma3", "k": 4})), Sigma3Detector)
    with pytest.raises(ValidationError):
        parse_detector_config({"kind": "median"})
    with pytest.raises(ValidationError):
        parse_detector_config({"kind": "sigma3", "lam": 0.2})  # unknown key for this kind
    with pytest.raises(ValidationError):
        parse_detector_config({"kind": "ewma", "lam": 0.0})
    with pytest.raises(ValueError, match="1-D"):
        make_detector(cfg).batch(np.zeros((2, 2)))


# --------------------------------------------------------------------------- stuck


def test_stuck_flags_a_frozen_sensor_after_its_window_and_is_quiet_on_noise() -> None:
    from agent.pipeline.detectors import StuckConfig

    rng = np.random.default_rng(3)
    live = 5.0 + 0.01 * rng.standard_normal(500)  # a live pressure: always a little noise
    frozen = np.full(200, live[-1])  # the transmitter freezes at its last value
    det = make_detector(StuckConfig(window=30))
    _, outliers = det.batch(np.concatenate([live, frozen]))
    assert not outliers[:500].any()
    first = int(np.flatnonzero(outliers)[0])
    assert first == 500 + 29  # 30 values after the last live one equal it: window + 1 in a row
    assert outliers[first:].all()
    # a quantised signal that repeats in shorter runs than the window is not stuck
    steps = np.repeat(np.arange(100.0), 10)
    assert not make_detector(StuckConfig(window=30)).batch(steps)[1].any()
    # tolerance: a frozen value with last-digit flicker is still frozen
    flicker = 7.0 + 0.001 * (np.arange(100) % 2)
    assert make_detector(StuckConfig(window=20, tolerance=0.002)).batch(flicker)[1][-1]
    assert not make_detector(StuckConfig(window=20, tolerance=0.0)).batch(flicker)[1].any()


def test_stuck_batch_equals_loop_and_bad_input_is_ignored() -> None:
    from agent.pipeline.detectors import StuckConfig

    xs = np.concatenate([np.arange(20.0), np.full(15, 3.0), [np.nan, None], np.full(5, 3.0)]).astype(float)
    det = make_detector(StuckConfig(window=10))
    loop_out = [det.update(float(x) if np.isfinite(x) else None) for x in xs]
    b_scores, b_outliers = make_detector(StuckConfig(window=10)).batch(xs)
    assert [r.outlier for r in loop_out] == b_outliers.tolist()
    assert np.allclose([r.score for r in loop_out], b_scores, equal_nan=True)
    # the NaNs do not break the run: 15 + 5 equal good values, the last ones flagged
    assert b_outliers[-1] and not b_outliers[35] and np.isnan(b_scores[35])
