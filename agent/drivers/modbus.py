"""Modbus TCP and RTU driver (pymodbus), one per TCP endpoint or serial bus.

One connection per host:port (or bus), shared by every unit id behind it, one request at a
time. Each unit has its own circuit breaker, so a silent unit is skipped with backoff while the
healthy units behind the same gateway keep their rate; request timeouts are clipped to the
poll's deadline.

pymodbus is configured for a poller, not a script: no retries, no reconnect loop of its own
(``reconnect_delay=0``: we reconnect with our own backoff), no "close the link after N
unanswered requests" of its own (a silent unit must not take the link down). Ours counts only
requests after which *nothing at all* came back on the connection, from any unit: after
``breaker.failures + 1`` in a row, once no polled unit's breaker is closed any more, the
connection is closed and opened again (a half-open TCP connection is never kept), while the
replies of healthy units keep a gateway's connection up, and a healthy unit is never dropped
with the link before its own breaker calls it lost. Its exceptions are translated here, at the
seam; ``asyncio.CancelledError`` always propagates, even where a pymodbus release wraps it in
``ModbusIOException``.

Every reply is validated: exception codes, replies from the wrong unit (over TCP reported as
soon as they arrive, not at the timeout), short replies (pymodbus accepts them as success),
timeouts, late and incomplete replies, a connection the peer closes (the request in flight ends
at once). Over TCP the bytes are checked before pymodbus parses them (:func:`scan_mbap`): a
peer that does not speak Modbus TCP is named as such once and backed off; a corrupt header,
length, byte count or function code ends the request and closes the connection (the stream
cannot be framed any more), never a traceback. Nothing from a bad reply reaches the pipeline as
GOOD: the affected tags get a BAD sample with the reason.

A merged read refused with exception 02, or answered short (some servers answer a read past
the end of their table with the registers they have), is split (:mod:`agent.drivers.modbus_plan`):
the valid neighbours are read in the same cycle, only the tags really refused or past the end
are BAD, and the split is remembered. A unit refusing every address it is asked for (a unit id
a gateway does not have) counts as a failure of the unit each cycle: "lost" once, then probed
with its breaker's backoff, so a drive added later is found without a restart.

Writes (:meth:`ModbusDriver.write_many`) go in the caller's order, each item checked before
anything is sent (its declared purpose among them), and each verified by a read issued after
the write's reply; a request is never re-sent, and whether it left at all decides between
"not sent" and "possibly applied" (see :mod:`agent.drivers.base` for the error semantics).
"""

from __future__ import annotations

import asyncio
import functools
import math
import operator
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from types import TracebackType
from typing import Any, Self

import structlog

from agent.config import ModbusRtuDevice, ModbusTag, ModbusTcpDevice, modbus_reference
from agent.configbase import Purpose
from agent.drivers import modbus_codec as codec
from agent.drivers.base import WriteResults, check_purpose
from agent.drivers.modbus_plan import ReadRequest, RequestPlanner, Span
from agent.errors import (
    BadReply,
    CodecError,
    DeviceException,
    DeviceUnreachable,
    DriverError,
    ReadBackFailed,
    WriteRefused,
    WriteUnconfirmed,
)
from agent.running import Backoff, BreakerState, CircuitBreaker, Counters
from agent.types import Quality, Sample, Value, utcnow

__all__ = ["EXCEPTION_NAMES", "ModbusDriver", "UnitStatus", "decode_tag", "encode_tag", "scan_mbap"]

log = structlog.get_logger("agent.drivers.modbus")

ModbusDevice = ModbusTcpDevice | ModbusRtuDevice

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# Exceptions that mean "this unit is not there", for the breaker.
_UNIT_DOWN_CODES = frozenset({10, 11})
_MARGIN_S = 0.010  # leave this much of the cycle for bookkeeping
_MIN_BUDGET_S = 0.010  # below this, a request is deferred to the next cycle, not sent


@dataclass
class UnitStatus:
    unit: int
    state: str
    last_error: str
    requests: int
    failures: int
    breaker: str = "closed"
    """The unit's circuit breaker (closed, open, half_open); the link's while the link is open."""


