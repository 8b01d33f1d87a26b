"""Shared helpers for the simulator tests: real servers on 127.0.0.1, no skips.

The autouse checks for leaked tasks and threads live in ``tests/conftest.py`` (global); the
tests here also assert explicitly, after leaving ``serve()``, that nothing of theirs survives.
"""

from __future__ import annotations

import asyncio
import struct


def assert_no_other_tasks() -> None:
    """Call at the end of an async test: only the test's own task may remain."""
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not others, f"leaked tasks: {others}"


def f32(regs: list[int], order: str) -> float:
    """Independent float32 decoder (not the simulator's codec)."""
    hi, lo = (regs[0], regs[1]) if order == "ABCD" else (regs[1], regs[0])
    return struct.unpack(">f", struct.pack(">HH", hi, lo))[0]


def f32_regs(value: float, order: str = "ABCD") -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo] if order == "ABCD" else [lo, hi]


def i16(reg: int) -> int:
    return reg - 0x10000 if reg & 0x8000 else reg
