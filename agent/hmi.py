"""The HMI writer: every asset's display block, the heartbeat and the status word.

The runtime decides *what* the HMI shows (:func:`block_values` turns an asset's alarm block
and its latest values into field values; the status word is the runtime's); :class:`HmiWriter`
decides *when* and *how* it reaches the tags:

* A value is written when it changed, when it is due for a refresh (``hmi.refresh_s``), or
  while its last write failed (retried every call).
* Each value succeeds or fails on its own: the sink returns one result per tag (the written
  value or the :class:`~agent.errors.DriverError` that stopped it), so a value that does not
  encode, or that the device refuses, never blocks the rest of its block. A sink that raises a
  ``DriverError`` for the whole call (device unreachable) fails every value of that call.
* A block is written in :data:`FIELD_ORDER`, details first and words last, so an HMI that sees
  a new alarm bit finds its severity, count and first-out already written.
* The heartbeat and the status word each go in a call of their own, with their own purpose:
  no display value can stop the heartbeat.
* Failures are logged on transitions only: the first failure with its reason (warning), then
  "recovered" once (info); :attr:`HmiWriter.stats` counts every outcome per tag for metrics.

Every call passes its purpose (``display``, ``heartbeat``, ``status``) and the driver refuses a
tag declared for another one, so no display, heartbeat or status write can reach a setpoint,
the permissive or the acknowledge tag even if a config got past the loader's alias checks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import structlog

from agent.config import AssetConfig, Config
from agent.errors import DriverError
from agent.pipeline.alarms import HmiBlock
from agent.pipeline.guard import Reason
from agent.pipeline.policy import ReasonCode
from agent.types import Action, Decision, Value

__all__ = [
    "DETAIL_FIELDS",
    "FIELD_ORDER",
    "WORD_FIELDS",
    "HmiPurpose",
    "HmiSink",
    "HmiWriter",
    "TagStats",
    "block_values",
    "recommender_code",
    "with_sources",
]

log = structlog.get_logger("agent.hmi")

HmiPurpose = Literal["display", "heartbeat", "status"]
"""The purposes the HMI writer writes for (a subset of ``agent.configbase.Purpose``)."""

DETAIL_FIELDS: tuple[str, ...] = (
    "highest_severity",
    "active_count",
    "first_out_code",
    "fault_class",
    "anomaly_score",
    "rul",
    "recommender_reason",
)
"""Block fields written first: what an operator looks up once a word shows a new bit."""

WORD_FIELDS: tuple[str, ...] = ("alarm_word", "unacked_word", "shelved_word", "alert_word")
"""Block fields written last."""

FIELD_ORDER: tuple[str, ...] = DETAIL_FIELDS + WORD_FIELDS
"""The order a block's values are written in (every field of ``AssetHmi``)."""

_HEARTBEAT_MODULO = 65536  # a 16-bit counter: the PLC watches it change
_FIELDS = frozenset(FIELD_ORDER)


class HmiSink(Protocol):
    """What the HMI writer needs of a driver (ModbusDriver and OpcUaDriver provide it).

    ``write_many`` writes ``items`` in the order given (merging only neighbours in that order)
    and returns one entry per tag: the value read back, or the ``DriverError`` that stopped
    that tag (encode error, refused, unconfirmed). It raises ``DriverError`` only when nothing
    could be attempted (device unreachable). A tag whose declared purpose is not ``purpose``
    is refused (``WriteRefused``) before anything is sent. Called from one task at a time.
    """

    async def write_many(
        self, items: Sequence[tuple[str, Value]], *, purpose: HmiPurpose
    ) -> Mapping[str, Value | DriverError]: ...


@dataclass(frozen=True, slots=True)
class TagStats:
    """What happened to one HMI tag's writes since start (for metrics and status)."""

    purpose: HmiPurpose
    written: int
    """Writes that succeeded."""
    failed: int
    """Writes that failed, whatever the reason."""
    failed_by: Mapping[str, int]
    """Failures by reason: the error's class name (``WriteRefused``, ``DeviceUnreachable`` …)."""
    failing: str | None
    """The current failure's message while the tag is failing; None once a write succeeded."""


@dataclass(slots=True)
class _TagState:
    purpose: HmiPurpose
    value: Value = None
    written_at: float | None = None  # None: never written, or the last write failed
    failing: str | None = None
    written: int = 0
    failed: int = 0
    failed_by: dict[str, int] = field(default_factory=dict)


def with_sources(block: HmiBlock, asset: AssetConfig, shown: Mapping[str, float | None]) -> HmiBlock:
    """The engine's block with ``fault_class`` and ``rul`` from the asset's sources.

    ``shown`` maps source names to their latest values (None when unknown). A fault class that
    is unknown or not a finite number shows 0 (no class), as the field is an integer code.
    """
    fault_class, rul = _from_sources(asset, shown)
    return replace(block, fault_class=fault_class, rul=rul)


