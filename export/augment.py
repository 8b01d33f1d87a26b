"""Synthetic fault windows for the teachers chain: a frozen sensor on every tag it can hit.

A labelled day holds one frozen-sensor episode on one tag, so which tags a classifier learns
to call frozen depends on which tags the chosen days happened to freeze (one day with a frozen
discharge pressure among 21, none with a frozen motor current among 19). What a frozen sensor
is does not depend on the tag: the reading holds the value it had at the freeze's onset while
the process goes on. :func:`frozen_windows` makes such windows from labelled training windows
of normal operation: one role of each held, for the whole window, at the value that role had
``age`` seconds before the window's end (a freeze that began up to ``max_age_s`` earlier; the
value is read from the training windows of the same recording and asset, so it is a value the
tag really had), labelled with the frozen-sensor class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from export.data import NORMAL, Windows

__all__ = ["drifted_windows", "frozen_windows"]


def frozen_windows(
    w: Windows,
    roles: Sequence[int],
    code: int,
    n: int,
    *,
    max_age_s: float,
    period_s: float,
    seed: int = 0,
) -> Windows:
    """``n`` windows of normal operation from ``w`` with one of ``roles`` (indexes) frozen.

    Each copy holds one role (drawn uniformly from ``roles``) at the value it had at a random
    age in ``[0, max_age_s]`` before the window's end, taken from the first row of the latest
    window of the same recording and asset that starts at or before that moment (the window's
    own first row when none does); its label is ``code``. Empty when ``w`` holds no normal
    window or ``n`` is 0.
    """
    if not roles or n < 0:
        raise ValueError("frozen_windows needs at least one role and n >= 0")
    drawn = _normal_copies(w, n, seed)
    if drawn is None:
        return w.take(np.zeros(len(w), bool))
    rng, pick, out = drawn
    x = out.x.copy()
    role = np.asarray(roles, np.int64)[rng.integers(0, len(roles), n)]
    length = w.x.shape[1]
    onset = out.end - np.round(rng.uniform(0.0, max_age_s, n) / period_s).astype(np.int64)
    for k in range(n):
        src = _source(w, int(pick[k]), int(onset[k]), length)
        x[k, :, role[k]] = w.x[src, 0, role[k]]
    return Windows(
        x,
        np.full(n, code, np.int64),
        out.rul,
        out.oracle,
        out.rec,
        out.asset,
        out.end,
    )


def _normal_copies(
    w: Windows, n: int, seed: int
) -> tuple[np.random.Generator, npt.NDArray[np.int64], Windows] | None:
    """``n`` windows of normal operation drawn from ``w`` (with replacement when it has fewer):
    the generator that drew them (its later draws depend on these), their indexes, the windows.
    None when ``w`` holds no normal window or ``n`` is 0."""
    normal = np.flatnonzero(w.label == NORMAL)
    if not len(normal) or n == 0:
        return None
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(normal, size=n, replace=n > len(normal)))
    return rng, pick, w.take(pick)


def _source(w: Windows, i: int, row: int, length: int) -> int:
    """The window of ``w`` of the same recording and asset as window ``i`` whose first row is
    the latest at or before ``row``; ``i`` itself when no earlier one starts by then."""
    same = np.flatnonzero((w.rec == w.rec[i]) & (w.asset == w.asset[i]) & (w.end - (length - 1) <= row))
    if not len(same):
        return i
    best: npt.NDArray[np.int64] = same[np.argmax(w.end[same])]
    return int(best)


def drifted_windows(
    w: Windows,
    roles: Sequence[int],
    code: int,
    n: int,
    *,
    max_offset: Sequence[float],
    min_share: float = 0.02,
    seed: int = 0,
) -> Windows:
    """``n`` windows of normal operation from ``w`` with one of ``roles`` (indexes) offset.

    A drifting sensor reads the process plus an offset that grows slowly (over an hour, not a
    minute): within one window a constant. Each copy adds to one role (drawn uniformly from
    ``roles``) an offset of random sign and a size uniform in ``[min_share, 1]`` times that role's
    ``max_offset`` (engineering units, one per entry of ``roles``); its label is ``code``.
    """
    if not roles or len(max_offset) != len(roles) or n < 0:
        raise ValueError("drifted_windows needs roles, one max_offset per role and n >= 0")
    drawn = _normal_copies(w, n, seed)
    if drawn is None:
        return w.take(np.zeros(len(w), bool))
    rng, _, out = drawn
    x = out.x.copy()
    k = rng.integers(0, len(roles), n)
    role = np.asarray(roles, np.int64)[k]
    size = np.asarray(max_offset, np.float64)[k] * rng.uniform(min_share, 1.0, n)
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    x[np.arange(n), :, role] += (sign * size).astype(np.float32)[:, None]
    return Windows(x, np.full(n, code, np.int64), out.rul, out.oracle, out.rec, out.asset, out.end)
