"""The simulator's tag list, Modbus register map and OPC UA types, as data.

One entry per tag. The tag name is also the OPC UA string node id (``ns=<idx>;s=<name>``,
stored as ``nsu=urn:edge-inference-agent:simulator;s=<name>``) and the column of wide
recordings. The tables of ``REGISTER_MAP.md`` are generated from this module (``update_markdown_file()``)
and a test keeps the two identical.

Addressing: ``address`` is the 0-based PDU address on the wire. The classic notation adds the
table prefix and one: holding register 0 is 40001, input register 100 is 30101, coil 0 is 00001,
discrete input 0 is 10001.

Types (``type``):

- ``float32``: IEEE 754 single over two registers, word order ``ABCD`` (high word first) or
  ``CDAB`` (low word first). NaN (0x7FC00000) means no valid value.
- ``int32`` / ``uint32``: two registers, same orders, engineering = raw * scale.
- ``int16`` / ``uint16``: one register, engineering = raw * scale. Values beyond the raw range
  saturate. No valid value (sensor dropout) is 0x8000 (-32768) for int16 and 0xFFFF for uint16.
- ``bits16``: one register, a bit field (bits documented in the description and in
  ``PUMP_STATUS_BITS`` / ``STATION_STATUS_BITS`` / ``OPERATOR_COMMAND_BITS``).
- ``bool``: a coil or discrete input.

``access``: ``R`` read-only, ``RW`` written by clients through the PLC logic (every write is
logged). ``group`` says who writes or what it is: ``measurement`` (plant, read by the agent),
``hmi`` (written by the agent for the operator), ``control`` (external setpoint),
``agent`` (heartbeat, status), ``operator`` (permissive, acknowledge) and ``simulation``
(ground truth and fault injection: never bind these in an agent configuration).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "MAX_PUMPS",
    "NAMESPACE_URI",
    "OPERATOR_COMMAND_BITS",
    "PUMP_STATUS_BITS",
    "REGISTER_MAP",
    "STATION_STATUS_BITS",
    "UNIT_ID",
    "RegisterEntry",
    "build_register_map",
    "decode",
    "encode",
    "entry_by_name",
    "render_markdown",
]

NAMESPACE_URI = "urn:edge-inference-agent:simulator"
UNIT_ID = 1
MAX_PUMPS = 8

PUMP_BLOCK_STRIDE = 100  # pump i's input and holding blocks start at 100 * i
SIM_BASE = 1000  # simulation (ground truth) block
SIM_PUMP_STRIDE = 10

#: Bits of ``PumpN.Status`` (input register).
PUMP_STATUS_BITS = {
    0: "RUNNING",
    1: "REMOTE (external setpoint in use)",
    2: "AT_MIN_SPEED",
    3: "AT_MAX_SPEED",
    4: "WINDING_HOT (WindingTemp > 130 °C)",
    5: "OVERCURRENT (MotorCurrent > rated 40 A)",
    6: "SUCTION_LOW (SuctionPressure < -0.5 bar)",
    7: "SIGNAL_FAULT (an analog input of this pump has no valid value)",
}
#: Bits of ``Station.Status`` (input register).
STATION_STATUS_BITS = {
    0: "PERMISSIVE (operator remote enable)",
    1: "HEARTBEAT_OK (agent heartbeat changed within the timeout)",
    2: "REMOTE_ACTIVE (external setpoints in use: permissive and heartbeat ok)",
    3: "LEVEL_LOW (TankLevel below band low)",
    4: "LEVEL_HIGH (TankLevel above band high)",
    5: "ACKNOWLEDGE (operator acknowledge pending)",
}
#: Bits of ``Station.OperatorCommand`` (holding register mirror of coils 0 and 1).
OPERATOR_COMMAND_BITS = {0: "PERMISSIVE", 1: "ACKNOWLEDGE"}

_TABLE_PREFIX = {"coil": 0, "discrete": 1, "input": 3, "holding": 4}
_TABLE_SHORT = {"coil": "CO", "discrete": "DI", "input": "IR", "holding": "HR"}
_REGS = {"float32": 2, "int32": 2, "uint32": 2, "int16": 1, "uint16": 1, "bits16": 1, "bool": 1}


@dataclass(frozen=True)
class RegisterEntry:
    """One tag: where it lives in Modbus, how it is encoded, and its OPC UA type."""

    name: str
    table: str  # "input" | "holding" | "coil" | "discrete"
    address: int  # 0-based PDU address
    type: str  # float32 | int32 | uint32 | int16 | uint16 | bits16 | bool
    order: str  # "ABCD" | "CDAB" for 32-bit types, "" otherwise
    scale: float  # engineering value = raw * scale
    unit: str
    access: str  # "R" | "RW"
    description: str
    group: str  # measurement | hmi | control | agent | operator | simulation
    opcua_type: str  # Double | Float | UInt16 | Boolean
    eu_range: tuple[float, float] | None = None
    pump: int | None = None  # 1-based pump number for per-pump tags

    @property
    def count(self) -> int:
        """Registers (or bits) occupied."""
        return _REGS[self.type]

    @property
    def end(self) -> int:
        """Last address occupied (inclusive)."""
        return self.address + self.count - 1

    @property
    def modicon(self) -> str:
        """Classic 1-based notation, e.g. ``40121`` (``40121-40122`` for 32-bit values)."""
        prefix = _TABLE_PREFIX[self.table]
        first = f"{prefix}{self.address + 1:04d}"
        if self.count == 1:
            return first
        return f"{first}-{prefix}{self.end + 1:04d}"

    @property
    def where(self) -> str:
        """Both notations, for messages: ``HR 120-121 (40121-40122)``."""
        span = f"{self.address}" if self.count == 1 else f"{self.address}-{self.end}"
        return f"{_TABLE_SHORT[self.table]} {span} ({self.modicon})"

    @property
    def writable(self) -> bool:
        return self.access == "RW"

    @property
    def relative_name(self) -> str:
        """``Flow`` for ``Pump1.Flow``, ``TankLevel`` for ``Station.TankLevel``."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def decimals(self) -> int:
        """Decimals worth printing (from the scale, 4 for floats)."""
        if self.type == "float32":
            return 4
        if self.type in ("bits16", "bool"):
            return 0
        return max(0, round(-math.log10(self.scale))) if self.scale < 1 else 0


