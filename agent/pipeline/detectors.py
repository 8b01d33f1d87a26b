"""Built-in streaming detectors for any tag or score, no model needed. Pure (numpy only).

Protocol (:class:`Detector`): ``update(x)`` takes one value and returns a
:class:`DetectorResult`; ``batch(xs)`` does the same for an array, vectorised, and leaves the
detector in the state the loop would have left it in. ``None`` or a non-finite value (NaN in a
batch) is BAD input: it does not touch the state, its score is NaN and it is never an outlier.

Scores are in the units of each detector's threshold, and ``outlier`` is ``score > threshold``:

* ``sigma3``: ``|x - mean| / std`` over the previous ``window`` good values (sample std); the
  threshold is ``k`` (3). Ready once the window is full.
* ``iqr``: distance outside the box ``[Q1, Q3]`` of the previous ``window`` good values, in IQRs
  (0 inside the box); the threshold is ``k`` (1.5, Tukey's fences). Ready once the window is full.
* ``ewma``: EWMA control chart. The first ``warmup`` good values estimate the in-control mean and
  sigma, which are then frozen (Phase I: the warm-up should be in control, and a small ``lam``
  needs a long one, since an error in the mean counts against the narrow EWMA limits).
  ``z_t = lam * x_t + (1 - lam) * z_{t-1}`` starts at that mean, and the score is
  ``|z_t - mean| / sigma_z(t)`` with the exact (time-varying) EWMA sigma; the threshold is
  ``L`` (3).
* ``stuck``: a frozen sensor (a value that stopped changing: a live measurement always carries
  noise). The score is 1 when this value and the previous ``window`` good values all lie within
  ``tolerance`` of each other (max − min), else 0; the threshold is 0.5. A quantised or truly
  constant signal needs a ``window`` longer than its natural runs, or another detector.

Every value is scored against the history *before* it, then added to it (outliers too, so a
lasting step is absorbed rather than flagged forever). Until a detector is ready, scores are NaN
(never 0: a NaN is BAD input for the alarm engine, which then holds rather than clears).
``min_scale`` floors the spread estimate (std, IQR or sigma) in the input's units, so a constant
or coarsely quantised signal does not turn every small change into an infinite score.

Not thread-safe; one owner per detector.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import Field, TypeAdapter

from agent.configbase import FrozenModel

__all__ = [
    "Detector",
    "DetectorConfig",
    "DetectorResult",
    "EwmaConfig",
    "EwmaDetector",
    "IqrConfig",
    "IqrDetector",
    "Sigma3Config",
    "Sigma3Detector",
    "StuckConfig",
    "StuckDetector",
    "make_detector",
    "parse_detector_config",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_CHUNK_ELEMENTS = 1 << 20  # rows per chunk x window: bounds the temporary arrays (8 MB each)
_EWMA_BLOCK = 256


# --------------------------------------------------------------------------- configuration


class Sigma3Config(FrozenModel):
    """Rolling mean ± k·sigma over the previous ``window`` good values."""

    kind: Literal["sigma3"] = "sigma3"
    window: Annotated[int, Field(ge=3, le=100_000)] = 60
    k: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 3.0
    min_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class IqrConfig(FrozenModel):
    """Box-plot fences Q1 - k·IQR, Q3 + k·IQR over the previous ``window`` good values."""

    kind: Literal["iqr"] = "iqr"
    window: Annotated[int, Field(ge=4, le=100_000)] = 60
    k: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.5
    min_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class EwmaConfig(FrozenModel):
    """EWMA control chart: weight ``lam``, limits at ``L`` EWMA sigmas, ``warmup`` values first."""

    kind: Literal["ewma"] = "ewma"
    lam: Annotated[float, Field(gt=0, le=1)] = 0.2
    L: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 3.0
    warmup: Annotated[int, Field(ge=2, le=1_000_000)] = 100
    min_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class StuckConfig(FrozenModel):
    """A frozen value: ``window`` + 1 good values in a row within ``tolerance`` of each other."""

    kind: Literal["stuck"] = "stuck"
    window: Annotated[int, Field(ge=2, le=100_000)] = 30
    tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


AnyDetectorConfig = Sigma3Config | IqrConfig | EwmaConfig | StuckConfig
DetectorConfig = Annotated[AnyDetectorConfig, Field(discriminator="kind")]
"""A detector's config section, chosen by ``kind``: ``sigma3`` | ``iqr`` | ``ewma`` | ``stuck``."""

