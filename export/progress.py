"""A dependency-free progress bar for training and calibration (stderr).

On a terminal it redraws one line (``\\r``); otherwise (CI logs, pipes) it prints a line at
every 25 % so logs stay short. ``enabled=False`` makes it silent (tests).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``Progress(total, "train teacher")``; ``update(n=1, **info)`` then ``close()``."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.info = ""
        self._t0 = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_quarter = -1

    def update(self, n: int = 1, **info: float | str) -> None:
        self.n = min(self.n + n, self.total)
        if info:
            self.info = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
            )
        if not self.enabled:
            return
        if self._tty:
            self._draw("\r")
        else:
            quarter = 4 * self.n // self.total
            if quarter != self._last_quarter:
                self._last_quarter = quarter
                self._draw("")
                self.stream.write("\n")
        self.stream.flush()

    def _draw(self, prefix: str) -> None:
        frac = self.n / self.total
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        elapsed = time.monotonic() - self._t0
        self.stream.write(
            f"{prefix}{self.desc:<28} [{bar}] {self.n}/{self.total} {elapsed:5.1f}s {self.info}"
        )

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