def _e(
    name: str,
    table: str,
    address: int,
    type_: str,
    order: str = "",
    scale: float = 1.0,
    unit: str = "",
    access: str = "R",
    description: str = "",
    group: str = "measurement",
    opcua_type: str | None = None,
    eu_range: tuple[float, float] | None = None,
    pump: int | None = None,
) -> RegisterEntry:
    if opcua_type is None:
        if type_ == "bool":
            opcua_type = "Boolean"
        elif type_ == "bits16" or (type_ == "uint16" and scale == 1.0 and not unit):
            opcua_type = "UInt16"
        else:
            opcua_type = "Double"
    return RegisterEntry(
        name,
        table,
        address,
        type_,
        order,
        scale,
        unit,
        access,
        description,
        group,
        opcua_type,
        eu_range,
        pump,
    )


# fmt: off
def _station_entries() -> list[RegisterEntry]:
    ir = "input"
    return [
        _e("Station.TankLevel", ir, 0, "float32", "ABCD", unit="m", eu_range=(0.0, 5.0),
           description="Tank level (radar), 0 = tank bottom"),
        _e("Station.OutletFlow", ir, 2, "float32", "CDAB", unit="m3/h", eu_range=(0.0, 500.0),
           description="Tank outlet flow = consumer demand (magnetic flow meter)"),
        _e("Station.TotalFlow", ir, 4, "float32", "CDAB", unit="m3/h", eu_range=(0.0, 500.0),
           description="Discharge header flow (sum of the pumps)"),
        _e("Station.HeaderPressure", ir, 6, "uint16", scale=0.01, unit="bar", eu_range=(0.0, 10.0),
           description="Discharge header pressure, gauge, at pump centreline height"),
        _e("Station.AmbientTemp", ir, 7, "int16", scale=0.1, unit="°C", eu_range=(-20.0, 60.0),
           description="Pump room air temperature"),
        _e("Station.TotalPower", ir, 8, "float32", "ABCD", unit="kW", eu_range=(0.0, 200.0),
           description="Electrical input power of all drives"),
        _e("Station.EnergyTotal", ir, 10, "int32", "ABCD", scale=0.001, unit="kWh", eu_range=(0.0, 2.0e6),
           description="Energy meter since start (raw in Wh)"),
        _e("Station.VolumeTotal", ir, 12, "uint32", "CDAB", scale=0.01, unit="m3", eu_range=(0.0, 4.0e7),
           description="Pumped volume since start (raw in 0.01 m3)"),
        _e("Station.LevelSetpoint", ir, 14, "uint16", scale=0.001, unit="m", eu_range=(0.0, 5.0),
           description="Level setpoint of the PLC's own PI controller"),
        _e("Station.Status", ir, 15, "bits16",
           description="bit0 PERMISSIVE, bit1 HEARTBEAT_OK, bit2 REMOTE_ACTIVE, bit3 LEVEL_LOW, "
           "bit4 LEVEL_HIGH, bit5 ACKNOWLEDGE"),
        _e("Station.HeartbeatAge", ir, 16, "uint16", scale=0.1, unit="s", eu_range=(0.0, 6553.4),
           description="Seconds since the agent heartbeat last changed (6553.4 = that long or never)"),
        _e("Station.SpecificEnergy", ir, 17, "float32", "ABCD", unit="kWh/m3", eu_range=(0.0, 2.0),
           description="TotalPower / TotalFlow (NaN below 1 m3/h)"),
        # holding: agent and operator
        _e("Station.AgentHeartbeat", "holding", 0, "uint16", access="RW", group="agent",
           description="Agent heartbeat counter: must change within the heartbeat timeout"),
        _e("Station.AgentStatus", "holding", 1, "bits16", access="RW", group="agent",
           description="Agent status word (defined by the agent: mode, health, hold reason)"),
        _e("Station.OperatorCommand", "holding", 2, "bits16", access="RW", group="operator",
           description="Mirror of the operator coils: bit0 PERMISSIVE, bit1 ACKNOWLEDGE (writable)"),
        _e("Station.EnergyPrice", "holding", 3, "float32", "ABCD", unit="EUR/kWh", access="RW", group="ems",
           eu_range=(0.0, 10.0),
           description="Energy price now, per kWh: written by the site's energy management system "
           "(a tariff's price_tag reads it); 0.10 at start"),
        _e("Station.Permissive", "coil", 0, "bool", access="RW", group="operator",
           description="Operator remote enable: external setpoints applied only while on"),
        _e("Station.Acknowledge", "coil", 1, "bool", access="RW", group="operator",
           description="Operator acknowledge; resets itself after ack_pulse_s (default 5 s) or when cleared"),
        _e("Station.HeartbeatOk", "discrete", 0, "bool",
           description="Agent heartbeat changed within the heartbeat timeout"),
        _e("Station.RemoteActive", "discrete", 1, "bool",
           description="External setpoints in use (permissive on and heartbeat ok)"),
        _e("Station.LevelLow", "discrete", 2, "bool", description="TankLevel below band low"),
        _e("Station.LevelHigh", "discrete", 3, "bool", description="TankLevel above band high"),
    ]


