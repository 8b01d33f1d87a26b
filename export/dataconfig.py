"""The data section of an export config: which files, which columns are inputs, labels,
exclusions and splits, and the :class:`export.data.DataSpec` it resolves to.

:func:`data_spec` maps roles from ROLE:UNIT:LOW:HIGH:COLUMN strings or in bulk from the
columns of the first training recording (:func:`export.data.resolve_columns`), reads the
events file and turns exclusions into time ranges. Used by ``edge-export train`` and
``edge-export baseline`` alike (the same config, the same data).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.configbase import FrozenModel
from agent.modelstore.manifest import WindowSpec
from export.data import DataSpec, ReadOptions, Recording, TimeRange, resolve_columns
from export.pca_baseline import RoleSpec
from export.tables import DataError, TimestampSpec, parse_times, read_header, read_units

__all__ = ["DataConfig", "RoleOverride", "TimeRangeConfig", "data_spec", "epoch_seconds", "read_events"]


class RoleOverride(FrozenModel):
    """What the data cannot say about one role: its unit and plausible (sensor) range."""

    unit: str | None = None
    range: tuple[float, float] | None = None
    aggregation: Literal["instant", "mean"] | None = None


class TimeRangeConfig(FrozenModel):
    """``[start, end)``: ISO 8601 (an offset, or the data's timezone), or epoch seconds."""

    start: datetime | float | str
    end: datetime | float | str
    asset: str | None = None
    reason: str = ""


class DataConfig(FrozenModel):
    """Which columns are inputs (in bulk: ``columns``; or one ``ROLE:UNIT:LOW:HIGH:COLUMN``
    string per role in ``roles``), targets, labels, exclusions and the time split."""

    roles: list[str] | dict[str, RoleOverride] = []  # list: ROLE:UNIT:LOW:HIGH:COLUMN; map: overrides
    columns: str | list[str] | dict[str, str | list[str]] | None = None  # bulk mapping (see data.py)
    exclude_columns: list[str] = []
    assets: list[str] = ["plant"]
    operating: list[str] = []
    aggregation: Literal["instant", "mean"] = "instant"  # what a row is: the value, or the period's mean
    # role → time constant (s): the role's rows are the exponentially weighted mean of its column
    # (``aggregation: ewma``, as the agent holds it): bind a second role to the same column for a
    # reference slower than the window
    ewma: dict[str, Annotated[float, Field(gt=0, le=10 * 86400)]] = {}
    range_margin: Annotated[float, Field(ge=0)] = 3.0
    constant: Literal["refuse", "drop"] = "refuse"
    min_distinct: Annotated[int, Field(ge=2)] = 3
    timestamp: TimestampSpec = TimestampSpec()
    max_hold_s: Annotated[float, Field(gt=0)] | None = None
    label: str | None = None
    classes: dict[int, str] = {}
    normal_class: str = "normal"
    events: Path | None = None  # CSV start,end,asset,class
    exclude: list[TimeRangeConfig] = []
    rul: str | None = None
    oracle: str | None = None
    window: WindowSpec = WindowSpec(sample_period_s=1.0, length=60, stride=10)
    train_stride: int | None = None
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    gap_s: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _inputs_given(self) -> DataConfig:
        if isinstance(self.roles, list) and self.roles and self.columns is not None:
            raise ValueError("give columns (bulk) or roles as ROLE:UNIT:LOW:HIGH:COLUMN strings, not both")
        if self.columns is None and not (isinstance(self.roles, list) and self.roles):
            raise ValueError("no inputs: give columns (a pattern or list) or roles")
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must be below 1")
        return self


def epoch_seconds(value: datetime | float | str, ts: TimestampSpec, what: str) -> float:
    """A config time (a YAML timestamp, ISO text, or epoch seconds) → epoch seconds; one
    without an offset is in the data's timezone."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(parse_times([value], ts.model_copy(update={"format": "auto"}), what, [0])[0])
    return (value if value.tzinfo is not None else value.replace(tzinfo=ts.zone())).timestamp()


def _event_time(cell: str, ts: TimestampSpec, auto: TimestampSpec, path: Path, line: int) -> float:
    """The data's own timestamp format first, then ISO 8601 / epoch."""
    try:
        return float(parse_times([cell], ts.model_copy(update={"column": auto.column}), str(path), [line])[0])
    except DataError:
        return float(parse_times([cell], auto, str(path), [line])[0])


def read_events(path: Path, ts: TimestampSpec, assets: Sequence[str] | None = None) -> tuple[TimeRange, ...]:
    """An events file: CSV ``start,end,asset,class`` (header required; an empty asset: all)."""
    out: list[TimeRange] = []
    auto = ts.model_copy(update={"format": "auto", "column": "start"})
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if header[:4] != ["start", "end", "asset", "class"]:
                raise DataError(f"{path}:1: an events file starts with start,end,asset,class, got {header}")
            for line, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < 4 or not row[3].strip():
                    raise DataError(f"{path}:{line} column 'class': every event needs start,end,asset,class")
                start = _event_time(row[0], ts, auto, path, line)
                end = _event_time(row[1], ts, auto.model_copy(update={"column": "end"}), path, line)
                if end <= start:
                    raise DataError(f"{path}:{line} column 'end': the event ends before it starts")
                asset = row[2].strip() or None
                if assets is not None and asset is not None and asset not in assets:
                    raise DataError(
                        f"{path}:{line} column 'asset': {asset!r} is not one of the assets {list(assets)}"
                    )
                out.append(TimeRange(float(start), float(end), asset, row[3].strip()))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the events file: {exc.strerror or exc}") from None
    return tuple(out)


def _check_ewma(d: DataConfig, roles: Sequence[str]) -> None:
    unknown = sorted(set(d.ewma) - set(roles))
    if unknown:
        raise DataError(f"data.ewma: no role(s) {unknown} among the roles {list(roles)}")


def data_spec(d: DataConfig, recordings: Sequence[Recording] = ()) -> DataSpec:
    """The data spec of a model: roles from ROLE:UNIT:LOW:HIGH:COLUMN strings, or mapped in
    bulk from the columns of the first training recording (units from an agent recording's
    manifest or the overrides; ranges from the overrides, else inferred from the data)."""
    opts = ReadOptions(
        timestamp=d.timestamp,
        max_hold_s=d.max_hold_s,
        exclude=tuple(
            TimeRange(
                epoch_seconds(e.start, d.timestamp, f"data.exclude[{i}].start"),
                epoch_seconds(e.end, d.timestamp, f"data.exclude[{i}].end"),
                e.asset,
                e.reason,
            )
            for i, e in enumerate(d.exclude)
        ),
        events=read_events(d.events, d.timestamp, d.assets) if d.events is not None else (),
        classes=dict(d.classes),
        normal_class=d.normal_class,
        test_fraction=d.test_fraction,
        gap_s=d.gap_s,
        range_margin=d.range_margin,
        constant=d.constant,
        min_distinct=d.min_distinct,
    )
    for i, e in enumerate(d.exclude):
        if e.asset is not None and e.asset not in d.assets:
            raise DataError(f"data.exclude[{i}].asset: {e.asset!r} is not one of the assets {d.assets}")
    common = {"label": d.label, "rul": d.rul, "oracle": d.oracle, "options": opts}
    if d.columns is None:
        roles = tuple(RoleSpec.parse(r) for r in d.roles)  # type: ignore[union-attr]
        unknown = sorted(set(d.operating) - {r.role for r in roles})
        if unknown:
            raise DataError(f"data.operating: no role(s) {unknown}")
        agg = {r.role: d.aggregation for r in roles}
        _check_ewma(d, [r.role for r in roles])
        return DataSpec(
            roles,
            tuple(d.assets),
            d.window,
            operating=tuple(d.operating),
            aggregation=agg,
            ewma=dict(d.ewma),
            **common,  # type: ignore[arg-type]
        )
    first = next((r for r in recordings if r.split == "train"), None)
    if first is None:
        raise DataError("data.columns: no training recording to read the column names from")
    header = read_header(first.path, first.timestamp or d.timestamp)
    targets = [
        t.format(asset=a, n=i + 1)
        for t in (d.label, d.rul, d.oracle)
        if t is not None
        for i, a in enumerate(d.assets)
    ]
    mapping = resolve_columns(
        [c for c in header if c not in targets],
        d.assets,
        d.columns,
        exclude=d.exclude_columns,
        source=str(first.path),
    )
    overrides = d.roles if isinstance(d.roles, dict) else {}
    first_map = mapping[d.assets[0]]
    unknown = sorted((set(overrides) | set(d.operating)) - set(first_map))
    if unknown:
        raise DataError(
            f"data.roles/operating: no role(s) {unknown} among the mapped columns {list(first_map)}"
        )
    units: dict[str, str] = {}
    for r in recordings:  # an agent recording's manifest knows its tags' units
        if r.path.is_dir():
            units.update(read_units(r.path))
    _check_ewma(d, list(first_map))
    roles = []
    for role, column in first_map.items():
        o = overrides.get(role, RoleOverride())
        low, high = o.range if o.range is not None else (math.nan, math.nan)
        unit = o.unit if o.unit is not None else units.get(column, "")
        roles.append(RoleSpec(role, unit, low, high, column))
    return DataSpec(
        tuple(roles),
        tuple(d.assets),
        d.window,
        mapping=mapping,
        operating=tuple(d.operating),
        aggregation={
            role: (o.aggregation if (o := overrides.get(role)) and o.aggregation else d.aggregation)
            for role in first_map
        },
        ewma=dict(d.ewma),
        **common,  # type: ignore[arg-type]
    )
