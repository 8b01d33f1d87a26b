"""Fault definitions, fault labels and scenario files.

A fault is injected on one pump at a simulated time; each has a physical signature in the
plant (see ``simulator/README.md``) and an integer label:

====  ==================  =====================================================================
code  label               signature
====  ==================  =====================================================================
0     normal              -
1     bearing_wear        VibBearing and Vibration rise, BearingTemp rises, accelerating
                          (d = tau**2) toward failure at onset + time_to_failure: RUL exact
2     cavitation          suction strainer clogging: SuctionPressure low (vacuum), noisy Flow,
                          VibHF high, pump head drop
3     imbalance           Vib1x (and Vibration) high, growing with speed squared
4     motor_electrical    MotorCurrent up (magnetising current), efficiency down: MotorPower up
                          for the same hydraulic output, WindingTemp up
5     valve_blockage      discharge valve partly blocked: that pump's Flow down and its
                          DischargePressure above Station.HeaderPressure
6     sensor_stuck        one tag frozen at its value at onset (zero variance)
7     sensor_drift        one tag drifts by severity * 5 % of its span per hour
8     sensor_spike        one tag jumps by +-25 % of its span, 0.05 * severity spikes per second
9     sensor_dropout      one tag reads NaN (Modbus: NaN / 0x8000 / 0xFFFF sentinel, OPC UA:
                          BadSensorFailure, historian: quality BAD); the pump's SIGNAL_FAULT bit
====  ==================  =====================================================================

Sensor faults change the measurement only, never the physics, and every fault leaves the
random number stream untouched: a run with a fault and a run without it under the same seed
differ only by the fault's effects.

Scenario files are YAML, times in simulated time (``90``, ``90s``, ``1.5min``, ``2h``, ``1d``)::

    name: demo
    seed: 7            # optional, overridden by --seed
    pumps: 2           # optional, overridden by --pumps
    events:
      - at: 60s
        pump: 1
        fault: bearing_wear
        severity: 1.0
        time_to_failure: 6h
      - at: 2h
        pump: 2
        fault: sensor_drift
        tag: BearingTemp
        duration: 30min       # cleared automatically after 30 min
      - at: 3h
        pump: 2
        clear: all            # or a fault name
      - at: 10min
        permissive: true      # operator action
      - at: 4h
        demand_scale: 1.3     # demand multiplier from then on

A bare list of events is accepted too. Unknown keys are errors naming the file, the line and
the field.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_SENSOR_TAG",
    "DEFAULT_TIME_TO_FAILURE_S",
    "RUL_SENTINEL_H",
    "SENSOR_FAULT_TAGS",
    "Fault",
    "FaultKind",
    "Scenario",
    "ScenarioError",
    "ScenarioEvent",
    "load_scenario",
    "parse_duration",
    "parse_fault_flag",
    "parse_scenario",
]

#: Remaining useful life reported when no bearing-wear fault is active on a pump (hours).
#: A finite sentinel (about 14 months) so that CSV, float32 registers and OPC UA Doubles all
#: carry the same number; "no known degradation" rather than "infinite life".
RUL_SENTINEL_H = 10_000.0

#: Default time from bearing-wear onset to failure.
DEFAULT_TIME_TO_FAILURE_S = 6 * 3600.0

#: Default tag of a sensor fault (relative to the pump, e.g. ``Pump1.DischargePressure``).
DEFAULT_SENSOR_TAG = "DischargePressure"

#: Pump tags a sensor fault can be put on (relative names).
SENSOR_FAULT_TAGS = (
    "Speed",
    "Flow",
    "SuctionPressure",
    "DischargePressure",
    "MotorCurrent",
    "MotorPower",
    "WindingTemp",
    "BearingTemp",
    "Vibration",
    "Vib1x",
    "Vib2x",
    "VibBearing",
    "VibHF",
)


class FaultKind(enum.IntEnum):
    """Fault class codes (the label written to recordings and the fault-injection register)."""

    NORMAL = 0
    BEARING_WEAR = 1
    CAVITATION = 2
    IMBALANCE = 3
    MOTOR_ELECTRICAL = 4
    VALVE_BLOCKAGE = 5
    SENSOR_STUCK = 6
    SENSOR_DRIFT = 7
    SENSOR_SPIKE = 8
    SENSOR_DROPOUT = 9

    @property
    def label(self) -> str:
        """Lower-case name used in files and on the command line, e.g. ``bearing_wear``."""
        return self.name.lower()

    @property
    def is_sensor(self) -> bool:
        return self >= FaultKind.SENSOR_STUCK

    @classmethod
    def parse(cls, text: str | int) -> FaultKind:
        """Accept a label (``bearing_wear``), an upper-case name or a code."""
        if isinstance(text, bool):
            raise ValueError(f"not a fault: {text!r}")
        if isinstance(text, int):
            return cls(text)
        key = text.strip().lower().replace("-", "_")
        if key.isdigit():
            return cls(int(key))
        for kind in cls:
            if kind.label == key:
                return kind
        names = ", ".join(k.label for k in cls if k)
        raise ValueError(f"unknown fault {text!r} (known: {names})")


@dataclass(frozen=True)
class Fault:
    """One fault on one pump (1-based pump number).

    ``severity`` scales the signature (1.0 is the documented default, 0 < severity <= 3).
    ``time_to_failure_s`` applies to bearing wear only (default 6 h). ``tag`` applies to
    sensor faults only (a pump tag such as ``BearingTemp``; default ``DischargePressure``).
    ``duration_s`` clears the fault automatically that long after onset.
    """

    kind: FaultKind
    pump: int
    severity: float = 1.0
    time_to_failure_s: float | None = None
    tag: str | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind == FaultKind.NORMAL:
            raise ValueError("fault kind 'normal' cannot be injected (clear the pump instead)")
        if self.pump < 1:
            raise ValueError(f"pump numbers start at 1, got {self.pump}")
        if not (0.0 < self.severity <= 3.0) or not math.isfinite(self.severity):
            raise ValueError(f"severity must be in (0, 3], got {self.severity}")
        if self.time_to_failure_s is not None:
            if self.kind != FaultKind.BEARING_WEAR:
                raise ValueError("time_to_failure applies to bearing_wear only")
            if not self.time_to_failure_s > 0:
                raise ValueError("time_to_failure must be positive")
        if self.tag is not None:
            if not self.kind.is_sensor:
                raise ValueError("tag applies to sensor faults only")
            if self.tag not in SENSOR_FAULT_TAGS:
                raise ValueError(f"unknown sensor tag {self.tag!r} (known: {', '.join(SENSOR_FAULT_TAGS)})")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError("duration must be positive")

    @property
    def ttf_s(self) -> float:
        return self.time_to_failure_s if self.time_to_failure_s is not None else DEFAULT_TIME_TO_FAILURE_S

    @property
    def sensor_tag(self) -> str:
        return self.tag if self.tag is not None else DEFAULT_SENSOR_TAG


@dataclass(frozen=True)
class ScenarioEvent:
    """Something that happens at simulated time ``at_s``.

    Exactly one of: ``fault`` (inject), ``clear`` (``(pump, kind or None for all)``),
    ``permissive`` / ``acknowledge`` (operator), ``demand_scale``.
    """

    at_s: float
    fault: Fault | None = None
    clear: tuple[int, FaultKind | None] | None = None
    permissive: bool | None = None
    acknowledge: bool | None = None
    demand_scale: float | None = None
    line: int | None = None

    def describe(self) -> str:
        if self.fault is not None:
            return f"inject {self.fault.kind.label} on pump {self.fault.pump}"
        if self.clear is not None:
            what = self.clear[1].label if self.clear[1] is not None else "all faults"
            return f"clear {what} on pump {self.clear[0]}"
        if self.permissive is not None:
            return f"permissive {'on' if self.permissive else 'off'}"
        if self.acknowledge is not None:
            return "acknowledge"
        return f"demand scale {self.demand_scale}"


@dataclass(frozen=True)
class Scenario:
    events: tuple[ScenarioEvent, ...] = ()
    name: str = ""
    description: str = ""
    seed: int | None = None
    pumps: int | None = None
    source: str = "<scenario>"
    extra: Mapping[str, Any] = field(default_factory=dict)


class ScenarioError(ValueError):
    """A scenario file or fault flag is invalid; the message names file, line and field."""


_DURATION_RE = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
    r"(ms|s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days)?\s*$"
)
_PART_RE = re.compile(
    r"([0-9]*\.?[0-9]+)(ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d)"
)
_UNIT_S = {
    None: 1.0,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"1.5min"``, ``"10m"`` (minutes), ``"2h"``, ``"2h30min"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if match:
            seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        else:  # compound: "2h30min", "1h 15m 10s"
            text = value.replace(" ", "")
            parts = _PART_RE.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r} (examples: 90, 90s, 1.5min, 2h, 2h30min)")
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be finite and >= 0, got {value!r}")
    return seconds


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


@dataclass
class _Located:
    value: Any
    line: int


def _to_located(node: yaml.Node) -> Any:
    """Turn a composed YAML node into python values, mappings keep each key's line."""
    if isinstance(node, yaml.MappingNode):
        out: dict[str, _Located] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            out[str(key)] = _Located(_to_located(value_node), key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_Located(_to_located(item), item.start_mark.line + 1) for item in node.value]
    return yaml.safe_load(yaml.serialize(node))


