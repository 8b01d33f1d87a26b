"""Reading the files of a bundle: regular files inside the bundle directory, size-limited.

A bundle arrives from outside the gateway (a copy, an archive, the model store), so none of
its entries is trusted to be what its name says. :class:`BundleDir` opens the bundle
directory once and reads every file relative to that directory handle:

* the name must be one plain path component (no ``/``, no ``..``, no NUL, nothing that only
  looks like a plain name): a manifest cannot point outside the bundle;
* a symbolic link is never followed (checked with ``lstat`` first, and the open itself uses
  ``O_NOFOLLOW``): ``model.onnx -> /dev/zero`` or ``manifest.json -> /tmp/fifo`` or a link to a
  valid file elsewhere is refused, not read;
* only a regular file is opened, with ``O_NONBLOCK`` so that a FIFO put in its place is
  refused at once instead of blocking the agent (and its SIGTERM) for ever; ``fstat`` on the
  open descriptor must say regular file, and the same inode the ``lstat`` saw;
* the size is checked from ``fstat`` against the limit (and the size the manifest declares)
  before any byte is read, and enforced while reading: at most the ``fstat`` size plus one
  byte is ever read, so a file that grows or lies about its size is refused, not slurped.

A hard link is not refused: it is the file itself (same inode, same bytes, checked against
the signed manifest like any other), and a store may share identical files between versions
that way. The bytes returned are the only copy: the caller hashes them and gives the same bytes to
onnxruntime (no second open between check and use). The bundle directory itself may be
reached through a symbolic link (the model store's ``current`` is one); only its entries are
held to these rules. Every refusal is a :class:`~agent.errors.ModelError` naming the file and
why. Pure blocking file I/O: call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from agent.errors import ModelError

__all__ = [
    "FILE_NAME",
    "MAX_FILE_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_MODEL_BYTES",
    "NOT_PLAIN",
    "BundleDir",
    "check_file_name",
    "is_plain_file_name",
]

MAX_METADATA_BYTES: Final = 1 << 20
"""Largest ``manifest.json`` or ``signature.json`` read (a real manifest is a few KiB)."""

MAX_MODEL_BYTES: Final = 64 << 20
"""Largest ONNX variant read. Gateway models are KiB to a few MiB; raise this constant (and
the memory budget) deliberately for a bigger one."""

MAX_FILE_BYTES: Final = 16 << 20
"""Largest other file a manifest lists (reports, plots)."""

FILE_NAME: Final = r"[A-Za-z0-9_][A-Za-z0-9._\-]*"
"""A bundle file name: one plain ASCII path component (so never ``.`` or ``..``)."""

_FILE_NAME = re.compile(FILE_NAME)
_NAME_MAX = 128

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return f"an entry of mode {stat.filemode(mode)}"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n} bytes"


NOT_PLAIN: Final = (
    "is not a plain file name inside the bundle (ASCII letters, digits, '.', '_', '-'; no '/', no '..')"
)
"""How a refused file name is described (the manifest's validation says the same)."""


def is_plain_file_name(name: str) -> bool:
    """True for one plain path component of at most 128 ASCII characters (:data:`FILE_NAME`)."""
    return len(name) <= _NAME_MAX and _FILE_NAME.fullmatch(name) is not None


def check_file_name(name: str, where: str) -> None:
    """Refuse a name that is not one plain component inside the bundle (``where`` names the
    bundle in the message)."""
    if not is_plain_file_name(name):
        raise ModelError(f"{where}: file name {name!r} {NOT_PLAIN}: refused")


class BundleDir:
    """An open bundle directory; :meth:`read` returns the bytes of one of its files.

    Use as a context manager (the directory handle is closed on exit). Not thread-safe: one
    loader owns it. Raises ModelError when the directory cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            self._fd: int | None = os.open(self.path, flags)
        except OSError as exc:
            raise ModelError(
                f"{self.path}: not a bundle directory (expected manifest.json and ONNX files): "
                f"{exc.strerror or exc}"
            ) from None
        except ValueError as exc:  # a NUL in the path
            raise ModelError(f"{self.path!r}: not a bundle directory: {exc}") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the directory handle (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def read(self, name: str, *, limit: int, size: int | None = None) -> bytes:
        """The whole content of the regular file ``name`` directly inside the bundle.

        ``limit`` is the largest size accepted; ``size``, when given, is the exact size the
        manifest declares (a different size is refused before reading). Raises ModelError
        for a bad name, a missing file, a link, anything but a regular file, a file over the
        limit or of another size, or a file that changes while it is read.
        """
        data = self._read(name, limit, size)
        if data is None:
            raise ModelError(f"cannot read {self.path / name}: no such file in the bundle")
        return data

    def read_optional(self, name: str, *, limit: int) -> bytes | None:
        """Like :meth:`read`, but None when no entry of that name exists (a link, even a
        dangling one, is an entry: refused, never taken for absent)."""
        return self._read(name, limit, None)

    def _read(self, name: str, limit: int, size: int | None) -> bytes | None:
        if self._fd is None:
            raise ModelError(f"{self.path}: bundle directory already closed")
        check_file_name(name, f"bundle {self.path}")
        where = self.path / name
        if size is not None and size > limit:
            raise ModelError(
                f"{where}: the manifest declares {size} bytes, more than the limit of "
                f"{_size(limit)} for this file: refused"
            )
        try:
            seen = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ModelError(f"cannot read {where}: {exc.strerror or exc}") from None
        self._check_entry(where, name, seen, limit)
        try:
            fd = os.open(
                name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=self._fd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a link after the lstat
                raise ModelError(f"{where}: is a symbolic link (replaced while opening): refused") from None
            raise ModelError(f"cannot read {where}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
                raise ModelError(f"{where}: replaced while being opened: refused")
            self._check_entry(where, name, st, limit)
            if size is not None and st.st_size != size:
                raise ModelError(f"{where}: has {st.st_size} bytes, the manifest says {size}: refused")
            return _read_exactly(fd, st.st_size, where)
        finally:
            os.close(fd)

    def _check_entry(self, where: Path, name: str, st: os.stat_result, limit: int) -> None:
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=self._fd)
            except OSError:
                target = "?"
            raise ModelError(
                f"{where}: is a symbolic link (to {target}); bundle files must be regular files "
                "inside the bundle and links are never followed: refused"
            )
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{where}: is {_kind(st.st_mode)}, not a regular file: refused")
        if st.st_size > limit:
            raise ModelError(
                f"{where}: has {st.st_size} bytes, more than the limit of {_size(limit)} for this "
                "file: refused"
            )


def _read_exactly(fd: int, expected: int, where: Path) -> bytes:
    """Read exactly ``expected`` bytes, then prove the file ends there (one more byte read at
    most): never more than ``expected + 1`` bytes, whatever the file does meanwhile."""
    chunks: list[bytes] = []
    left = expected
    try:
        while left > 0:
            chunk = os.read(fd, left)  # a regular file gives it all at once: no copy to join
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        extra = os.read(fd, 1) if left == 0 else b""
    except OSError as exc:
        raise ModelError(f"cannot read {where}: {exc.strerror or exc}") from None
    if left or extra:
        change = "grew" if extra else "shrank"
        raise ModelError(f"{where}: {change} while being read (it had {expected} bytes): refused")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
