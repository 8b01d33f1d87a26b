"""Export gates: each returns what it measured or raises :class:`GateError` with a clear message.

=====================  ======================================================================
gate                   passes when
=====================  ======================================================================
``fp32_parity``        max |torch - onnxruntime FP32| over every output <= 1e-4, absolute for
                       values up to 1 and relative above (``|d| / max(1, |torch|)``): float32
                       holds about 7 digits, so an anomaly score of 1e4 cannot agree to 1e-4
                       absolute in any two implementations
``int8_agreement``     INT8 vs FP32: top-1 agreement >= 99.5 % (classifiers) and
                       Pearson correlation of scores >= 0.999 (anomaly scores, regressors)
``distillation``       over at least three training seeds per student, the distilled students'
                       mean held-out metric beats the same-size students trained from scratch
                       by more than ``tolerance`` and by at least two standard errors of the
                       difference (Welch's t over the seeds' spread): a win is not noise.
                       (``gate_distillation`` compares one distilled and one scratch value.)
``detection``          at the same false-alert budget (thresholds of both calibrated through
                       the agent's replay, :mod:`export.evaluate`), the student detects a
                       larger share of the labelled episodes than the PCA baseline, or the
                       same share with a mean delay over *detected* episodes no longer than
                       the baseline's (a miss counts in the rate, never as a delay)
=====================  ======================================================================

A failed gate stops the export (the CLI prints the message and exits 1; no bundle is written,
but the detection gate still writes ``report.json``/``report.md`` with the numbers that failed),
except where the config says a failure only drops something: an INT8 variant that fails its
gate is left out of the bundle when ``int8: optional`` (the default), and a distilled student
that does not beat the scratch one is replaced by it when ``distillation: auto``. Either way
the report says what happened and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from agent.modelstore.selftest import agreement

__all__ = [
    "FP32_TOLERANCE",
    "INT8_CORRELATION",
    "INT8_TOP1",
    "GateError",
    "gate_detection",
    "gate_distillation",
    "gate_distillation_seeds",
    "gate_fp32_parity",
    "gate_int8_agreement",
    "seed_stats",
]

FP32_TOLERANCE = 1e-4
INT8_TOP1 = 0.995
INT8_CORRELATION = 0.999


class GateError(RuntimeError):
    """An export gate failed; ``gate`` names it, ``measured`` holds the numbers."""

    def __init__(self, gate: str, message: str, measured: dict[str, float] | None = None) -> None:
        self.gate = gate
        self.measured = measured or {}
        super().__init__(f"gate {gate} failed: {message}")


def gate_fp32_parity(
    torch_out: Sequence[npt.ArrayLike],
    onnx_out: Sequence[npt.ArrayLike],
    names: Sequence[str],
    tolerance: float = FP32_TOLERANCE,
) -> dict[str, float]:
    """Max absolute difference per output between torch and onnxruntime FP32."""
    measured: dict[str, float] = {}
    for name, a, b in zip(names, torch_out, onnx_out, strict=True):
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise GateError(
                "fp32_parity", f"output {name}: torch shape {a.shape}, onnxruntime shape {b.shape}"
            )
        measured[f"max_abs_diff_{name}"] = (
            float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))) if a.size else 0.0
        )
    worst = max(measured.values(), default=0.0)
    measured["max_abs_diff"] = worst
    if not worst <= tolerance:
        raise GateError(
            "fp32_parity",
            f"torch and onnxruntime FP32 differ by up to {worst:.3g} (limit {tolerance:g}): {measured}",
            measured,
        )
    return measured


def gate_int8_agreement(
    fp32: npt.ArrayLike,
    int8: npt.ArrayLike,
    *,
    kind: str,
    top1: float = INT8_TOP1,
    correlation: float = INT8_CORRELATION,
) -> dict[str, float]:
    """``kind`` ``top1`` (class probabilities ``[N, C]``) or ``correlation`` (scores ``[N]``)."""
    if kind == "top1":
        agree = agreement("top1", fp32, int8)
        measured = {"top1_agreement": agree}
        if not agree >= top1:
            raise GateError(
                "int8_agreement",
                f"INT8 top-1 agreement with FP32 is {agree:.2%} (needs >= {top1:.1%})",
                measured,
            )
        return measured
    if kind == "correlation":
        corr = agreement("correlation", fp32, int8)
        measured = {"score_correlation": corr}
        if not corr >= correlation:
            raise GateError(
                "int8_agreement",
                f"INT8 score correlation with FP32 is {corr:.5f} (needs >= {correlation})",
                measured,
            )
        return measured
    raise ValueError(f"unknown INT8 gate kind {kind!r}")


def gate_distillation(
    distilled: float, scratch: float, *, metric: str, tolerance: float = 0.0
) -> dict[str, float]:
    """Distilled student's held-out ``metric`` (higher is better) vs the scratch student's."""
    measured = {"distilled": distilled, "scratch": scratch, "tolerance": tolerance}
    if not distilled >= scratch - tolerance:
        raise GateError(
            "distillation",
            f"the distilled student ({metric} {distilled:.4f}) does not match the "
            f"same-size student trained from scratch ({metric} {scratch:.4f}) on held-out seeds",
            measured,
        )
    return measured


def seed_stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and count of one metric over training seeds."""
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()) if len(v) else math.nan,
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": float(len(v)),
    }


