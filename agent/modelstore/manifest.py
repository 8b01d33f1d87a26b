"""The model manifest: the contract between export/ and agent/, saved as ``manifest.json``.

A bundle is a directory holding ``manifest.json`` beside one or more ONNX files (its
*variants*, e.g. an FP32 and an INT8 build of the same model). The manifest says what the
model needs and what it gives:

* ``inputs``: *roles* (``bearing_vibration``), each with its engineering unit, plausible range
  and normalisation. The config binds roles to tags per asset (:mod:`agent.modelstore.binding`),
  so one bundle serves every identical pump.
* ``window``: sample period, window length and stride, common to every role (one aligned
  window per asset per frame).
* ``features``: how :func:`agent.pipeline.features.window_to_input` turns a window into the
  model input (the one feature function training and serving share).
* ``model_input`` / ``outputs``: the ONNX tensors (names, shapes, dtypes), each output with its
  meaning, class labels and thresholds. Checked against the session at load.
* ``variants``: every ONNX file with its sha256, size, precision and the CPU features it was
  measured and chosen on; ``files``: sha256 of every other file shipped in the bundle.
* ``checks``: model inputs with the outputs every variant must give (the on-box self-test).

Schema 2 adds optional fields (a manifest using any says ``"schema_version": 2``, so an
agent that reads only schema 1 refuses it rather than misreading it; schema 1 bundles load
unchanged):

* ``input_normalisation`` (:class:`GraphNormalisation`): the ONNX graph normalises its input
  itself (its initializers ``input_offset`` / ``input_scale``, before the first quantized op):
  every role's ``normalisation`` is ``none``, so the agent feeds raw features; the training
  normalisation the constants came from is kept here, per role.
* ``agreement`` (:class:`AgreementGate`): the INT8 agreement gate the export passed, re-run by
  the install self-test on ``checks``: a reduced-precision variant must agree with the checks'
  expected (FP32) outputs on the gateway's own CPU.
* an input role's ``aggregation: ewma`` with its ``time_constant_s`` (:class:`InputRole`): the
  role's window rows are the exponentially weighted mean of its tag's values, a history longer
  than the window (the recent load, an operating variable).

Example (abridged)::

    {
      "schema_version": 1,
      "name": "pca-pump", "version": "1", "task": "anomaly",
      "window": {"sample_period_s": 1.0, "length": 60, "stride": 10},
      "inputs": [{"role": "bearing_vibration", "unit": "mm/s", "range": [0.0, 50.0],
                  "normalisation": {"kind": "standard", "mean": 2.1, "std": 0.4}}],
      "features": {"kind": "summary", "stats": ["mean", "std"]},
      "model_input": {"name": "x", "shape": ["batch", 2], "dtype": "float32"},
      "outputs": [{"name": "t2", "meaning": "Hotelling T^2", "shape": ["batch"],
                   "thresholds": {"alarm": 18.4}}],
      "variants": [{"file": "model.onnx", "precision": "fp32", "sha256": "…", "size": 1234}]
    }

:func:`load_manifest` turns every problem into a :class:`~agent.errors.ModelError` naming the
file and the field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ModelError
from agent.modelstore.files import MAX_METADATA_BYTES, NOT_PLAIN, BundleDir, is_plain_file_name

__all__ = [
    "LATEST_SCHEMA_VERSION",
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "SCHEMA_VERSIONS",
    "Aggregation",
    "AgreementGate",
    "CheckVector",
    "Dim",
    "FeatureSpec",
    "FileHash",
    "GraphNormalisation",
    "InputRole",
    "Manifest",
    "Normalisation",
    "OutputSpec",
    "Stat",
    "Task",
    "TensorSpec",
    "Variant",
    "WindowSpec",
    "load_manifest",
    "parse_manifest",
    "schema_2_fields",
    "schema_version_for",
]

SCHEMA_VERSION: Literal[1] = 1
"""The base schema: what a manifest that uses no schema-2 field says (every older bundle)."""
LATEST_SCHEMA_VERSION: Literal[2] = 2
"""The schema a manifest with ``input_normalisation``, ``agreement`` or an ``ewma`` role must say
(:func:`schema_version_for`)."""
SCHEMA_VERSIONS: tuple[int, ...] = (SCHEMA_VERSION, LATEST_SCHEMA_VERSION)
"""The manifest schemas this agent reads; a bundle written for another version is refused."""

MANIFEST_FILE = "manifest.json"

Task = Literal["anomaly", "classifier", "rul", "setpoint", "forecast"]
Aggregation = Literal["instant", "mean", "ewma"]
"""How one window row of a role is made from the polled samples (see :class:`InputRole`)."""
Stat = Literal[
    "mean",
    "std",
    "min",
    "max",
    "last",
    "slope",
    "recent_mean",
    "recent_std",
    "recent_min",
    "recent_max",
    "recent_slope",
]
Dim = int | str
"""A tensor dimension: a fixed size, or a symbolic name (``"batch"``) for a dynamic one."""

_NAME = r"^[a-z0-9][a-z0-9._\-]*$"
_ROLE = r"^[A-Za-z_][A-Za-z0-9_]*$"
_SHA256 = r"^[0-9a-f]{64}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Normalisation(_Frozen):
    """How one role is scaled before features are computed: ``(x - offset) / scale``.

    ``standard``: ``mean``/``std``; ``minmax``: ``min``/``max`` (to [0, 1]); ``none``: as is.
    """

    kind: Literal["standard", "minmax", "none"] = "standard"
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> Self:
        given = {k for k in ("mean", "std", "min", "max") if getattr(self, k) is not None}
        need = {"standard": {"mean", "std"}, "minmax": {"min", "max"}, "none": set[str]()}[self.kind]
        if given != need:
            wanted = ", ".join(sorted(need)) or "no parameters"
            got = ", ".join(sorted(given)) or "none"
            raise ValueError(f"normalisation {self.kind} takes {wanted} (got {got})")
        for k in given:
            if not math.isfinite(getattr(self, k)):
                raise ValueError(f"normalisation {k} must be finite")
        if self.kind == "standard" and not (self.std is not None and self.std > 0):
            raise ValueError("normalisation std must be > 0")
        if self.kind == "minmax" and not (
            self.min is not None and self.max is not None and self.min < self.max
        ):
            raise ValueError("normalisation needs min < max")
        return self

    @property
    def offset(self) -> float:
        if self.kind == "standard":
            return float(self.mean or 0.0)
        if self.kind == "minmax":
            return float(self.min or 0.0)
        return 0.0

    @property
    def scale(self) -> float:
        if self.kind == "standard":
            return float(self.std or 1.0)
        if self.kind == "minmax":
            return float((self.max or 1.0) - (self.min or 0.0))
        return 1.0


class InputRole(_Frozen):
    """One model input, named by what it means on the asset, not by a tag.

    ``range`` is the plausible (sensor) range in ``unit``: a value outside it is treated as
    BAD. ``training_range`` is what the training data covered (informative: a value outside it
    is an anomaly signal, never BAD). ``operating`` marks an operating variable (speed, flow,
    load: what the plant is asked to do) rather than a condition the model watches.
    ``aggregation`` is what one window row holds, as the training data had it: ``instant``
    the latest value at the tick, ``mean`` the mean of the GOOD samples polled within the
    sample period that ends at the tick (as historians export period averages); ``ewma``
    (schema 2) the exponentially weighted mean of the role's values at every tick since the
    model started, with time constant ``time_constant_s`` (a slow state the window cannot hold,
    such as the heat the last hour's load left in a motor:
    :func:`agent.pipeline.features.ewma_rows` is the one definition).
    """

    role: Annotated[str, Field(pattern=_ROLE, max_length=64)]
    unit: str
    range: tuple[float, float]
    normalisation: Normalisation = Normalisation(kind="none")
    description: str = ""
    aggregation: Aggregation = "instant"
    training_range: tuple[float, float] | None = None
    operating: bool = False
    time_constant_s: Annotated[float, Field(gt=0, le=10 * 86400)] | None = None

    @model_validator(mode="after")
    def _time_constant_fits_aggregation(self) -> Self:
        if (self.aggregation == "ewma") != (self.time_constant_s is not None):
            raise ValueError("time_constant_s is required for aggregation ewma (and only for it)")
        return self

    @field_validator("range")
    @classmethod
    def _range_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError("range must be [low, high], finite, with low < high")
        return value

    @field_validator("training_range")
    @classmethod
    def _training_range_ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None:
            lo, hi = value
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError("training_range must be [low, high], finite, with low <= high")
        return value


class WindowSpec(_Frozen):
    """The aligned window every role shares: one row per ``sample_period_s`` tick.

    A frame is produced every ``stride`` ticks once ``length`` rows are present.
    """

    sample_period_s: Annotated[float, Field(gt=0, le=86400)]
    length: Annotated[int, Field(ge=1, le=100_000)]
    stride: Annotated[int, Field(ge=1, le=100_000)] = 1


class FeatureSpec(_Frozen):
    """How a normalised window [T, R] becomes the model input (per asset).

    ``sequence``: [T, R] as is; ``flatten``: [T*R] time-major; ``summary``: for each stat in
    ``stats``, one value per role ([len(stats) * R], stat-major). A ``recent_*`` stat is its
    stat over the last ``recent`` rows of the window only: a long window (slow faults, rare
    events) that still sees what changed in the last minute.
    """

    kind: Literal["sequence", "flatten", "summary"] = "sequence"
    stats: tuple[Stat, ...] = ()
    recent: Annotated[int, Field(ge=2)] | None = None

    @model_validator(mode="after")
    def _stats_fit_kind(self) -> Self:
        if (self.kind == "summary") != bool(self.stats):
            raise ValueError("stats are required for kind summary (and only for it)")
        if len(set(self.stats)) != len(self.stats):
            raise ValueError("stats must not repeat")
        uses_recent = any(s.startswith("recent_") for s in self.stats)
        if uses_recent != (self.recent is not None):
            raise ValueError("recent_* stats need recent (the rows they cover), and recent needs one of them")
        return self

    def shape(self, length: int, n_roles: int) -> tuple[int, ...]:
        """The per-asset input shape (without the batch dimension)."""
        if self.kind == "sequence":
            return (length, n_roles)
        if self.kind == "flatten":
            return (length * n_roles,)
        return (len(self.stats) * n_roles,)


class TensorSpec(_Frozen):
    """An ONNX input tensor: its name, shape (first dim the dynamic batch) and element type."""

    name: str
    shape: tuple[Dim, ...]
    dtype: Literal["float32", "float64"] = "float32"


class OutputSpec(_Frozen):
    """An ONNX output: what it means and how to read it.

    ``shape`` is ``["batch"]`` for one value per asset or ``["batch", C]`` for a vector (class
    probabilities, with ``labels`` of length C). ``thresholds`` are named limits in the output's
    own scale; ``"alarm"`` is the one the scorer compares (value above it = 1).
    """

    name: str
    meaning: str
    shape: tuple[Dim, ...] = ("batch",)
    dtype: Literal["float32", "float64", "int64"] = "float32"
    unit: str = ""
    labels: tuple[str, ...] | None = None
    thresholds: dict[str, float] = {}
    false_alarm_rate: Annotated[float, Field(gt=0, lt=1)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not 1 <= len(self.shape) <= 2:
            raise ValueError("output shape must be [batch] or [batch, C]")
        if not isinstance(self.shape[0], str):
            raise ValueError("the first output dimension must be the dynamic batch (a name)")
        if self.labels is not None:
            if len(self.shape) != 2 or self.shape[1] != len(self.labels):
                raise ValueError(f"{len(self.labels)} labels need shape [batch, {len(self.labels)}]")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must not repeat")
        for key, value in self.thresholds.items():
            if not math.isfinite(value):
                raise ValueError(f"threshold {key} must be finite")
        return self


class Variant(_Frozen):
    """One ONNX build of the model.

    ``cpu_features`` are the CPU flags of the machine it was measured and chosen on (e.g.
    ``["avx2", "fma"]``, or ``["asimd", "asimddp"]`` on aarch64): an INT8 variant chosen on a
    CPU with VNNI/dot-product may be slower than FP32 on one without.
    """

    file: str
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    sha256: Annotated[str, Field(pattern=_SHA256)]
    size: Annotated[int, Field(ge=0)]
    cpu_features: tuple[str, ...] = ()
    note: str = ""

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # A bundle file is a plain name inside the bundle directory: no separators, no "..".
        if not is_plain_file_name(value):
            raise ValueError(f"{value!r} {NOT_PLAIN}")
        return value


class FileHash(_Frozen):
    """A non-model file shipped in the bundle, with its hash and size."""

    sha256: Annotated[str, Field(pattern=_SHA256)]
    size: Annotated[int, Field(ge=0)]


class CheckVector(_Frozen):
    """One check of the on-box self-test: a model input tensor (nested floats, batch first),
    the outputs every variant must give for it (by output name), and the tolerance: a value
    passes when ``|got - expected| <= tolerance * (1 + |expected|)``."""

    inputs: list[Any]
    outputs: dict[str, list[Any]]
    tolerance: Annotated[float, Field(gt=0, le=1e6)] = 1e-4

    @field_validator("inputs", "outputs")
    @classmethod
    def _finite_tensors(cls, value: Any) -> Any:
        for tensor in value.values() if isinstance(value, dict) else [value]:
            try:
                arr = np.asarray(tensor, dtype=np.float64)
            except (ValueError, TypeError):
                raise ValueError("must be a rectangular tensor of numbers (nested lists)") from None
            if arr.ndim < 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
                raise ValueError("must be a non-empty tensor of finite numbers")
        return value


class GraphNormalisation(_Frozen):
    """Schema 2: the ONNX graph normalises its input (``(x - offset) / scale`` per feature, its
    initializers named ``offset`` and ``scale``) before its first quantized op, so INT8 sees
    normalised values and the agent feeds raw features. ``roles``: the training normalisation
    of every input role (in manifest order) the constants were derived from."""

    offset: str = "input_offset"
    scale: str = "input_scale"
    roles: Annotated[tuple[Normalisation, ...], Field(min_length=1)]


class AgreementGate(_Frozen):
    """Schema 2: the agreement a reduced-precision (INT8) variant must reach against the
    expected outputs of ``checks`` (FP32's) on output ``output``: ``top1`` the share of rows
    with the same arg-max class, ``correlation`` the Pearson correlation of the values; at least
    ``minimum``. ``measured``: what the export measured on the check inputs, per variant file."""

    output: str
    kind: Literal["top1", "correlation"]
    minimum: Annotated[float, Field(gt=0, le=1)]
    measured: dict[str, float] = {}


class Manifest(_Frozen):
    """A model bundle's contract (see the module docstring)."""

    schema_version: Literal[1, 2]
    name: Annotated[str, Field(pattern=_NAME, max_length=64)]
    version: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._+\-]+$")]
    task: Task
    description: str = ""
    window: WindowSpec
    inputs: Annotated[tuple[InputRole, ...], Field(min_length=1)]
    features: FeatureSpec = FeatureSpec()
    model_input: TensorSpec
    outputs: Annotated[tuple[OutputSpec, ...], Field(min_length=1)]
    variants: Annotated[tuple[Variant, ...], Field(min_length=1)]
    files: dict[str, FileHash] = {}
    provenance: dict[str, str] = {}
    checks: tuple[CheckVector, ...] = ()
    """Check inputs and expected outputs for the on-box self-test (optional)."""
    input_normalisation: GraphNormalisation | None = None
    """Schema 2: the graph normalises its input; the agent feeds raw features."""
    agreement: tuple[AgreementGate, ...] = ()
    """Schema 2: the INT8 agreement gate, re-run on ``checks`` by the install self-test."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        roles = [r.role for r in self.inputs]
        dup = sorted({r for r in roles if roles.count(r) > 1})
        if dup:
            raise ValueError(f"duplicate input roles: {', '.join(dup)}")
        outs = [o.name for o in self.outputs]
        dup = sorted({o for o in outs if outs.count(o) > 1})
        if dup:
            raise ValueError(f"duplicate outputs: {', '.join(dup)}")
        if self.model_input.name in outs:
            raise ValueError(f"input and output share the name {self.model_input.name!r}")
        shape = self.model_input.shape
        if not shape or not isinstance(shape[0], str):
            raise ValueError("model_input.shape must start with the dynamic batch dimension (a name)")
        if self.features.recent is not None and self.features.recent > self.window.length:
            raise ValueError(
                f"features.recent {self.features.recent} is longer than the window ({self.window.length})"
            )
        expected = self.features.shape(self.window.length, len(self.inputs))
        if tuple(shape[1:]) != expected:
            raise ValueError(
                f"model_input.shape {list(shape)} does not fit the features: window {self.window.length} × "
                f"{len(self.inputs)} roles with features {self.features.kind} give "
                f"{['batch', *expected]}"
            )
        for i, check in enumerate(self.checks):
            unknown = sorted(set(check.outputs) - set(outs))
            if unknown:
                raise ValueError(f"checks[{i}]: unknown outputs {', '.join(unknown)}")
        self._schema_2_fields(outs)
        if self.task == "classifier" and not any(o.labels for o in self.outputs):
            raise ValueError("a classifier needs an output with labels")
        names = [v.file for v in self.variants] + list(self.files)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"files listed twice: {', '.join(dup)}")
        for n in self.files:
            if not is_plain_file_name(n):
                raise ValueError(f"files: {n!r} {NOT_PLAIN}")
            if n == MANIFEST_FILE:
                raise ValueError(f"files: {n!r} is the manifest itself")
        return self

    def _schema_2_fields(self, outs: list[str]) -> None:
        used = schema_2_fields(self.inputs, self.input_normalisation, self.agreement)
        if used and self.schema_version < LATEST_SCHEMA_VERSION:
            raise ValueError(
                f"{', '.join(used)} need schema_version {LATEST_SCHEMA_VERSION} "
                f"(this manifest says {self.schema_version})"
            )
        norm = self.input_normalisation
        if norm is not None:
            if len(norm.roles) != len(self.inputs):
                raise ValueError(
                    f"input_normalisation.roles has {len(norm.roles)} entries for {len(self.inputs)} inputs"
                )
            twice = [r.role for r in self.inputs if r.normalisation.kind != "none"]
            if twice:
                raise ValueError(
                    f"input_normalisation: the graph normalises, so the normalisation of "
                    f"{', '.join(twice)} must be none (the agent would normalise twice)"
                )
        for i, gate in enumerate(self.agreement):
            if gate.output not in outs:
                raise ValueError(f"agreement[{i}]: unknown output {gate.output!r}")
            if not self.checks:
                raise ValueError(f"agreement[{i}]: an agreement gate needs checks to run on")
            if gate.kind == "top1" and len(self.outputs[outs.index(gate.output)].shape) != 2:
                raise ValueError(f"agreement[{i}]: top1 needs an output of shape [batch, C]")

    @property
    def ident(self) -> str:
        """``name vVERSION``, as every message names a model."""
        return f"{self.name} v{self.version}"

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r.role for r in self.inputs)

    def role(self, name: str) -> InputRole:
        for r in self.inputs:
            if r.role == name:
                return r
        raise KeyError(name)

    def variant(self, file: str | None = None) -> Variant:
        """The named variant, or the first listed (the preferred one) when ``file`` is None."""
        if file is None:
            return self.variants[0]
        for v in self.variants:
            if v.file == file:
                return v
        raise ModelError(
            f"model {self.ident} has no variant {file!r} (it has {', '.join(v.file for v in self.variants)})"
        )

    def to_json(self) -> str:
        """The manifest as written to ``manifest.json`` (stable key order, unset options left
        out, trailing newline)."""
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + _printable(str(part))
    return out or "(top level)"


def _printable(text: str) -> str:
    """``text`` with control characters escaped (a key from a hostile file must not break the
    one-problem-per-line message, nor reach a terminal raw); an empty key shows as ``''``."""
    if not text:
        return "''"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest (a ``manifest.json`` file, or a bundle directory).

    The file is read as :class:`~agent.modelstore.files.BundleDir` reads every bundle file: a
    regular file, not a link, at most :data:`~agent.modelstore.files.MAX_METADATA_BYTES`.
    Raises ModelError naming the file and every problem (``field.path: message``).
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_FILE
    with BundleDir(p.parent) as bundle:
        data = bundle.read(p.name, limit=MAX_METADATA_BYTES)
    return parse_manifest(data, p)



def schema_2_fields(
    inputs: Sequence[InputRole],
    input_normalisation: GraphNormalisation | None = None,
    agreement: Sequence[AgreementGate] = (),
) -> list[str]:
    """What of these manifest fields needs :data:`LATEST_SCHEMA_VERSION` (empty: none)."""
    used = [k for k, v in (("input_normalisation", input_normalisation), ("agreement", agreement)) if v]
    return used + [f"aggregation ewma ({r.role})" for r in inputs if r.aggregation == "ewma"]


def schema_version_for(
    inputs: Sequence[InputRole],
    input_normalisation: GraphNormalisation | None = None,
    agreement: Sequence[AgreementGate] = (),
) -> int:
    """The oldest schema version that holds these fields: what an exporter writes, so a bundle
    that uses no schema-2 field stays readable by agents that know only schema 1."""
    used = schema_2_fields(inputs, input_normalisation, agreement)
    return LATEST_SCHEMA_VERSION if used else SCHEMA_VERSION


def parse_manifest(data: bytes, source: str | os.PathLike[str]) -> Manifest:
    """Validate the bytes of a manifest; ``source`` names it in every message.

    Raises ModelError naming the file and every problem (``field.path: message``).
    """
    p = Path(source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ModelError(f"{p}:{line}: not UTF-8 (byte 0x{data[exc.start]:02X})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{p}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise ModelError(f"{p}: not a manifest: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{p}: a manifest must be a JSON object")
    found = obj.get("schema_version")
    if type(found) is not int or found not in SCHEMA_VERSIONS:
        raise ModelError(
            f"{p}: schema_version {found!r} is not supported "
            f"(this agent reads schema_version {', '.join(map(str, SCHEMA_VERSIONS))})"
        )
    try:
        return Manifest.model_validate(obj)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{p}: {_loc(tuple(err['loc']))}: {_printable(msg)}")
        raise ModelError("invalid manifest:\n" + "\n".join(problems)) from None
