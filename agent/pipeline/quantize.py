"""The values a setpoint register can hold, and how to land on one safely.

A drive that takes its speed as ``uint16 × 0.1`` cannot hold 45.15: the Guard's value must be
one the register can represent, or the encoder refuses it and the target holds for ever. A
:class:`Grid` describes the representable values of a tag (``offset + k·step`` for an integer
register with a scale, the float32 numbers for a single-precision register, any float
otherwise) and :meth:`Grid.snap` picks the representable value nearest to a wanted value
*inside* given bounds, so that rounding never carries a value past a limit or a rate.

Pure and dependency-free: the Guard calls it on every decision.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

__all__ = ["CONTINUOUS", "Grid"]

_F32 = struct.Struct("<f")
_I32 = struct.Struct("<i")


def _to_f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (inf when it overflows)."""
    try:
        return float(_F32.unpack(_F32.pack(x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def _f32_step(x: float, up: bool) -> float:
    """The next float32 after the float32 ``x``, up or down."""
    if x == 0.0:
        tiny = float(_F32.unpack(_I32.pack(1))[0])
        return tiny if up else -tiny
    bits = _I32.unpack(_F32.pack(x))[0]
    bits += 1 if (x > 0) == up else -1
    return float(_F32.unpack(_I32.pack(bits))[0])


@dataclass(frozen=True, slots=True)
class Grid:
    """Representable values: ``offset + k·step`` (``step`` set), float32 (``float32``), or any."""

    step: float | None = None
    offset: float = 0.0
    float32: bool = False

    @property
    def resolution(self) -> float:
        """The smallest change the register can make (0 for a continuous value)."""
        return abs(self.step) if self.step else 0.0

    def same(self, a: float, b: float) -> bool:
        """``a`` and ``b`` are the same register value (within half a step, or float32 rounding)."""
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        if self.step:
            return abs(a - b) <= abs(self.step) / 2
        tol = 1e-6 * max(1.0, abs(a), abs(b)) if self.float32 else 1e-9 * max(1.0, abs(a), abs(b))
        return abs(a - b) <= tol

    def snap(self, value: float, lo: float, hi: float) -> float | None:
        """The representable value nearest to ``value`` within ``[lo, hi]``; None if none lies
        there. ``value`` is expected inside ``[lo, hi]``; the result is checked against both."""
        if not (math.isfinite(value) and math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            return None
        if self.step:
            step = abs(self.step)
            k_lo = math.ceil((lo - self.offset) / step - 1e-9)
            k_hi = math.floor((hi - self.offset) / step + 1e-9)
            k = min(max(round((value - self.offset) / step), k_lo), k_hi)
            for cand in (k, k + 1, k - 1):  # float error at the edges: try the neighbours too
                if k_lo - 1 <= cand <= k_hi + 1:
                    out = self.offset + cand * step
                    if lo <= out <= hi:
                        return out
            return None
        if self.float32:
            out = _to_f32(value)
            for _ in range(4):
                if lo <= out <= hi:
                    return out
                out = _f32_step(out, up=out < lo)
            return None
        return value if lo <= value <= hi else None


CONTINUOUS = Grid()
"""A value of any float (OPC UA Double, float64 registers)."""
