"""Files the agent trusts must not be changeable by every user of the gateway.

A config, a trusted key, a model bundle or the state directory (audit log, alarm state,
ownership file) that any local user can write would let that user choose what the agent
writes to a PLC. Like OpenSSH's ``StrictModes``, the path and every directory above it are
checked: the path itself must not be writable by others; an ancestor may be writable by others
only with the sticky bit (``/tmp``), where nobody can rename or replace another user's entry.
Group write is allowed: the service's group is how engineers install without root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["writable_by_others"]


def writable_by_others(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` (or a directory above it) can be changed by any local user, or None.

    Components that do not exist are skipped: what does not exist yet is created by the
    agent with its own modes (and a missing file is reported elsewhere).
    """
    target = Path(os.path.abspath(path))
    for i, component in enumerate((target, *target.parents)):
        try:
            st = os.stat(component)
        except OSError:
            continue
        if not st.st_mode & stat.S_IWOTH:
            continue
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if i > 0 and sticky_dir:
            continue
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        if i == 0:
            return f"{target} is writable by every user (mode {mode}); chmod o-w {target}"
        return f"{target}: {component} (mode {mode}) is writable by every user; chmod o-w {component}"
    return None
