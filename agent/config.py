"""Configuration: YAML validated by pydantic v2 models (frozen, unknown keys rejected).

Every error names the file, the line and the field path, e.g.::

    configs/plant.yaml:42 devices[1].tags[3].word_order: must be one of ABCD, BADC, CDAB, DCBA

The file itself is read by :mod:`agent.configyaml` (size limit, strict UTF-8, no alias bombs,
duplicate keys refused). :class:`Config` then checks what no single section can: every tag a
section names exists, every tag the agent writes declares the purpose it is written for, no tag
the agent writes is (by name or by sharing a register or node) a setpoint, the permissive, the
acknowledge tag or another target's recommendation, Guard limits fit the tag, and alarm sources
name something. :func:`check_paths` checks what lies outside the file (bundles, keys, the state
directory) for ``edge-agent check``.

Secrets are never stored in the config itself: a :class:`Secret` names an environment
variable, a file, or a systemd credential, and is read only when needed. Its value never
appears in ``repr()``, logs or error messages.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.configbase import FrozenModel, Loc, LocatedError, Purpose, Secret, check_purpose
from agent.configyaml import LineMap, compose, format_loc, line_for, problem, read_text
from agent.drivers.modbus_codec import DataType, register_count, valid_orders
from agent.drivers.opcua_config import OpcUaDevice, OpcUaTag
from agent.errors import ConfigError, ModelError
from agent.modelstore.binding import ModelBinding, binding_problems, binding_warnings
from agent.modelstore.manifest import MANIFEST_FILE, load_manifest
from agent.modelstore.storeconfig import ModelsStoreConfig
from agent.ops.audit import AuditConfig
from agent.ops.metrics_config import MetricsConfig
from agent.ops.permissions import writable_by_others
from agent.pipeline.alarms import AlarmsConfig
from agent.pipeline.detectors import DetectorConfig
from agent.pipeline.guard import GuardConfig
from agent.pipeline.policy import RecommenderConfig
from agent.pipeline.tariff import TariffConfig
from agent.recordconfig import RecordConfig

__all__ = [
    "AgentSection",
    "AnyDevice",
    "AnyTag",
    "AssetConfig",
    "AssetHmi",
    "BitWrite",
    "BreakerConfig",
    "Config",
    "DetectorBinding",
    "Device",
    "ForecastSection",
    "HmiConfig",
    "ModbusRtuDevice",
    "ModbusTag",
    "ModbusTcpDevice",
    "ModelsStoreConfig",
    "ModelsTrust",
    "Purpose",
    "RecommenderSection",
    "ScheduleSection",
    "Secret",
    "check_models",
    "check_paths",
    "load_config",
    "modbus_reference",
    "model_dir",
    "model_periods",
    "parse_config",
]


# --------------------------------------------------------------------------- Modbus

Table = Literal["coil", "discrete", "holding", "input"]
Access = Literal["read", "write", "read-write"]
BitWrite = Literal["mask", "read_modify_write"]
"""How a ``type: bit`` tag is written: ``mask`` is FC22 (mask write register: only that bit
changes, atomically in the device; the unit must be listed in ``mask_write_units``),
``read_modify_write`` reads the register and writes it back with the bit changed (refused by
the config where another party writes a bit of the same register)."""

_FLOAT32_MAX = 3.4028234663852886e38
_NOT_NUMBERS = (DataType.BOOL, DataType.BIT, DataType.STRING)  # no scale, no Guard target

_REF_BASE: dict[str, int] = {"coil": 0, "discrete": 10000, "input": 30000, "holding": 40000}


def modbus_reference(table: str, address: int) -> str:
    """The manual's 1-based reference (40001 = holding register 0), for messages."""
    base = _REF_BASE[table]
    ref = base + address + 1
    return f"{ref:05d}" if address < 9999 else f"{table}:{address + 1}"


