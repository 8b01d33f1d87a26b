"""A real pymodbus TCP server on 127.0.0.1 for tests, with faults a field device shows.

Faults are injected on the wire (``trace_packet``), so the client sees exactly what a
misbehaving device would send: a short reply, a reply from the wrong unit, no reply at all, an
exception instead of a function, a short reply to a read past the end of a table
(``table_end``), exception 02 at every address of a unit id (``refuse_units``). Unit ids not
served are silent (``ignore_missing_devices``), like units a TCP gateway cannot reach.
Faults of the connection itself (delays, half-open links, corrupt bytes) are the fault proxy's
(:mod:`tests.faults.proxy`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


@dataclass
class Faults:
    short_reply_units: set[int] = field(default_factory=set)  # drop the last register of reads
    wrong_unit: dict[int, int] = field(default_factory=dict)  # unit → unit id put in the reply
    silent_units: set[int] = field(default_factory=set)  # served, but replies dropped
    served_units: set[int] = field(default_factory=set)  # any other unit id gets no reply
    requests: list[tuple[int, int, int, int]] = field(default_factory=list)  # (unit, fc, addr, count)
    # function code → exception code answered instead, without executing the request (a device
    # that lacks a function answers 01; one that cannot read answers 04)
    refuse_functions: dict[int, int] = field(default_factory=dict)
    silent_functions: set[int] = field(default_factory=set)  # executed, reply dropped
    # unit → the end of its register tables: a read of holding or input registers past it is
    # answered with the registers below the end (none: a reply with byte count 0), not with
    # exception 02, as some servers do
    table_end: dict[int, int] = field(default_factory=dict)
    # unit ids answered with exception 02 at every address, served or not (a gateway asked for
    # a unit id it does not have); remove one to "add the drive"
    refuse_units: set[int] = field(default_factory=set)
    _replies: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # tid → (unit, reply pdu)
    _silencing: set[int] = field(default_factory=set)  # transaction ids whose reply is dropped


def _mutate(data: bytes, faults: Faults) -> bytes:
    if len(data) < 8:
        return data
    tid, pid, _length, unit = struct.unpack(">HHHB", data[:7])
    pdu = data[7:]
    if tid in faults._replies:
        unit, pdu = faults._replies.pop(tid)
    elif unit in faults.silent_units or unit not in faults.served_units or tid in faults._silencing:
        faults._silencing.discard(tid)
        return b""
    if unit in faults.short_reply_units and pdu[0] in (3, 4) and len(pdu) > 4:
        byte_count = pdu[1] - 2
        pdu = bytes([pdu[0], byte_count]) + pdu[2 : 2 + byte_count]
    if unit in faults.wrong_unit:
        unit = faults.wrong_unit[unit]
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1, unit) + pdu


def _record(data: bytes, faults: Faults) -> bytes:
    """Log a received request; answer a refused one without executing it."""
    if len(data) < 12:
        return data
    tid, pid, _, unit, fc, addr, count = struct.unpack(">HHHBBHH", data[:12])
    faults.requests.append((unit, fc, addr, count))
    if fc in faults.silent_functions:
        faults._silencing.add(tid)
    refused = faults.refuse_functions.get(fc) or (2 if unit in faults.refuse_units else None)
    end = faults.table_end.get(unit)
    if refused is not None:
        faults._replies[tid] = (unit, bytes([fc | 0x80, refused]))
    elif end is not None and fc in (3, 4) and addr + count > end:
        if addr < end:  # the server reads what it has: its reply is short
            return struct.pack(">HHHBBHH", tid, pid, 6, unit, fc, addr, end - addr)
        faults._replies[tid] = (unit, bytes([fc, 0]))
    else:
        return data
    # the server executes a harmless read instead (of a served unit); its reply is replaced
    served = unit if unit in faults.served_units else min(faults.served_units)
    return struct.pack(">HHHBBHH", tid, pid, 6, served, 3, 0, 1)


class ModbusTestServer:
    """``async with ModbusTestServer(units=[1, 2], size=200) as srv:`` then ``srv.port``.

    Each unit has coils, discrete inputs, holding and input registers 0..size-1, except the
    register ranges in ``holes`` (unmapped: exception 02, as a real device does).
    """

    def __init__(
        self,
        units: Iterable[int] = (1,),
        size: int = 200,
        port: int = 0,
        holes: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.units = list(units)
        self.size = size
        self.port = port
        self.holes = sorted(holes)
        self.faults = Faults(served_units=set(self.units))
        self._server: ModbusTcpServer | None = None

    def _regs(self, kind: DataType, value: object) -> list[SimData]:
        blocks: list[SimData] = []
        start = 0
        for lo, hi in self.holes:
            if lo > start:
                blocks.append(SimData(start, count=lo - start, values=value, datatype=kind))
            start = hi
        if start < self.size:
            blocks.append(SimData(start, count=self.size - start, values=value, datatype=kind))
        return blocks

    async def start(self) -> None:
        devices = [
            SimDevice(
                id=u,
                simdata=(
                    [SimData(0, count=self.size, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=self.size, values=False, datatype=DataType.BITS)],
                    self._regs(DataType.REGISTERS, 0),
                    self._regs(DataType.REGISTERS, 0),
                ),
            )
            for u in self.units
        ]

        def trace(sending: bool, data: bytes) -> bytes:
            if sending:
                return _mutate(data, self.faults)
            return _record(data, self.faults)

        self._server = ModbusTcpServer(
            devices, address=("127.0.0.1", self.port), ignore_missing_devices=True, trace_packet=trace
        )
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def set_registers(self, unit: int, address: int, words: list[int], table: str = "holding") -> None:
        assert self._server is not None
        fc = {"holding": 16, "input": 4}[table]
        if table == "input":
            # pymodbus has no write function for input registers: set them through the datastore
            await self._server.async_setValues(unit, fc, address, words)
        else:
            await self._server.async_setValues(unit, fc, address, words)

    async def set_bits(self, unit: int, address: int, bits: list[bool], table: str = "coil") -> None:
        assert self._server is not None
        await self._server.async_setValues(unit, 15 if table == "coil" else 2, address, bits)

    async def get_registers(self, unit: int, address: int, count: int) -> list[int]:
        assert self._server is not None
        return list(await self._server.async_getValues(unit, 3, address, count))

    async def get_bits(self, unit: int, address: int, count: int) -> list[bool]:
        assert self._server is not None
        return [bool(b) for b in await self._server.async_getValues(unit, 1, address, count)]