def _pump_entries(i: int) -> list[RegisterEntry]:
    b = PUMP_BLOCK_STRIDE * i
    p = f"Pump{i}."
    ir, hr = "input", "holding"
    return [
        _e(p + "Speed", ir, b + 0, "float32", "ABCD", unit="rpm", eu_range=(0.0, 3000.0), pump=i,
           description="Actual speed (VFD feedback)"),
        _e(p + "SpeedSetpoint", ir, b + 2, "float32", "ABCD", unit="rpm", eu_range=(0.0, 3000.0), pump=i,
           description="Speed setpoint in use (PLC PI output or clamped external setpoint)"),
        _e(p + "Flow", ir, b + 4, "float32", "CDAB", unit="m3/h", eu_range=(0.0, 300.0), pump=i,
           description="Pump flow"),
        _e(p + "SuctionPressure", ir, b + 6, "int16", scale=0.01, unit="bar", eu_range=(-1.0, 3.0), pump=i,
           description="Suction pressure, gauge (negative = vacuum)"),
        _e(p + "DischargePressure", ir, b + 7, "uint16", scale=0.01, unit="bar", eu_range=(0.0, 10.0), pump=i,
           description="Discharge pressure, gauge, upstream of the discharge valve"),
        _e(p + "MotorCurrent", ir, b + 8, "uint16", scale=0.1, unit="A", eu_range=(0.0, 60.0), pump=i,
           description="Motor current (RMS, VFD output)"),
        _e(p + "MotorPower", ir, b + 9, "float32", "CDAB", unit="kW", eu_range=(0.0, 30.0), pump=i,
           description="Electrical input power of the drive"),
        _e(p + "WindingTemp", ir, b + 11, "int16", scale=0.1, unit="°C", eu_range=(0.0, 150.0), pump=i,
           description="Stator winding temperature (PT100)"),
        _e(p + "BearingTemp", ir, b + 12, "int16", scale=0.1, unit="°C", eu_range=(0.0, 150.0), pump=i,
           description="Pump drive-end bearing temperature (PT100)"),
        _e(p + "Vibration", ir, b + 13, "float32", "ABCD", unit="mm/s", eu_range=(0.0, 25.0), pump=i,
           description="Overall vibration velocity, RMS 10-1000 Hz (ISO 10816/20816)"),
        _e(p + "Vib1x", ir, b + 15, "uint16", scale=0.01, unit="mm/s", eu_range=(0.0, 25.0), pump=i,
           description="Band RMS around 1x running speed (imbalance)"),
        _e(p + "Vib2x", ir, b + 16, "uint16", scale=0.01, unit="mm/s", eu_range=(0.0, 25.0), pump=i,
           description="Band RMS around 2x running speed (misalignment, looseness, electrical)"),
        _e(p + "VibBearing", ir, b + 17, "uint16", scale=0.01, unit="mm/s", eu_range=(0.0, 25.0), pump=i,
           description="Band RMS at the bearing defect frequencies (BPFO/BPFI, envelope)"),
        _e(p + "VibHF", ir, b + 18, "uint16", scale=0.01, unit="mm/s", eu_range=(0.0, 25.0), pump=i,
           description="High-frequency broadband RMS, 2-10 kHz (cavitation, flow noise)"),
        _e(p + "Status", ir, b + 19, "bits16", pump=i,
           description="bit0 RUNNING, bit1 REMOTE, bit2 AT_MIN_SPEED, bit3 AT_MAX_SPEED, bit4 WINDING_HOT, "
           "bit5 OVERCURRENT, bit6 SUCTION_LOW, bit7 SIGNAL_FAULT"),
        # HMI block written by the agent
        _e(p + "AlarmWord", hr, b + 0, "bits16", access="RW", group="hmi", pump=i,
           description="Agent alarm bits (one per alarm code, defined by the agent)"),
        _e(p + "HighestSeverity", hr, b + 1, "uint16", access="RW", group="hmi", pump=i,
           description="Highest severity among active alarms (0 = none)"),
        _e(p + "ActiveAlarmCount", hr, b + 2, "uint16", access="RW", group="hmi", pump=i,
           description="Number of active alarms"),
        _e(p + "FirstOutCode", hr, b + 3, "uint16", access="RW", group="hmi", pump=i,
           description="Code of the first alarm of the current episode"),
        _e(p + "FaultClass", hr, b + 4, "uint16", access="RW", group="hmi", pump=i,
           description="Diagnosed fault class (same codes as the simulator's fault labels)"),
        _e(p + "AnomalyScore", hr, b + 5, "float32", "ABCD", access="RW", group="hmi", pump=i,
           opcua_type="Float", eu_range=(0.0, 1.0), description="Anomaly score"),
        _e(p + "RUL", hr, b + 7, "float32", "ABCD", unit="h", access="RW", group="hmi", pump=i,
           eu_range=(0.0, 10000.0), description="Remaining useful life estimated by the agent"),
        _e(p + "RecommendedSpeed", hr, b + 9, "float32", "ABCD", unit="rpm", access="RW", group="hmi", pump=i,
           eu_range=(0.0, 3000.0), description="Speed recommended by the agent (display only)"),
        # start/stop: the agent's request and the motor's feedback (the remote-start permissive is
        # Station.RemoteActive: external control active)
        _e(p + "RunRequest", "coil", 1 + i, "bool", access="RW", group="control", pump=i,
           description="Run request from outside: obeyed only while Station.RemoteActive is on (clearing "
           "it stops the pump, setting it starts it); otherwise tracks the local state (true: running)"),
        _e(p + "Running", "discrete", 3 + i, "bool", group="status", pump=i,
           description="Running feedback (speed > 0)"),
        _e(p + "ExternalSpeedSetpoint", hr, b + 20, "float32", "ABCD", unit="rpm", access="RW",
           group="control", pump=i, eu_range=(0.0, 3000.0),
           description="External speed setpoint: applied (clamped) only while permissive is on and the "
           "heartbeat is alive; otherwise tracks SpeedSetpoint (bumpless)"),
        # after the setpoint: a register inside the gap before it would let merged reads span
        # unmapped addresses
        _e(p + "RecommenderReason", hr, b + 22, "uint16", access="RW", group="hmi", pump=i,
           description="What bound the agent's recommendation for this pump (the agent's reason code table)"),
    ]