def gate_distillation_seeds(
    distilled: Sequence[float],
    scratch: Sequence[float],
    *,
    metric: str,
    tolerance: float = 0.0,
    min_seeds: int = 3,
    min_t: float = 2.0,
) -> dict[str, float]:
    """Distilled vs scratch students, each trained from ``min_seeds`` or more seeds: the
    distilled mean must beat the scratch mean by more than ``tolerance`` (higher is better)
    **and** by ``min_t`` standard errors of the difference (Welch's t: the spread over seeds of
    both), so one lucky seed is not a win. Measured: both means and spreads, the difference,
    its standard error and t."""
    d, s = seed_stats(distilled), seed_stats(scratch)
    diff = d["mean"] - s["mean"]
    se = math.sqrt(d["sd"] ** 2 / max(d["n"], 1) + s["sd"] ** 2 / max(s["n"], 1))
    t = diff / se if se > 0 else (math.inf if diff > 0 else -math.inf if diff < 0 else 0.0)
    measured = {
        "distilled_mean": d["mean"],
        "distilled_sd": d["sd"],
        "scratch_mean": s["mean"],
        "scratch_sd": s["sd"],
        "seeds": min(d["n"], s["n"]),
        "difference": diff,
        "difference_se": se,
        "t": t,
        "min_t": min_t,
        "tolerance": tolerance,
    }
    if min(len(distilled), len(scratch)) < min_seeds:
        raise GateError(
            "distillation",
            f"needs at least {min_seeds} training seeds per student, got {len(distilled)} distilled and "
            f"{len(scratch)} scratch",
            measured,
        )
    what = (
        f"distilled {metric} {d['mean']:.4f} ± {d['sd']:.4f}, from scratch {s['mean']:.4f} ± {s['sd']:.4f} "
        f"over {len(distilled)} and {len(scratch)} seeds (mean ± sd)"
    )
    if not diff > tolerance:
        raise GateError(
            "distillation", f"the distilled students do not beat the scratch ones: {what}", measured
        )
    if not t >= min_t:
        raise GateError(
            "distillation",
            f"the distilled students' win ({diff:+.4f}) is within the noise of the seeds: t = {t:.2f} "
            f"< {min_t:g}; {what}",
            measured,
        )
    return measured


def gate_detection(
    student: Mapping[str, float], baseline: Mapping[str, float], *, budget_per_day: float
) -> dict[str, float]:
    """Detection rate, then mean delay over detected episodes, of the student vs the baseline.

    ``student``/``baseline``: ``detection_rate``, ``mean_delay_detected_s`` and
    ``false_alerts_per_day`` (on test data) at false-alert budget ``budget_per_day``.
    """
    rs, rb = float(student["detection_rate"]), float(baseline["detection_rate"])
    ds, db = float(student["mean_delay_detected_s"]), float(baseline["mean_delay_detected_s"])
    measured = {
        "student_detection_rate": rs,
        "baseline_detection_rate": rb,
        "student_mean_delay_detected_s": ds,
        "baseline_mean_delay_detected_s": db,
        "student_false_alerts_per_day": float(student["false_alerts_per_day"]),
        "baseline_false_alerts_per_day": float(baseline["false_alerts_per_day"]),
        "budget_false_alerts_per_day": budget_per_day,
    }
    where = f"(both calibrated for {budget_per_day:g} false alerts per day)"
    if not math.isfinite(rs) or not rs > 0:
        raise GateError("detection", f"the student detected none of the labelled episodes {where}", measured)
    if rs < rb:
        raise GateError(
            "detection",
            f"the student detected {rs:.0%} of the labelled episodes, the PCA baseline {rb:.0%} {where}",
            measured,
        )
    if rs == rb and math.isfinite(db) and not ds <= db:
        raise GateError(
            "detection",
            f"the student and the PCA baseline both detected {rs:.0%} of the labelled episodes {where}; "
            f"the student after {ds:.0f} s on average, the baseline after {db:.0f} s: the student must be "
            "as fast",
            measured,
        )
    return measured