class ModbusTag(FrozenModel):
    """One tag on a Modbus unit. ``address`` is 0-based, as on the wire."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)]
    unit: Annotated[int, Field(ge=0, le=255)] | None = None
    table: Table
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataType
    word_order: str | None = None
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    length: Annotated[int, Field(ge=1, le=123)] | None = None
    byte_swap: bool = False
    scale: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    offset: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    engineering_unit: str = ""
    range: tuple[float, float] | None = None
    access: Access = "read"
    purpose: Purpose | None = None
    """Why the agent writes this tag (required when access is not read); a write made for any
    other purpose is refused."""
    bit_write: BitWrite | None = None
    """How a writable ``type: bit`` tag is written (required for one, refused for any other)."""
    stale_after_ms: Annotated[int, Field(gt=0)] | None = None
    description: str = ""

    @field_validator("word_order")
    @classmethod
    def _order_fits_type(cls, value: str | None, info: ValidationInfo) -> str | None:
        dtype = info.data.get("type")
        if dtype is None or value is None:
            return value
        allowed = valid_orders(dtype)
        if not allowed:
            raise ValueError(
                f"does not apply to type {dtype}" + ("; use byte_swap" if dtype == "string" else "")
            )
        if value not in allowed:
            raise ValueError("must be one of " + ", ".join(allowed[:4]))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        dtype = self.type
        if dtype is DataType.BOOL and self.table not in ("coil", "discrete"):
            raise ValueError(
                f"type bool is for coil/discrete tables; use type bit with bit: N on {self.table}"
            )
        if dtype is not DataType.BOOL and self.table in ("coil", "discrete"):
            raise ValueError(f"table {self.table} holds single bits: use type bool")
        if (dtype is DataType.BIT) != (self.bit is not None):
            raise ValueError("type bit needs bit: 0..15 (and only type bit takes it)")
        if (dtype is DataType.STRING) != (self.length is not None):
            raise ValueError("type string needs length: N registers (and only strings take it)")
        if self.access != "read" and self.table in ("discrete", "input"):
            raise ValueError(f"access {self.access}: table {self.table} is read-only in Modbus")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError("range must be [low, high] with low < high")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + self.register_count > 65536:
            raise ValueError("tag runs past the end of the address space")
        check_purpose(self.access, self.purpose)
        if self.bit_write is not None:
            if dtype is not DataType.BIT:
                raise LocatedError(("bit_write",), "applies to type bit only (one bit of a holding register)")
            if self.access == "read":
                raise LocatedError(
                    ("bit_write",), "applies only to a tag the agent writes (access write or read-write)"
                )
        elif dtype is DataType.BIT and self.access != "read":
            raise LocatedError(
                ("bit_write",),
                "a writable bit tag needs bit_write: mask (FC22 mask write, its unit listed in the "
                "device's mask_write_units) or read_modify_write (only where nothing else writes "
                "that register)",
            )
        return self

    @property
    def register_count(self) -> int:
        return register_count(self.type, self.length or 0)

    @property
    def writable(self) -> bool:
        return self.access != "read"

    @property
    def readable(self) -> bool:
        return self.access != "write"

    @property
    def reference(self) -> str:
        return modbus_reference(self.table, self.address)

    @property
    def resolution(self) -> float | None:
        """The smallest step the register can express, in engineering units: ``|scale|`` for
        the integer types, None for floats (no fixed step) and for non-numeric types."""
        if self.type in _NOT_NUMBERS or self.type in (DataType.FLOAT32, DataType.FLOAT64):
            return None
        return abs(self.scale)

    @property
    def value_limits(self) -> tuple[float, float] | None:
        """The engineering values the type and scale can hold (``raw × scale + offset``), e.g.
        uint16 × 0.1 holds [offset, 6553.5 + offset]; None for non-numeric types."""
        if self.type in _NOT_NUMBERS:
            return None
        if self.type is DataType.FLOAT64:
            return (-float("inf"), float("inf"))
        if self.type is DataType.FLOAT32:
            lo, hi = -_FLOAT32_MAX, _FLOAT32_MAX
        else:
            bits = 16 * self.register_count
            signed = self.type.value.startswith("int")
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        a, b = lo * self.scale + self.offset, hi * self.scale + self.offset
        return (min(a, b), max(a, b))

    def encoding(self) -> str:
        """The type, scale and offset as one phrase for messages (``uint16 × 0.1 + 5``)."""
        text = str(self.type.value)
        if self.scale != 1.0:
            text += f" × {self.scale:g}"
        if self.offset != 0.0:
            text += f" + {self.offset:g}"
        return text

    def span(self) -> str:
        """Where the tag lives, both notations: ``holding 120-121 (40121-40122)``,
        ``holding 10 bit 3 (40011)``, ``coil 0 (00001)``."""
        last = self.address + self.register_count - 1
        if last == self.address:
            text = f"{self.table} {self.address}"
            if self.bit is not None:
                text += f" bit {self.bit}"
            return f"{text} ({self.reference})"
        return f"{self.table} {self.address}-{last} ({self.reference}-{modbus_reference(self.table, last)})"


class BreakerConfig(FrozenModel):
    """Per-unit circuit breaker: open after ``failures`` consecutive failures, probe after a
    backoff that doubles (with jitter) up to ``backoff_max_ms``."""

    failures: Annotated[int, Field(ge=1, le=100)] = 2
    backoff_ms: Annotated[int, Field(ge=10)] = 1000
    backoff_max_ms: Annotated[int, Field(ge=10)] = 60000
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.2


class _ModbusDeviceBase(FrozenModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)]
    units: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=1)] = [1]
    timeout_ms: Annotated[int, Field(ge=10, le=60000)] = 1000
    poll_interval_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 1000
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    hole_fill_gap: Annotated[int, Field(ge=0, le=124)] = 8
    stale_after_ms: Annotated[int, Field(gt=0)] | None = None
    breaker: BreakerConfig = BreakerConfig()
    mask_write_units: list[Annotated[int, Field(ge=0, le=255)]] = []
    """Units declared to support FC22 (mask write register). Never probed: a probe is itself a
    write, so the commissioning engineer declares it from the device's manual."""
    tags: list[ModbusTag] = []

    @model_validator(mode="after")
    def _tags_fit(self) -> Self:
        for k, unit in enumerate(self.mask_write_units):
            if unit not in self.units:
                raise LocatedError(
                    ("mask_write_units", k), f"unit {unit} is not one of this device's units {self.units}"
                )
        problems: list[tuple[Loc, str]] = []
        read_bits: dict[tuple[int, str, int], ModbusTag] = {}  # bits the PLC or operator writes
        for tag in self.tags:
            if tag.type is DataType.BIT and tag.access == "read":
                read_bits.setdefault((self.unit_of(tag), tag.table, tag.address), tag)
        for i, tag in enumerate(self.tags):
            unit = tag.unit if tag.unit is not None else self.units[0]
            if unit not in self.units:
                raise LocatedError(
                    ("tags", i, "unit"), f"unit {unit} is not one of this device's units {self.units}"
                )
            if tag.register_count > self.max_registers and tag.table in ("holding", "input"):
                raise LocatedError(
                    ("tags", i, "length"),
                    f"{tag.register_count} registers exceed max_registers {self.max_registers}",
                )
            if tag.bit_write == "mask" and unit not in self.mask_write_units:
                problems.append(
                    (
                        ("tags", i, "bit_write"),
                        f"mask needs unit {unit} in this device's mask_write_units: declare there that "
                        "the unit supports FC22 mask write (it is never probed)",
                    )
                )
            elif tag.bit_write == "read_modify_write":
                other = read_bits.get((unit, tag.table, tag.address))
                if other is not None:
                    problems.append(
                        (
                            ("tags", i, "bit_write"),
                            f"read_modify_write would write back the whole register {tag.span()}, which "
                            f"also holds bit tag {other.name!r} (bit {other.bit}) that the agent does "
                            "not write: a change the PLC or operator makes to it in between would be "
                            "undone; use mask (FC22)",
                        )
                    )
        if problems:
            raise LocatedError.many(problems)
        return self

    def unit_of(self, tag: ModbusTag) -> int:
        return tag.unit if tag.unit is not None else self.units[0]

    def stale_limit_s(self, tag: ModbusTag) -> float:
        """A tag not refreshed within this many seconds turns BAD (stale)."""
        ms = tag.stale_after_ms or self.stale_after_ms or 3 * self.poll_interval_ms + self.timeout_ms
        return ms / 1000.0

    @property
    def endpoint(self) -> str:
        raise NotImplementedError