def _simulation_entries(pumps: int) -> list[RegisterEntry]:
    s = SIM_BASE
    out = [
        _e("Simulation.Time", "input", s + 0, "uint32", "ABCD", scale=0.1, unit="s", group="simulation",
           description="Simulated time since start (raw in 0.1 s)"),
        _e("Simulation.Demand", "input", s + 2, "float32", "ABCD", unit="m3/h", group="simulation",
           description="True consumer demand (no sensor noise)"),
        _e("Simulation.OracleSpeed", "input", s + 4, "float32", "ABCD", unit="rpm", group="simulation",
           description="Oracle: speed minimising kWh/m3 while keeping the level in band"),
        _e("Simulation.OptimalSpeed", "input", s + 6, "float32", "ABCD", unit="rpm", group="simulation",
           description="Unconstrained minimum of specific energy at the current static head"),
        _e("Simulation.SpecificEnergyAvg", "input", s + 8, "float32", "ABCD", unit="kWh/m3",
           group="simulation", description="Energy / volume since start"),
    ]
    for i in range(1, pumps + 1):
        b = s + SIM_PUMP_STRIDE * i
        p = f"Simulation.Pump{i}."
        out += [
            _e(p + "FaultCode", "input", b + 0, "uint16", group="simulation", pump=i,
               description="True fault label (lowest active code, 0 = normal)"),
            _e(p + "FaultMask", "input", b + 1, "bits16", group="simulation", pump=i,
               description="All active faults: bit k set when fault code k is active"),
            _e(p + "TrueRUL", "input", b + 2, "float32", "ABCD", unit="h", group="simulation", pump=i,
               description="Exact remaining useful life (bearing wear), 10000 = none"),
            _e(p + "BearingDegradation", "input", b + 4, "float32", "ABCD", group="simulation", pump=i,
               description="Bearing degradation 0 (new) .. 1 (failed)"),
            _e(p + "FaultInject", "holding", s + i, "uint16", access="RW", group="simulation", pump=i,
               description="Write a fault code to inject it (severity 1, defaults), 0 to clear all "
               "faults of this pump; reads the current FaultCode"),
        ]
    return out


