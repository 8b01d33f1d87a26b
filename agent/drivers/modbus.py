"""Modbus TCP and RTU driver (pymodbus), one per TCP endpoint or serial bus.

One connection per host:port (or bus), shared by every unit id behind it, one request at a
time. Each unit has its own circuit breaker, so a silent unit is skipped with backoff while the
healthy units behind the same gateway keep their rate; request timeouts are clipped to the
poll's deadline.

pymodbus is configured for a poller, not a script: no retries, no reconnect loop of its own
(``reconnect_delay=0``: we reconnect with our own backoff), no "close the link after N
unanswered requests" (a silent unit must not take the link down). Its exceptions are
translated here, at the seam; ``asyncio.CancelledError`` always propagates, even where a
pymodbus release wraps it in ``ModbusIOException``.

Every reply is validated: exception codes, replies from the wrong unit, short replies
(pymodbus accepts them as success), timeouts. Nothing from a bad reply reaches the pipeline as
GOOD: the affected tags get a BAD sample with the reason.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import structlog

from agent.config import ModbusRtuDevice, ModbusTag, ModbusTcpDevice
from agent.drivers import modbus_codec as codec
from agent.drivers.modbus_plan import ReadRequest, RequestPlanner, Span
from agent.errors import (
    BadReply,
    CodecError,
    DeviceException,
    DeviceUnreachable,
    WriteRefused,
)
from agent.running import Backoff, BreakerState, CircuitBreaker, Counters
from agent.types import Quality, Sample, Value, utcnow

__all__ = ["EXCEPTION_NAMES", "ModbusDriver", "UnitStatus", "decode_tag", "encode_tag"]

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
_MARGIN_S = 0.005  # leave this much of the cycle for bookkeeping
_MIN_BUDGET_S = 0.010  # below this, a request is deferred to the next cycle, not sent


@dataclass
class UnitStatus:
    unit: int
    state: str
    last_error: str
    requests: int
    failures: int


@dataclass
class _Table:
    name: str  # coil, discrete, holding, input
    planner: RequestPlanner
    tags: dict[str, ModbusTag]
    # per tag: (address, register/bit count, reader), computed once
    readers: dict[str, tuple[int, int, Reader]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.readers = {k: (t.address, t.register_count, make_reader(t)) for k, t in self.tags.items()}


@dataclass
class _Unit:
    unit: int
    breaker: CircuitBreaker
    tables: list[_Table] = field(default_factory=list)

    def tags(self) -> Iterable[ModbusTag]:
        for t in self.tables:
            yield from t.tags.values()


def _bad(tag: ModbusTag, reason: str) -> Sample:
    return Sample.now(tag.name, None, Quality.bad(reason))


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
    if isinstance(raw, str | bool):
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


def encode_tag(tag: ModbusTag, value: Value) -> list[int] | bool:
    """Engineering value → register words (or a coil bit). Raises WriteRefused with the reason."""
    try:
        if tag.type is codec.DataType.BOOL:
            if not isinstance(value, bool | int) or value not in (0, 1):
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


TracePacket = Callable[[bool, bytes], bytes]
ClientFactory = Callable[[ModbusDevice, TracePacket], Any]


def _default_client(device: ModbusDevice, trace_packet: TracePacket) -> Any:
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
        )
    # A silent unit must not make pymodbus close the link shared with healthy units.
    client.set_max_no_responses(2**31)
    return client


class ModbusDriver:
    """Source and Sink for one Modbus TCP endpoint or RTU bus and all its units."""

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
        self._expect_unit: int | None = None
        self._wrong_unit: int | None = None
        self._timeout_s = device.timeout_ms / 1000.0
        b = device.breaker
        self._link = CircuitBreaker(
            f"{device.name} ({device.endpoint})",
            threshold=1,
            backoff=Backoff(b.backoff_ms / 1000, b.backoff_max_ms / 1000, b.jitter, self._rng),
            clock=clock,
        )
        self._tags: dict[str, ModbusTag] = {t.name: t for t in device.tags}
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
        self._client = self._client_factory(self.device, self._trace_packet)
        return self

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """See the unit id of every frame received: pymodbus silently drops a reply from
        another unit (the caller would only see a timeout); we report it as what it is."""
        if not sending and data:
            tcp = isinstance(self.device, ModbusTcpDevice)
            if len(data) > (6 if tcp else 0):
                uid = data[6] if tcp else data[0]
                if self._expect_unit is not None and uid != self._expect_unit:
                    self._wrong_unit = uid
        return data

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ status

    def unit_status(self) -> list[UnitStatus]:
        out = []
        for u in self._units.values():
            if self._link.last_error or u.breaker.last_error:
                state = "lost"
            elif u.breaker.ever_connected:
                state = "ok"
            else:
                state = "unknown"
            per = self.counters.per_unit.get(str(u.unit), {})
            out.append(
                UnitStatus(
                    u.unit,
                    state,
                    self._link.last_error or u.breaker.last_error,
                    per.get("requests", 0),
                    per.get("failures", 0),
                )
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
                return [_bad(t, reason) for t in self._tags.values() if t.access != "write"]
        samples: list[Sample] = []
        # Healthy units first, so a unit being probed spends only the time left over.
        order = sorted(self._units.values(), key=lambda u: u.breaker.state is not BreakerState.CLOSED)
        for unit in order:
            if not self.connected:
                reason = f"connection lost: {self._link.last_error}"
                samples.extend(_bad(t, reason) for t in unit.tags())
                continue
            samples.extend(await self._poll_unit(unit, deadline))
        return samples

    async def _connect(self, deadline: float) -> str | None:
        """Connect if the link's backoff allows. Returns the BAD reason, or None when connected."""
        if not self._link.allow():
            wait = max(0.0, self._link.open_until - self._clock())
            return f"device unreachable ({self._link.last_error}); next attempt in {wait:.1f} s"
        budget = max(_MIN_BUDGET_S, min(self._timeout_s, deadline - self._clock() - _MARGIN_S))
        try:
            async with asyncio.timeout(budget):
                ok = await self._client.connect()
        except TimeoutError:
            ok = False
        except Exception as exc:
            self._reraise_if_cancelled()
            self._link.record_failure(f"connect failed: {exc}")
            return f"device unreachable: connect failed: {exc}"
        if not ok:
            self._client.close()
            self._link.record_failure(f"connect to {self.device.endpoint} failed")
            return f"device unreachable: connect to {self.device.endpoint} failed"
        self._link.record_success()
        return None

    async def _poll_unit(self, unit: _Unit, deadline: float) -> list[Sample]:
        key = str(unit.unit)
        if not unit.breaker.allow():
            reason = f"unit {unit.unit} not responding ({unit.breaker.last_error}); skipped until retry"
            self.counters.bump(key, "skipped")
            return [_bad(t, reason) for t in unit.tags()]
        samples: list[Sample] = []
        for table in unit.tables:
            for name in table.planner.illegal_keys:
                tag = table.tags[name]
                samples.append(_bad(tag, f"illegal data address (exception 02) at {tag.reference}"))
            queue = list(table.planner.requests())
            while queue:
                req = queue.pop(0)
                budget = min(self._timeout_s, deadline - self._clock() - _MARGIN_S)
                if budget < _MIN_BUDGET_S:
                    # No time left in this cycle: the rest waits for the next one (staleness
                    # turns them BAD if this persists). Never send a request we cannot wait for.
                    self.counters.bump(key, "deferred", len(queue) + 1)
                    return samples
                self.counters.bump(key, "requests")
                try:
                    data = await self._read(unit.unit, table.name, req, budget)
                except DeviceException as exc:
                    if exc.code == 2:
                        replacement = table.planner.report_illegal(req)
                        if len(req.keys) > 1:
                            log.info(
                                "merged read refused with illegal address; split",
                                device=self.name,
                                unit=unit.unit,
                                table=table.name,
                                start=req.start,
                                count=req.count,
                            )
                            queue[:0] = replacement
                            continue
                        samples.extend(
                            _bad(table.tags[k], f"{exc} at {table.tags[k].reference}") for k in req.keys
                        )
                        continue
                    samples.extend(_bad(table.tags[k], str(exc)) for k in req.keys)
                    if exc.code in _UNIT_DOWN_CODES:
                        self._unit_failed(unit, str(exc))
                        if unit.breaker.is_open:
                            return samples + self._rest_bad(unit, table, queue, str(exc))
                    else:
                        unit.breaker.record_success()  # it answered: the unit is there
                    continue
                except DeviceUnreachable as exc:
                    samples.extend(_bad(table.tags[k], str(exc)) for k in req.keys)
                    if not self.connected:
                        self._link.record_failure(str(exc))
                        return samples + self._rest_bad(unit, table, queue, str(exc))
                    self._unit_failed(unit, str(exc))
                    if unit.breaker.is_open:
                        return samples + self._rest_bad(unit, table, queue, str(exc))
                    continue
                except BadReply as exc:
                    self.counters.bump(key, "bad_replies")
                    samples.extend(_bad(table.tags[k], str(exc)) for k in req.keys)
                    continue
                unit.breaker.record_success()
                samples.extend(self._decode(table, req, data))
        return samples

    def _unit_failed(self, unit: _Unit, reason: str) -> None:
        self.counters.bump(str(unit.unit), "failures")
        unit.breaker.record_failure(reason)

    def _rest_bad(self, unit: _Unit, current: _Table, queue: list[ReadRequest], reason: str) -> list[Sample]:
        """BAD samples for everything of ``unit`` not yet read this cycle."""
        out = [_bad(current.tags[k], reason) for r in queue for k in r.keys]
        after = False
        for table in unit.tables:
            if after:
                out.extend(_bad(t, reason) for t in table.tags.values())
            after = after or table is current
        return out

    def _decode(self, table: _Table, req: ReadRequest, data: Sequence[int] | Sequence[bool]) -> list[Sample]:
        # One reply, one receive time: every sample of it carries the same stamps.
        received_at, mono = utcnow(), self._clock()
        out = []
        start = req.start
        readers = table.readers
        for k in req.keys:
            address, count, read = readers[k]
            offset = address - start
            value, quality = read(data[offset : offset + count])
            out.append(Sample(k, value, quality, received_at, mono))
        return out

    async def _read(
        self, unit: int, table: str, req: ReadRequest, budget_s: float
    ) -> Sequence[int] | Sequence[bool]:
        client = self._client
        fn = {
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
        }[table]
        rr = await self._execute(lambda: fn(req.start, count=req.count, device_id=unit), unit, budget_s)
        if table in ("coil", "discrete"):
            bits = list(rr.bits)
            # pymodbus pads bits to whole bytes; a reply with fewer bytes than asked is short
            if len(bits) < req.count:
                raise BadReply(f"short reply: {len(bits)} of {req.count} bits from unit {unit}")
            return bits[: req.count]
        regs = list(rr.registers)
        if len(regs) != req.count:
            raise BadReply(f"short reply: {len(regs)} of {req.count} registers from unit {unit}")
        return regs

    async def _execute(self, call: Callable[[], Any], unit: int, budget_s: float) -> Any:
        """Run one pymodbus request under our lock and timeout; translate its errors."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        async with self._lock:
            for attempt in (1, 2):
                self._expect_unit, self._wrong_unit = unit, None
                try:
                    async with asyncio.timeout(budget_s):
                        rr = await call()
                except TimeoutError:
                    if self._wrong_unit is not None:
                        raise BadReply(
                            f"reply from the wrong unit: asked {unit}, got {self._wrong_unit}"
                        ) from None
                    raise DeviceUnreachable(
                        f"timeout: no reply from unit {unit} within {budget_s * 1000:.0f} ms"
                    ) from None
                except ConnectionException as exc:
                    self._reraise_if_cancelled()
                    self._client.close()
                    raise DeviceUnreachable(f"connection lost: {exc}") from None
                except ModbusIOException as exc:
                    self._reraise_if_cancelled()
                    text = str(exc)
                    if "transaction id" in text and attempt == 1:
                        continue  # a late reply to an earlier, timed-out request: discard, ask again
                    if "device id" in text:
                        raise BadReply(f"reply from the wrong unit (asked unit {unit})") from None
                    if "No response" in text:
                        if self._wrong_unit is not None:
                            raise BadReply(
                                f"reply from the wrong unit: asked {unit}, got {self._wrong_unit}"
                            ) from None
                        raise DeviceUnreachable(
                            f"timeout: no reply from unit {unit} within {self._timeout_s * 1000:.0f} ms"
                        ) from None
                    raise BadReply(f"bad reply from unit {unit}: {text}") from None
                except ModbusException as exc:
                    self._reraise_if_cancelled()
                    raise BadReply(f"bad reply from unit {unit}: {exc}") from None
                # asyncio.wait_for (used inside pymodbus) drops a cancellation that arrives in
                # the same loop pass as the reply: the reply is returned, the cancel lost.
                self._reraise_if_cancelled()
                if rr.isError():
                    code = int(getattr(rr, "exception_code", 0))
                    name = EXCEPTION_NAMES.get(code, "unknown exception")
                    raise DeviceException(f"exception {code:02X} ({name}) from unit {unit}", code)
                dev = getattr(rr, "dev_id", unit)
                if dev not in (unit, 0) and unit != 0:
                    raise BadReply(f"reply from the wrong unit: asked {unit}, got {dev}")
                return rr
        raise AssertionError("unreachable")

    @staticmethod
    def _reraise_if_cancelled() -> None:
        """pymodbus has wrapped CancelledError in its own exceptions: undo that here."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    # ------------------------------------------------------------------ writing

    def tag(self, name: str) -> ModbusTag:
        try:
            return self._tags[name]
        except KeyError:
            raise WriteRefused(f"unknown tag {name!r} on device {self.name}") from None

    async def _writable(self, tag_name: str) -> ModbusTag:
        """The tag, if it may be written, with the link up; else WriteRefused / DeviceUnreachable."""
        tag = self.tag(tag_name)
        if not tag.writable:
            raise WriteRefused(f"{tag.name} ({tag.reference}) is read-only (access: {tag.access})")
        if tag.table not in ("coil", "holding"):
            raise WriteRefused(f"{tag.name}: table {tag.table} cannot be written")
        if self._client is None:
            raise RuntimeError("ModbusDriver used outside 'async with'")
        if not self.connected and await self._connect(self._clock() + self._timeout_s) is not None:
            raise DeviceUnreachable(f"{self.name}: cannot connect to {self.device.endpoint}")
        return tag

    async def write_many(self, items: Sequence[tuple[str, Value]]) -> dict[str, Value]:
        """Write several tags, one request per run of adjacent registers (FC16) or coils (FC15),
        so that an HMI block changes in one transaction; read each run back and return the
        read-back values. Bit-in-register tags (read-modify-write) go one by one."""
        encoded: list[tuple[ModbusTag, list[int] | bool]] = []
        for name, value in items:
            tag = await self._writable(name)
            encoded.append((tag, encode_tag(tag, value)))
        out: dict[str, Value] = {}
        singles = [t.name for t, _ in encoded if t.type is codec.DataType.BIT]
        runs: list[list[tuple[ModbusTag, list[int] | bool]]] = []
        key = lambda e: (self.device.unit_of(e[0]), e[0].table, e[0].address)  # noqa: E731
        for entry in sorted((e for e in encoded if e[0].type is not codec.DataType.BIT), key=key):
            tag = entry[0]
            if runs:
                last = runs[-1][-1][0]
                same = (self.device.unit_of(last), last.table) == (self.device.unit_of(tag), tag.table)
                limit = 1968 if tag.table == "coil" else 123
                size = sum(t.register_count for t, _ in runs[-1])
                if (
                    same
                    and last.address + last.register_count == tag.address
                    and size + tag.register_count <= limit
                ):
                    runs[-1].append(entry)
                    continue
            runs.append([entry])
        for run in runs:
            out.update(await self._write_run(run))
        for name in singles:
            out[name] = await self.write(name, dict(items)[name])
        return out

    async def _write_run(self, run: list[tuple[ModbusTag, list[int] | bool]]) -> dict[str, Value]:
        first = run[0][0]
        unit, start, client, timeout = (
            self.device.unit_of(first),
            first.address,
            self._client,
            self._timeout_s,
        )
        try:
            if first.table == "coil":
                bits = [bool(e) for _, e in run]
                if len(bits) == 1:
                    await self._execute(
                        lambda: client.write_coil(start, bits[0], device_id=unit), unit, timeout
                    )
                else:
                    await self._execute(
                        lambda: client.write_coils(start, bits, device_id=unit), unit, timeout
                    )
                back = await self._execute(
                    lambda: client.read_coils(start, count=len(bits), device_id=unit), unit, timeout
                )
                if len(back.bits) < len(bits):
                    raise BadReply(f"short reply on read-back of coils {first.reference}..")
                return {t.name: bool(b) for (t, _), b in zip(run, back.bits, strict=False)}
            words = [w for _, e in run for w in e]  # type: ignore[union-attr]
            if len(words) == 1:
                await self._execute(
                    lambda: client.write_register(start, words[0], device_id=unit), unit, timeout
                )
            else:
                await self._execute(
                    lambda: client.write_registers(start, words, device_id=unit), unit, timeout
                )
            back = await self._execute(
                lambda: client.read_holding_registers(start, count=len(words), device_id=unit), unit, timeout
            )
        except DeviceException as exc:
            names = ", ".join(t.name for t, _ in run)
            raise WriteRefused(f"{names} ({first.reference}..): device refused the write: {exc}") from None
        regs = list(back.registers)
        if len(regs) != len(words):
            raise BadReply(f"{first.name}..: short reply on read-back ({len(regs)} of {len(words)})")
        out: dict[str, Value] = {}
        for tag, _ in run:
            offset = tag.address - start
            value, quality = decode_tag(tag, regs[offset : offset + tag.register_count])
            if not quality.is_good and value is None:
                raise BadReply(f"{tag.name}: read-back is not valid: {quality.reason}")
            out[tag.name] = value
        return out

    async def write(self, tag_name: str, value: Value) -> Value:
        """Encode, write (FC5/FC6/FC16; read-modify-write for a bit), read back and return it."""
        tag = await self._writable(tag_name)
        encoded = encode_tag(tag, value)
        if tag.type is codec.DataType.BIT:
            # Read-modify-write of the register: FC22 is not supported by every device.
            unit, client = self.device.unit_of(tag), self._client
            try:
                current = await self._execute(
                    lambda: client.read_holding_registers(tag.address, count=1, device_id=unit),
                    unit,
                    self._timeout_s,
                )
            except DeviceException as exc:
                raise WriteRefused(f"{tag.name} ({tag.reference}): device refused the read: {exc}") from None
            encoded = [codec.set_bit(int(current.registers[0]), tag.bit or 0, bool(value))]
        return (await self._write_run([(tag, encoded)]))[tag.name]
