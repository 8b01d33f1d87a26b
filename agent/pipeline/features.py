"""Windows and features: the one place a window becomes a model input.

Two parts:

* :func:`window_to_input` (pure): a window of raw values ``[..., T, R]`` (engineering units,
  roles in manifest order, oldest row first) → the model input, using the manifest's
  normalisation and feature spec. export/ imports it to build training inputs, so training and
  serving cannot drift. :func:`sliding_windows` cuts a recorded series the way the agent does.
* :class:`FeatureWindows` (one per model): ring buffers per asset, aligned on the model's own
  tick (agent/inference.py schedules it), fed from TagTable samples or the period's means, with
  a quality mask and the configured bad-input policy. It emits
  a :class:`~agent.types.Frame` of raw values every ``stride`` ticks for the assets whose whole
  window is valid; the scorer turns it into the model input with :class:`FeatureFunction`
  (:func:`window_to_input` with the manifest read once).

A model never sees unknown garbage: a sample that is not GOOD, not a finite number, or outside
the manifest's plausible range is *bad*. With ``bad_input: skip`` the asset is left out of
frames until the bad row has left its window; with ``hold`` the last good value stands in for
at most ``hold_cycles`` consecutive ticks (then as ``skip``).

A role with ``aggregation: ewma`` holds, in its window rows, the exponentially weighted mean of
its (good or held) values at every tick since the model started (:func:`ewma_rows` is the
definition; its state survives a restart in :meth:`FeatureWindows.snapshot`): a history longer
than the window, such as the recent load that sets a motor's temperature.

``Frame.good_mask`` is True where the value was GOOD and fresh and False where a held value
stands in, so later stages (the Guard: "every input the model used was GOOD and fresh") can
tell the two apart. (agent/types.py's docstring counts held values as True; since an emitted
frame never holds an invalid value, that mask would always be all-True and say nothing.)

Lifecycle of a tick: :meth:`FeatureWindows.push` once per asset, then :meth:`FeatureWindows.frame`
closes the tick (or :meth:`FeatureWindows.tick` does both from a TagTable). :meth:`snapshot` and
:meth:`restore` carry the windows across a restart. Not thread-safe: call it from the event
loop only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.modelstore.binding import ModelBinding
from agent.modelstore.manifest import FeatureSpec, InputRole, Manifest
from agent.tagtable import TagTable
from agent.types import Frame, QualityCode, Sample, utcnow

__all__ = [
    "FeatureFunction",
    "FeatureWindows",
    "InputContract",
    "WindowCounters",
    "ewma_alpha",
    "ewma_rows",
    "normalise",
    "sliding_windows",
    "window_to_input",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_GOOD = QualityCode.GOOD
_REAL = (int, float)  # bool is an int
_nothing: dict[str, Sample] = {}  # a tick without samples

# A tick later than this many sample periods after the previous one means ticks were missed
# (event loop stalled, process paused): the missed rows are inserted as bad.
_GAP_FACTOR = 1.5


class InputContract(Protocol):
    """What :func:`window_to_input` needs from a manifest (a :class:`Manifest` satisfies it)."""

    @property
    def inputs(self) -> Sequence[InputRole]: ...

    @property
    def features(self) -> FeatureSpec: ...


def normalise(values: npt.ArrayLike, contract: InputContract) -> FloatArray:
    """``(x - offset) / scale`` per role along the last axis (float64)."""
    return FeatureFunction(contract).normalise(values)


def window_to_input(values: npt.ArrayLike, manifest: InputContract) -> npt.NDArray[np.float32]:
    """Turn raw windows into the model input (float32). THE feature function.

    ``values``: ``[T, R]`` or batched ``[..., T, R]``, raw engineering units, roles in manifest
    order, oldest row first. Returns ``[*features.shape(T, R)]`` (with the same leading batch
    axes). Raises ValueError when the shape does not fit the manifest or a value is not finite:
    windows with gaps must be skipped (or held) before they reach this function.
    (:class:`FeatureFunction` is the same with the manifest read once, for repeated calls.)
    """
    return FeatureFunction(manifest)(values)


class FeatureFunction:
    """:func:`window_to_input` for one contract, with what it reads from the manifest prepared
    once: the scorer calls it every frame, on windows of a few thousand values, where numpy's
    per-call overhead is most of the cost (and more on cold caches). Every statistic is computed
    as numpy's own function computes it (``mean``: the sum over the rows divided by their
    count; ``std``: the square root of the mean squared deviation from that mean), so the result
    is bit for bit what training saw (tests/unit/test_features.py holds it to the numpy
    functions)."""

    __slots__ = ("_flat", "_n_roles", "_offset", "_plan", "_recent", "_scale", "_sequence", "_slope_weights")

    def __init__(self, contract: InputContract) -> None:
        inputs = contract.inputs
        spec = contract.features
        self._n_roles = len(inputs)
        self._offset = np.array([r.normalisation.offset for r in inputs], dtype=np.float64)
        self._scale = np.array([r.normalisation.scale for r in inputs], dtype=np.float64)
        self._sequence = spec.kind == "sequence"
        self._flat = spec.kind == "flatten"
        self._recent = spec.recent
        # per stat: its name and whether it covers the recent rows only
        self._plan = tuple(
            (stat[len("recent_") :], True) if stat.startswith("recent_") else (stat, False)
            for stat in spec.stats
        )
        self._slope_weights: dict[int, tuple[FloatArray, float]] = {}  # rows → weights, sum of squares

    def normalise(self, values: npt.ArrayLike) -> FloatArray:
        """``(x - offset) / scale`` per role along the last axis (float64)."""
        x = np.asarray(values, dtype=np.float64)
        out: FloatArray = (x - self._offset) / self._scale
        return out

    def __call__(self, values: npt.ArrayLike) -> npt.NDArray[np.float32]:
        x = np.asarray(values, dtype=np.float64)
        n_roles = self._n_roles
        if x.ndim < 2 or x.shape[-1] != n_roles:
            raise ValueError(
                f"window shape {list(x.shape)} does not fit {n_roles} roles: expected [..., T, {n_roles}]"
            )
        if not np.isfinite(x).all():
            raise ValueError("window contains values that are not finite (NaN/inf): skip or hold them first")
        z = self.normalise(x)
        batch = z.shape[:-2]
        if self._sequence:
            return z.astype(np.float32)
        if self._flat:
            return z.reshape(*batch, z.shape[-2] * n_roles).astype(np.float32)
        out = np.empty((*batch, len(self._plan) * n_roles), dtype=np.float32)
        sums: dict[bool, FloatArray] = {}  # per row set: the sum over its rows (mean and std)
        for k, (name, recent) in enumerate(self._plan):
            rows = z[..., -self._recent :, :] if recent and self._recent is not None else z
            out[..., k * n_roles : (k + 1) * n_roles] = self._stat(name, rows, recent, sums)
        return out

    def _stat(self, name: str, z: FloatArray, key: bool, sums: dict[bool, FloatArray]) -> FloatArray:
        # One summary statistic per role over the rows of z ([..., T, R] → [..., R]).
        out: FloatArray
        t = z.shape[-2]
        if name in ("mean", "std"):
            total = sums.get(key)
            if total is None:
                total = sums[key] = np.add.reduce(z, axis=-2)
            if name == "mean":
                out = total / t  # np.mean
            else:  # np.std (ddof 0): the same operations in the same order
                dev = z - total[..., None, :] / t
                np.multiply(dev, dev, out=dev)
                out = np.sqrt(np.add.reduce(dev, axis=-2) / t)
        elif name == "min":
            out = np.minimum.reduce(z, axis=-2)
        elif name == "max":
            out = np.maximum.reduce(z, axis=-2)
        elif name == "last":
            out = z[..., -1, :]
        else:
            out = self._slope(z)
        return out

    def _slope(self, z: FloatArray) -> FloatArray:
        # Least-squares slope per role over the window, in normalised units per tick.
        t = z.shape[-2]
        if t < 2:
            return np.zeros(z.shape[:-2] + z.shape[-1:], dtype=np.float64)
        weights = self._slope_weights.get(t)
        if weights is None:
            tt = np.arange(t, dtype=np.float64) - (t - 1) / 2.0
            weights = self._slope_weights[t] = (tt, float(np.sum(tt * tt)))
        tt, denominator = weights
        out: FloatArray = np.einsum("t,...tr->...r", tt, z) / denominator
        return out


def sliding_windows(series: npt.ArrayLike, length: int, stride: int) -> FloatArray:
    """Windows ``[W, length, R]`` cut from a series ``[N, R]`` every ``stride`` rows.

    The first window ends at row ``length - 1``, the next ``stride`` rows later: the agent's
    own framing (:class:`FeatureWindows`) on a gap-free series. The result is a read-only
    view on the series (no copy: days of recordings fit in memory); slice it in chunks.
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"series must be [N, R], got shape {list(x.shape)}")
    if x.shape[0] < length:
        return np.empty((0, length, x.shape[1]), dtype=np.float64)
    view = np.lib.stride_tricks.sliding_window_view(x, length, axis=0)  # [N-L+1, R, L]
    out: FloatArray = view[::stride].transpose(0, 2, 1)
    return out