# fmt: on


@lru_cache(maxsize=16)
def build_register_map(pumps: int = 2) -> tuple[RegisterEntry, ...]:
    """The full map for a station of ``pumps`` pumps (1..8)."""
    if not 1 <= pumps <= MAX_PUMPS:
        raise ValueError(f"pumps must be between 1 and {MAX_PUMPS}, got {pumps}")
    entries = _station_entries()
    for i in range(1, pumps + 1):
        entries += _pump_entries(i)
    entries += _simulation_entries(pumps)
    _check(entries)
    return tuple(entries)


def _check(entries: Sequence[RegisterEntry]) -> None:
    names: set[str] = set()
    used: dict[tuple[str, int], str] = {}
    for e in entries:
        if e.name in names:
            raise AssertionError(f"duplicate tag {e.name}")
        names.add(e.name)
        if (e.count == 2) != bool(e.order):
            raise AssertionError(f"{e.name}: word order only for 32-bit types")
        for a in range(e.address, e.end + 1):
            key = (e.table, a)
            if key in used:
                raise AssertionError(f"{e.name} overlaps {used[key]} at {e.table} {a}")
            used[key] = e.name


REGISTER_MAP: tuple[RegisterEntry, ...] = build_register_map(2)


def entry_by_name(name: str, pumps: int = 2) -> RegisterEntry:
    for e in build_register_map(pumps):
        if e.name == name:
            return e
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# codec (ours: pymodbus only knows big/little word order)

