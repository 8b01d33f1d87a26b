"""Where a benchmark's time goes: a cProfile of repeated calls as a table of functions."""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["profile_calls"]

ROOT = Path(__file__).resolve().parents[1]


async def profile_calls(step: Callable[[], Awaitable[Any]], cycles: int, top: int) -> list[dict[str, Any]]:
    """cProfile of ``cycles`` awaited calls of ``step``: a first row with the total own time per
    cycle, then the ``top`` functions with the most own time (per cycle, in µs)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(cycles):
        await step()
    prof.disable()
    rows = []
    for (file, line, func), (_cc, calls, own, cum, _callers) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        where = file.split("/site-packages/")[-1].split("/lib/python3")[-1].replace(str(ROOT) + "/", "")
        rows.append(
            {
                "function": f"{where}:{line}({func})",
                "calls_per_cycle": calls / cycles,
                "own_us_per_cycle": 1e6 * own / cycles,
                "cum_us_per_cycle": 1e6 * cum / cycles,
            }
        )
    rows.sort(key=lambda r: -r["own_us_per_cycle"])
    total = sum(r["own_us_per_cycle"] for r in rows)
    return [{"total_own_us_per_cycle": total, "cycles": cycles}, *rows[:top]]