class ModbusTcpDevice(_ModbusDeviceBase):
    """A Modbus TCP server (a PLC, or a TCP-to-RTU gateway with several unit ids behind it)."""

    protocol: Literal["modbus_tcp"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 502

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class ModbusRtuDevice(_ModbusDeviceBase):
    """A Modbus RTU serial bus with its unit ids (one request at a time on the wire)."""

    protocol: Literal["modbus_rtu"]
    serial_port: str
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 19200
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def endpoint(self) -> str:
        return self.serial_port


AnyDevice = ModbusTcpDevice | ModbusRtuDevice | OpcUaDevice
AnyTag = ModbusTag | OpcUaTag
Device = Annotated[AnyDevice, Field(discriminator="protocol")]


class AgentSection(FrozenModel):
    name: str = "edge-agent"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    """``auto``: JSON lines when stderr is not a terminal (journald), the console on one."""
    state_dir: Path = Path("/var/lib/edge-agent")
    """The audit log, alarm state, ownership file and the persisted windows of slow models
    (relative: to the working directory). It need not exist yet; a path that exists and is not
    a directory is refused."""
    cycle_ms: Annotated[int, Field(ge=50, le=60_000)] = 1000
    """The cycle: alarms, detectors, Guard and write-back, HMI writes, heartbeat. Each model
    ticks at its own sample period (agent/inference.py), not at this rate."""
    metrics: MetricsConfig | None = None
    """The Prometheus endpoint, e.g. ``{listen: "127.0.0.1:9108"}`` (absent: off). Loopback
    only unless ``allow_remote: true``."""

    @field_validator("state_dir")
    @classmethod
    def _state_dir_not_a_file(cls, value: Path) -> Path:
        try:
            mode = os.stat(value).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return value  # created at start (edge-agent check says whether it can be)
        except OSError:
            return value  # unreadable here: check_paths reports it
        if not stat.S_ISDIR(mode):
            raise ValueError(f"{value} exists and is not a directory")
        return value


class AssetHmi(FrozenModel):
    """Where an asset's HMI block is written (tag names; any field may be left out)."""

    alarm_word: str | None = None
    unacked_word: str | None = None
    shelved_word: str | None = None
    alert_word: str | None = None
    highest_severity: str | None = None
    active_count: str | None = None
    first_out_code: str | None = None
    fault_class: str | None = None
    anomaly_score: str | None = None
    rul: str | None = None
    recommender_reason: str | None = None
    """The pump-energy rule's reason code for this pump (``agent.pipeline.policy.REASON_CODES``)."""

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.model_dump().items() if v is not None]


class DetectorBinding(FrozenModel):
    """A built-in detector on one of the asset's values (no model needed).

    ``source`` is a name from the asset's ``values`` or a model output ``<model>.<output>``.
    Alarms read the detector as ``<name>`` (its score, e.g. the z-score) and ``<name>.outlier``
    (1 when the score is past the detector's threshold, else 0).
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$", max_length=64)]
    source: str
    detector: DetectorConfig


class AssetConfig(FrozenModel):
    """One monitored asset (a pump): its HMI block and the values its alarms read.

    ``values`` names tags the alarms may use as sources (name → tag); model outputs are
    available as ``<model>.<output>`` (e.g. ``pca.anomaly``).
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)]
    hmi: AssetHmi = AssetHmi()
    values: dict[str, str] = {}
    detectors: list[DetectorBinding] = []
    anomaly_source: str | None = None
    fault_class_source: str | None = None
    rul_source: str | None = None


class HmiConfig(FrozenModel):
    """The agent's own HMI tags: heartbeat counter and status word."""

    heartbeat_tag: str | None = None
    status_tag: str | None = None
    model_status_tag: str | None = None
    """The model-status register (purpose ``status``): the model store's last install/trial
    outcome as a code (:data:`agent.modelstore.trial.MODEL_STATUS_CODES`)."""
    refresh_s: Annotated[float, Field(gt=0)] = 30.0
    """Values are written when they change, and at least this often."""


class ModelsTrust(FrozenModel):
    """Which signing keys the agent trusts for model bundles."""

    public_keys: list[Path] = []
    allow_unsigned: bool = False


class ForecastSection(FrozenModel):
    """``recommender.forecast``: the demand forecast the tariff schedule plans with."""

    bundle: Path | None = None
    """A forecast bundle (``edge-export forecast``), verified like every model; None: the
    seasonal-naive forecast from the agent's own hourly history."""
    temperature_tag: str | None = None
    holidays: list[date] = []
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return TariffConfig.check_zone(value)


class ScheduleSection(FrozenModel):
    """``recommender.schedule``: the receding-horizon plan against ``recommender.tariff``."""

    every_s: Annotated[float, Field(ge=10, le=3600)] = 300.0
    horizon_h: Annotated[int, Field(ge=1, le=72)] = 24
    reserve_m: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.3
    """Kept above the bottom of the level band (emergency, fire-fighting)."""
    level_grid: Annotated[int, Field(ge=11, le=1001)] = 121
    max_flow_m3h: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 250.0


class RecommenderSection(RecommenderConfig):
    """The recommender with its optional tariff schedule (``tariff`` set turns it on)."""

    tariff: TariffConfig | None = None
    forecast: ForecastSection = ForecastSection()
    schedule: ScheduleSection = ScheduleSection()


