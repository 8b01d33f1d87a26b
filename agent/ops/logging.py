"""Structured logging (structlog): console for people, JSON lines for journald and shippers.

* Format: ``auto`` writes JSON lines when stderr is not a terminal (journald, a pipe, a file)
  and the console renderer on a terminal; ``json`` or ``console`` forces one.
* One stream for everything: the stdlib loggers (pymodbus, asyncua) go through the same
  processors and renderer as the agent's own events.
* Secrets never reach a log line: :func:`redact_secrets` replaces the values of keys named
  like a secret (password, secret, token, credential, key …), every secret the agent has read
  (:func:`register_secret`, called when a :class:`~agent.configbase.Secret` is revealed) and
  the password of a ``scheme://user:password@host`` URL with ``***``, inside messages and
  tracebacks too.
* A closed stderr never stops the agent: when journald restarts (or the reader of a pipe
  exits) the write fails with ``BrokenPipeError``; the log stream then discards what follows
  instead of raising into whatever was logging, and points the descriptor at ``/dev/null`` so
  that nothing else in the process trips on it (a ``print(..., file=sys.stderr)`` of the CLI,
  the interpreter's flush at exit).

Context: :class:`agent.running.RunningSource` binds ``device`` for everything logged while it
polls (contextvars: per task); modules bind ``unit``, ``tag``, ``asset`` and ``model`` where
they log them.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal, ParamSpec, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "LogFormat",
    "redact_secrets",
    "register_secret",
    "registers_secret",
    "resolve_format",
    "setup_logging",
]

LogFormat = Literal["auto", "console", "json"]
"""``auto``: JSON lines off a terminal, the console renderer on one."""

REDACTED = "***"

# Key names whose values are secrets, whatever the value looks like. "key" only as a whole
# word or a suffix (private_key, api_key): "keep", "keys_loaded" are not secrets.
_SECRET_KEY = re.compile(
    r"password|passwd|passphrase|pwd|secret|token|credential|authorization|cookie|(?:^|[_\-.])key$|apikey",
    re.IGNORECASE,
)
# scheme://user:password@host → scheme://user:***@host
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+@")
# A secret shorter than this is redacted only where a whole value equals it: as a substring
# it would blank out ordinary words in every message.
_MIN_SUBSTRING = 4

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Redact ``value`` from every log line from now on (wherever it appears in a value).

    Called with each secret the agent reads (a password, a key's passphrase). Thread-safe;
    an empty value is ignored.
    """
    global _secrets
    if not value:
        return
    with _secrets_lock:
        if value not in _secrets:
            # longest first: a secret that contains another is replaced whole
            _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


_P = ParamSpec("_P")


def registers_secret(read: Callable[_P, str]) -> Callable[_P, str]:
    """Decorate a function that reads a secret: every value it returns is registered
    (:func:`register_secret`) before the caller gets it."""

    @functools.wraps(read)
    def reader(*args: _P.args, **kwargs: _P.kwargs) -> str:
        value = read(*args, **kwargs)
        register_secret(value)
        return value

    return reader


def _scrub_text(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if text == s:
            return REDACTED
        if len(s) >= _MIN_SUBSTRING and s in text:
            text = text.replace(s, REDACTED)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    return text


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, tuple):
        return tuple(_scrub(v, secrets) for v in value)
    if isinstance(value, list | set | frozenset):
        return [_scrub(v, secrets) for v in value]
    # Anything else (an exception, a path, a config object) is rendered by its repr: check that.
    text = repr(value)
    scrubbed = _scrub_text(text, secrets)
    return value if scrubbed == text else scrubbed


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor: ``***`` for the values of secret-named keys (at any depth), for
    registered secrets and for URL passwords wherever they appear. Runs after exceptions are
    formatted, so a traceback is scrubbed too."""
    secrets = _secrets
    for k, v in event_dict.items():
        if _SECRET_KEY.search(k):
            event_dict[k] = REDACTED
        else:
            event_dict[k] = _scrub(v, secrets)
    return event_dict


class _TolerantStream(io.TextIOBase):
    """A text stream that survives its reader going away.

    The first ``BrokenPipeError`` (or a reset connection: journald's stream socket) makes it
    discard everything after, and points the descriptor at ``/dev/null`` so that other writers
    of the same descriptor (``print(..., file=sys.stderr)``, the flush at exit) do not fail.
    """

    def __init__(self, raw: TextIO) -> None:
        super().__init__()
        self.raw = raw
        self.broken = False
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return self.raw.isatty()
        except (OSError, ValueError):
            return False

    def write(self, s: str) -> int:
        if self.broken:
            self.dropped += 1
            return len(s)
        try:
            self.raw.write(s)
        except (BrokenPipeError, ConnectionResetError):
            self._gone()
        return len(s)

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self.raw.flush()
        except (BrokenPipeError, ConnectionResetError):
            self._gone()

    def _gone(self) -> None:
        self.broken = True
        self.dropped += 1
        try:
            fd = self.raw.fileno()
        except (AttributeError, OSError, ValueError):
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


def resolve_format(fmt: str, stream: TextIO) -> Literal["console", "json"]:
    """``json`` or ``console`` as given; ``auto``: console on a terminal, JSON lines otherwise."""
    if fmt == "json":
        return "json"
    if fmt == "console":
        return "console"
    if fmt != "auto":
        raise ValueError(f"log format must be auto, console or json, not {fmt!r}")
    try:
        tty = stream.isatty()
    except (AttributeError, OSError, ValueError):
        tty = False
    return "console" if tty else "json"


_handler: logging.Handler | None = None


def setup_logging(level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger (pymodbus and asyncua log through it).

    ``fmt``: ``auto`` (JSON lines unless ``stream`` is a terminal), ``console`` or ``json``.
    ``stream`` defaults to ``sys.stderr``. May be called again (tests, a reload): the previous
    configuration is replaced.
    """
    global _handler
    lvl = getattr(logging, level.upper())
    raw = sys.stderr if stream is None else stream
    out = _TolerantStream(raw)
    kind = resolve_format(fmt, raw)
    renderer: Processor
    if kind == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty() and "NO_COLOR" not in os.environ)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Tracebacks become text before redaction, so a secret in an exception message is scrubbed.
    tail: list[Processor] = [structlog.processors.format_exc_info, redact_secrets, renderer]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # write() and flush() are all a PrintLogger uses of its file
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, out)),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(max(lvl, logging.WARNING))
    _handler = handler
    # pymodbus logs every unanswered request at ERROR: our breaker reports transitions once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # asyncua prints a traceback for every refused handshake: the driver reports it once, clearly.
    for name in ("asyncua", "asyncuagds"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