_ADAPTER: TypeAdapter[AnyDetectorConfig] = TypeAdapter(DetectorConfig)


def parse_detector_config(data: object) -> AnyDetectorConfig:
    """Validate a mapping (e.g. from YAML) into the config model its ``kind`` names."""
    return _ADAPTER.validate_python(data)


# --------------------------------------------------------------------------- protocol


@dataclass(frozen=True, slots=True)
class DetectorResult:
    """One update's outcome.

    ``ready`` is True when the detector was past its warm-up for this value (its score means
    something); ``score`` is NaN when not ready or when the input was BAD.
    """

    score: float
    outlier: bool
    ready: bool


class Detector(Protocol):
    """A streaming detector on one signal (see the module docstring)."""

    @property
    def ready(self) -> bool:
        """Past the warm-up: the next good value will be scored."""
        ...

    def update(self, x: float | None) -> DetectorResult:
        """Score one value, then learn from it (``None`` or non-finite: BAD, state untouched)."""
        ...

    def batch(self, xs: npt.ArrayLike) -> tuple[FloatArray, BoolArray]:
        """``(scores, outliers)`` for every value, exactly as a loop of :meth:`update` would."""
        ...

    def reset(self) -> None:
        """Forget everything (back to warm-up)."""
        ...


def make_detector(cfg: AnyDetectorConfig) -> Detector:
    """The detector a config section describes."""
    if isinstance(cfg, Sigma3Config):
        return Sigma3Detector(cfg)
    if isinstance(cfg, IqrConfig):
        return IqrDetector(cfg)
    if isinstance(cfg, StuckConfig):
        return StuckDetector(cfg)
    return EwmaDetector(cfg)


