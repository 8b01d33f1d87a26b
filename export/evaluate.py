"""Detection delays and false-alarm rates of a score on labelled windows (test seeds).

A fault *event* is a run of one non-normal label on one asset of one recording
(:func:`export.data.events`). A detector alarms on a frame when its score exceeds the
threshold; with an on-delay of ``k`` frames (what the alarm engine does) the alarm is raised on
the k-th consecutive alarming frame. The delay of an event is the time from its first
labelled frame to that alarm; an event never alarmed within its duration counts its whole
duration (and as missed), so a detector cannot win by staying silent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from export.data import NORMAL, Windows, events

__all__ = ["detection_delays", "false_alarm_rate", "summarise_delays", "threshold_at"]


def threshold_at(normal_scores: npt.ArrayLike, far: float) -> float:
    """The ``1 - far`` empirical quantile of scores on normal windows."""
    s = np.asarray(normal_scores, np.float64)
    if not len(s):
        raise ValueError("no normal windows to calibrate a threshold on")
    return float(np.quantile(s, 1.0 - far))


def false_alarm_rate(w: Windows, alarms: npt.ArrayLike) -> float:
    a = np.asarray(alarms, bool)
    normal = w.label == NORMAL
    return float(np.mean(a[normal])) if normal.any() else math.nan


def detection_delays(
    w: Windows,
    alarms: npt.ArrayLike,
    *,
    on_delay: int,
    period_s: float,
    stride: int,
    names: Mapping[int, str] | None = None,
) -> list[dict[str, float | str | bool]]:
    """Per fault event: code, label, delay in seconds, whether it was detected."""
    a = np.asarray(alarms, bool)
    out: list[dict[str, float | str | bool]] = []
    for rec, asset, code, onset, last in events(w):
        m = (w.rec == rec) & (w.asset == asset)
        ends = w.end[m]
        flags = a[m]
        order = np.argsort(ends, kind="stable")
        ends, flags = ends[order], flags[order]
        run = 0
        detected_at: int | None = None
        for e, f in zip(ends, flags, strict=True):
            run = run + 1 if f else 0
            if e < onset:
                continue
            if e > last:
                break
            if run >= on_delay:
                detected_at = int(e)
                break
        duration = (last - onset + stride) * period_s
        delay = duration if detected_at is None else (detected_at - onset) * period_s
        out.append(
            {
                "recording": float(rec),
                "asset": float(asset),
                "code": float(code),
                "label": (names or {}).get(code, str(code)),
                "delay_s": float(delay),
                "duration_s": float(duration),
                "detected": detected_at is not None,
            }
        )
    return out


def summarise_delays(delays: list[dict[str, float | str | bool]]) -> dict[str, float]:
    if not delays:
        return {"events": 0.0, "detected": 0.0, "mean_delay_s": math.nan}
    d = np.array([float(e["delay_s"]) for e in delays])
    return {
        "events": float(len(delays)),
        "detected": float(sum(bool(e["detected"]) for e in delays)),
        "mean_delay_s": float(d.mean()),
        "median_delay_s": float(np.median(d)),
    }