_F32 = struct.Struct(">f")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
NAN_F32_WORDS = (0x7FC0, 0x0000)


def _words(value32: int, order: str) -> list[int]:
    hi, lo = (value32 >> 16) & 0xFFFF, value32 & 0xFFFF
    return [hi, lo] if order == "ABCD" else [lo, hi]


def encode(entry: RegisterEntry, value: float | int | bool | None) -> list[int]:
    """Engineering value → registers (or ``[0/1]`` for bits). ``None``/NaN → the no-value code."""
    t = entry.type
    if t == "bool":
        return [1 if value else 0]
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if t == "float32":
        if missing:
            return _words(0x7FC00000, entry.order)
        return _words(_U32.unpack(_F32.pack(float(value)))[0], entry.order)  # type: ignore[arg-type]
    if t in ("bits16",) or (t == "uint16" and entry.scale == 1.0):
        return [0 if missing else int(value) & 0xFFFF]  # type: ignore[arg-type]
    if t == "uint16":
        if missing:
            return [0xFFFF]
        return [min(max(round(float(value) / entry.scale), 0), 0xFFFE)]  # type: ignore[arg-type]
    if t == "int16":
        if missing:
            return [0x8000]
        raw = min(max(round(float(value) / entry.scale), -32767), 32767)  # type: ignore[arg-type]
        return [raw & 0xFFFF]
    if t in ("int32", "uint32"):
        lo_lim, hi_lim = (-(2**31) + 1, 2**31 - 1) if t == "int32" else (0, 2**32 - 2)
        if missing:
            raw32 = 0x80000000 if t == "int32" else 0xFFFFFFFF
        else:
            raw32 = min(max(round(float(value) / entry.scale), lo_lim), hi_lim) & 0xFFFFFFFF  # type: ignore[arg-type]
        return _words(raw32, entry.order)
    raise ValueError(f"{entry.name}: unknown type {t}")