def _as_array(xs: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(xs, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"batch takes a 1-D array, got shape {arr.shape}")
    return arr


def _scaled(dev: FloatArray, scale: FloatArray) -> FloatArray:
    """``dev / scale`` with 0/0 = 0 and x/0 = inf (dev and scale are non-negative)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = dev / scale
    out[(dev == 0) & (scale == 0)] = 0.0
    return out


def _result(score: float, threshold: float) -> DetectorResult:
    return DetectorResult(score, score > threshold, True)


_NOT_READY = DetectorResult(math.nan, False, False)


# --------------------------------------------------------------------------- windowed detectors


class _WindowDetector:
    """Shared machinery of the rolling-window detectors: the last ``window`` good values."""

    def __init__(self, window: int, threshold: float, min_scale: float) -> None:
        self._window = window
        self._threshold = threshold
        self._min_scale = min_scale
        self._buf: FloatArray = np.empty(0, dtype=np.float64)

    @property
    def ready(self) -> bool:
        """The window is full: the next good value will be scored."""
        return self._buf.size >= self._window

    def reset(self) -> None:
        """Forget the window (back to warm-up)."""
        self._buf = np.empty(0, dtype=np.float64)

    def _score_windows(self, windows: FloatArray, targets: FloatArray) -> FloatArray:
        raise NotImplementedError

    def update(self, x: float | None) -> DetectorResult:
        """Score ``x`` against the window, then add it (``None`` / non-finite: BAD, ignored)."""
        if x is None or not math.isfinite(x):
            return DetectorResult(math.nan, False, self.ready)
        ready = self.ready
        if ready:
            score = float(self._score_windows(self._buf[None, :], np.array([x], dtype=np.float64))[0])
            result = _result(score, self._threshold)
        else:
            result = _NOT_READY
        self._buf = np.append(self._buf, x)[-self._window :]
        return result

    def batch(self, xs: npt.ArrayLike) -> tuple[FloatArray, BoolArray]:
        """``(scores, outliers)`` as a loop of :meth:`update` would give (NaN = BAD), vectorised."""
        arr = _as_array(xs)
        scores = np.full(arr.shape, np.nan)
        good = np.isfinite(arr)
        seq = np.concatenate([self._buf, arr[good]])
        n, w = seq.size, self._window
        if n > w:
            good_scores = np.empty(n - w)
            windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], w)
            step = max(1, _CHUNK_ELEMENTS // w)
            for lo in range(0, n - w, step):
                hi = min(lo + step, n - w)
                good_scores[lo:hi] = self._score_windows(windows[lo:hi], seq[w + lo : w + hi])
            # the first good values of this batch may still fall into the warm-up (not scored)
            first_scored = max(0, w - self._buf.size)
            scores[np.flatnonzero(good)[first_scored:]] = good_scores
        self._buf = seq[-w:].copy()
        with np.errstate(invalid="ignore"):
            outliers = scores > self._threshold
        return scores, outliers


class StuckDetector(_WindowDetector):
    """A frozen sensor: 1 when the value and the previous window span no more than ``tolerance``."""

    def __init__(self, cfg: StuckConfig) -> None:
        self._win: deque[float] = deque(maxlen=cfg.window)
        super().__init__(cfg.window, 0.5, 0.0)
        self._tolerance = cfg.tolerance

    # The window is kept as Python floats: :meth:`update` runs every cycle, and on a window of
    # tens of values numpy's per-call cost was most of it. ``_buf`` (what ``batch`` and
    # ``reset`` use) reads and replaces the same window.
    @property
    def _buf(self) -> FloatArray:
        return np.array(self._win, dtype=np.float64)

    @_buf.setter
    def _buf(self, values: FloatArray) -> None:
        self._win = deque(values.tolist(), maxlen=self._window)

    @property
    def ready(self) -> bool:
        """The window is full: the next good value will be scored."""
        return len(self._win) >= self._window

    def update(self, x: float | None) -> DetectorResult:
        """As the windowed detectors' ``update`` (:meth:`_score_windows` on one window), in
        Python floats: the same IEEE max, min and difference."""
        if x is None or not math.isfinite(x):
            return DetectorResult(math.nan, False, self.ready)
        x = float(x)
        win = self._win
        if len(win) >= self._window:
            span = max(max(win), x) - min(min(win), x)
            result = _result(1.0 if span <= self._tolerance else 0.0, self._threshold)
        else:
            result = _NOT_READY
        win.append(x)
        return result

    def _score_windows(self, windows: FloatArray, targets: FloatArray) -> FloatArray:
        hi: FloatArray = np.maximum(windows.max(axis=1), targets)
        lo: FloatArray = np.minimum(windows.min(axis=1), targets)
        out: FloatArray = (hi - lo <= self._tolerance).astype(np.float64)
        return out


class Sigma3Detector(_WindowDetector):
    """Rolling 3-sigma: ``|x - mean| / std`` of the previous window, outlier above ``k``."""

    def __init__(self, cfg: Sigma3Config) -> None:
        super().__init__(cfg.window, cfg.k, cfg.min_scale)
        self.config = cfg

    def _score_windows(self, windows: FloatArray, targets: FloatArray) -> FloatArray:
        mean = windows.mean(axis=1)
        std = np.maximum(windows.std(axis=1, ddof=1), self._min_scale)
        return _scaled(np.abs(targets - mean), std)


class IqrDetector(_WindowDetector):
    """Box-plot fences: distance outside ``[Q1, Q3]`` of the previous window in IQRs, outlier above ``k``.

    Quartiles interpolate linearly between order statistics (numpy's default method).
    """

    def __init__(self, cfg: IqrConfig) -> None:
        super().__init__(cfg.window, cfg.k, cfg.min_scale)
        self.config = cfg
        w = cfg.window
        h1, h3 = (w - 1) * 0.25, (w - 1) * 0.75
        self._lo1, self._f1 = math.floor(h1), h1 - math.floor(h1)
        self._lo3, self._f3 = math.floor(h3), h3 - math.floor(h3)

    def _score_windows(self, windows: FloatArray, targets: FloatArray) -> FloatArray:
        lo1, lo3 = self._lo1, self._lo3
        scores = np.zeros(targets.shape)
        # A value at or above order statistic lo1+1 and at or below lo3 lies inside [Q1, Q3]
        # whatever the interpolation: its score is 0 and its row needs no partition.
        col = targets[:, None]
        outside = ((windows <= col).sum(axis=1) < lo1 + 2) | ((windows < col).sum(axis=1) > lo3)
        rows = np.flatnonzero(outside)
        if rows.size == 0:
            return scores
        part = np.partition(windows[rows], (lo1, lo3), axis=1)
        # after partitioning at lo1 and lo3, the next order statistics are minima of the parts above
        a1, a3 = part[:, lo1], part[:, lo3]
        b1 = part[:, lo1 + 1 : lo3 + 1].min(axis=1)
        b3 = part[:, lo3 + 1 :].min(axis=1)  # lo3 <= window - 2 for every window >= 4
        q1 = a1 + self._f1 * (b1 - a1)
        q3 = a3 + self._f3 * (b3 - a3)
        iqr = np.maximum(q3 - q1, self._min_scale)
        x = targets[rows]
        dev = np.maximum(np.maximum(q1 - x, x - q3), 0.0)
        scores[rows] = _scaled(dev, iqr)
        return scores


# --------------------------------------------------------------------------- EWMA


class EwmaDetector:
    """EWMA control chart with a warm-up that estimates the in-control mean and sigma."""

    def __init__(self, cfg: EwmaConfig) -> None:
        self.config = cfg
        self._lam = cfg.lam
        self._decay = 1.0 - cfg.lam
        self._warm: list[float] = []
        self._mean = math.nan
        self._sigma = math.nan
        self._dz = math.nan  # z - mean: centred, so a value equal to the mean leaves it exactly 0
        self._t = 0  # values monitored since the warm-up ended

    @property
    def ready(self) -> bool:
        """The warm-up is over: mean and sigma are estimated and frozen."""
        return not math.isnan(self._mean)

    def reset(self) -> None:
        """Forget everything, the estimates included (back to warm-up)."""
        self._warm.clear()
        self._mean = self._sigma = self._dz = math.nan
        self._t = 0

    def _finish_warmup(self) -> None:
        warm = np.asarray(self._warm, dtype=np.float64)
        self._mean = float(warm.mean())
        self._sigma = max(float(warm.std(ddof=1)), self.config.min_scale)
        self._dz = 0.0
        self._warm.clear()

    def _sigma_z(self, t: FloatArray) -> FloatArray:
        """The EWMA's standard deviation after ``t`` monitored values (exact, not asymptotic)."""
        lam = self._lam
        factor = lam / (2.0 - lam) * -np.expm1(2.0 * t * math.log1p(-lam)) if lam < 1 else np.ones_like(t)
        return self._sigma * np.sqrt(factor)

    def update(self, x: float | None) -> DetectorResult:
        """Warm up on ``x``, or move the EWMA and score it (``None`` / non-finite: BAD, ignored)."""
        if x is None or not math.isfinite(x):
            return DetectorResult(math.nan, False, self.ready)
        if not self.ready:
            self._warm.append(float(x))
            if len(self._warm) >= self.config.warmup:
                self._finish_warmup()
            return _NOT_READY
        self._dz = self._lam * (x - self._mean) + self._decay * self._dz
        self._t += 1
        sz = self._sigma_z(np.array([float(self._t)]))
        score = float(_scaled(np.array([abs(self._dz)]), sz)[0])
        return _result(score, self.config.L)

    def batch(self, xs: npt.ArrayLike) -> tuple[FloatArray, BoolArray]:
        """``(scores, outliers)`` as a loop of :meth:`update` would give (NaN = BAD), vectorised."""
        arr = _as_array(xs)
        scores = np.full(arr.shape, np.nan)
        idx = np.flatnonzero(np.isfinite(arr))
        if not self.ready:
            need = self.config.warmup - len(self._warm)
            self._warm.extend(arr[idx[:need]].tolist())
            idx = idx[need:]
            if len(self._warm) >= self.config.warmup:
                self._finish_warmup()
        if idx.size:
            dz = self._filter(arr[idx] - self._mean)
            t = self._t + np.arange(1, idx.size + 1, dtype=np.float64)
            scores[idx] = _scaled(np.abs(dz), self._sigma_z(t))
            self._dz = float(dz[-1])
            self._t += idx.size
        with np.errstate(invalid="ignore"):
            outliers = scores > self.config.L
        return scores, outliers

    def _filter(self, x: FloatArray) -> FloatArray:
        """``z_i = lam * x_i + (1 - lam) * z_{i-1}`` from ``self._dz``, in blocks.

        Within a block the recursion is a matrix product with a lower-triangular Toeplitz matrix
        of ``lam * (1 - lam)**(i - j)`` (every entry ≤ 1: no blow-up, unlike a closed form over
        the whole series); only the carry between blocks is a Python loop.
        """
        b, n = _EWMA_BLOCK, x.size
        blocks = -(-n // b)
        padded = np.zeros(blocks * b)
        padded[:n] = x
        i = np.arange(b)
        lag = i[:, None] - i[None, :]
        with np.errstate(under="ignore"):
            powers = self._decay ** np.maximum(lag, 0).astype(np.float64)
            m = np.where(lag >= 0, self._lam * powers, 0.0)
            carry_gain = self._decay ** (i + 1.0)
        y = padded.reshape(blocks, b) @ m.T
        z_prev = self._dz
        for k in range(blocks):
            y[k] += carry_gain * z_prev
            z_prev = float(y[k, -1])
        return y.reshape(-1)[:n]
