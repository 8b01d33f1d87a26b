"""Structured logging (structlog): console for people, JSON lines for journald and shippers.

Secrets never reach a log: config objects that hold them print only where they come from.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["setup_logging"]


def setup_logging(level: str = "info", fmt: str = "console") -> None:
    """Configure structlog and the stdlib root logger (pymodbus and asyncua log through it)."""
    lvl = getattr(logging, level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=max(lvl, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # pymodbus logs every unanswered request at ERROR: our breaker reports transitions once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # asyncua prints a traceback for every refused handshake: the driver reports it once, clearly.
    for name in ("asyncua", "asyncuagds"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