_EVENT_KEYS = {
    "at",
    "pump",
    "fault",
    "severity",
    "time_to_failure",
    "tag",
    "duration",
    "clear",
    "permissive",
    "acknowledge",
    "demand_scale",
    "comment",
}
_TOP_KEYS = {"name", "description", "seed", "pumps", "events"}


def _err(source: str, line: int, fieldname: str, message: str) -> ScenarioError:
    return ScenarioError(f"{source}:{line}: {fieldname}: {message}")


def _parse_event(raw: Any, line: int, source: str) -> ScenarioEvent:
    if not isinstance(raw, dict):
        raise _err(source, line, "event", "each event must be a mapping with 'at:'")
    unknown = sorted(set(raw) - _EVENT_KEYS)
    if unknown:
        key = unknown[0]
        raise _err(source, raw[key].line, key, f"unknown field (known: {', '.join(sorted(_EVENT_KEYS))})")
    if "at" not in raw:
        raise _err(source, line, "at", "missing (time of the event, e.g. 60s)")

    def get(key: str) -> Any:
        return raw[key].value if key in raw else None

    def fail(key: str, message: str) -> ScenarioError:
        return _err(source, raw[key].line if key in raw else line, key, message)

    try:
        at_s = parse_duration(get("at"))
    except ValueError as exc:
        raise fail("at", str(exc)) from None
    actions = [k for k in ("fault", "clear", "permissive", "acknowledge", "demand_scale") if k in raw]
    if len(actions) != 1:
        raise _err(
            source, line, "event", "needs exactly one of fault, clear, permissive, acknowledge, demand_scale"
        )
    action = actions[0]
    if action in ("fault", "clear"):
        pump = get("pump")
        if not isinstance(pump, int) or isinstance(pump, bool) or pump < 1:
            raise fail("pump", f"pump number (1-based integer) required, got {pump!r}")
        if action == "clear":
            what = get("clear")
            if what in ("all", None, True):
                return ScenarioEvent(at_s=at_s, clear=(pump, None), line=line)
            try:
                return ScenarioEvent(at_s=at_s, clear=(pump, FaultKind.parse(what)), line=line)
            except ValueError as exc:
                raise fail("clear", str(exc)) from None
        try:
            kind = FaultKind.parse(get("fault"))
        except ValueError as exc:
            raise fail("fault", str(exc)) from None
        kwargs: dict[str, Any] = {}
        for key, conv, name in (
            ("severity", float, "severity"),
            ("time_to_failure", parse_duration, "time_to_failure_s"),
            ("tag", str, "tag"),
            ("duration", parse_duration, "duration_s"),
        ):
            if key in raw:
                try:
                    kwargs[name] = conv(get(key))
                except (TypeError, ValueError) as exc:
                    raise fail(key, str(exc)) from None
        try:
            fault = Fault(kind=kind, pump=pump, **kwargs)
        except ValueError as exc:
            bad = next(
                (k for k in ("severity", "time_to_failure", "tag", "duration") if k in str(exc)), "fault"
            )
            raise fail(bad, str(exc)) from None
        return ScenarioEvent(at_s=at_s, fault=fault, line=line)
    for key in ("pump", "severity", "time_to_failure", "tag", "duration"):
        if key in raw:
            raise fail(key, f"not allowed with {action}")
    value = get(action)
    if action in ("permissive", "acknowledge"):
        if not isinstance(value, bool):
            raise fail(action, f"true or false expected, got {value!r}")
        if action == "permissive":
            return ScenarioEvent(at_s=at_s, permissive=value, line=line)
        return ScenarioEvent(at_s=at_s, acknowledge=value, line=line)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 5:
        raise fail(action, f"number in [0, 5] expected, got {value!r}")
    return ScenarioEvent(at_s=at_s, demand_scale=float(value), line=line)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse scenario YAML text; errors are :class:`ScenarioError` naming source:line: field."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ScenarioError(f"{source}:{line}: invalid YAML: {exc}") from None
    if node is None:
        return Scenario(source=source)
    data = _to_located(node)
    top: dict[str, Any] = {}
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            key = unknown[0]
            raise _err(source, data[key].line, key, f"unknown field (known: {', '.join(sorted(_TOP_KEYS))})")
        top = {k: v.value for k, v in data.items()}
        items = top.get("events") or []
        if not isinstance(items, list):
            raise _err(source, data["events"].line, "events", "must be a list of events")
        for key, kind in (("seed", int), ("pumps", int)):
            val = top.get(key)
            if val is not None and (not isinstance(val, kind) or isinstance(val, bool) or val < 0):
                raise _err(source, data[key].line, key, f"non-negative integer expected, got {val!r}")
        if top.get("pumps") is not None and not 1 <= top["pumps"] <= 8:
            raise _err(source, data["pumps"].line, "pumps", "between 1 and 8")
    else:
        raise ScenarioError(f"{source}:1: a scenario is a mapping with 'events:' or a list of events")
    events = [_parse_event(item.value, item.line, source) for item in items]
    events.sort(key=lambda e: e.at_s)  # stable: same-time events keep file order
    if top.get("pumps") is not None:
        for ev in events:
            pump = ev.fault.pump if ev.fault else ev.clear[0] if ev.clear else None
            if pump is not None and pump > top["pumps"]:
                raise _err(
                    source, ev.line or 0, "pump", f"pump {pump} but the scenario has {top['pumps']} pumps"
                )
    return Scenario(
        events=tuple(events),
        name=str(top.get("name") or Path(source).stem),
        description=str(top.get("description") or ""),
        seed=top.get("seed"),
        pumps=top.get("pumps"),
        source=source,
    )


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario YAML file (see module docstring)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read scenario: {exc.strerror}") from None
    return parse_scenario(text, source=str(p))