def _from_sources(asset: AssetConfig, shown: Mapping[str, float | None]) -> tuple[int, float | None]:
    """``fault_class`` and ``rul`` as :func:`with_sources` fills them in."""
    fault = shown.get(asset.fault_class_source) if asset.fault_class_source else None
    rul = shown.get(asset.rul_source) if asset.rul_source else None
    return (int(fault) if fault is not None and math.isfinite(fault) else 0), rul


_STEPPING = frozenset({Reason.RATE_LIMITED, Reason.RATE_WAIT})
_MOVING = frozenset(
    {ReasonCode.STOPPED_ALARM, ReasonCode.STOPPED_FOR_ENERGY, ReasonCode.DUTY_ROTATION, ReasonCode.NONE}
)


def recommender_code(code: ReasonCode, decision: Decision | None) -> int:
    """The recommender's reason code the HMI shows for a pump: ``code`` (what bound the
    recommendation), or RATE_LIMITED while the Guard is still stepping its setpoint toward a
    running pump's recommendation (its decision clamped or held by the rate limit)."""
    if decision is None or code in _MOVING or decision.action not in (Action.CLAMP, Action.HOLD):
        return int(code)
    heads = set()
    for r in decision.reasons:
        try:
            heads.add(Reason.of(r))
        except ValueError:
            continue
    return int(ReasonCode.RATE_LIMITED) if heads & _STEPPING else int(code)


def block_values(
    block: HmiBlock,
    asset: AssetConfig,
    shown: Mapping[str, float | None],
    recommender_reason: int | None = None,
) -> dict[str, Value]:
    """Every field of the asset's HMI block → its value, in :data:`FIELD_ORDER`.

    ``block`` is the alarm engine's block (sources are filled in as :func:`with_sources` does,
    so a block already filled gives the same result); ``shown`` as for :func:`with_sources`.
    A field whose value is unknown (no score yet, a BAD source) is None: it is not written,
    so the HMI keeps its last value rather than a made-up one. ``recommender_reason``: the
    recommender's code for this asset (:func:`recommender_code`; None: no recommender).
    """
    b = block
    fault_class, rul = _from_sources(asset, shown)  # as with_sources fills them in
    values: dict[str, Value] = {
        "highest_severity": b.highest_severity,
        "active_count": b.active_count,
        "first_out_code": b.first_out_code,
        "fault_class": fault_class,
        "anomaly_score": shown.get(asset.anomaly_source) if asset.anomaly_source else None,
        "rul": rul,
        "recommender_reason": recommender_reason,
        "alarm_word": b.alarm_word,
        "unacked_word": b.unacked_word,
        "shelved_word": b.shelved_word,
        "alert_word": b.alert_word,
    }
    return {f: values[f] for f in FIELD_ORDER}