class Config(FrozenModel):
    """The whole agent configuration."""

    agent: AgentSection = AgentSection()
    devices: list[Device] = []
    models: list[ModelBinding] = []
    models_trust: ModelsTrust = ModelsTrust()
    models_store: ModelsStoreConfig = ModelsStoreConfig()
    assets: list[AssetConfig] = []
    alarms: AlarmsConfig = AlarmsConfig()
    hmi: HmiConfig = HmiConfig()
    guard: GuardConfig | None = None
    recommender: RecommenderSection | None = None
    audit: AuditConfig | None = None
    record: RecordConfig | None = None
    """Record tags for training while the agent runs (:mod:`agent.record`; absent: off)."""

    _lines: LineMap = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        if not self.devices:
            raise LocatedError(("devices",), "no devices configured")
        tags = self._unique_names()
        self._check_references(tags)
        by_name: _TagMap = {t.name: (d, t) for d, t in self.iter_tags()}
        problems: list[tuple[Loc, str]] = []
        problems += _write_problems(self, by_name)
        problems += _guard_limit_problems(self, by_name)
        problems += _bit_write_problems(self, by_name)
        problems += _source_problems(self)
        problems += _record_problems(self, by_name)
        if problems:
            raise LocatedError.many(problems)
        return self

    def _unique_names(self) -> dict[str, str]:
        seen_dev: set[str] = set()
        seen_tag: dict[str, str] = {}
        seen_endpoint: dict[str, str] = {}
        for d, dev in enumerate(self.devices):
            if dev.name in seen_dev:
                raise LocatedError(("devices", d, "name"), f"duplicate device name {dev.name!r}")
            seen_dev.add(dev.name)
            if dev.protocol != "opcua":
                # Many devices take one connection at a time and a bus carries one request at a
                # time: one device entry (one connection) per endpoint, its units listed on it.
                if dev.endpoint in seen_endpoint:
                    field = "serial_port" if dev.protocol == "modbus_rtu" else "port"
                    raise LocatedError(
                        ("devices", d, field),
                        f"{seen_endpoint[dev.endpoint]} already uses {dev.endpoint}: list every unit "
                        "behind one endpoint in the units of a single device",
                    )
                seen_endpoint[dev.endpoint] = dev.name
            tags: list[AnyTag] = list(dev.tags)
            for t, tag in enumerate(tags):
                if tag.name in seen_tag:
                    raise LocatedError(
                        ("devices", d, "tags", t, "name"),
                        f"duplicate tag name {tag.name!r} (also on device {seen_tag[tag.name]})",
                    )
                seen_tag[tag.name] = dev.name
        for section, names in (
            ("assets", [a.name for a in self.assets]),
            ("models", [m.name for m in self.models]),
        ):
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise LocatedError((section, i, "name"), f"duplicate name {name!r}")
        return seen_tag

    def _check_references(self, tags: Mapping[str, str]) -> None:
        """Every tag a section names exists; every tag written is writable."""
        writable = {t.name for _, t in self.iter_tags() if t.access != "read"}

        def need(loc: Loc, tag: str | None, write: bool = False) -> None:
            if tag is None:
                return
            if tag not in tags:
                raise LocatedError(loc, f"unknown tag {tag!r}")
            if write and tag not in writable:
                raise LocatedError(loc, f"tag {tag!r} is written by the agent but its access is read")

        asset_names = {a.name for a in self.assets}
        for i, a in enumerate(self.assets):
            for field, tag in a.hmi.items():
                need(("assets", i, "hmi", field), tag, write=True)
            for name, tag in a.values.items():
                need(("assets", i, "values", name), tag)
            models = [m.name for m in self.models if a.name in m.assets]
            for j, det in enumerate(a.detectors):
                if det.source not in a.values and not _is_model_output(det.source, models):
                    what = "neither a value of this asset nor an output of a model bound to it"
                    raise LocatedError(("assets", i, "detectors", j, "source"), f"{det.source!r} is {what}")
        for i, m in enumerate(self.models):
            for asset, roles in m.assets.items():
                if asset not in asset_names:
                    raise LocatedError(("models", i, "assets", asset), f"asset {asset!r} is not in assets")
                for role, tag in roles.items():
                    need(("models", i, "assets", asset, role), tag)
        need(("hmi", "heartbeat_tag"), self.hmi.heartbeat_tag, write=True)
        need(("hmi", "status_tag"), self.hmi.status_tag, write=True)
        need(("hmi", "model_status_tag"), self.hmi.model_status_tag, write=True)
        need(("alarms", "ack_tag"), self.alarms.ack_tag)
        if self.guard is not None:
            need(("guard", "permissive_tag"), self.guard.permissive_tag)
            for i, t in enumerate(self.guard.targets):
                need(("guard", "targets", i, "tag"), t.tag, write=True)
                need(("guard", "targets", i, "recommendation_tag"), t.recommendation_tag, write=True)
            for i, ss in enumerate(self.guard.start_stop):
                need(("guard", "start_stop", i, "tag"), ss.tag, write=True)
                need(("guard", "start_stop", i, "running_tag"), ss.running_tag)
                need(("guard", "start_stop", i, "remote_start_tag"), ss.remote_start_tag)
        if self.recommender is not None:
            need(("recommender", "level_tag"), self.recommender.level_tag)
            need(("recommender", "demand_tag"), self.recommender.demand_tag)
            need(("recommender", "forecast", "temperature_tag"), self.recommender.forecast.temperature_tag)
            if self.recommender.tariff is not None:
                need(("recommender", "tariff", "price_tag"), self.recommender.tariff.price_tag)
            targets = {t.tag for t in self.guard.targets} if self.guard is not None else set()
            for i, p in enumerate(self.recommender.pumps):
                if p.asset not in asset_names:
                    raise LocatedError(
                        ("recommender", "pumps", i, "asset"), f"asset {p.asset!r} is not in assets"
                    )
                if p.target not in targets:
                    raise LocatedError(
                        ("recommender", "pumps", i, "target"), f"{p.target!r} is not a guard target"
                    )
                for field in (
                    "speed_tag",
                    "flow_tag",
                    "suction_pressure_tag",
                    "discharge_pressure_tag",
                    "power_tag",
                    "run_hours_tag",
                ):
                    need(("recommender", "pumps", i, field), getattr(p, field))

    def audit_config(self) -> AuditConfig:
        """The audit section, defaulting to ``state_dir/audit.sqlite``."""
        return self.audit or AuditConfig(path=self.agent.state_dir / "audit.sqlite")

    def tag(self, name: str) -> tuple[AnyDevice, AnyTag]:
        for dev in self.devices:
            for tag in dev.tags:
                if tag.name == name:
                    return dev, tag
        raise KeyError(name)

    def iter_tags(self) -> Iterator[tuple[AnyDevice, AnyTag]]:
        for dev in self.devices:
            for tag in dev.tags:
                yield dev, tag

    def line_of(self, loc: Loc) -> int:
        """The line of the file where ``loc`` (or its nearest ancestor) is given; 1 for a config
        that did not come from :func:`parse_config`."""
        return line_for(loc, self._lines)


# --------------------------------------------------------------------------- cross-checks


def _is_model_output(source: str, models: Sequence[str]) -> bool:
    """``<model>.<output>`` of one of ``models`` (model names may contain dots themselves)."""
    return any(source.startswith(m + ".") and len(source) > len(m) + 1 for m in models)