def ewma_alpha(time_constant_s: float, period_s: float) -> float:
    """The weight of the newest value in an exponentially weighted mean with this time
    constant, updated once per ``period_s``."""
    return -math.expm1(-period_s / time_constant_s)


def _ewma_roles(inputs: Sequence[InputRole], period_s: float) -> list[tuple[int, float]]:
    return [
        (i, ewma_alpha(r.time_constant_s, period_s))
        for i, r in enumerate(inputs)
        if r.aggregation == "ewma" and r.time_constant_s is not None
    ]


def _ewma_step(state: float, x: float, alpha: float) -> float:
    # the one update rule (FeatureWindows per tick, ewma_rows per series): starts at the first value
    return x if state != state else state + alpha * (x - state)


def ewma_rows(series: npt.ArrayLike, inputs: Sequence[InputRole], period_s: float) -> FloatArray:
    """A series ``[N, R]`` of tick rows (roles in ``inputs`` order, NaN where a value is not
    valid, as :func:`agent.replay.held_series` gives it) with every ``aggregation: ewma`` role's
    column replaced by what :class:`FeatureWindows` holds for it: the exponentially weighted mean
    of the role's valid values since the first row (NaN where the value is not valid; the mean
    is kept across it). Other columns are returned as they are (a copy)."""
    out = np.array(series, dtype=np.float64)
    for i, alpha in _ewma_roles(inputs, period_s):
        col = out[:, i].tolist()
        state = math.nan
        for k, x in enumerate(col):
            if x == x:
                state = _ewma_step(state, x, alpha)
                col[k] = state
        out[:, i] = col
    return out