def parse_fault_flag(text: str) -> ScenarioEvent:
    """Parse ``PUMP:NAME[@T][,key=value...]`` e.g. ``1:bearing_wear@60s,time_to_failure=2h``.

    Keys: severity, time_to_failure (or ttf), tag, duration. Without ``@T`` the fault starts at 0.
    """
    head, *opts = [part.strip() for part in text.split(",")]
    match = re.match(r"^(\d+)\s*:\s*([A-Za-z_\-0-9]+)\s*(?:@\s*(.+))?$", head)
    if not match:
        raise ScenarioError(
            f"--fault {text!r}: expected PUMP:NAME[@TIME][,key=value...], e.g. 1:cavitation@10min"
        )
    try:
        at_s = parse_duration(match.group(3)) if match.group(3) else 0.0
        kind = FaultKind.parse(match.group(2))
        kwargs: dict[str, Any] = {}
        for opt in opts:
            key, sep, value = opt.partition("=")
            key = key.strip().lower()
            if not sep:
                raise ValueError(f"option {opt!r} is not key=value")
            if key == "severity":
                kwargs["severity"] = float(value)
            elif key in ("time_to_failure", "ttf"):
                kwargs["time_to_failure_s"] = parse_duration(value.strip())
            elif key == "tag":
                kwargs["tag"] = value.strip()
            elif key == "duration":
                kwargs["duration_s"] = parse_duration(value.strip())
            else:
                raise ValueError(f"unknown option {key!r} (severity, time_to_failure, tag, duration)")
        return ScenarioEvent(at_s=at_s, fault=Fault(kind=kind, pump=int(match.group(1)), **kwargs))
    except ValueError as exc:
        raise ScenarioError(f"--fault {text!r}: {exc}") from None


def merge_events(*groups: Sequence[ScenarioEvent]) -> tuple[ScenarioEvent, ...]:
    """All events of several sources, in time order (stable)."""
    events = [ev for group in groups for ev in group]
    events.sort(key=lambda e: e.at_s)
    return tuple(events)
