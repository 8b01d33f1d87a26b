"""What a config reload (SIGHUP) may change while the agent runs, and what needs a restart.

:func:`config_diff` lists the field paths that differ between the running config and the one
on disk (``alarms.defs[2].on_delay_s``, ``guard.targets[0].rate_per_min``). :func:`restart_needed`
picks those that cannot change live: the agent then refuses the reload as a whole, names them
("needs a restart: guard.targets[0].rate_per_min") and keeps running the config it has.

Live (:data:`LIVE`): alarm definitions, limits and delays and the acknowledge tag; the HMI
refresh period; log level and format; detector settings; what an asset's alarms and HMI fields
read (values, anomaly/fault-class/RUL sources); model bindings and bundles.

Everything else needs a restart, among them: devices and tags (and with them every credential:
secrets are only named in a device), every Guard setting (a safety change: limits, rates,
mode, targets, the permissive), the recommender (it makes the values the Guard writes), what
the HMI writer writes where (an asset's HMI tags, the heartbeat and status tags), the trust in
model signing keys, the audit log, the state directory, the cycle and the metrics endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agent.config import Config
from agent.configyaml import format_loc

__all__ = ["ANY_INDEX", "LIVE", "config_diff", "restart_needed"]

ANY_INDEX = -1
"""In a :data:`LIVE` pattern: any list index."""

Loc = tuple[str | int, ...]

LIVE: tuple[Loc, ...] = (
    ("agent", "log_level"),
    ("agent", "log_format"),
    ("models",),
    ("alarms",),
    ("hmi", "refresh_s"),
    ("assets", ANY_INDEX, "values"),
    ("assets", ANY_INDEX, "detectors"),
    ("assets", ANY_INDEX, "anomaly_source"),
    ("assets", ANY_INDEX, "fault_class_source"),
    ("assets", ANY_INDEX, "rul_source"),
)
"""Path prefixes that a reload changes live."""


def _walk(a: Any, b: Any, loc: Loc) -> Iterator[Loc]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            if key not in a or key not in b:
                yield (*loc, key)
            else:
                yield from _walk(a[key], b[key], (*loc, key))
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            if i >= len(a) or i >= len(b):
                yield (*loc, i)
            else:
                yield from _walk(a[i], b[i], (*loc, i))
    elif a != b or type(a) is not type(b):
        yield loc


def _locs(old: Config, new: Config) -> list[Loc]:
    return list(_walk(old.model_dump(mode="json"), new.model_dump(mode="json"), ()))


def config_diff(old: Config, new: Config) -> list[str]:
    """The field paths whose values differ (an added or removed list item or key is one path)."""
    return [format_loc(loc) for loc in _locs(old, new)]


def _live(loc: Loc) -> bool:
    for pattern in LIVE:
        if len(loc) >= len(pattern) and all(
            (p == ANY_INDEX and isinstance(x, int)) or p == x for p, x in zip(pattern, loc, strict=False)
        ):
            return True
    return False


def restart_needed(old: Config, new: Config) -> list[str]:
    """The changed field paths that cannot change while the agent runs (empty: all live)."""
    return [format_loc(loc) for loc in _locs(old, new) if not _live(loc)]

