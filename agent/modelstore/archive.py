"""Unpacking a bundle archive (``.tar.gz``) with our own member checks.

Debian 12's Python (3.11.2) predates ``tarfile``'s extraction filters, so nothing in the
standard library stops a member named ``../../etc/cron.d/x``, a symlink, or a device node.
:func:`unpack_bundle` never calls ``extract``: it walks the members, refuses the whole
archive at the first one that is not a plain file (or a directory entry for the bundle's own
top directory), and writes each accepted member itself, by name, into a fresh directory, with
a size limit enforced while copying (the header's size is not trusted):

* a name that is absolute, holds ``..``, a NUL, a backslash or more than one directory level;
* a symbolic or hard link, a device, a FIFO;
* a member larger than :data:`~agent.modelstore.files.MAX_MODEL_BYTES`, more than
  :data:`MAX_MEMBERS` members, more than :data:`MAX_TOTAL_BYTES` in all;
* two members with the same name.

Every refusal is a :class:`~agent.errors.ModelError` naming the archive and the member.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ModelError
from agent.modelstore.files import MAX_MODEL_BYTES, is_plain_file_name

if TYPE_CHECKING:  # tarfile is imported when an archive is read: the agent loads this module for
    import tarfile  # every run (the model store), and most runs read no archive

__all__ = ["MAX_MEMBERS", "MAX_TOTAL_BYTES", "is_archive", "unpack_bundle"]

MAX_MEMBERS = 64
"""A bundle holds a manifest, a signature and a few ONNX files: more is not a bundle."""
MAX_TOTAL_BYTES = 4 * MAX_MODEL_BYTES


def is_archive(path: Path) -> bool:
    """True for a ``.tar.gz`` / ``.tgz`` file name."""
    return path.name.endswith((".tar.gz", ".tgz"))


def _member_name(archive: Path, m: tarfile.TarInfo) -> str | None:
    """The plain file name a member lands on (None for the top directory entry); ModelError
    when the member is refused."""
    raw = m.name
    where = f"archive {archive}: member {raw!r}"
    if "\x00" in raw or "\\" in raw:
        raise ModelError(f"{where}: invalid characters in the name")
    if raw.startswith("/"):
        raise ModelError(f"{where}: absolute path refused")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ModelError(f"{where}: path traversal ('..') refused")
    if m.issym() or m.islnk():
        raise ModelError(f"{where}: links are refused (link to {m.linkname!r})")
    if m.isdir():
        if len(parts) > 1:
            raise ModelError(f"{where}: nested directories are refused (a bundle is flat)")
        return None
    if not m.isreg():
        kind = "device" if (m.ischr() or m.isblk()) else "FIFO" if m.isfifo() else "special file"
        raise ModelError(f"{where}: {kind} refused (only regular files)")
    if len(parts) > 2 or not parts:
        raise ModelError(f"{where}: nested directories are refused (a bundle is flat)")
    name = parts[-1]
    if not is_plain_file_name(name):
        raise ModelError(f"{where}: not a plain file name")
    if m.size > MAX_MODEL_BYTES:
        raise ModelError(f"{where}: {m.size} bytes, more than the limit of {MAX_MODEL_BYTES}")
    return name


def unpack_bundle(archive: Path, dest: Path) -> Path:
    """Check every member of ``archive`` and write the files into the new directory ``dest``
    (which must not exist). Members may sit at the top level or in one top directory (as
    ``tar czf b.tar.gz bundle/`` writes them). Returns ``dest``; ModelError on any refusal
    (``dest`` is then left for the caller to remove)."""
    import tarfile

    try:
        tf = tarfile.open(archive, mode="r:gz")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ModelError(f"archive {archive}: not a readable .tar.gz: {exc}") from None
    dest.mkdir(mode=0o755)
    seen: set[str] = set()
    total = 0
    tops: set[str] = set()
    with tf:
        try:
            for count, m in enumerate(tf, start=1):
                if count > MAX_MEMBERS:
                    raise ModelError(f"archive {archive}: more than {MAX_MEMBERS} members refused")
                name = _member_name(archive, m)
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if len(parts) == 2 or (name is None and parts):
                    tops.add(parts[0])
                    if len(tops) > 1:
                        raise ModelError(f"archive {archive}: more than one top directory ({sorted(tops)})")
                if name is None:
                    continue
                if name in seen:
                    raise ModelError(f"archive {archive}: member {name!r} appears twice")
                seen.add(name)
                total += m.size
                if total > MAX_TOTAL_BYTES:
                    raise ModelError(f"archive {archive}: more than {MAX_TOTAL_BYTES} bytes in all")
                src = tf.extractfile(m)
                if src is None:
                    raise ModelError(f"archive {archive}: member {m.name!r} cannot be read")
                fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as out:
                    left = m.size
                    while chunk := src.read(min(1 << 20, left + 1)):
                        left -= len(chunk)
                        if left < 0:
                            raise ModelError(
                                f"archive {archive}: member {m.name!r} is longer than its header"
                            )
                        out.write(chunk)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ModelError(f"archive {archive}: cannot be read: {exc}") from None
    return dest
