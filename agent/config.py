"""Configuration: YAML validated by pydantic v2 models (frozen, unknown keys rejected).

Every error names the file, the line and the field path, e.g.::

    configs/plant.yaml:42 devices[1].tags[3].word_order: must be one of ABCD, BADC, CDAB, DCBA

Secrets are never stored in the config itself: a :class:`Secret` names an environment
variable, a file, or a systemd credential, and is read only when needed. Its value never
appears in ``repr()``, logs or error messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.configbase import FrozenModel, Purpose, Secret
from agent.drivers.modbus_codec import DataType, register_count, valid_orders
from agent.drivers.opcua_config import OpcUaDevice, OpcUaTag
from agent.errors import ConfigError
from agent.modelstore.binding import ModelBinding
from agent.ops.audit import AuditConfig
from agent.pipeline.alarms import AlarmsConfig
from agent.pipeline.detectors import DetectorConfig
from agent.pipeline.guard import GuardConfig
from agent.pipeline.policy import RecommenderConfig

__all__ = [
    "AgentSection",
    "AnyDevice",
    "AnyTag",
    "AssetConfig",
    "AssetHmi",
    "BreakerConfig",
    "Config",
    "DetectorBinding",
    "Device",
    "HmiConfig",
    "ModbusRtuDevice",
    "ModbusTag",
    "ModbusTcpDevice",
    "ModelsTrust",
    "Secret",
    "load_config",
    "modbus_reference",
    "parse_config",
]

Loc = tuple[int | str, ...]


# --------------------------------------------------------------------------- Modbus

Table = Literal["coil", "discrete", "holding", "input"]
Access = Literal["read", "write", "read-write"]

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
    scale: float = 1.0
    offset: float = 0.0
    engineering_unit: str = ""
    range: tuple[float, float] | None = None
    access: Access = "read"
    purpose: Purpose | None = None
    bit_write: Literal["mask", "read_modify_write"] | None = None
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
        return self

    @property
    def register_count(self) -> int:
        return register_count(self.type, self.length or 0)

    @property
    def writable(self) -> bool:
        return self.access != "read"

    @property
    def reference(self) -> str:
        return modbus_reference(self.table, self.address)


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
    mask_write_units: list[int] = []
    tags: list[ModbusTag] = []

    @model_validator(mode="after")
    def _tags_fit(self) -> Self:
        for i, tag in enumerate(self.tags):
            unit = tag.unit if tag.unit is not None else self.units[0]
            if unit not in self.units:
                raise _LocatedError(
                    ("tags", i, "unit"), f"unit {unit} is not one of this device's units {self.units}"
                )
            if tag.register_count > self.max_registers and tag.table in ("holding", "input"):
                raise _LocatedError(
                    ("tags", i, "length"),
                    f"{tag.register_count} registers exceed max_registers {self.max_registers}",
                )
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
    log_format: Literal["console", "json"] = "console"
    state_dir: Path = Path("/var/lib/edge-agent")
    cycle_ms: Annotated[int, Field(ge=50, le=60_000)] = 1000
    """The pipeline tick: windows, models, alarms, Guard, HMI writes. A model's sample period
    must equal it."""


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
    refresh_s: Annotated[float, Field(gt=0)] = 30.0
    """Values are written when they change, and at least this often."""


class ModelsTrust(FrozenModel):
    """Which signing keys the agent trusts for model bundles."""

    public_keys: list[Path] = []
    allow_unsigned: bool = False


class Config(FrozenModel):
    """The whole agent configuration."""

    agent: AgentSection = AgentSection()
    devices: list[Device] = []
    models: list[ModelBinding] = []
    models_trust: ModelsTrust = ModelsTrust()
    assets: list[AssetConfig] = []
    alarms: AlarmsConfig = AlarmsConfig()
    hmi: HmiConfig = HmiConfig()
    guard: GuardConfig | None = None
    recommender: RecommenderConfig | None = None
    audit: AuditConfig | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen_dev: set[str] = set()
        seen_tag: dict[str, str] = {}
        seen_endpoint: dict[str, str] = {}
        for d, dev in enumerate(self.devices):
            if dev.name in seen_dev:
                raise _LocatedError(("devices", d, "name"), f"duplicate device name {dev.name!r}")
            seen_dev.add(dev.name)
            if dev.protocol != "opcua":
                # Many devices take one connection at a time and a bus carries one request at a
                # time: one device entry (one connection) per endpoint, its units listed on it.
                if dev.endpoint in seen_endpoint:
                    field = "serial_port" if dev.protocol == "modbus_rtu" else "port"
                    raise _LocatedError(
                        ("devices", d, field),
                        f"{seen_endpoint[dev.endpoint]} already uses {dev.endpoint}: list every unit "
                        "behind one endpoint in the units of a single device",
                    )
                seen_endpoint[dev.endpoint] = dev.name
            tags: list[AnyTag] = list(dev.tags)
            for t, tag in enumerate(tags):
                if tag.name in seen_tag:
                    raise _LocatedError(
                        ("devices", d, "tags", t, "name"),
                        f"duplicate tag name {tag.name!r} (also on device {seen_tag[tag.name]})",
                    )
                seen_tag[tag.name] = dev.name
        self._check_references(seen_tag)
        return self

    def _check_references(self, tags: Mapping[str, str]) -> None:
        """Every tag a section names exists; every tag written is writable."""
        writable = {t.name for _, t in self.iter_tags() if t.access != "read"}

        def need(loc: Loc, tag: str | None, write: bool = False) -> None:
            if tag is None:
                return
            if tag not in tags:
                raise _LocatedError(loc, f"unknown tag {tag!r}")
            if write and tag not in writable:
                raise _LocatedError(loc, f"tag {tag!r} is written by the agent but its access is read")

        asset_names = {a.name for a in self.assets}
        for i, a in enumerate(self.assets):
            for field, tag in a.hmi.items():
                need(("assets", i, "hmi", field), tag, write=True)
            for name, tag in a.values.items():
                need(("assets", i, "values", name), tag)
            models = {m.name for m in self.models if a.name in m.assets}
            for j, det in enumerate(a.detectors):
                if det.source not in a.values and det.source.split(".")[0] not in models:
                    what = "neither a value of this asset nor an output of a model bound to it"
                    raise _LocatedError(("assets", i, "detectors", j, "source"), f"{det.source!r} is {what}")
        for i, m in enumerate(self.models):
            for asset, roles in m.assets.items():
                if asset not in asset_names:
                    raise _LocatedError(("models", i, "assets", asset), f"asset {asset!r} is not in assets")
                for role, tag in roles.items():
                    need(("models", i, "assets", asset, role), tag)
        need(("hmi", "heartbeat_tag"), self.hmi.heartbeat_tag, write=True)
        need(("hmi", "status_tag"), self.hmi.status_tag, write=True)
        need(("alarms", "ack_tag"), self.alarms.ack_tag)
        if self.guard is not None:
            need(("guard", "permissive_tag"), self.guard.permissive_tag)
            for i, t in enumerate(self.guard.targets):
                need(("guard", "targets", i, "tag"), t.tag, write=True)
                need(("guard", "targets", i, "recommendation_tag"), t.recommendation_tag, write=True)
        if self.recommender is not None:
            need(("recommender", "level_tag"), self.recommender.level_tag)
            need(("recommender", "demand_tag"), self.recommender.demand_tag)
            targets = {t.tag for t in self.guard.targets} if self.guard is not None else set()
            for i, p in enumerate(self.recommender.pumps):
                if p.asset not in asset_names:
                    raise _LocatedError(
                        ("recommender", "pumps", i, "asset"), f"asset {p.asset!r} is not in assets"
                    )
                if p.target not in targets:
                    raise _LocatedError(
                        ("recommender", "pumps", i, "target"), f"{p.target!r} is not a guard target"
                    )

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


# --------------------------------------------------------------------------- loading


class _LocatedError(ValueError):
    """Raised by cross-field validators to point at a nested field (relative loc)."""

    def __init__(self, loc: Loc, message: str) -> None:
        self.loc = loc
        super().__init__(message)


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping value and sequence item."""


