"""The PLC's side of the station: what it accepts from outside, and the log of every write.

Pure logic, no I/O; the Modbus and OPC UA servers and the Python API all call
:meth:`Plc.write`, so one set of rules applies to every protocol:

- ``PumpN.ExternalSpeedSetpoint`` is accepted only while the operator's permissive is on and the
  agent's heartbeat is alive; it is clamped to the PLC's own limits (``min_speed_rpm`` ..
  ``max_speed_rpm``; the log says ``clamped to 2950``). Refused writes are not stored: like a PLC
  doing setpoint tracking, the register keeps following the setpoint in use, so a verifying read
  shows the refusal. A value that is not finite is refused as an illegal value (Modbus
  exception 03, OPC UA BadOutOfRange).
- The heartbeat is alive while ``Station.AgentHeartbeat`` has *changed* within
  ``heartbeat_timeout_s`` (a write of the same value does not count). The clock is injected:
  simulated time by default (deterministic), the monotonic wall clock when served
  (``serve()``), because the agent lives in wall time.
- When permissive goes off or the heartbeat goes stale, the PLC falls back to its own PI
  controller, bumplessly (the PI starts from the setpoint in use).
- ``Station.Acknowledge`` is a pulse: it resets itself ``ack_pulse_s`` after being set (0 = stays
  until a client clears it).
- HMI tags are display values: always accepted and stored.
- ``Simulation.PumpN.FaultInject`` injects a fault code (0 clears); unknown codes are illegal values.

Operator actions of a scenario file are logged with protocol ``scenario``, Python calls with
``api`` (the default). Every write, accepted or refused, appends one :class:`WriteLogEntry` (bounded deque,
``write_log_limit`` entries, overflow counted in ``write_log_dropped``). Transitions (permissive,
heartbeat, remote control) are appended to ``events`` and logged once each.

Concurrency: everything runs on one event loop; nothing here awaits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .register_map import RegisterEntry, build_register_map

__all__ = ["Plc", "PlcEvent", "WriteLogEntry", "WriteResult"]

log = logging.getLogger("simulator.plc")

Value = float | int | bool


@dataclass(frozen=True)
class WriteLogEntry:
    """One external write as the PLC received it."""

    wall_time: datetime  # UTC
    sim_time_s: float
    protocol: str  # "modbus" | "opcua" | "api" | "scenario"
    address: str  # e.g. "HR 120-121 (40121-40122)" or "nsu=...;s=Pump1.ExternalSpeedSetpoint"
    tag: str | None  # None when the address maps to no tag
    raw: object  # registers / bits / the OPC UA variant value as received
    value: Value | None  # decoded engineering value requested
    accepted: bool
    applied: Value | None  # value stored / in use after the write (None when refused)
    reason: str  # "applied", "clamped to 2950", "permissive off", "heartbeat stale", ...
    previous: Value | None = None  # what the register held just before this write


@dataclass(frozen=True)
class WriteResult:
    accepted: bool
    applied: Value | None
    reason: str
    error: str | None = None  # None | "illegal_value" | "illegal_address" | "read_only"


@dataclass(frozen=True)
class PlcEvent:
    wall_time: datetime
    sim_time_s: float
    message: str


class Plc:
    """PLC memory and rules for everything written from outside. See the module docstring."""

    def __init__(
        self,
        *,
        pumps: int,
        min_speed_rpm: float,
        max_speed_rpm: float,
        heartbeat_timeout_s: float = 10.0,
        ack_pulse_s: float = 5.0,
        permissive: bool = False,
        clock: Callable[[], float] | None = None,
        write_log_limit: int = 100_000,
    ) -> None:
        self.pumps = pumps
        self.min_speed_rpm = float(min_speed_rpm)
        self.max_speed_rpm = float(max_speed_rpm)
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.ack_pulse_s = float(ack_pulse_s)
        self.clock = clock
        self.sim_time_s = 0.0
        self.write_log: deque[WriteLogEntry] = deque(maxlen=write_log_limit)
        self.write_log_dropped = 0
        self._write_log_fd: int | None = None
        self.events: deque[PlcEvent] = deque(maxlen=10_000)
        #: called with (pump, code); returns None when done or an error text
        self.on_fault_command: Callable[[int, int], str | None] | None = None
        #: reads the current fault code of a pump (for the FaultInject read-back)
        self.fault_code_of: Callable[[int], int] | None = None
        self._entries: dict[str, RegisterEntry] = {e.name: e for e in build_register_map(pumps) if e.writable}
        self._all_names = {e.name for e in build_register_map(pumps)}
        self.values: dict[str, Value] = {}
        for name, e in self._entries.items():
            self.values[name] = False if e.type == "bool" else (0.0 if e.type == "float32" else 0)
        self.values["Station.Permissive"] = bool(permissive)
        self.values["Station.EnergyPrice"] = 0.10  # until the site's EMS writes one
        for i in range(1, pumps + 1):
            self.values[f"Pump{i}.RunRequest"] = True  # the pumps run, as they always did
        self._heartbeat_changed_at: float | None = None
        self._ack_set_at: float | None = None
        self._remote_active = False
        self._hb_ok = False
        #: incremented by every write (accepted or not): snapshots built earlier are stale
        self.version = 0

    # -- clock and state --------------------------------------------------------------------

    def set_clock(self, clock: Callable[[], float] | None) -> None:
        """Change the watchdog clock (None = simulated time); forgets earlier heartbeats."""
        self.clock = clock
        self._heartbeat_changed_at = None
        self._ack_set_at = None

    def now(self) -> float:
        """The watchdog clock (seconds): injected clock, or simulated time."""
        return self.clock() if self.clock is not None else self.sim_time_s

    @property
    def permissive(self) -> bool:
        return bool(self.values["Station.Permissive"])

    @property
    def acknowledge(self) -> bool:
        return bool(self.values["Station.Acknowledge"])

    def heartbeat_age_s(self) -> float | None:
        if self._heartbeat_changed_at is None:
            return None
        return max(0.0, self.now() - self._heartbeat_changed_at)

    def heartbeat_ok(self) -> bool:
        age = self.heartbeat_age_s()
        return age is not None and age <= self.heartbeat_timeout_s

    def external_active(self) -> bool:
        """External setpoints in use: permissive on and heartbeat alive."""
        return self.permissive and self.heartbeat_ok()

    def setpoint(self, pump: int) -> float:
        return float(self.values[f"Pump{pump}.ExternalSpeedSetpoint"])

    def track_setpoint(self, pump: int, rpm: float) -> None:
        """Setpoint tracking while external control is inactive (bumpless transfer)."""
        self.values[f"Pump{pump}.ExternalSpeedSetpoint"] = float(rpm)

    def run_request(self, pump: int) -> bool:
        """The run request of a pump (obeyed only in external control)."""
        return bool(self.values.get(f"Pump{pump}.RunRequest", True))

    def track_run(self, pump: int) -> None:
        """Out of remote the pumps run under local control: the request tracks it (bumpless)."""
        self.values[f"Pump{pump}.RunRequest"] = True

    def clamp(self, rpm: float) -> float:
        return min(max(rpm, self.min_speed_rpm), self.max_speed_rpm)

    def update(self) -> bool:
        """Once per scan: pulses and transitions. Returns whether external control is active."""
        now = self.now()
        if (
            self._ack_set_at is not None
            and self.ack_pulse_s > 0
            and now - self._ack_set_at >= self.ack_pulse_s
        ):
            self.values["Station.Acknowledge"] = False
            self._ack_set_at = None
        hb = self.heartbeat_ok()
        if hb != self._hb_ok:
            self._hb_ok = hb
            if hb:
                self._event("agent heartbeat alive")
            elif self._heartbeat_changed_at is not None:
                self._event(f"agent heartbeat stale (no change for {self.heartbeat_timeout_s:g} s)")
        active = self.permissive and hb
        if active != self._remote_active:
            self._remote_active = active
            if active:
                self._event("external speed setpoints active")
            else:
                why = "permissive off" if not self.permissive else "heartbeat stale"
                self._event(f"falling back to local PI control ({why})")
        return active

    def _event(self, message: str) -> None:
        self.events.append(PlcEvent(datetime.now(UTC), self.sim_time_s, message))
        log.info("PLC: %s (t=%.1f s)", message, self.sim_time_s)

    def read(self, name: str) -> Value:
        if name.endswith(".FaultInject") and self.fault_code_of is not None:
            pump = int(name.split(".")[1].removeprefix("Pump"))
            return self.fault_code_of(pump)
        if name == "Station.OperatorCommand":
            return int(self.permissive) | (int(self.acknowledge) << 1)
        return self.values[name]

    # -- writes -----------------------------------------------------------------------------

    def write(
        self,
        name: str,
        value: Value,
        *,
        protocol: str = "api",
        address: str | None = None,
        raw: object = None,
    ) -> WriteResult:
        """Apply one external write through the PLC rules and log it."""
        previous = self.values.get(name)
        result = self._write(name, value)
        self.version += 1
        self.log_write(
            protocol=protocol,
            address=address if address is not None else name,
            tag=name if name in self._all_names else None,
            raw=value if raw is None else raw,
            value=value,
            result=result,
            previous=previous,
        )
        return result

    def log_writes_to(self, path: str | os.PathLike[str]) -> None:
        """Also append every write-log entry to ``path`` as one JSON line, written (O_APPEND,
        unbuffered) as the write arrives, so that a test that kills processes loses nothing."""
        self.close_write_log()
        self._write_log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def close_write_log(self) -> None:
        if self._write_log_fd is not None:
            os.close(self._write_log_fd)
            self._write_log_fd = None

    def log_write(
        self,
        *,
        protocol: str,
        address: str,
        tag: str | None,
        raw: object,
        value: Value | None,
        result: WriteResult,
        previous: Value | None = None,
    ) -> None:
        """Append a write-log entry (servers call this for writes refused before the PLC rules)."""
        if len(self.write_log) == self.write_log.maxlen:
            self.write_log_dropped += 1
        entry = WriteLogEntry(
            wall_time=datetime.now(UTC),
            sim_time_s=self.sim_time_s,
            protocol=protocol,
            address=address,
            tag=tag,
            raw=raw,
            value=value,
            accepted=result.accepted,
            applied=result.applied,
            reason=result.reason,
            previous=previous,
        )
        self.write_log.append(entry)
        if self._write_log_fd is not None:
            line = {
                "wall_time": entry.wall_time.isoformat(),
                "mono": time.monotonic(),
                "sim_time_s": entry.sim_time_s,
                "protocol": protocol,
                "address": address,
                "tag": tag,
                "value": value,
                "accepted": result.accepted,
                "applied": result.applied,
                "reason": result.reason,
                "previous": previous,
            }
            os.write(self._write_log_fd, (json.dumps(line, default=str) + "\n").encode())

    def _write(self, name: str, value: Value) -> WriteResult:
        entry = self._entries.get(name)
        if entry is None:
            if name in self._all_names:
                return WriteResult(False, None, "read-only", "read_only")
            return WriteResult(False, None, "unknown tag", "illegal_address")
        coerced = _coerce(entry, value)
        if coerced is None:
            return WriteResult(False, None, f"illegal value {value!r} for {entry.type}", "illegal_value")
        rel = entry.relative_name
        if rel == "ExternalSpeedSetpoint":
            return self._write_setpoint(name, float(coerced))
        if rel == "AgentHeartbeat":
            changed = coerced != self.values[name]
            self.values[name] = coerced
            if changed:
                self._heartbeat_changed_at = self.now()
                return WriteResult(True, coerced, "heartbeat changed")
            return WriteResult(True, coerced, "heartbeat unchanged (watchdog not reset)")
        if rel == "Permissive":
            return self._set_permissive(bool(coerced))
        if rel == "Acknowledge":
            return self._set_ack(bool(coerced))
        if rel == "OperatorCommand":
            bits = int(coerced)
            self._set_permissive(bool(bits & 1))
            self._set_ack(bool(bits & 2))
            return WriteResult(
                True,
                bits & 3,
                f"permissive {'on' if bits & 1 else 'off'}" + (", acknowledge" if bits & 2 else ""),
            )
        if rel == "FaultInject":
            pump = int(name.split(".")[1].removeprefix("Pump"))
            if self.on_fault_command is None:
                return WriteResult(False, None, "fault injection not connected", "illegal_value")
            err = self.on_fault_command(pump, int(coerced))
            if err:
                return WriteResult(False, None, err, "illegal_value")
            return WriteResult(True, coerced, "cleared all faults" if coerced == 0 else "fault injected")
        self.values[name] = coerced
        return WriteResult(True, coerced, "stored")

    def _write_setpoint(self, name: str, rpm: float) -> WriteResult:
        if not math.isfinite(rpm):
            return WriteResult(False, None, "not finite", "illegal_value")
        if not self.permissive:
            return WriteResult(False, None, "permissive off")
        if not self.heartbeat_ok():
            return WriteResult(
                False,
                None,
                "heartbeat stale" if self._heartbeat_changed_at is not None else "no heartbeat yet",
            )
        applied = self.clamp(rpm)
        self.values[name] = applied
        if applied != rpm:
            return WriteResult(True, applied, f"clamped to {applied:g}")
        return WriteResult(True, applied, "applied")

    def _set_permissive(self, on: bool) -> WriteResult:
        before = self.permissive
        self.values["Station.Permissive"] = on
        if on != before:
            self._event(f"permissive {'on' if on else 'off'} (operator)")
        return WriteResult(True, on, f"permissive {'on' if on else 'off'}")

    def _set_ack(self, on: bool) -> WriteResult:
        self.values["Station.Acknowledge"] = on
        self._ack_set_at = self.now() if on else None
        return WriteResult(True, on, "acknowledge set" if on else "acknowledge cleared")


def _coerce(entry: RegisterEntry, value: Value) -> Value | None:
    if entry.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        return None
    if entry.type == "float32":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)
    # uint16 / bits16
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        return None
    return value