_Role = Literal[
    "setpoint",
    "recommendation",
    "display",
    "heartbeat",
    "status",
    "command",
    "permissive",
    "acknowledge",
    "feedback",
]

_NOUN: dict[str, str] = {
    "setpoint": "a setpoint",
    "recommendation": "a recommendation tag",
    "display": "an HMI display tag",
    "heartbeat": "the heartbeat",
    "status": "the status word",
    "permissive": "the permissive",
    "acknowledge": "the acknowledge tag",
    "command": "a start/stop request",
    "feedback": "a running feedback or remote-start permissive",
}


@dataclass(frozen=True, slots=True)
class _Ref:
    """One place the config names a tag the agent writes (or must never write)."""

    loc: Loc
    role: _Role
    name: str


def _written_refs(config: Config) -> list[_Ref]:
    """Every tag the agent writes, setpoints first: a conflict is blamed on the later one."""
    refs: list[_Ref] = []
    targets = config.guard.targets if config.guard is not None else []
    refs += [_Ref(("guard", "targets", i, "tag"), "setpoint", t.tag) for i, t in enumerate(targets)]
    refs += [
        _Ref(("guard", "targets", i, "recommendation_tag"), "recommendation", t.recommendation_tag)
        for i, t in enumerate(targets)
        if t.recommendation_tag is not None
    ]
    start_stop = config.guard.start_stop if config.guard is not None else []
    refs += [_Ref(("guard", "start_stop", i, "tag"), "command", t.tag) for i, t in enumerate(start_stop)]
    if config.hmi.heartbeat_tag is not None:
        refs.append(_Ref(("hmi", "heartbeat_tag"), "heartbeat", config.hmi.heartbeat_tag))
    if config.hmi.status_tag is not None:
        refs.append(_Ref(("hmi", "status_tag"), "status", config.hmi.status_tag))
    if config.hmi.model_status_tag is not None:
        refs.append(_Ref(("hmi", "model_status_tag"), "status", config.hmi.model_status_tag))
    for i, a in enumerate(config.assets):
        refs += [_Ref(("assets", i, "hmi", field), "display", tag) for field, tag in a.hmi.items()]
    return refs


def _protected_refs(config: Config) -> list[_Ref]:
    """Tags the operator owns: the agent reads them and never writes them."""
    refs: list[_Ref] = []
    if config.guard is not None:
        refs.append(_Ref(("guard", "permissive_tag"), "permissive", config.guard.permissive_tag))
        for i, t in enumerate(config.guard.start_stop):
            refs.append(_Ref(("guard", "start_stop", i, "running_tag"), "feedback", t.running_tag))
            refs.append(_Ref(("guard", "start_stop", i, "remote_start_tag"), "feedback", t.remote_start_tag))
    if config.alarms.ack_tag is not None:
        refs.append(_Ref(("alarms", "ack_tag"), "acknowledge", config.alarms.ack_tag))
    return refs


def _why(writer: _Ref, other: _Ref, same: str) -> str:
    if other.role == "permissive":
        return "the agent must never write the permissive"
    if other.role == "acknowledge":
        return "the agent must never write the operator's acknowledge"
    if other.role == "feedback":
        return "the agent requests a start, it never writes the motor's feedback or the PLC's permissive"
    if other.role == "setpoint" and writer.role != "setpoint":
        return "only the Guard writes a setpoint, and only as that target"
    return f"two values the agent writes must not share {same}"


def _overlap(a: tuple[AnyDevice, AnyTag], b: tuple[AnyDevice, AnyTag]) -> str | None:
    """Where two tags share a register, coil or node, as ``"on device d unit u"``; else None."""
    (da, ta), (db, tb) = a, b
    if da.name != db.name:
        return None
    if isinstance(ta, ModbusTag) and isinstance(tb, ModbusTag) and not isinstance(da, OpcUaDevice):
        ua, ub = da.unit_of(ta), da.unit_of(tb)
        if ua != ub or ta.table != tb.table:
            return None
        if (
            ta.address <= tb.address + tb.register_count - 1
            and tb.address <= ta.address + ta.register_count - 1
        ):
            return f"on device {da.name} unit {ua}"
        return None
    if isinstance(ta, OpcUaTag) and isinstance(tb, OpcUaTag):
        pa, pb = ta.parsed, tb.parsed
        if pa.kind != pb.kind or pa.identifier != pb.identifier:
            return None
        if pa.namespace_uri is not None and pb.namespace_uri is not None:
            return f"on device {da.name}" if pa.namespace_uri == pb.namespace_uri else None
        if pa.namespace_index is not None and pb.namespace_index is not None:
            return f"on device {da.name}" if pa.namespace_index == pb.namespace_index else None
        # One by namespace URI, one by index: the same node whenever the index is the URI's.
        return f"on device {da.name} (one names the namespace by URI, the other by index: write both alike)"
    return None


def _where(tag: AnyTag) -> str:
    return tag.span() if isinstance(tag, ModbusTag) else f"node {tag.node_id}"


_TagMap = dict[str, tuple[AnyDevice, AnyTag]]


def _place(dev: AnyDevice, tag: AnyTag) -> tuple[tuple[str | int, ...], int, int]:
    """The space a tag lives in and its first and last address there: Modbus (device, unit,
    table) and registers or coils (a bit tag occupies its register); OPC UA (device, kind,
    identifier) and 0 (the namespace is compared by :func:`_overlap`)."""
    if isinstance(tag, ModbusTag) and not isinstance(dev, OpcUaDevice):
        return (dev.name, dev.unit_of(tag), tag.table), tag.address, tag.address + tag.register_count - 1
    assert isinstance(tag, OpcUaTag)
    parsed = tag.parsed
    return (dev.name, parsed.kind, parsed.identifier), 0, 0


