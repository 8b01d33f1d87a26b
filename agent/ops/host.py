"""Facts about the host the agent runs on, read from the kernel; and what it asks of it."""

from __future__ import annotations

import ctypes
from pathlib import Path

__all__ = ["boot_id", "release_free_heap"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id (``time.monotonic()`` values compare only within one boot); "" if unknown."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the kernel (glibc's ``malloc_trim(0)``).

    Start-up reads and verifies bundles, builds sessions and validates the config: megabytes of
    C heap that are freed again but stay in the process (glibc returns only the top of the heap
    by itself), counted in its RSS for as long as it runs. Called once when start-up is done.
    False where the C library has no ``malloc_trim`` (musl, other systems): nothing is done.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: its C library's
    except (AttributeError, OSError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
