"""Facts about the host the agent runs on, read from the kernel."""

from __future__ import annotations

from pathlib import Path

__all__ = ["boot_id"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id (``time.monotonic()`` values compare only within one boot); "" if unknown."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""