def _colliding_pairs(refs: Sequence[_Ref], tags: _TagMap) -> list[tuple[int, int]]:
    """Pairs ``(earlier, later)`` of indexes into ``refs`` that name the same tag or share a
    register, coil or node. A sweep per address space: no all-pairs loop on a big HMI."""
    pairs: set[tuple[int, int]] = set()
    by_name: dict[str, list[int]] = {}
    spaces: dict[tuple[str | int, ...], list[tuple[int, int, int]]] = {}
    for i, ref in enumerate(refs):
        by_name.setdefault(ref.name, []).append(i)
        space, first, last = _place(*tags[ref.name])
        spaces.setdefault(space, []).append((first, last, i))
    for same in by_name.values():
        pairs.update((a, b) for k, a in enumerate(same) for b in same[k + 1 :])
    for spans in spaces.values():
        active: list[tuple[int, int, int]] = []
        for first, last, i in sorted(spans):
            active = [a for a in active if a[1] >= first]
            pairs.update((min(a[2], i), max(a[2], i)) for a in active)
            active.append((first, last, i))
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def _write_problems(config: Config, tags: _TagMap) -> list[tuple[Loc, str]]:
    """Alias refusal, purposes and readable targets (issue 10)."""
    problems: list[tuple[Loc, str]] = []
    protected = _protected_refs(config)
    refs = [*protected, *_written_refs(config)]
    conflicted: set[Loc] = set()
    for a, b in _colliding_pairs(refs, tags):
        if b < len(protected):
            continue  # the permissive and the acknowledge are only read
        o, w = refs[a], refs[b]  # the later one is blamed: setpoints come first
        if o.name == w.name:
            message = f"tag {w.name!r} is {format_loc(o.loc)} ({_NOUN[o.role]}): {_why(w, o, 'a tag')}"
        else:
            wt, ot = tags[w.name], tags[o.name]
            where = _overlap(wt, ot)
            if where is None:
                continue
            message = (
                f"tag {w.name!r} at {_where(wt[1])} overlaps {format_loc(o.loc)} {o.name!r} "
                f"at {_where(ot[1])}, {_NOUN[o.role]}, {where}: "
                f"{_why(w, o, 'a register' if isinstance(wt[1], ModbusTag) else 'a node')}"
            )
        problems.append((w.loc, message))
        conflicted.add(w.loc)
    for w in refs[len(protected) :]:
        if w.loc in conflicted:
            continue
        _, tag = tags[w.name]
        if tag.purpose != w.role:
            problems.append(
                (
                    w.loc,
                    f"tag {w.name!r} is declared purpose {tag.purpose}; "
                    f"{_NOUN[w.role]} needs purpose {w.role}",
                )
            )
        if w.role == "command" and not tag.readable:
            problems.append(
                (
                    w.loc,
                    f"tag {w.name!r} has access {tag.access}: a start/stop request is read back",
                )
            )
        if w.role == "setpoint" and not tag.readable:
            problems.append(
                (
                    w.loc,
                    f"tag {w.name!r} has access {tag.access}: the Guard reads the setpoint back as the "
                    "origin of every step, so a target needs access read-write",
                )
            )
    return problems


def _guard_limit_problems(config: Config, tags: _TagMap) -> list[tuple[Loc, str]]:
    """Guard limits inside the tag's range and what its type and scale can hold; steps and rates
    at least one register step."""
    if config.guard is None:
        return []
    problems: list[tuple[Loc, str]] = []
    cycle_ms = config.agent.cycle_ms
    for i, t in enumerate(config.guard.targets):
        loc: Loc = ("guard", "targets", i)
        _, tag = tags[t.tag]
        modbus = tag if isinstance(tag, ModbusTag) else None  # OPC UA: the range only
        limits = modbus.value_limits if modbus is not None else None
        if modbus is not None and limits is None:
            problems.append(
                ((*loc, "tag"), f"tag {t.tag!r} is type {modbus.type}: a Guard target must be a number")
            )
            continue
        for field in ("min", "max"):
            value: float = getattr(t, field)
            if tag.range is not None and not tag.range[0] <= value <= tag.range[1]:
                problems.append(
                    (
                        (*loc, field),
                        f"{value:g} is outside the range [{tag.range[0]:g}, {tag.range[1]:g}] "
                        f"of tag {t.tag!r}",
                    )
                )
            elif modbus is not None and limits is not None and not limits[0] <= value <= limits[1]:
                problems.append(
                    (
                        (*loc, field),
                        f"{value:g} cannot be written to tag {t.tag!r}: {modbus.encoding()} holds "
                        f"{limits[0]:g} to {limits[1]:g}",
                    )
                )
        resolution = modbus.resolution if modbus is not None else None
        if modbus is None or resolution is None:
            continue  # floats and OPC UA nodes have no fixed step
        step = f"one register step of tag {t.tag!r} ({resolution:g}: {modbus.encoding()})"
        if t.max_step is not None and t.max_step < resolution * (1 - 1e-9):
            problems.append(
                ((*loc, "max_step"), f"{t.max_step:g} is less than {step}: no write could move it")
            )
        per_cycle = t.rate_per_min * cycle_ms / 60_000
        if per_cycle < resolution * (1 - 1e-9):
            problems.append(
                (
                    (*loc, "rate_per_min"),
                    f"{t.rate_per_min:g}/min allows {per_cycle:.6g} per {cycle_ms} ms cycle, less than "
                    f"{step}: the setpoint could never move; give at least "
                    f"{resolution * 60_000 / cycle_ms:.6g}/min",
                )
            )
    return problems


def _bit_write_problems(config: Config, tags: _TagMap) -> list[tuple[Loc, str]]:
    """read_modify_write never on the register of the permissive or the acknowledge tag."""
    problems: list[tuple[Loc, str]] = []
    protected = _protected_refs(config)
    for d, dev in enumerate(config.devices):
        if isinstance(dev, OpcUaDevice):
            continue
        for t, tag in enumerate(dev.tags):
            if tag.bit_write != "read_modify_write":
                continue
            for o in protected:
                other = tags[o.name]
                if other[1] is tag or _overlap((dev, tag), other) is None:
                    continue
                problems.append(
                    (
                        ("devices", d, "tags", t, "bit_write"),
                        f"read_modify_write would write back the whole register {tag.span()}, which holds "
                        f"{format_loc(o.loc)} {o.name!r} ({_NOUN[o.role]}): the agent must never write it; "
                        "use mask (FC22)",
                    )
                )
    return problems


def _close_matches(name: str, pool: list[str]) -> list[str]:
    """The closest name in ``pool`` (a typo's likely meaning), for an error message; difflib
    loads only when a config has such an error."""
    import difflib

    return difflib.get_close_matches(name, pool, n=1)