def decode(entry: RegisterEntry, registers: Sequence[int]) -> float | int | bool:
    """Registers → engineering value (NaN for the no-value codes of scaled types)."""
    t = entry.type
    if t == "bool":
        return bool(registers[0])
    if entry.count == 2:
        a, b = registers[0] & 0xFFFF, registers[1] & 0xFFFF
        raw32 = (a << 16 | b) if entry.order == "ABCD" else (b << 16 | a)
        if t == "float32":
            return float(_F32.unpack(_U32.pack(raw32))[0])
        if t == "int32":
            if raw32 == 0x80000000:
                return math.nan
            return int(_I32.unpack(_U32.pack(raw32))[0]) * entry.scale
        if raw32 == 0xFFFFFFFF:
            return math.nan
        return raw32 * entry.scale
    raw = registers[0] & 0xFFFF
    if t == "bits16" or (t == "uint16" and entry.scale == 1.0):
        return raw
    if t == "uint16":
        return math.nan if raw == 0xFFFF else raw * entry.scale
    if t == "int16":
        if raw == 0x8000:
            return math.nan
        return (raw - 0x10000 if raw & 0x8000 else raw) * entry.scale
    raise ValueError(f"{entry.name}: unknown type {t}")


# ---------------------------------------------------------------------------------------------
# documentation

MARK_BEGIN = "<!-- BEGIN GENERATED TABLES (simulator.register_map.update_markdown_file) -->"
MARK_END = "<!-- END GENERATED TABLES -->"

_TABLE_TITLES = {
    "input": "Input registers (FC4, read-only)",
    "holding": "Holding registers (FC3 read, FC6/FC16 write)",
    "coil": "Coils (FC1 read, FC5/FC15 write)",
    "discrete": "Discrete inputs (FC2, read-only)",
}


def _fmt_scale(e: RegisterEntry) -> str:
    if e.type in ("bool", "bits16", "float32") or e.scale == 1.0:
        return "-"
    return f"{e.scale:g}"


def render_markdown(entries: Iterable[RegisterEntry] | None = None, pumps_shown: int = 2) -> str:
    """The generated part of REGISTER_MAP.md (tables per Modbus table, then OPC UA nodes)."""
    items = list(entries) if entries is not None else list(build_register_map(pumps_shown))
    lines = [MARK_BEGIN, ""]
    for table in ("input", "holding", "coil", "discrete"):
        rows = sorted((e for e in items if e.table == table), key=lambda e: e.address)
        lines += [f"### {_TABLE_TITLES[table]}", ""]
        lines.append(
            "| Address (0-based) | Modicon | Tag | Type | Order | Scale | Unit | Access | Group "
            "| Description |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for e in rows:
            addr = f"{e.address}" if e.count == 1 else f"{e.address}-{e.end}"
            lines.append(
                f"| {addr} | {e.modicon} | `{e.name}` | {e.type} | {e.order or '-'} | {_fmt_scale(e)} | "
                f"{e.unit or '-'} | {e.access} | {e.group} | {e.description} |"
            )
        lines.append("")
    lines += ["### OPC UA variables", ""]
    lines.append(
        "| Node id (string, namespace `" + NAMESPACE_URI + "`) | DataType | Unit | EURange | Access |"
    )
    lines.append("|---|---|---|---|---|")
    for e in items:
        rng = f"{e.eu_range[0]:g} .. {e.eu_range[1]:g}" if e.eu_range else "-"
        lines.append(f"| `{e.name}` | {e.opcua_type} | {e.unit or '-'} | {rng} | {e.access} |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def update_markdown_file(path: str | None = None) -> str:
    """Regenerate the tables of ``REGISTER_MAP.md`` in place; returns the path written."""
    import pathlib

    doc = pathlib.Path(path) if path else pathlib.Path(__file__).with_name("REGISTER_MAP.md")
    text = doc.read_text(encoding="utf-8")
    head, _, rest = text.partition(MARK_BEGIN)
    _, _, tail = rest.partition(MARK_END)
    doc.write_text(head + render_markdown() + tail, encoding="utf-8")
    return str(doc)