def _compose_with_lines(text: str) -> tuple[Any, dict[Loc, int]]:
    lines: dict[Loc, int] = {}
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    if node is None:
        return {}, lines

    def build(n: yaml.Node, loc: Loc) -> Any:
        lines.setdefault(loc, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = _LineLoader.construct_object(loader, key_node, deep=True)
                lines[(*loc, key)] = key_node.start_mark.line + 1
                out[key] = build(value_node, (*loc, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, (*loc, i)) for i, item in enumerate(n.value)]
        return _LineLoader.construct_object(loader, n, deep=True)

    return build(node, ()), lines


def _format_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


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


def _line_for(loc: Loc, lines: Mapping[Loc, int]) -> int:
    probe = loc
    while probe and probe not in lines:
        probe = probe[:-1]
    return lines.get(probe, 1)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate YAML text; raise ConfigError with file:line path: message."""
    try:
        data, lines = _compose_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{source}:{line} (yaml): {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1 (top level): must be a mapping"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            ctx_err = (err.get("ctx") or {}).get("error")
            message = _message(err)
            if isinstance(ctx_err, _LocatedError):
                loc = (*loc, *ctx_err.loc)
                message = str(ctx_err)
            problems.append(f"{source}:{_line_for(loc, lines)} {_format_loc(loc)}: {message}")
        raise ConfigError(problems) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load a config file. Errors name the file, line and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    return parse_config(text, str(path))