def _source_problems(config: Config) -> list[tuple[Loc, str]]:
    """Every alarm source names a value, a detector or a model output of some asset (a bad-PV
    alarm's a value or a model binding); every asset's anomaly, fault class and RUL source one
    of its own."""
    names: dict[str, set[str]] = {}
    models: dict[str, list[str]] = {}
    for a in config.assets:
        names[a.name] = set(a.values)
        for det in a.detectors:
            names[a.name] |= {det.name, f"{det.name}.outlier"}
        models[a.name] = [m.name for m in config.models if a.name in m.assets]

    def known(asset: str, source: str) -> bool:
        return source in names[asset] or _is_model_output(source, models[asset])

    def hint(source: str, assets: Sequence[str]) -> str:
        pool = sorted({n for a in assets for n in names[a]})
        close = _close_matches(source, pool)
        return f"; did you mean {close[0]!r}?" if close else ""

    problems: list[tuple[Loc, str]] = []
    everyone = list(names)
    for i, d in enumerate(config.alarms.defs):
        if d.kind == "bad_pv":
            # an input's quality: one of an asset's values (a tag), or a model's inputs
            if not any(d.source in a.values or d.source in models[a.name] for a in config.assets):
                pool = sorted({n for a in config.assets for n in (*a.values, *models[a.name])})
                close = _close_matches(d.source, pool)
                problems.append(
                    (
                        ("alarms", "defs", i, "source"),
                        f"{d.source!r} names no input: a bad_pv alarm watches a value of an asset "
                        "(values: name → tag) or a model bound to one (every tag it reads)"
                        + (f"; did you mean {close[0]!r}?" if close else ""),
                    )
                )
            continue
        if not any(known(a, d.source) for a in everyone):
            problems.append(
                (
                    ("alarms", "defs", i, "source"),
                    f"{d.source!r} names nothing: not a value or detector of any asset, nor an output "
                    f"<model>.<output> of a model bound to one{hint(d.source, everyone)}",
                )
            )
    for i, a in enumerate(config.assets):
        for field in ("anomaly_source", "fault_class_source", "rul_source"):
            source: str | None = getattr(a, field)
            if source is not None and not known(a.name, source):
                problems.append(
                    (
                        ("assets", i, field),
                        f"{source!r} is neither a value or detector of this asset nor an output "
                        f"<model>.<output> of a model bound to it{hint(source, [a.name])}",
                    )
                )
    return problems


def _record_problems(config: Config, tags: _TagMap) -> list[tuple[Loc, str]]:
    """The record section names tags the agent reads and a model binding of this config."""
    rec = config.record
    if rec is None:
        return []
    problems: list[tuple[Loc, str]] = []
    for i, name in enumerate(rec.tags):
        if name not in tags:
            close = _close_matches(name, list(tags))
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((("record", "tags", i), f"unknown tag {name!r}{hint}"))
        elif not tags[name][1].readable:
            message = f"tag {name!r} has access write: the agent never reads it"
            problems.append((("record", "tags", i), message))
    if rec.model is not None and rec.model not in {m.name for m in config.models}:
        known = ", ".join(m.name for m in config.models) or "none"
        problems.append((("record", "model"), f"{rec.model!r} is not a model binding (models: {known})"))
    return problems


# --------------------------------------------------------------------------- loading


_PREFIXES = ("Value error, ", "Assertion failed, ")


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'|(\b\d+\b)", str(ctx.get("expected", "")))
        names = [a or b for a, b in expected]
        return "must be one of " + ", ".join(names)
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        field = str(ctx.get("discriminator", "kind")).strip("'")
        tags = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown {field} {ctx.get('tag')!r}; must be one of {tags}"
    if kind == "union_tag_not_found":
        return f"required field {ctx.get('discriminator', 'kind')} is missing"
    if kind == "enum":
        return "must be one of " + str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
    msg = str(err["msg"])
    for p in _PREFIXES:
        if msg.startswith(p):
            msg = msg[len(p) :]
    return msg


def _clean_loc(loc: Sequence[int | str]) -> Loc:
    # Discriminated unions add the tag ('modbus_tcp') into the loc: drop it.
    return tuple(p for p in loc if p not in ("modbus_tcp", "modbus_rtu", "opcua"))


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate YAML text; raise ConfigError with one ``file:line path: message``
    line per problem (never another exception, whatever the text)."""
    data, lines = compose(text, source)
    if not isinstance(data, dict):
        raise ConfigError([problem(source, 1, "(top level)", "must be a mapping")])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, LocatedError):
                for sub, message in ctx_err.problems:
                    full = (*loc, *sub)
                    problems.append(problem(source, line_for(full, lines), full, message))
                continue
            problems.append(problem(source, line_for(loc, lines), loc, _message(err)))
        raise ConfigError(problems) from None
    config._lines = lines
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load a config file (a regular file of at most 4 MiB, UTF-8). Errors name the file, line
    and field."""
    return parse_config(read_text(path), str(path))


# --------------------------------------------------------------------------- outside the file


def _resolve(p: Path, base: Path) -> Path:
    return p if p.is_absolute() else base / p