@dataclass(slots=True)
class WindowCounters:
    """What :class:`FeatureWindows` did, for metrics and status."""

    ticks: int = 0
    frames: int = 0
    empty_frames: int = 0  # stride ticks where no asset had a valid window
    missed_ticks: int = 0
    bad_values: int = 0
    held_values: int = 0
    not_ready: dict[str, int] = field(default_factory=dict)  # asset → stride ticks left out


class _Ring:
    """One asset's window: values, validity (good or held) and goodness per row and role."""

    __slots__ = (
        "bad_run", "ewma", "filled", "good", "last_good", "pending", "pos", "reason", "valid", "values",
    )  # fmt: skip

    def __init__(self, length: int, n_roles: int, n_ewma: int = 0) -> None:
        self.values: FloatArray = np.full((length, n_roles), np.nan)
        self.valid: BoolArray = np.zeros((length, n_roles), dtype=np.bool_)
        self.good: BoolArray = np.zeros((length, n_roles), dtype=np.bool_)
        self.pos = 0
        self.filled = 0
        self.last_good: list[float] = [math.nan] * n_roles
        self.bad_run: list[int] = [0] * n_roles
        self.ewma: list[float] = [math.nan] * n_ewma  # state of every ewma role (FeatureWindows._ewma)
        self.pending: Mapping[str, Sample] | None = None
        self.reason = "window not full yet"

    def append(
        self, values: FloatArray | list[float], valid: BoolArray | list[bool], good: BoolArray | list[bool]
    ) -> None:
        self.values[self.pos] = values
        self.valid[self.pos] = valid
        self.good[self.pos] = good
        self.pos = (self.pos + 1) % self.values.shape[0]
        self.filled = min(self.filled + 1, self.values.shape[0])

    def ordered(self, a: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """A copy of ``a`` (one of this ring's arrays), oldest row first."""
        out = np.empty_like(a)
        self.copy_ordered(a, out)
        return out

    def copy_ordered(self, a: npt.NDArray[np.generic], out: npt.NDArray[np.generic]) -> None:
        """Write ``a`` into ``out``, oldest row first (two slice copies: ``np.roll`` costs
        several times as much on a window this small, and a frame takes two per asset)."""
        n = a.shape[0] - self.pos
        out[:n] = a[self.pos :]
        out[n:] = a[: self.pos]

    @property
    def ready(self) -> bool:
        return self.filled == self.values.shape[0] and bool(self.valid.all())


class FeatureWindows:
    """Ring buffers for one model: one window per bound asset, aligned on the model's tick.

    Call :meth:`push` once per asset per tick with the samples of its roles (from
    ``TagTable.get(tag, now)``, which already marks stale values BAD), then :meth:`frame` to
    close the tick. :meth:`tick` does both from a TagTable.
    """

    def __init__(self, manifest: Manifest, binding: ModelBinding) -> None:
        self.manifest = manifest
        self.binding = binding
        self.roles = manifest.roles
        self._role_set = frozenset(self.roles)
        self.assets = tuple(binding.assets)
        self.length = manifest.window.length
        self.stride = manifest.window.stride
        self.period_s = manifest.window.sample_period_s
        self.hold_limit = binding.hold_limit
        self._lo = [float(r.range[0]) for r in manifest.inputs]
        self._hi = [float(r.range[1]) for r in manifest.inputs]
        self._ewma = _ewma_roles(manifest.inputs, self.period_s)
        self._rings = {a: self._ring() for a in self.assets}
        self._tick_mono: float | None = None
        self._pending_mono: float | None = None
        self.counters = WindowCounters(not_ready=dict.fromkeys(self.assets, 0))

    def _ring(self) -> _Ring:
        return _Ring(self.length, len(self.roles), len(self._ewma))

    # ------------------------------------------------------------------ feeding

    def push(self, asset: str, samples_by_role: Mapping[str, Sample], now_mono: float) -> None:
        """Record this tick's samples for one asset (a role without a sample counts as bad).

        A second push for the same asset within one tick replaces the first.
        """
        ring = self._rings.get(asset)
        if ring is None:
            raise ValueError(
                f"model {self.manifest.ident}: asset {asset!r} is not bound (assets: {self.assets})"
            )
        if not self._role_set.issuperset(samples_by_role):
            unknown = set(samples_by_role) - self._role_set
            raise ValueError(
                f"model {self.manifest.ident}: unknown roles {sorted(unknown)} for asset {asset}"
            )
        ring.pending = samples_by_role
        self._pending_mono = now_mono if self._pending_mono is None else max(self._pending_mono, now_mono)

    def tick(self, table: TagTable, now_mono: float, now_utc: datetime | None = None) -> Frame | None:
        """Push every asset from the tag table (through the binding), then close the tick."""
        for asset, roles in self.binding.assets.items():
            self.push(asset, {role: table.get(tag, now_mono) for role, tag in roles.items()}, now_mono)
        return self.frame(now_utc, now_mono)

    def _row(
        self, ring: _Ring, samples: Mapping[str, Sample] | None
    ) -> tuple[list[float], list[bool], list[bool]]:
        # Plain Python on purpose: a row has a handful of roles, and a numpy call on arrays
        # that small costs more than the arithmetic (this runs per asset per tick).
        n = len(self.roles)
        values = [math.nan] * n
        good = [False] * n
        reasons: list[str] = []
        lo, hi = self._lo, self._hi
        get = samples.get if samples is not None else _nothing.get
        isfinite = math.isfinite
        for i, role in enumerate(self.roles):
            s = get(role)
            if s is None:
                reasons.append(f"{role}: no sample this tick")
                continue
            v = s.value  # Sample.as_float, inlined
            if type(v) is not float:
                v = float(v) if isinstance(v, _REAL) else math.nan
            if s.quality.code is not _GOOD:
                reasons.append(f"{role}: {s.quality}")
            elif not isfinite(v):
                reasons.append(f"{role}: value {s.value!r} is not a finite number")
            elif not lo[i] <= v <= hi[i]:
                reasons.append(f"{role}: {v:g} outside plausible range [{lo[i]:g}, {hi[i]:g}]")
            else:
                values[i] = v
                good[i] = True
        if not reasons:  # every role GOOD (the common case): nothing held, nothing to explain
            ring.last_good[:] = values
            ring.bad_run[:] = repeat(0, n)
            if self._ewma:
                self._smooth(ring, values, good)
            return values, good, good
        valid = good.copy()
        last_good, bad_run = ring.last_good, ring.bad_run
        bad = held = 0
        for i in range(n):
            if good[i]:
                last_good[i] = values[i]
                bad_run[i] = 0
                continue
            bad += 1
            bad_run[i] += 1
            if bad_run[i] <= self.hold_limit and math.isfinite(last_good[i]):
                values[i] = last_good[i]
                valid[i] = True
                held += 1
        self.counters.bad_values += bad
        self.counters.held_values += held
        if reasons and not all(valid):
            ring.reason = "; ".join(reasons)
        if self._ewma:
            self._smooth(ring, values, valid)
        return values, valid, good

    def _smooth(self, ring: _Ring, values: list[float], valid: list[bool]) -> None:
        # an ewma role's row: its mean so far (the raw value stays in last_good for hold)
        state = ring.ewma
        for k, (i, alpha) in enumerate(self._ewma):
            if valid[i]:
                state[k] = values[i] = _ewma_step(state[k], values[i], alpha)

    # ------------------------------------------------------------------ framing

    def frame(self, now_utc: datetime | None = None, now_mono: float | None = None) -> Frame | None:
        """Close the tick; every ``stride`` ticks, a Frame of the assets with a valid window.

        The tick's time is ``now_mono``, by default the latest ``now_mono`` pushed in it (a
        tick without any push needs it; its assets get bad rows). Returns None between strides,
        before the windows are full, and when no asset has a valid window (counted in
        ``counters.empty_frames``; per asset in ``counters.not_ready``).
        """
        if now_mono is None:
            now_mono = self._pending_mono
        if now_mono is None:
            raise ValueError("frame(): no asset was pushed in this tick; pass now_mono")
        missed = 0
        if self._tick_mono is not None:
            gap = now_mono - self._tick_mono
            if gap > _GAP_FACTOR * self.period_s:
                missed = min(round(gap / self.period_s) - 1, self.length)
        for ring in self._rings.values():
            for _ in range(missed):
                ring.append(*self._row(ring, None))
            ring.append(*self._row(ring, ring.pending))
            ring.pending = None
        self.counters.missed_ticks += missed
        self.counters.ticks += 1 + missed
        self._tick_mono = now_mono
        self._pending_mono = None
        ticks = self.counters.ticks
        if ticks < self.length or (ticks - self.length) % self.stride != 0:
            return None
        ready = [a for a in self.assets if self._rings[a].ready]
        for a in self.assets:
            if a not in ready:
                self.counters.not_ready[a] += 1
        if not ready:
            self.counters.empty_frames += 1
            return None
        values = np.empty((len(ready), self.length, len(self.roles)))
        good = np.empty((len(ready), self.length, len(self.roles)), dtype=np.bool_)
        for k, a in enumerate(ready):
            ring = self._rings[a]
            ring.copy_ordered(ring.values, values[k])
            ring.copy_ordered(ring.good, good[k])
        self.counters.frames += 1
        return Frame(
            model=self.manifest.name,
            end=now_utc if now_utc is not None else utcnow(),
            end_mono=now_mono,
            assets=tuple(ready),
            roles=self.roles,
            values=values,
            good_mask=good,
        )

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """The windows as JSON-ready data (each asset's filled rows, oldest first; NaN as None):
        what :meth:`restore` needs to go on after a restart."""

        def rows(a: npt.NDArray[np.generic], n: int) -> list[Any]:
            out: list[Any] = a[len(a) - n :].tolist() if n else []
            return out

        assets: dict[str, Any] = {}
        for name, ring in self._rings.items():
            n = ring.filled
            values = ring.ordered(ring.values)
            assets[name] = {
                "values": [[None if math.isnan(v) else v for v in row] for row in rows(values, n)],
                "valid": rows(ring.ordered(ring.valid), n),
                "good": rows(ring.ordered(ring.good), n),
                "last_good": [None if math.isnan(v) else v for v in ring.last_good],
                "bad_run": list(ring.bad_run),
                "ewma": [None if math.isnan(v) else v for v in ring.ewma],
            }
        return {"ticks": self.counters.ticks, "assets": assets}

    def restore(self, data: Mapping[str, Any], missed: int) -> None:
        """Refill the windows from :meth:`snapshot` data, then add ``missed`` bad rows (the ticks
        nobody ran, treated as any missed tick: ``hold`` may stand in for them). Call it before
        the first tick. Raises ValueError when the data does not fit these windows (nothing is
        changed then)."""
        n_roles = len(self.roles)
        rings: dict[str, _Ring] = {}
        try:
            for name in self.assets:
                saved = data["assets"][name]
                ring = self._ring()
                values = np.array(
                    [[math.nan if v is None else float(v) for v in row] for row in saved["values"]],
                    dtype=np.float64,
                ).reshape(-1, n_roles)
                valid = np.array(saved["valid"], dtype=np.bool_).reshape(-1, n_roles)
                good = np.array(saved["good"], dtype=np.bool_).reshape(-1, n_roles)
                if not len(values) == len(valid) == len(good) <= self.length:
                    raise ValueError(f"asset {name}: {len(values)} rows for a window of {self.length}")
                for i in range(len(values)):
                    ring.append(values[i], valid[i], good[i])
                last_good = [math.nan if v is None else float(v) for v in saved["last_good"]]
                bad_run = [int(v) for v in saved["bad_run"]]
                if not len(last_good) == len(bad_run) == n_roles:
                    raise ValueError(f"asset {name}: last_good and bad_run need {n_roles} roles")
                ring.last_good, ring.bad_run = last_good, bad_run
                # a snapshot from before ewma roles existed has none: the mean restarts
                saved_ewma = saved.get("ewma") or [None] * len(self._ewma)
                if len(saved_ewma) != len(self._ewma):
                    raise ValueError(f"asset {name}: ewma needs {len(self._ewma)} values")
                ring.ewma = [math.nan if v is None else float(v) for v in saved_ewma]
                rings[name] = ring
            ticks = int(data["ticks"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"saved window does not fit model {self.manifest.ident}: {exc}") from None
        for ring in rings.values():
            for _ in range(min(missed, self.length)):
                ring.append(*self._row(ring, None))
        self._rings = rings
        self.counters.missed_ticks += missed
        self.counters.ticks = ticks + missed
        self._tick_mono = None

    def reason(self, asset: str) -> str:
        """Why the asset was last left out of a frame (for status pages)."""
        ring = self._rings[asset]
        if ring.ready:
            return ""
        if ring.filled < self.length:
            return f"window not full yet ({ring.filled}/{self.length})"
        return ring.reason