def _same(a: Value, b: Value) -> bool:
    """Unchanged for the HMI: equal and of one type (True == 1 in Python, not on a tag), and
    NaN is unchanged from NaN (it would otherwise be rewritten every cycle)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


class HmiWriter:
    """Writes the HMI tags of one config: asset display blocks, heartbeat and status word.

    ``sinks`` maps device name → driver, ``device_of`` tag name → device name; every HMI tag
    of ``config`` must have both (``ValueError`` otherwise, at construction). ``clock`` is the
    monotonic clock, read only by :meth:`write_final_status`; the other calls take ``now``.

    Calls come from one task at a time (the agent's cycle, then its shutdown); none raises for
    a device fault (those are counted, logged on transitions and retried), only for
    cancellation or a bug.
    """

    def __init__(
        self,
        config: Config,
        sinks: Mapping[str, HmiSink],
        device_of: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_s = config.hmi.refresh_s
        """Unchanged values are written again this often (``hmi.refresh_s``; a config reload
        changes it live)."""
        self._heartbeat_tag = config.hmi.heartbeat_tag
        self._status_tag = config.hmi.status_tag
        self._sinks = sinks
        self._device_of = device_of
        self._clock = clock
        self._fields: dict[str, dict[str, str]] = {a.name: dict(a.hmi.items()) for a in config.assets}
        self._state: dict[str, _TagState] = {}
        self._heartbeat = 0
        owned: list[tuple[str, HmiPurpose]] = [
            (tag, "display") for fields in self._fields.values() for tag in fields.values()
        ]
        if self._heartbeat_tag is not None:
            owned.append((self._heartbeat_tag, "heartbeat"))
        if self._status_tag is not None:
            owned.append((self._status_tag, "status"))
        for tag, purpose in owned:
            device = device_of.get(tag)
            if device is None or device not in sinks:
                raise ValueError(f"HMI tag {tag!r} ({purpose}) has no device to write it")
            if tag in self._state:
                # One state per tag: a tag written twice per cycle would fight itself on the HMI.
                raise ValueError(f"HMI tag {tag!r} is written for more than one field")
            self._state[tag] = _TagState(purpose)

    # ------------------------------------------------------------------ writing

    async def write_blocks(self, blocks: Mapping[str, Mapping[str, Value]], now: float) -> None:
        """Write the display blocks: asset name → field → value (as :func:`block_values` gives).

        Fields the asset's config leaves out, and None values, are skipped; each asset's block
        is one call per device, in :data:`FIELD_ORDER`. An unknown asset or field is a bug
        (``KeyError``).
        """
        for asset, values in blocks.items():
            fields = self._fields[asset]
            unknown = values.keys() - _FIELDS
            if unknown:
                raise KeyError(f"unknown HMI field(s) for {asset}: {sorted(unknown)}")
            items = [(fields[f], v) for f in FIELD_ORDER if f in fields and (v := values.get(f)) is not None]
            await self._write([(t, v) for t, v in items if self._due(t, v, now)], "display", now)

    async def write_agent_status(self, heartbeat: bool, status_word: int, now: float) -> None:
        """Write the heartbeat (when ``heartbeat``), then the status word, in separate calls.

        The heartbeat is a 16-bit counter advanced on every call with ``heartbeat`` true and
        written every time (the PLC watches it change); with ``heartbeat`` false it is not
        written, so the PLC sees it stop and falls back. The status word is written when it
        changed, when due for a refresh, or while failing.
        """
        if heartbeat:
            await self.write_heartbeat(now)
        await self.write_status(status_word, now)

    async def write_heartbeat(self, now: float) -> None:
        """Advance the heartbeat and write it (the first half of :meth:`write_agent_status`)."""
        if self._heartbeat_tag is not None:
            self._heartbeat = (self._heartbeat + 1) % _HEARTBEAT_MODULO
            await self._write([(self._heartbeat_tag, self._heartbeat)], "heartbeat", now)

    async def write_status(self, status_word: int, now: float) -> None:
        """Write the status word when due (the second half of :meth:`write_agent_status`)."""
        tag = self._status_tag
        if tag is not None and self._due(tag, status_word, now):
            await self._write([(tag, status_word)], "status", now)

    async def write_final_status(self, status_word: int) -> None:
        """Write the status word once more at shutdown, whatever was written before (the
        heartbeat is not advanced again: it stops, so the PLC falls back)."""
        if self._status_tag is not None:
            await self._write([(self._status_tag, status_word)], "status", self._clock())

    # ------------------------------------------------------------------ reporting

    @property
    def stats(self) -> dict[str, TagStats]:
        """Per HMI tag: successes, failures (by reason) and the current failure, if any."""
        return {
            tag: TagStats(s.purpose, s.written, s.failed, dict(s.failed_by), s.failing)
            for tag, s in self._state.items()
        }

    @property
    def failing(self) -> dict[str, str]:
        """Tags whose last write failed → the reason."""
        return {tag: s.failing for tag, s in self._state.items() if s.failing is not None}

    # ------------------------------------------------------------------ internals

    def _due(self, tag: str, value: Value, now: float) -> bool:
        s = self._state[tag]
        return s.written_at is None or not _same(s.value, value) or now - s.written_at >= self.refresh_s

    async def _write(self, items: list[tuple[str, Value]], purpose: HmiPurpose, now: float) -> None:
        by_device: dict[str, list[tuple[str, Value]]] = {}
        for tag, value in items:
            by_device.setdefault(self._device_of[tag], []).append((tag, value))
        for device, batch in by_device.items():
            results: Mapping[str, Value | DriverError]
            try:
                results = await self._sinks[device].write_many(batch, purpose=purpose)
            except DriverError as exc:
                results = dict.fromkeys((t for t, _ in batch), exc)
            self._record(device, batch, results, purpose, now)

    def _record(
        self,
        device: str,
        batch: list[tuple[str, Value]],
        results: Mapping[str, Value | DriverError],
        purpose: HmiPurpose,
        now: float,
    ) -> None:
        newly_failed: dict[str, list[str]] = {}  # message → tags: one log line per cause
        recovered: list[str] = []
        for tag, value in batch:
            s = self._state[tag]
            if tag not in results:
                outcome: Value | DriverError = DriverError(f"{device} returned no result for {tag}")
            else:
                outcome = results[tag]
            if isinstance(outcome, DriverError):
                reason = type(outcome).__name__
                s.failed += 1
                s.failed_by[reason] = s.failed_by.get(reason, 0) + 1
                s.written_at = None  # retried on the next call
                if s.failing is None:
                    newly_failed.setdefault(str(outcome) or reason, []).append(tag)
                s.failing = str(outcome) or reason
                continue
            s.written += 1
            s.value, s.written_at = value, now
            if s.failing is not None:
                s.failing = None
                recovered.append(tag)
        for message, tags in newly_failed.items():
            log.warning("HMI write failed", device=device, purpose=purpose, tags=tags, error=message)
        if recovered:
            log.info("HMI write recovered", device=device, purpose=purpose, tags=recovered)