def _dir_problem(path: Path, what: str) -> str | None:
    """Why the agent could not create or write directory ``path``, or None."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        ancestor = path.parent
        while True:
            try:
                st = os.stat(ancestor)
                break
            except (FileNotFoundError, NotADirectoryError):
                if ancestor.parent == ancestor:
                    return f"{what} {path} cannot be created"
                ancestor = ancestor.parent
            except (OSError, ValueError) as exc:
                return f"{what} {path} cannot be created: {ancestor}: {getattr(exc, 'strerror', None) or exc}"
        if not stat.S_ISDIR(st.st_mode):
            return f"{what} {path} cannot be created: {ancestor} is not a directory"
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return f"{what} {path} cannot be created: {ancestor} is not writable by uid {os.geteuid()}"
        return None
    except (OSError, ValueError) as exc:
        return f"{what} {path}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{what} {path} exists and is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{what} {path} is not writable by uid {os.geteuid()}"
    return None


def _file_problem(path: Path, what: str, *, directory: bool = False) -> str | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return f"{what} {path} does not exist"
    except (OSError, ValueError) as exc:
        return f"{what} {path}: {getattr(exc, 'strerror', None) or exc}"
    if directory:
        if not stat.S_ISDIR(st.st_mode):
            return f"{what} {path} is not a directory"
        if not (path / MANIFEST_FILE).is_file():
            return f"{what} {path} has no {MANIFEST_FILE}"
    elif not stat.S_ISREG(st.st_mode):
        return f"{what} {path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{what} {path} is not readable by uid {os.geteuid()}"
    return None


def check_paths(config: Config, config_path: str | os.PathLike[str]) -> list[str]:
    """What ``edge-agent check`` verifies outside the file, as ``file:line field: message``.

    Model bundle directories (each with its manifest), a current version of each store model,
    and trusted public key files exist
    (relative paths: to the config file's directory, as the agent resolves them); the state
    directory, and the audit log's directory when the audit section names one, exist and are
    writable or can be created (relative: to the working directory), and so does the recording
    directory of an enabled ``record`` section. An empty list is all well.
    """
    source = str(config_path)
    base = Path(os.path.abspath(config_path)).parent
    out: list[str] = []

    def add(loc: Loc, message: str | None) -> None:
        if message is not None:
            out.append(problem(source, config.line_of(loc), loc, message))

    store_dir = _resolve(config.models_store.dir, base)
    for i, m in enumerate(config.models):
        if m.store is not None:
            if not os.path.islink(store_dir / m.store / "current"):
                add(
                    ("models", i, "store"),
                    f"the model store {store_dir} has no current version of {m.store} "
                    "(edge-agent models install BUNDLE)",
                )
            continue
        assert m.bundle is not None
        add(
            ("models", i, "bundle"),
            _file_problem(_resolve(m.bundle, base), "bundle directory", directory=True),
        )
    for i, key in enumerate(config.models_trust.public_keys):
        add(("models_trust", "public_keys", i), _file_problem(_resolve(key, base), "public key file"))
    if config.recommender is not None and config.recommender.station_bundle is not None:
        bundle = _resolve(config.recommender.station_bundle, base)
        add(
            ("recommender", "station_bundle"),
            _file_problem(bundle, "recommender bundle directory", directory=True),
        )
    add(("agent", "state_dir"), _dir_problem(config.agent.state_dir, "state directory"))
    if config.audit is not None:
        add(("audit", "path"), _dir_problem(config.audit.path.parent, "audit log directory"))
    if config.record is not None and config.record.enabled:
        add(
            ("record", "dir"),
            _dir_problem(config.record.directory(config.agent.state_dir), "recording directory"),
        )
    return out + unsafe_permissions(config, config_path)


def model_dir(config: Config, binding: ModelBinding, base: Path) -> Path:
    """The bundle directory a binding runs: its ``bundle`` (relative: to ``base``, the config
    file's directory), or the version its store model's ``current`` names (it may not exist)."""
    if binding.store is None:
        assert binding.bundle is not None
        return _resolve(binding.bundle, base)
    model = _resolve(config.models_store.dir, base) / binding.store
    try:
        return model / os.readlink(model / "current")
    except OSError:
        return model / "current"


def unsafe_permissions(config: Config, config_path: str | os.PathLike[str]) -> list[str]:
    """The config file, bundles, trusted keys, state directory and audit log that every local
    user could change (``agent/ops/permissions.py``), as ``file:line field: message``.

    ``edge-agent check`` reports them and ``edge-agent run`` refuses to start on them: what
    decides the agent's writes must not be changeable by anyone on the gateway.
    """
    source = str(config_path)
    base = Path(os.path.abspath(config_path)).parent
    out: list[str] = []
    trusted: list[tuple[Loc, Path]] = [
        *(
            (("models", i, "bundle"), _resolve(m.bundle, base))
            for i, m in enumerate(config.models)
            if m.bundle is not None
        ),
        *(
            (("models_trust", "public_keys", i), _resolve(k, base))
            for i, k in enumerate(config.models_trust.public_keys)
        ),
        (("agent", "state_dir"), Path(config.agent.state_dir)),
    ]
    if config.audit is not None:
        trusted.append((("audit", "path"), config.audit.path))
    if any(m.store is not None for m in config.models):
        trusted.append((("models_store", "dir"), _resolve(config.models_store.dir, base)))
    for loc, path in trusted:
        why = writable_by_others(path)
        if why is not None:
            out.append(problem(source, config.line_of(loc), loc, why))
    why = writable_by_others(source)
    if why is not None:
        out.append(f"{source}: the config file: {why}")
    return out


def check_models(config: Config, config_path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """What ``edge-agent check`` verifies of each model binding against its bundle's manifest
    (what ``run`` would refuse: roles, units, and a sample period shorter than the poll
    interval of a bound tag), as ``file:line field: message``; and warnings (a ``mean`` role
    polled fewer than twice per period). Returns (errors, warnings). Bundles that are missing
    are left to :func:`check_paths`; hashes, signature and session are checked by ``run``."""
    source = str(config_path)
    base = Path(os.path.abspath(config_path)).parent
    units = {t.name: t.engineering_unit for _, t in config.iter_tags()}
    periods = {t.name: d.poll_interval_ms / 1000 for d, t in config.iter_tags()}
    errors: list[str] = []
    warnings: list[str] = []
    for i, m in enumerate(config.models):
        path = model_dir(config, m, base)
        if not (path / MANIFEST_FILE).is_file():
            continue
        try:
            manifest = load_manifest(path)
        except ModelError as exc:
            loc: Loc = ("models", i, "bundle" if m.store is None else "store")
            errors.append(problem(source, config.line_of(loc), loc, str(exc)))
            continue
        for out, found in (
            (errors, binding_problems(manifest, m, units, periods, source=source)),
            (warnings, binding_warnings(manifest, m, periods, source=source)),
        ):
            for where, message in found:
                loc = ("models", i, *where)
                out.append(problem(source, config.line_of(loc), loc, message))
    return errors, warnings


def model_periods(config: Config, config_path: str | os.PathLike[str]) -> list[tuple[str, float]]:
    """Each model binding whose manifest reads, with its sample period (for ``check``)."""
    base = Path(os.path.abspath(config_path)).parent
    out: list[tuple[str, float]] = []
    for m in config.models:
        try:
            out.append((m.name, load_manifest(model_dir(config, m, base)).window.sample_period_s))
        except (ModelError, OSError):
            continue
    return out
