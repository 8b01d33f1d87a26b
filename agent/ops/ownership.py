"""The ownership file: which Guard targets the running agent owns, and in which mode.

The running agent writes ``<state_dir>/ownership.json`` at start and whenever a target's mode
changes (:func:`write_ownership`); ``edge-agent write`` reads it (:func:`owned_in_auto`) and
refuses a commissioning write to a setpoint the agent owns in ``auto``, whatever config file
the CLI was given. The file is replaced atomically (temporary file, fsync, rename, fsync of
the directory), so a reader sees the old or the new content, never half of one::

    {"pid": 4242, "boot_id": "6a1f…", "written_at": "2026-05-01T12:00:00.000000Z",
     "targets": {"Pump1.SpeedSetpoint": "auto", "Pump2.SpeedSetpoint": "shadow"}}

A file left behind by an agent that is gone (its pid is not alive, or it was written before
the last reboot) owns nothing. A file that exists but cannot be read or parsed is an error
(:class:`~agent.errors.StateFileError`), never "owns nothing": the CLI then refuses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import StateFileError
from agent.ops.host import boot_id
from agent.types import utcnow

__all__ = ["FILE_NAME", "Ownership", "boot_id", "owned_in_auto", "read_ownership", "write_ownership"]

FILE_NAME = "ownership.json"
_MAX_BYTES = 1 << 20  # a state file this large is not ours


@dataclass(frozen=True, slots=True)
class Ownership:
    """The content of a live ownership file."""

    pid: int
    boot_id: str
    written_at: datetime
    targets: Mapping[str, str]  # setpoint tag → mode (shadow, advise, auto)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user (the agent's service account)
    return True


def write_ownership(state_dir: Path, owned: Mapping[str, str], pid: int) -> None:
    """Replace the ownership file atomically with ``owned`` (tag → mode) for process ``pid``.

    Raises ``OSError`` when the file cannot be written (the caller decides what that means).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    body = {
        "pid": pid,
        "boot_id": boot_id(),
        "written_at": utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "targets": dict(owned),
    }
    data = json.dumps(body, indent=1, sort_keys=True).encode()
    path = state_dir / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.{pid}.tmp")
    # Readable by the engineer's CLI; it holds tag names and modes, nothing secret.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_ownership(state_dir: Path) -> Ownership | None:
    """The live ownership file of ``state_dir``; None when there is none, or when the process
    that wrote it is gone (pid not alive, or another boot). Raises StateFileError naming the
    file when it exists but cannot be read or is not a valid ownership file."""
    path = state_dir / FILE_NAME
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read the ownership file {path}: {exc.strerror or exc}") from None
    try:
        if len(raw) > _MAX_BYTES:
            raise ValueError(f"larger than {_MAX_BYTES} bytes")
        body = json.loads(raw.decode("utf-8"))
        pid, boot, at, targets = body["pid"], body["boot_id"], body["written_at"], body["targets"]
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid {pid!r} is not a process id")
        if not isinstance(boot, str) or not isinstance(targets, dict):
            raise ValueError("boot_id must be text and targets an object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in targets.items()):
            raise ValueError("targets must map tag names to modes")
        written_at = datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (ValueError, KeyError, TypeError) as exc:
        raise StateFileError(
            f"the ownership file {path} is not valid ({exc}); "
            "remove it if no agent runs on this state directory"
        ) from None
    if boot != boot_id() or not _alive(pid):
        return None
    return Ownership(pid, boot, written_at, dict(targets))


def owned_in_auto(state_dir: Path, tag: str) -> bool:
    """True when the agent running on ``state_dir`` owns the setpoint ``tag`` in mode auto."""
    owner = read_ownership(state_dir)
    return owner is not None and owner.targets.get(tag) == "auto"