@dataclass
class _Table:
    name: str  # coil, discrete, holding, input
    planner: RequestPlanner
    tags: dict[str, ModbusTag]
    # per tag: (address, register/bit count, reader), computed once
    readers: dict[str, tuple[int, int, Reader]] = field(default_factory=dict)
    # why each of the planner's illegal keys is left out (exception 02, short reply)
    refused: dict[str, str] = field(default_factory=dict)
    # when the illegal keys are asked again (a map that changed, a fault that went away)
    probe_at: float = math.inf
    # the columnar decoder of each request read so far (see _Columns), by the request's id:
    # the planner hands out the same request objects every cycle (hashing one hashes its keys)
    columns: dict[int, tuple[ReadRequest, _Columns]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.readers = {k: (t.address, t.register_count, make_reader(t)) for k, t in self.tags.items()}

    def columns_for(self, req: ReadRequest) -> _Columns:
        """The decoder of ``req``, compiled on its first reply (a plan changes rarely: splits)."""
        known = self.columns.get(id(req))
        if known is not None and known[0] is req:
            return known[1]
        if len(self.columns) >= _MAX_COLUMNS:
            self.columns.clear()  # plans learned and forgotten many times: start again
        cols = _Columns(self, req)
        self.columns[id(req)] = (req, cols)  # the request kept alive: its id stays its own
        return cols

    @property
    def registers(self) -> bool:
        return self.name in ("holding", "input")

    @property
    def all_refused(self) -> bool:
        return len(self.planner.illegal_keys) == len(self.tags)

    def refuse(self, before: frozenset[str], error: str, out: list[Sample], *, past_end: str = "") -> None:
        """After one of the planner's ``report_*``: give each key it made illegal (not in
        ``before``) its reason, and its BAD sample of this cycle. ``past_end``: the keys are
        past the end of the table, as the short reply shows (what it says of the end)."""
        for key in sorted(self.planner.illegal_keys - before):
            tag = self.tags[key]
            if past_end:
                where = tag.reference
                if tag.register_count > 1:
                    where += f"..{modbus_reference(tag.table, tag.address + tag.register_count - 1)}"
                why = f"{error}: {where} is past the end of the unit's table ({past_end})"
            else:
                why = f"{error} at {tag.reference}"
            self.refused[key] = why
            out.append(_bad(tag, why))

    def retry_refused(self) -> None:
        self.planner.retry_illegal()
        self.refused.clear()
        self.probe_at = math.inf


@dataclass
class _Unit:
    unit: int
    breaker: CircuitBreaker
    tables: list[_Table] = field(default_factory=list)
    problem: str = ""  # the last request failure of any kind (status text when nothing else)

    def tags(self) -> Iterable[ModbusTag]:
        for t in self.tables:
            yield from t.tags.values()

    @property
    def refused_everywhere(self) -> bool:
        """Every tag of the unit is refused (exception 02, past the end): nothing to read."""
        return bool(self.tables) and all(t.all_refused for t in self.tables)


def _bad(tag: ModbusTag, reason: str) -> Sample:
    return Sample.now(tag.name, None, Quality.bad(reason))


def _bad_many(tags: Iterable[ModbusTag], reason: str) -> list[Sample]:
    """One BAD sample per tag with one reason and one stamp (a dead device: every tag at once)."""
    quality, received_at, mono = Quality.bad(reason), utcnow(), time.monotonic()
    return [Sample(t.name, None, quality, received_at, mono) for t in tags]


def decode_tag(tag: ModbusTag, words: Sequence[int] | Sequence[bool]) -> tuple[Value, Quality]:
    """Raw words (or bits) of one tag → engineering value and quality (the general path; the
    poll loop uses :func:`make_reader`, the same rules with constants bound)."""
    try:
        raw: bool | int | float | str
        if tag.type is codec.DataType.BOOL:
            return bool(words[0]), Quality.good()
        else:
            raw = codec.decode(
                [int(w) for w in words], tag.type, tag.word_order, bit=tag.bit, byte_swap=tag.byte_swap
            )
    except CodecError as exc:
        return None, Quality.bad(str(exc))
    if isinstance(raw, (str, bool)):
        return raw, Quality.good()
    value: float | int = raw * tag.scale + tag.offset if (tag.scale != 1.0 or tag.offset != 0.0) else raw
    if isinstance(value, float) and not math.isfinite(value):
        return None, Quality.bad(f"not finite: {value}")
    if tag.range is not None and not (tag.range[0] <= value <= tag.range[1]):
        return value, Quality.bad(f"out of range: {value:g} not in [{tag.range[0]:g}, {tag.range[1]:g}]")
    return value, Quality.good()


Reader = Callable[[Sequence[int] | Sequence[bool]], tuple[Value, Quality]]


def make_reader(tag: ModbusTag) -> Reader:
    """The poll loop's decoder for one tag: :func:`decode_tag` with its constants bound once.

    Numeric tags get a closure over the compiled decoder, scale, offset and range (the hot
    path: a thousand tags a cycle); every other type goes through :func:`decode_tag`.
    """
    if tag.type in (codec.DataType.BOOL, codec.DataType.BIT, codec.DataType.STRING):
        return lambda words: decode_tag(tag, words)
    fast = codec.compile_decoder(tag.type, tag.word_order)
    scale, offset = tag.scale, tag.offset
    scaled = scale != 1.0 or offset != 0.0
    lo, hi = tag.range if tag.range is not None else (-math.inf, math.inf)
    good = Quality.good()
    isfinite = math.isfinite

    def read(words: Sequence[int] | Sequence[bool]) -> tuple[Value, Quality]:
        try:
            raw = fast(words)
        except CodecError as exc:
            return None, Quality.bad(str(exc))
        value = raw * scale + offset if scaled else raw
        if not isfinite(value):
            return None, Quality.bad(f"not finite: {value}")
        if not lo <= value <= hi:
            return value, Quality.bad(f"out of range: {value:g} not in [{lo:g}, {hi:g}]")
        return value, good

    return read


_BLOCK_TYPES = frozenset(
    {
        codec.DataType.INT16,
        codec.DataType.UINT16,
        codec.DataType.INT32,
        codec.DataType.UINT32,
        codec.DataType.INT64,
        codec.DataType.UINT64,
        codec.DataType.FLOAT32,
        codec.DataType.FLOAT64,
    }
)
_FLOAT_TYPES = frozenset({codec.DataType.FLOAT32, codec.DataType.FLOAT64})
_MAX_COLUMNS = 256  # compiled request decoders kept per table
_GOOD = Quality.good()
# A Sample built from one 6-tuple in C (a NamedTuple's own __new__ is a Python call per tag).
_new = tuple.__new__  # a Sample from one 6-tuple, in C (the NamedTuple's own __new__ is Python)


def _picker(indices: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``operator.itemgetter`` that always returns a tuple (also for zero or one index)."""
    if not indices:
        return lambda _: ()
    if len(indices) == 1:
        (i,) = indices
        return lambda seq: (seq[i],)
    return operator.itemgetter(*indices)


class _Columns:
    """Every tag of one planned read decoded at once: the poll's hot path.

    One reply becomes the raw values of all its numeric tags in a few ``struct`` calls
    (:func:`~agent.drivers.modbus_codec.compile_block`); scale and offset, the finiteness
    check and the range check run over whole columns in C (``map`` over ``operator``
    functions), and the samples are built in C sharing one receive stamp. Only when every
    value of the reply is GOOD is the result taken; otherwise the reply is decoded again tag
    by tag by each tag's :func:`make_reader` (the reference: it gives each BAD tag its own
    reason), so both paths give the same samples for any reply (tests/unit/test_modbus_columns.py).
    """

    def __init__(self, table: _Table, req: ReadRequest) -> None:
        self.keys = req.keys
        tags = [table.tags[k] for k in req.keys]
        offsets = [t.address - req.start for t in tags]
        readers = [table.readers[k][2] for k in req.keys]
        self.slow = [
            (k, o, t.register_count, r) for k, o, t, r in zip(req.keys, offsets, tags, readers, strict=True)
        ]
        self.bits = not table.registers
        self.pick_bits = _picker(offsets)
        numeric = [i for i, t in enumerate(tags) if t.type in _BLOCK_TYPES]
        other = [i for i, t in enumerate(tags) if t.type not in _BLOCK_TYPES]
        self.other = [(o, c, r) for _, o, c, r in (self.slow[i] for i in other)]
        # the numeric values come first, then the others: back into the request's key order
        order = numeric + other
        self.reorder = (
            None if order == sorted(order) else _picker([order.index(i) for i in range(len(order))])
        )
        num = [tags[i] for i in numeric]
        self.block = codec.compile_block(
            [codec.BlockField(offsets[i], tags[i].type, tags[i].word_order) for i in numeric],
            req.count,
        )
        is_scaled = [t.scale != 1.0 or t.offset != 0.0 for t in num]
        scaled = [j for j, yes in enumerate(is_scaled) if yes]
        unscaled = [j for j, yes in enumerate(is_scaled) if not yes]
        self.any_scaled, self.all_scaled = bool(scaled), not unscaled
        self.scales = tuple(num[j].scale for j in scaled)
        self.offsets = tuple(num[j].offset for j in scaled)
        self.pick_scaled = _picker(scaled)
        self.pick_unscaled = _picker(unscaled)
        grouped = unscaled + scaled
        self.regroup = _picker([grouped.index(j) for j in range(len(num))])
        # integers unscaled are finite by construction; floats and anything scaled are checked
        self.check_finite = bool(scaled) or any(t.type in _FLOAT_TYPES for t in num)
        ranges = [(j, t.range) for j, t in enumerate(num) if t.range is not None]
        self.pick_ranged = _picker([j for j, _ in ranges])
        self.lows = tuple(r[0] for _, r in ranges)
        self.highs = tuple(r[1] for _, r in ranges)

    def decode(
        self, data: Sequence[int] | Sequence[bool], received_at: datetime, mono: float
    ) -> list[Sample]:
        """The samples of one reply (``data``: exactly the request's registers or bits)."""
        n = len(self.keys)
        values: tuple[Value, ...] | None
        if self.bits:
            values = tuple(map(bool, self.pick_bits(data)))
        else:
            values = self._registers(data)
            if values is None:
                return self._slow(data, received_at, mono)
        columns = (
            self.keys,
            values,
            repeat(_GOOD, n),
            repeat(received_at, n),
            repeat(mono, n),
            repeat(None, n),
        )
        rows = zip(*columns, strict=True)
        samples: list[Sample] = list(map(_new, repeat(Sample, n), rows))
        return samples

    def _registers(self, data: Sequence[int]) -> tuple[Value, ...] | None:
        """Every value of a register reply when all are GOOD, else None (take the slow path)."""
        try:
            raw = self.block(data)
        except CodecError:
            return None
        eff: tuple[Value, ...]
        if not self.any_scaled:
            eff = raw
        elif self.all_scaled:
            eff = tuple(map(operator.add, map(operator.mul, raw, self.scales), self.offsets))
        else:
            scaled = map(operator.add, map(operator.mul, self.pick_scaled(raw), self.scales), self.offsets)
            eff = self.regroup(self.pick_unscaled(raw) + tuple(scaled))
        # NaN and ±Inf propagate through a sum (an overflow of finite values only sends a good
        # reply down the slow path, which decides each tag on its own)
        if self.check_finite and not math.isfinite(sum(eff)):  # type: ignore[arg-type]
            return None
        if self.lows:
            ranged = self.pick_ranged(eff)
            if not (all(map(operator.le, self.lows, ranged)) and all(map(operator.le, ranged, self.highs))):
                return None
        if self.other:
            rest = [read(data[o : o + c]) for o, c, read in self.other]
            if any(q is not _GOOD for _, q in rest):
                return None
            eff = eff + tuple(v for v, _ in rest)
            if self.reorder is not None:
                eff = self.reorder(eff)
        return eff

    def _slow(self, data: Sequence[int] | Sequence[bool], received_at: datetime, mono: float) -> list[Sample]:
        """Tag by tag, each by its own reader (the reference): a BAD tag gets its own reason."""
        out = []
        for key, offset, count, read in self.slow:
            value, quality = read(data[offset : offset + count])
            out.append(Sample(key, value, quality, received_at, mono))
        return out


def encode_tag(tag: ModbusTag, value: Value) -> list[int] | bool:
    """Engineering value → register words (or a coil bit). Raises WriteRefused with the reason."""
    try:
        if tag.type is codec.DataType.BOOL:
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise WriteRefused(f"{tag.name}: bool tag takes true/false or 1/0, not {value!r}")
            return bool(value)
        if tag.type is codec.DataType.STRING:
            if not isinstance(value, str):
                raise WriteRefused(f"{tag.name}: string tag takes text, not {value!r}")
            return codec.encode(
                value, tag.type, tag.word_order, length=tag.length or 0, byte_swap=tag.byte_swap
            )
        if isinstance(value, str) or value is None:
            raise WriteRefused(f"{tag.name}: numeric tag takes a number, not {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise WriteRefused(f"{tag.name}: not finite: {number}")
        if tag.range is not None and not (tag.range[0] <= number <= tag.range[1]):
            raise WriteRefused(
                f"{tag.name}: {number:g} outside plausible range [{tag.range[0]:g}, {tag.range[1]:g}]"
            )
        raw: float | int = (number - tag.offset) / tag.scale
        if tag.type not in (codec.DataType.FLOAT32, codec.DataType.FLOAT64):
            rounded = round(raw)
            if abs(raw - rounded) > 1e-6 * max(1.0, abs(raw)):
                raise WriteRefused(
                    f"{tag.name}: {number:g} is not representable as {tag.type} "
                    f"with scale {tag.scale:g} and offset {tag.offset:g}"
                )
            raw = int(rounded)
        if tag.type is codec.DataType.BIT:
            if raw not in (0, 1):
                raise WriteRefused(f"{tag.name}: bit tag takes 0 or 1, not {number:g}")
            return [int(raw)]  # the caller merges it into the register (read-modify-write)
        return codec.encode(raw, tag.type, tag.word_order, byte_swap=tag.byte_swap)
    except CodecError as exc:
        raise WriteRefused(f"{tag.name}: {exc}") from None


_READ_METHODS = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "holding": "read_holding_registers",
    "input": "read_input_registers",
}
# Replies whose PDU length is fixed by the function code (unit id + PDU, as in the MBAP length).
_FIXED_REPLY_LENGTH = {5: 6, 6: 6, 15: 6, 16: 6, 22: 8}
_READ_FUNCTIONS = frozenset({1, 2, 3, 4, 23})
_HEADER_PROBLEMS = ("protocol id", "length field")


def scan_mbap(buf: bytes, tid: int, fc: int) -> tuple[str | None, int | None, int]:
    """Check the Modbus TCP frames at the start of a receive buffer, before pymodbus parses it.

    ``tid`` and ``fc`` are the transaction id and function code of the request in flight.
    Returns ``(problem, stray, missing)``: what makes the bytes invalid (None when nothing
    does), the transaction id of a well-formed frame of another transaction (a late reply),
    and how many bytes of a frame begun are still to come (0: none). The frame of ``tid``
    must be the request's function (or its exception) with a length that fits it.
    """
    stray: int | None = None
    off, n = 0, len(buf)
    while off + 7 <= n:
        protocol = buf[off + 2] << 8 | buf[off + 3]
        length = buf[off + 4] << 8 | buf[off + 5]
        if protocol:
            return f"protocol id {protocol} (Modbus TCP has 0)", stray, 0
        if not 3 <= length <= 254:
            return f"length field {length} (3..254 in Modbus TCP)", stray, 0
        end = off + 6 + length
        if end > n:
            return None, stray, end - n
        frame_tid = buf[off] << 8 | buf[off + 1]
        if frame_tid != tid:
            stray = frame_tid
        else:
            got, size = buf[off + 7], length - 1  # function code, PDU bytes
            if got == fc | 0x80:
                if size != 2:
                    return f"an exception reply of {size} bytes (2 in Modbus)", stray, 0
            elif got != fc:
                return f"function code {got} in the reply to function {fc}", stray, 0
            elif fc in _READ_FUNCTIONS:
                count = buf[off + 8]
                if count != size - 2:
                    return f"byte count {count} in a reply carrying {size - 2} data bytes", stray, 0
                if fc in (3, 4, 23) and count % 2:
                    return f"odd byte count {count} in a register reply", stray, 0
            elif fc in _FIXED_REPLY_LENGTH and length != _FIXED_REPLY_LENGTH[fc]:
                return f"length field {length} in a reply to function {fc}", stray, 0
        off = end
    return None, stray, (7 - (n - off)) if n > off else 0


@functools.cache
def _pymodbus_errors() -> tuple[type[Exception], type[Exception], type[Exception]]:
    """pymodbus's ConnectionException, ModbusException, ModbusIOException (imported when the
    first request is made, not with this module; then cached: this is on every request)."""
    from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

    return ConnectionException, ModbusException, ModbusIOException


class _InvalidStream(Exception):
    """Set on pymodbus's pending reply when the bytes received are not valid Modbus TCP."""


TracePacket = Callable[[bool, bytes], bytes]
# A poll's reply waiting to be decoded: (samples out, table, request, data, received_at, mono)
_Pending = tuple[list[Sample], _Table, ReadRequest, Sequence[int] | Sequence[bool], datetime, float]
TraceConnect = Callable[[bool], None]
ClientFactory = Callable[[ModbusDevice, TracePacket, TraceConnect], Any]


def _default_client(device: ModbusDevice, trace_packet: TracePacket, trace_connect: TraceConnect) -> Any:
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
    from pymodbus.framer import FramerType

    timeout = device.timeout_ms / 1000.0
    client: Any
    if isinstance(device, ModbusTcpDevice):
        client = AsyncModbusTcpClient(
            device.host,
            port=device.port,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,  # no pymodbus reconnect loop: ours, with backoff, in poll()
            reconnect_delay_max=0,
            name=device.name,
            trace_packet=trace_packet,
            trace_connect=trace_connect,
        )
    else:
        client = AsyncModbusSerialClient(
            device.serial_port,
            framer=FramerType.RTU,
            baudrate=device.baudrate,
            bytesize=device.bytesize,
            parity=device.parity,
            stopbits=device.stopbits,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            name=device.name,
            trace_packet=trace_packet,
            trace_connect=trace_connect,
        )
    # A silent unit must not make pymodbus close the link shared with healthy units.
    client.set_max_no_responses(2**31)
    from agent.drivers.modbus_lean import make_lean

    return make_lean(client)  # one lock, one timer per request: ours (see there)


class ModbusDriver:
    """Source and Sink for one Modbus TCP endpoint or RTU bus and all its units."""

    cert_warning: str | None = None
    """No certificate, so never a warning (the runtime asks every driver every cycle; an
    attribute looked up and missing costs an exception each time)."""

    def __init__(
        self,
        device: ModbusDevice,
        *,
        client_factory: ClientFactory = _default_client,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.device = device
        self.name = device.name
        self._client_factory = client_factory
        self._client: Any = None
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()
        # What the trace hooks saw of the current request (reset by _execute for each one):
        self._expect_unit: int | None = None
        self._wrong_unit: int | None = None  # a frame from another unit arrived
        self._wrong_reply = False  # ... and it was the reply to this request (same transaction)
        self._sent = False  # the request reached the transport
        self._sent_tid = -1
        self._sent_fc = -1
        self._in_flight = False  # a request of ours waits for its reply
        self._received = False  # ... and some bytes came back since it was sent
        self._stray_tid: int | None = None  # a well-formed frame of another transaction came
        self._missing = 0  # bytes still missing of a frame begun on the wire
        self._invalid: str | None = None  # the peer sent bytes that are not valid Modbus TCP
        # Since this connection was opened, a valid frame came: an invalid one now is a
        # corrupt reply, not a peer that does not speak Modbus TCP.
        self._modbus_seen = False
        # The link failed because the peer's bytes were not valid Modbus: a TCP connect alone
        # does not prove it recovered, the first valid reply does (no lost/recovered flapping).
        self._link_suspect = False
        # Why the connection went away between two requests, told with the reconnect's failure
        # (the cause, not only the symptom, in the "lost" line).
        self._dropped: str | None = None
        # Requests in a row that got nothing at all back on this connection (any frame, from
        # any unit, resets it): a half-open connection is closed after this many.
        self._silent_requests = 0
        self._silent_limit = device.breaker.failures + 1
        self._timeout_s = device.timeout_ms / 1000.0
        self._tcp = isinstance(device, ModbusTcpDevice)
        self._reprobe_s = device.breaker.backoff_max_ms / 1000.0
        b = device.breaker
        self._link = CircuitBreaker(
            f"{device.name} ({device.endpoint})",
            threshold=1,
            backoff=Backoff(b.backoff_ms / 1000, b.backoff_max_ms / 1000, b.jitter, self._rng),
            clock=clock,
        )
        # Replies of the poll to decode while the next request is out (_decode_later)
        self._pending: deque[_Pending] = deque()
        self._decode_failed: Exception | None = None
        # The request in flight's deadline (loop time) and the one timer that enforces it
        # (_arm_deadline); _lean: the client is modbus_lean's (its requests await one future)
        self._deadline = math.inf
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._lean = False
        self._tags: dict[str, ModbusTag] = {t.name: t for t in device.tags}
        self._readers: dict[str, Reader] = {}  # read-backs and explicit reads: make_reader, once
        self._checked: dict[tuple[str, Purpose], tuple[ModbusTag, int]] = {}  # writes that may go
        self._units: dict[int, _Unit] = {}
        for unit_id in device.units:
            unit = _Unit(
                unit_id,
                CircuitBreaker(
                    f"{device.name} unit {unit_id}",
                    threshold=b.failures,
                    backoff=Backoff(b.backoff_ms / 1000, b.backoff_max_ms / 1000, b.jitter, self._rng),
                    clock=clock,
                ),
            )
            for table in ("coil", "discrete", "holding", "input"):
                tags = {
                    t.name: t
                    for t in device.tags
                    if device.unit_of(t) == unit_id and t.table == table and t.access != "write"
                }
                if not tags:
                    continue
                limit = device.max_bits if table in ("coil", "discrete") else device.max_registers
                gap = device.hole_fill_gap if table in ("holding", "input") else device.hole_fill_gap * 16
                spans = [Span(t.name, t.address, t.register_count) for t in tags.values()]
                planner = RequestPlanner(spans, max_count=limit, max_gap=gap)
                unit.tables.append(_Table(table, planner, tags))
            self._units[unit_id] = unit
        self.counters = Counters()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._client = self._client_factory(self.device, self._trace_packet, self._trace_connect)
        self._lean = hasattr(getattr(self._client, "ctx", None), "while_waiting")
        if self._lean:  # the lean client (modbus_lean.make_lean)
            self._client.ctx.while_waiting = self._decode_soon
        return self

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """See every frame: whether a request left, and whether what came back is Modbus.

        Over TCP every received buffer is checked before pymodbus parses it (a frame it
        cannot decode raises inside asyncio's transport callback: a traceback in the log and
        a connection closed as if by the peer): a header that is not Modbus TCP, a length or
        byte count that does not fit, a function code that is not the request's. Such bytes
        are withheld from pymodbus and end the request in flight at once, as a bad link
        (:meth:`_invalid_reply`).

        pymodbus silently drops a reply from another unit, so the caller would only see a
        timeout. Over TCP, a reply from another unit to *this* request (same transaction id) is
        handed to pymodbus under the expected unit id, so the request ends now instead of at
        its timeout; :meth:`_execute` then refuses it as a reply from the wrong unit. Over RTU
        the unit id is covered by the CRC: the wrong unit is reported at the timeout.
        """
        tcp = self._tcp
        if sending:
            self._sent = True
            if tcp and len(data) >= 8:
                self._sent_tid = int.from_bytes(data[:2], "big")
                self._sent_fc = data[7]
            return data
        if not data:
            return data
        self._silent_requests = 0
        self._received = True
        expect = self._expect_unit
        if not tcp:
            if expect is not None and data[0] != expect:
                self._wrong_unit = data[0]
            return data
        problem, stray, self._missing = scan_mbap(data, self._sent_tid, self._sent_fc)
        if stray is not None:
            self._stray_tid = stray
        if problem is not None:
            self._invalid_reply(problem, data)
            return b""
        if self._missing or len(data) < 8:
            return data
        if not self._modbus_seen:
            self._modbus_seen = True
            if self._link_suspect:
                self._link_suspect = False
                self._link.record_success()
        uid = data[6]
        if expect is not None and expect != 0 and uid != expect:
            self._wrong_unit = uid
            if int.from_bytes(data[:2], "big") == self._sent_tid:
                self._wrong_reply = True
                return data[:6] + bytes([expect]) + data[7:]
        return data

    def _invalid_reply(self, problem: str, data: bytes) -> None:
        """Bytes that are not valid Modbus TCP came: the stream can no longer be framed.

        Named once, as what it is: a peer that never sent valid Modbus on this connection and
        whose header is not Modbus TCP is "not a Modbus TCP server"; anything else is a
        corrupt reply. The request in flight ends now (:meth:`_execute` closes the connection
        and reports it); bytes that come between requests close the connection at once. The
        link then backs off, and recovers only with the first valid reply after it."""
        if not self._modbus_seen and problem.startswith(_HEADER_PROBLEMS):
            reason = f"not a Modbus TCP server: {self.device.endpoint} answered {bytes(data[:32])!r}"
        else:
            frame = bytes(data[:12]).hex(" ")
            reason = f"corrupt reply from unit {self._expect_unit}: {problem} (frame {frame})"
        self._link_suspect = True
        if self._invalid is not None:
            return  # named already; the rest of the same garbage adds nothing
        self._invalid = reason
        pending = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if self._in_flight and isinstance(pending, asyncio.Future) and not pending.done():
            pending.set_exception(_InvalidStream(reason))
            return
        # between requests: nobody waits, so close now and back off before the next connect
        self._link.record_failure(reason)
        if self._client is not None:
            self._client.close()

    def _trace_connect(self, connected: bool) -> None:
        """The peer closed the connection (our own close is not reported here): end the wait
        of a request in flight now (pymodbus would wait for its timeout), as a lost
        connection; between requests, keep the cause for the next connect's report."""
        if connected:
            self._modbus_seen, self._invalid = False, None
            return
        if self._client is None:
            return
        from pymodbus.exceptions import ConnectionException

        pending = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if self._in_flight and isinstance(pending, asyncio.Future) and not pending.done():
            pending.set_exception(ConnectionException("the device closed the connection"))
        else:
            self._dropped = "the device closed the connection"

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ status

    def unit_status(self) -> list[UnitStatus]:
        out = []
        for u in self._units.values():
            error = self._link.last_error or u.breaker.last_error
            if error:
                state = "lost"
            elif u.breaker.ever_connected:
                state = "ok"
            else:
                # never answered a read, but nothing tripped a breaker (for instance exception
                # 02 at every address): say what happened, never an empty reason
                state, error = "unknown", u.problem or "not asked yet"
            per = self.counters.per_unit.get(str(u.unit), {})
            breaker = self._link.state if self._link.is_open else u.breaker.state
            out.append(
                UnitStatus(u.unit, state, error, per.get("requests", 0), per.get("failures", 0), str(breaker))
            )
        return out

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    # ------------------------------------------------------------------ reading

    async def poll(self, deadline: float) -> list[Sample]:
        """One cycle over every unit. Never raises for a device fault (see base.Source)."""
        if self._client is None:
            raise RuntimeError("ModbusDriver used outside 'async with'")
        if not self.connected:
            reason = await self._connect(deadline)
            if reason is not None:
                return _bad_many((t for t in self._tags.values() if t.access != "write"), reason)
        samples: list[Sample] = []
        # Healthy units first, so a unit being probed spends only the time left over.
        order = sorted(self._units.values(), key=lambda u: u.breaker.state is not BreakerState.CLOSED)
        for unit in order:
            if not self.connected:
                reason = f"connection lost: {self._link.last_error or 'closed by the device'}"
                unit.problem = reason
                samples.extend(_bad_many(unit.tags(), reason))
                continue
            samples.extend(await self._poll_unit(unit, deadline))
        return samples

    async def _connect(self, deadline: float) -> str | None:
        """Connect if the link's backoff allows. Returns the BAD reason, or None when connected."""
        if not self._link.allow():
            wait = max(0.0, self._link.open_until - self._clock())
            return f"device unreachable ({self._link.last_error}); next attempt in {wait:.1f} s"
        budget = max(_MIN_BUDGET_S, min(self._timeout_s, deadline - self._clock() - _MARGIN_S))
        cause, self._dropped = self._dropped, None
        try:
            async with asyncio.timeout(budget):
                ok = await self._client.connect()
        except TimeoutError:
            ok = False
        except Exception as exc:
            self._reraise_if_cancelled()
            return self._connect_failed(f"connect failed: {exc}", cause)
        if not ok:
            self._client.close()
            return self._connect_failed(f"connect to {self.device.endpoint} failed", cause)
        if not self._link_suspect:  # else the first valid reply is the proof (see _trace_packet)
            self._link.record_success()
        self.counters.bump("link", "connects")
        return None

    def _connect_failed(self, what: str, cause: str | None) -> str:
        reason = what if cause is None else f"connection lost ({cause}), then {what}"
        self._link.record_failure(reason)
        return f"device unreachable: {reason}"

    async def _poll_unit(self, unit: _Unit, deadline: float) -> list[Sample]:
        key = str(unit.unit)
        if not unit.breaker.allow():
            reason = f"unit {unit.unit} not responding ({unit.breaker.last_error}); skipped until retry"
            self.counters.bump(key, "skipped")
            return _bad_many(unit.tags(), reason)
        if unit.refused_everywhere:
            # A unit id the device does not have (yet): ask again, as the breaker allows, so a
            # drive added later is found without a restart.
            for table in unit.tables:
                table.retry_refused()
        samples: list[Sample] = []
        for table in unit.tables:
            if table.refused and self._clock() >= table.probe_at:
                table.retry_refused()  # once per backoff cap: a refusal is not for ever
            illegal = table.planner.illegal_keys
            if illegal:
                self._decode_pending()  # the samples stay in the order of the requests
                received_at, mono = utcnow(), time.monotonic()
                samples.extend(
                    Sample(name, None, Quality.bad(table.refused[name]), received_at, mono)
                    for name in illegal
                )
            queue = table.planner.requests()  # a list of its own
            while queue:
                req = queue.pop(0)
                budget = min(self._timeout_s, deadline - self._clock() - _MARGIN_S)
                if budget < _MIN_BUDGET_S:
                    # No time left in this cycle: the rest waits for the next one (staleness
                    # turns them BAD if this persists). Never send a request we cannot wait for.
                    self.counters.bump(key, "deferred", len(queue) + 1)
                    self._decode_pending()
                    return samples
                self.counters.bump(key, "requests")
                try:
                    try:
                        data = await self._read(unit.unit, table.name, req, budget)
                    except BaseException:
                        self._decode_pending()  # the samples stay in the order of the requests
                        raise
                except DeviceException as exc:
                    unit.problem = f"{exc} at {modbus_reference(table.name, req.start)}"
                    if exc.code == 2:
                        before = (table.planner.illegal_keys, table.planner.barriers)
                        replacement = table.planner.report_illegal(req)
                        self._refused(unit, table, req, before, str(exc), samples)
                        queue[:0] = replacement
                        continue
                    samples.extend(_bad_many((table.tags[k] for k in req.keys), str(exc)))
                    if exc.code in _UNIT_DOWN_CODES:
                        self._unit_failed(unit, str(exc))
                        if unit.breaker.is_open:
                            return samples + self._rest_bad(unit, table, queue, str(exc))
                    else:
                        unit.breaker.record_success()  # it answered: the unit is there
                    continue
                except _ShortReply as exc:
                    unit.problem = f"{exc} at {modbus_reference(table.name, req.start)}"
                    self.counters.bump(key, "short_replies")
                    queue[:0] = self._split_short(unit, table, req, exc, samples)
                    continue
                except DeviceUnreachable as exc:
                    unit.problem = str(exc)
                    samples.extend(_bad_many((table.tags[k] for k in req.keys), str(exc)))
                    if not self.connected:
                        self._link.record_failure(str(exc))
                        return samples + self._rest_bad(unit, table, queue, str(exc))
                    self._unit_failed(unit, str(exc))
                    if unit.breaker.is_open:
                        return samples + self._rest_bad(unit, table, queue, str(exc))
                    continue
                except BadReply as exc:
                    unit.problem = str(exc)
                    self.counters.bump(key, "bad_replies")
                    samples.extend(_bad_many((table.tags[k] for k in req.keys), str(exc)))
                    continue
                unit.breaker.record_success()
                self._decode_later(samples, table, req, data)
        self._decode_pending()
        if unit.refused_everywhere:
            # It answers, but no address it was asked for: as good as absent. One failure per
            # cycle, so the breaker says "lost" once, with the reason, and probes with backoff.
            self._unit_failed(unit, f"every configured address refused: {unit.problem}")
        return samples

    def _split_short(
        self, unit: _Unit, table: _Table, req: ReadRequest, exc: _ShortReply, out: list[Sample]
    ) -> list[ReadRequest]:
        """A short reply: decode what came, the tags past the end are BAD with the reason, the
        rest is read again now; returns the requests to read now.

        Registers: what came is trusted (a server that stops at the end of its table), so
        the split falls exactly at the end (:meth:`RequestPlanner.report_short`). Bits come
        padded to whole bytes, so where the table ends is not known: the request is split as
        if refused with exception 02, and nothing of the short reply is used."""
        before = (table.planner.illegal_keys, table.planner.barriers)
        if not table.registers:
            replacement = table.planner.report_illegal(req)
            self._refused(unit, table, req, before, str(exc), out)
            return replacement
        got = len(exc.data)
        split = table.planner.report_short(req, got)
        if got:
            end = f"the reply stopped after {modbus_reference(table.name, req.start + got - 1)}"
        else:
            end = f"nothing came from {modbus_reference(table.name, req.start)} on"
        self._refused(unit, table, req, before, str(exc), out, past_end=end)
        if split.answered:
            unit.breaker.record_success()  # it answered with data: the unit is there
            out.extend(self._decode(table, ReadRequest(req.start, got, split.answered), exc.data))
        return split.retry

    def _refused(
        self,
        unit: _Unit,
        table: _Table,
        req: ReadRequest,
        before: tuple[frozenset[str], frozenset[int]],
        error: str,
        out: list[Sample],
        *,
        past_end: str = "",
    ) -> None:
        """After the planner learned from a refused or short read: BAD samples with the reason
        for the tags it left out, a re-probe of them after the backoff cap, and one log line
        for each split it learned (a transition: the same refusal asked again logs nothing)."""
        table.refuse(before[0], error, out, past_end=past_end)
        if table.refused and table.probe_at == math.inf:
            table.probe_at = self._clock() + self._reprobe_s
        if table.planner.barriers != before[1]:
            log.info(
                "merged read split",
                device=self.name,
                unit=unit.unit,
                table=table.name,
                start=req.start,
                count=req.count,
                reason=error,
            )

    def _unit_failed(self, unit: _Unit, reason: str) -> None:
        self.counters.bump(str(unit.unit), "failures")
        unit.breaker.record_failure(reason)

    def _rest_bad(self, unit: _Unit, current: _Table, queue: list[ReadRequest], reason: str) -> list[Sample]:
        """BAD samples for everything of ``unit`` not yet read this cycle."""
        out = _bad_many((current.tags[k] for r in queue for k in r.keys), reason)
        after = False
        for table in unit.tables:
            if after:
                out.extend(_bad_many(table.tags.values(), reason))
            after = after or table is current
        return out

    def _decode(self, table: _Table, req: ReadRequest, data: Sequence[int] | Sequence[bool]) -> list[Sample]:
        # One reply, one receive time: every sample of it carries the same stamps.
        return table.columns_for(req).decode(data, utcnow(), self._clock())

    def _decode_later(
        self, out: list[Sample], table: _Table, req: ReadRequest, data: Sequence[int] | Sequence[bool]
    ) -> None:
        """Decode a poll's reply into ``out`` once the next request has left: while the device
        answers it, not before it is sent (the decoding is off the cycle's critical path).

        The samples carry the stamps of the reply's arrival (taken now), as :meth:`_decode`
        gives them. The decoding runs when the next request of this connection has been handed
        to the transport (the lean client's ``while_waiting``, :func:`make_lean`), or in
        :meth:`_decode_pending`, which :meth:`_poll_unit` calls before anything else reaches
        ``out`` and before returning it, whichever comes first: the samples keep the order of
        the requests, and a poll returns every one of them."""
        self._pending.append((out, table, req, data, utcnow(), self._clock()))

    def _decode_soon(self) -> None:
        """:meth:`_decode_pending` from the client's send path, which must not raise there."""
        try:
            self._decode_pending()
        except Exception as exc:  # a bug: raised by the poll's next _decode_pending, not lost
            self._decode_failed = exc

    def _decode_pending(self) -> None:
        """Decode every reply :meth:`_decode_later` queued, in the order they came."""
        pending = self._pending
        while pending:
            out, table, req, data, received_at, mono = pending.popleft()
            out.extend(table.columns_for(req).decode(data, received_at, mono))
        if self._decode_failed is not None:
            exc, self._decode_failed = self._decode_failed, None
            raise exc

    async def _read(
        self, unit: int, table: str, req: ReadRequest, budget_s: float
    ) -> Sequence[int] | Sequence[bool]:
        fn = getattr(self._client, _READ_METHODS[table])
        rr = await self._execute(lambda: fn(req.start, count=req.count, device_id=unit), unit, budget_s)
        if table in ("coil", "discrete"):
            bits = list(rr.bits)
            # pymodbus pads bits to whole bytes; a reply with fewer bytes than asked is short
            if len(bits) < req.count:
                raise _ShortReply(f"short reply: {len(bits)} of {req.count} bits from unit {unit}", bits)
            return bits[: req.count]
        regs: list[int] = rr.registers
        if len(regs) < req.count:
            raise _ShortReply(f"short reply: {len(regs)} of {req.count} registers from unit {unit}", regs)
        if len(regs) > req.count:
            raise BadReply(f"long reply: {len(regs)} registers from unit {unit}, {req.count} asked")
        return regs

    async def _execute(
        self, call: Callable[[], Any], unit: int, budget_s: float, *, resend: bool = True
    ) -> Any:
        """Run one pymodbus request under our lock and timeout; translate its errors.

        ``resend=False`` (writes): a request is never sent twice, not even after a late reply
        to an earlier request; :attr:`_sent` tells the caller whether it left at all."""
        ConnectionException, ModbusException, ModbusIOException = _pymodbus_errors()

        async with self._lock:
            for attempt in (1, 2):
                self._expect_unit, self._wrong_unit, self._wrong_reply = unit, None, False
                self._sent, self._received, self._stray_tid, self._missing = False, False, None, 0
                try:
                    self._in_flight = True
                    if self._lean:
                        self._arm_deadline(budget_s)
                        rr = await call()
                    else:
                        async with asyncio.timeout(budget_s):
                            rr = await call()
                except TimeoutError:
                    raise self._no_reply(unit, budget_s) from None
                except _InvalidStream as exc:
                    self._client.close()
                    raise DeviceUnreachable(f"{exc}; connection closed, to be opened again") from None
                except ConnectionException as exc:
                    self._reraise_if_cancelled()
                    self._client.close()
                    if self._invalid is not None:  # the garbage came first, then the close
                        raise DeviceUnreachable(self._invalid) from None
                    raise DeviceUnreachable(f"connection lost: {exc}") from None
                except ModbusIOException as exc:
                    self._reraise_if_cancelled()
                    text = str(exc)
                    if "transaction id" in text and attempt == 1 and resend:
                        continue  # a late reply to an earlier, timed-out request: discard, ask again
                    if "device id" in text:
                        raise BadReply(f"reply from the wrong unit (asked unit {unit})") from None
                    if "No response" in text:
                        raise self._no_reply(unit, self._timeout_s) from None
                    raise BadReply(f"bad reply from unit {unit}: {text}") from None
                except ModbusException as exc:
                    self._reraise_if_cancelled()
                    raise BadReply(f"bad reply from unit {unit}: {exc}") from None
                finally:
                    self._in_flight = False
                # asyncio.wait_for (used inside pymodbus) drops a cancellation that arrives in
                # the same loop pass as the reply: the reply is returned, the cancel lost.
                self._reraise_if_cancelled()
                if self._wrong_reply:
                    raise BadReply(f"reply from the wrong unit: asked {unit}, got {self._wrong_unit}")
                if rr.isError():
                    code = int(getattr(rr, "exception_code", 0))
                    name = EXCEPTION_NAMES.get(code, "unknown exception")
                    raise DeviceException(f"exception {code:02X} ({name}) from unit {unit}", code)
                dev = getattr(rr, "dev_id", unit)
                if dev not in (unit, 0) and unit != 0:
                    raise BadReply(f"reply from the wrong unit: asked {unit}, got {dev}")
                return rr
        raise AssertionError("unreachable")

    def _arm_deadline(self, budget_s: float) -> None:
        """Bound the request about to be sent by ``budget_s``, as ``asyncio.timeout`` would,
        without a timer per request (a timer armed and cancelled per request costs more than a
        lean request's own CPU time): one timer stays armed, and when it fires early for the
        request then in flight (an earlier request's deadline), it is armed again for this
        one's. When the request's deadline passes, its reply's future gets ``TimeoutError``:
        the lean client awaits nothing else (:func:`~agent.drivers.modbus_lean.lean_execute`)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + budget_s
        self._deadline = when
        if self._deadline_timer is None or self._deadline_timer.when() > when:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_timer = loop.call_at(when, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        if not self._in_flight:
            return  # nothing waits: the next request arms its own
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._deadline_timer = loop.call_at(self._deadline, self._deadline_passed)
            return
        pending = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if isinstance(pending, asyncio.Future) and not pending.done():
            pending.set_exception(TimeoutError())
            pending.exception()  # retrieved: the request's await raises it (unless cancelled)

    def _no_reply(self, unit: int, budget_s: float) -> DriverError:
        """The error of a request that timed out; after too many in a row with nothing at all
        received on the connection, the connection is closed (the next poll reconnects with
        backoff): a half-open TCP connection is never kept for good. A silent unit behind a
        healthy gateway does not close it: the other units' replies keep resetting the count.
        Nor do the probes of lost units drop a healthy one sooner than its own breaker says:
        the connection is closed only once no polled unit's breaker is closed."""
        if self._wrong_unit is not None:
            return BadReply(f"reply from the wrong unit: asked {unit}, got {self._wrong_unit}")
        ms = f"{budget_s * 1000:.0f} ms"
        if self._missing:
            return DeviceUnreachable(
                f"incomplete reply from unit {unit}: {self._missing} bytes of the frame missing after {ms}"
            )
        reason = f"timeout: no reply from unit {unit} within {ms}"
        if self._stray_tid is not None:
            return DeviceUnreachable(
                f"{reason} (a reply to transaction {self._stray_tid} came instead of {self._sent_tid}: "
                "a reply later than the timeout, or a corrupt header)"
            )
        if self._received:
            return DeviceUnreachable(reason)
        self._silent_requests += 1
        if (
            self._silent_requests >= self._silent_limit
            and self._client is not None
            and not any(u.tables and u.breaker.state is BreakerState.CLOSED for u in self._units.values())
        ):
            self._silent_requests = 0
            self._client.close()
            reason += (
                f"; nothing received on the connection for {self._silent_limit} requests in a row: "
                "closed, to be opened again"
            )
        return DeviceUnreachable(reason)

    @staticmethod
    def _reraise_if_cancelled() -> None:
        """pymodbus has wrapped CancelledError in its own exceptions: undo that here."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    # ------------------------------------------------------------------ explicit read

    async def read(self, tag_name: str) -> Sample:
        """One read of one tag issued now: its own registers, coil or the register of its bit,
        in one request (never merged with others, never from the poll's cache). A device
        fault gives a BAD sample with the reason; ``KeyError`` for a tag the device does not
        have (a bug of the caller). The unit's breaker is not consulted: the caller asked."""
        tag = self._tags[tag_name]
        if self._client is None:
            raise RuntimeError("ModbusDriver used outside 'async with'")
        if not self.connected:
            reason = await self._connect(self._clock() + self._timeout_s)
            if reason is not None:
                return _bad(tag, reason)
        unit = self.device.unit_of(tag)
        req = ReadRequest(tag.address, tag.register_count, (tag.name,))
        self.counters.bump(str(unit), "requests")
        try:
            data = await self._read(unit, tag.table, req, self._timeout_s)
        except DeviceException as exc:
            return _bad(tag, f"{exc} at {tag.reference}" if exc.code == 2 else str(exc))
        except (DeviceUnreachable, BadReply) as exc:
            self._note_link(str(exc))
            return _bad(tag, str(exc))
        value, quality = self._reader(tag)(data)
        return Sample(tag.name, value, quality, utcnow(), self._clock())

    def _reader(self, tag: ModbusTag) -> Reader:
        reader = self._readers.get(tag.name)
        if reader is None:
            reader = self._readers[tag.name] = make_reader(tag)
        return reader

    def _note_link(self, reason: str) -> None:
        """After a failed request: a link that went down backs off before the next connect."""
        if not self.connected:
            self._link.record_failure(reason)

    # ------------------------------------------------------------------ writing

    def tag(self, name: str) -> ModbusTag:
        try:
            return self._tags[name]
        except KeyError:
            raise WriteRefused(f"unknown tag {name!r} on device {self.name}") from None

    def _prepare(self, name: str, value: Value, purpose: Purpose) -> _Write:
        """Every check that needs no device: WriteRefused naming the tag and the reason."""
        checked = self._checked.get((name, purpose))
        if checked is None:  # checked once per tag and purpose: they depend on the config alone
            checked = self._checked[(name, purpose)] = self._check_write(name, purpose)
        tag, unit = checked
        return _Write(tag, unit, encode_tag(tag, value))

    def _check_write(self, name: str, purpose: Purpose) -> tuple[ModbusTag, int]:
        """The checks of :meth:`_prepare` that do not depend on the value: the tag and its
        unit, or WriteRefused naming the tag and the reason."""
        tag = self.tag(name)
        if not tag.writable:
            raise WriteRefused(f"{tag.name} ({tag.reference}) is read-only (access: {tag.access})")
        check_purpose(tag.name, tag.reference, tag.purpose, purpose)
        if tag.table not in ("coil", "holding"):
            raise WriteRefused(f"{tag.name}: table {tag.table} cannot be written")
        unit = self.device.unit_of(tag)
        if tag.type is codec.DataType.BIT:
            if tag.bit_write is None:
                raise WriteRefused(
                    f"{tag.name} ({tag.reference} bit {tag.bit}): a bit in a holding register is written "
                    "only with bit_write: mask (FC22) or read_modify_write"
                )
            if tag.bit_write == "mask" and unit not in self.device.mask_write_units:
                raise WriteRefused(
                    f"{tag.name} ({tag.reference} bit {tag.bit}): unit {unit} is not declared in "
                    "mask_write_units (FC22 is never probed)"
                )
        return tag, unit

    def _extends(self, run: list[_Write], w: _Write) -> bool:
        """``w`` may join ``run`` in one request: the next address of the same unit and table."""
        last = run[-1]
        if codec.DataType.BIT in (w.tag.type, last.tag.type):
            return False
        if (w.unit, w.tag.table) != (last.unit, last.tag.table):
            return False
        if last.tag.address + last.tag.register_count != w.tag.address:
            return False
        # the run is read back in one request too: it must fit the device's read limit
        coil = w.tag.table == "coil"
        limit = min(1968, self.device.max_bits) if coil else min(123, self.device.max_registers)
        return sum(x.tag.register_count for x in run) + w.tag.register_count <= limit

    async def write(self, tag_name: str, value: Value, *, purpose: Purpose) -> Value:
        """Write one tag and return the value read back by a read issued after the write's
        reply. Raises the item's error of :meth:`write_many` (see there and
        :mod:`agent.drivers.base`)."""
        result = (await self.write_many([(tag_name, value)], purpose=purpose))[tag_name]
        if isinstance(result, DriverError):
            raise result
        return result

    async def write_many(self, items: Sequence[tuple[str, Value]], *, purpose: Purpose) -> WriteResults:
        """Write ``items`` in the order given; per tag, return the value read back (by a read
        issued after the write's reply) or the :class:`~agent.errors.DriverError` of that item.
        Nothing is raised for a device fault or a refused item: the others are still written.

        Every check that needs no device comes first (unknown or read-only tag, ``purpose``
        not the tag's declared one, a value that does not encode, a bit tag without a usable
        ``bit_write``): such an item is a :class:`~agent.errors.WriteRefused` and nothing of
        it is sent. The rest go in the caller's order, never sorted: consecutive items that
        are the next registers (FC16) or coils (FC15) of the same unit are merged into one
        request and read back with one read; any other item is a request of its own (FC6,
        FC5, FC16). A merged request the device refuses for an address or value (exception
        02/03) is retried item by item, so each gets its own answer.

        Per item: :class:`~agent.errors.WriteRefused` (not applied: the agent refused, or the
        device answered with an exception), :class:`~agent.errors.DeviceUnreachable` (not
        sent: no connection, the unit's breaker is open because it stopped answering the
        poll, a unit that left an earlier write of this call unanswered is not asked again in
        this call, or the read a read-modify-write needs failed),
        :class:`~agent.errors.WriteUnconfirmed` (sent, no valid reply: possibly applied),
        :class:`~agent.errors.ReadBackFailed` (acknowledged, read-back failed or invalid).

        Bit tags in holding registers: ``bit_write: mask`` sends FC22 (mask write: only that
        bit changes, atomically in the device); a device answering exception 01 (illegal
        function) gives WriteRefused, with no fallback. ``bit_write: read_modify_write``
        reads the register, sets the bit and writes the whole register with FC6: a bit the
        PLC changes in between is overwritten (the config refuses it on a register holding
        bits the agent does not write).

        ``ValueError`` when a tag appears twice in ``items`` (one answer per tag).
        """
        names = [name for name, _ in items]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"write_many: tag(s) given more than once: {', '.join(twice)}")
        if self._client is None:
            raise RuntimeError("ModbusDriver used outside 'async with'")
        out: dict[str, Value | DriverError] = {}
        runs: list[list[_Write]] = []
        for name, value in items:
            try:
                w = self._prepare(name, value, purpose)
            except WriteRefused as exc:
                out[name] = exc
                continue
            if runs and self._extends(runs[-1], w):
                runs[-1].append(w)
            else:
                runs.append([w])
        queue = deque(runs)
        unanswered: dict[int, str] = {}  # unit → why its later writes of this call are not sent
        while queue:
            run = queue.popleft()
            unit = run[0].unit
            breaker = self._units[unit].breaker
            reason = unanswered.get(unit)
            if reason is None and not breaker.allow():
                reason = f"unit {unit} not responding ({breaker.last_error})"
            if reason is None and not self.connected:
                reason = await self._connect(self._clock() + self._timeout_s)
            if reason is not None:
                out.update(_each(run, DeviceUnreachable, f"{_describe(run)}: not sent: {reason}"))
                continue
            try:
                out.update(await self._write_run(run))
            except _SplitRun:
                queue.extendleft([w] for w in reversed(run))
            except WriteUnconfirmed as exc:
                unanswered[unit] = f"unit {unit} left an earlier write of this batch unanswered"
                out.update(_each(run, WriteUnconfirmed, str(exc)))
            except (WriteRefused, DeviceUnreachable) as exc:
                out.update(_each(run, type(exc), str(exc)))
        return {name: out[name] for name in names}

    async def _write_run(self, run: list[_Write]) -> WriteResults:
        """Send one request for ``run`` (one tag, or adjacent ones), then read it back."""
        first = run[0]
        tag, unit, client = first.tag, first.unit, self._client
        if tag.type is codec.DataType.BIT:
            await self._write_bit(first, run)
        elif tag.table == "coil":
            bits = [bool(w.payload) for w in run]
            if len(bits) == 1:
                await self._send(lambda: client.write_coil(tag.address, bits[0], device_id=unit), unit, run)
            else:
                await self._send(
                    lambda: client.write_coils(tag.address, bits, device_id=unit), unit, run, split=True
                )
        else:
            words = [word for w in run for word in w.words]
            if len(words) == 1:
                await self._send(
                    lambda: client.write_register(tag.address, words[0], device_id=unit), unit, run
                )
            else:
                await self._send(
                    lambda: client.write_registers(tag.address, words, device_id=unit),
                    unit,
                    run,
                    split=len(run) > 1,
                )
        return await self._read_back(run)

    async def _write_bit(self, w: _Write, run: list[_Write]) -> None:
        tag, unit, client = w.tag, w.unit, self._client
        on, mask = bool(w.words[0]), 1 << (tag.bit or 0)
        what = _describe(run)  # a bit write is rare: named now
        if tag.bit_write == "mask":

            def fc22_refused(exc: DeviceException) -> WriteRefused:
                if exc.code == 1:
                    return WriteRefused(
                        f"{what}: unit {unit} does not support FC22 mask write ({exc}); not written, "
                        "and not retried any other way"
                    )
                return WriteRefused(f"{what}: the device refused the mask write: {exc}")

            await self._send(
                lambda: client.mask_write_register(
                    address=tag.address, and_mask=~mask & 0xFFFF, or_mask=mask if on else 0, device_id=unit
                ),
                unit,
                run,
                refused=fc22_refused,
            )
            return
        # read_modify_write: not atomic (see write_many); the config allows it only where
        # nothing else writes the register.
        try:
            current = await self._read(
                unit, "holding", ReadRequest(tag.address, 1, (tag.name,)), self._timeout_s
            )
        except DeviceException as exc:
            raise WriteRefused(
                f"{what}: not written: the device refused the read before the write: {exc}"
            ) from None
        except (DeviceUnreachable, BadReply) as exc:
            self._note_link(str(exc))
            raise DeviceUnreachable(f"{what}: not written: the read before the write failed: {exc}") from None
        word = codec.set_bit(int(current[0]), tag.bit or 0, on)
        await self._send(lambda: client.write_register(tag.address, word, device_id=unit), unit, run)

    async def _send(
        self,
        call: Callable[[], Any],
        unit: int,
        run: list[_Write],
        *,
        split: bool = False,
        refused: Callable[[DeviceException], WriteRefused] | None = None,
    ) -> None:
        """Send one write request for ``run``; translate its failure into what it means for the
        PLC (the messages name the run's tags: :func:`_describe`, made only then)."""
        try:
            await self._execute(call, unit, self._timeout_s, resend=False)
        except DeviceException as exc:
            if split and exc.code in _SPLIT_CODES:
                raise _SplitRun from None
            if refused is not None:
                raise refused(exc) from None
            raise WriteRefused(f"{_describe(run)}: the device refused the write: {exc}") from None
        except (DeviceUnreachable, BadReply) as exc:
            # No await since _execute returned: _sent is still this request's.
            sent = self._sent
            self._note_link(str(exc))
            if not sent:
                raise DeviceUnreachable(f"{_describe(run)}: not sent: {exc}") from None
            raise WriteUnconfirmed(f"{_describe(run)}: sent, but {exc}: possibly applied") from None

    async def _read_back(self, run: list[_Write]) -> WriteResults:
        """One read of the run's registers (coils) issued after the write's reply, decoded per tag."""
        first = run[0].tag
        count = sum(w.tag.register_count for w in run)
        table = "coil" if first.table == "coil" else "holding"
        req = ReadRequest(first.address, count, tuple(w.tag.name for w in run))
        try:
            data = await self._read(run[0].unit, table, req, self._timeout_s)
        except (DeviceException, DeviceUnreachable, BadReply) as exc:
            self._note_link(str(exc))
            return {
                w.tag.name: ReadBackFailed(
                    f"{w.tag.name} ({w.tag.reference}): written, but the read-back failed: {exc}"
                )
                for w in run
            }
        out: WriteResults = {}
        for w in run:
            offset = w.tag.address - first.address
            value, quality = self._reader(w.tag)(data[offset : offset + w.tag.register_count])
            if value is None:
                why = quality.reason
                out[w.tag.name] = ReadBackFailed(
                    f"{w.tag.name} ({w.tag.reference}): written, but the read-back is not valid: {why}"
                )
            else:
                out[w.tag.name] = value
        return out


class _ShortReply(BadReply):
    """A read answered with fewer registers (bits) than asked; ``data`` holds what came."""

    def __init__(self, message: str, data: list[int] | list[bool]) -> None:
        super().__init__(message)
        self.data = data


class _SplitRun(Exception):
    """A merged write refused for an address or value: write its items one by one."""


_SPLIT_CODES = frozenset({2, 3})


@dataclass(frozen=True, slots=True)
class _Write:
    """One item of a write, checked and encoded: nothing about it needs the device any more."""

    tag: ModbusTag
    unit: int
    payload: list[int] | bool  # register words, a coil, or [0 | 1] for a bit in a register

    @property
    def words(self) -> list[int]:
        assert not isinstance(self.payload, bool)
        return self.payload


def _describe(run: list[_Write]) -> str:
    """How a message names the tags of one request: ``sp (40013)``, ``a, b (40011..40013)``."""
    first, last = run[0].tag, run[-1].tag
    if len(run) == 1:
        return f"{first.name} ({first.reference})"
    end = modbus_reference(last.table, last.address + last.register_count - 1)
    return f"{', '.join(w.tag.name for w in run)} ({first.reference}..{end})"


def _each(run: list[_Write], kind: type[DriverError], message: str) -> WriteResults:
    """One error object per tag (each item's caller may raise its own)."""
    return {w.tag.name: kind(message) for w in run}
