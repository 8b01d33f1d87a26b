"""A server that cannot listen: one clear error instead of library tracebacks.

pymodbus turns a failed bind into a warning plus ``RuntimeError("Could not start listen")``
(the reason is lost), and asyncua logs the bind error with its whole traceback before
re-raising it. The station's servers start inside :func:`quiet` (those library reports are
dropped: the error raised says it all) and translate the failure into :class:`ListenError`,
an ``OSError`` whose message names the server, the address and the reason::

    cannot serve Modbus TCP on 127.0.0.1:5020: address already in use
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator

__all__ = ["ListenError", "quiet", "why_not_listening"]


class ListenError(OSError):
    """A server of the simulator cannot listen on its address (port taken, not permitted,
    address not on this host). ``errno`` is the bind error's, when known."""

    def __init__(self, service: str, host: str, port: int, reason: str, code: int | None = None) -> None:
        super().__init__(f"cannot serve {service} on {_address(host, port)}: {reason}")
        self.errno = code
        self.service, self.host, self.port, self.reason = service, host, port, reason

    @classmethod
    def from_os_error(cls, service: str, host: str, port: int, exc: OSError) -> ListenError:
        """From the ``OSError`` of a bind (asyncio's message repeats the address: not kept)."""
        return cls(service, host, port, _reason(exc), exc.errno)

    @property
    def address_in_use(self) -> bool:
        return self.errno == errno.EADDRINUSE


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    return text[:1].lower() + text[1:]


def why_not_listening(service: str, host: str, port: int) -> ListenError:
    """After a library failed to listen without saying why: bind the address as asyncio does
    (``SO_REUSEADDR``) to learn the reason, and release it at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return ListenError(service, host, port, f"cannot resolve {host!r}: {exc.strerror}")
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
        except OSError as exc:
            return ListenError.from_os_error(service, host, port, exc)
    return ListenError(service, host, port, "could not listen (the address is free now: try again)")


class _Drop(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def quiet(logger: str, text: str) -> Iterator[None]:
    """Drop the records of ``logger`` whose message contains ``text`` while the block runs
    (a library's own report of an error that the block raises as a :class:`ListenError`)."""
    drop = _Drop(text)
    log = logging.getLogger(logger)
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)
