"""Modbus TCP server of the station (pymodbus 3.16, in-process, asyncio).

Built on pymodbus's ``SimDevice`` with an ``action`` hook: pymodbus parses the frames, our
action answers every request from the PLC's register image (``register_map``) and sends every
write through :meth:`simulator.plc.Plc.write`. So the server behaves like the PLC documented in
``REGISTER_MAP.md``:

- unit id 1 is the station; other unit ids get exception 0x0B (gateway target failed to
  respond) by default, or silence (``other_units="silent"``, the client times out), or the
  same answers (``"answer"``);
- a read touching an unmapped address gets exception 02 (as many real devices do: a merged
  read across a gap fails where single reads succeed); coils and discrete inputs 0-15 read
  (spares read 0);
- a write to an unmapped or read-only address, or one that covers only half of a 32-bit
  value, gets exception 02 and is logged as refused; an illegal value (NaN setpoint, unknown
  fault code) gets exception 03;
- a write the PLC refuses for a process reason (permissive off, heartbeat stale) is *not* an
  exception: the register keeps tracking the setpoint in use (read it back to verify), and the
  write log says why.

Values are refreshed from the plant by :meth:`ModbusStationServer.refresh` (the station loop
calls it every tick); a read returns one consistent snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .listen import quiet, why_not_listening
from .physics import Plant
from .plc import WriteResult
from .register_map import UNIT_ID, RegisterEntry, build_register_map, decode, encode

__all__ = ["ModbusStationServer"]

log = logging.getLogger("simulator.modbus")

_FC_TABLE = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    4: "input",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
}
_SHORT = {"coil": "CO", "discrete": "DI", "input": "IR", "holding": "HR"}
_PREFIX = {"coil": 0, "discrete": 1, "input": 3, "holding": 4}
_SIZE = 65536
_BIT_READABLE = 16  # coils / discrete inputs 0..15 are readable


def _where(table: str, address: int, count: int) -> str:
    p = _PREFIX[table]
    if count <= 1:
        return f"{_SHORT[table]} {address} ({p}{address + 1:04d})"
    end = address + count - 1
    return f"{_SHORT[table]} {address}-{end} ({p}{address + 1:04d}-{p}{end + 1:04d})"


class ModbusStationServer:
    """The station's Modbus TCP server. ``start()`` / ``stop()``; ``port`` after start."""

    def __init__(
        self,
        plant: Plant,
        *,
        host: str = "127.0.0.1",
        port: int = 5020,
        unit_id: int = UNIT_ID,
        other_units: str = "exception",
    ) -> None:
        if other_units not in ("exception", "silent", "answer"):
            raise ValueError("other_units must be 'exception', 'silent' or 'answer'")
        self.plant = plant
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.other_units = other_units
        self.requests = 0
        self.exceptions = 0
        self._server: ModbusTcpServer | None = None
        self._entries = build_register_map(plant.pumps)
        # per table: address -> entry covering it
        self._by_addr: dict[str, dict[int, RegisterEntry]] = {t: {} for t in _PREFIX}
        for e in self._entries:
            for a in range(e.address, e.end + 1):
                self._by_addr[e.table][a] = e
        self._words: dict[str, list[int]] = {"input": [0] * _SIZE, "holding": [0] * _SIZE}
        self._bits: dict[str, list[bool]] = {
            "coil": [False] * _BIT_READABLE,
            "discrete": [False] * _BIT_READABLE,
        }
        self._dirty = True

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port`` (0: any free port, read back from ``port``).

        Raises :class:`~simulator.listen.ListenError` when the address cannot be bound.
        """
        full_regs = [SimData(0, count=_SIZE, values=0, datatype=DataType.REGISTERS)]
        # one SimData with a 65536-bit list (count > 1 with bits is squared by pymodbus's check)
        full_bits = [SimData(0, count=1, values=[False] * _SIZE, datatype=DataType.BITS)]
        station = SimDevice(
            id=0 if self.other_units == "answer" else self.unit_id,
            simdata=(list(full_bits), list(full_bits), list(full_regs), list(full_regs)),
            action=self._action,
        )
        devices = [station]
        if self.other_units != "answer":
            devices.append(
                SimDevice(
                    id=0,
                    simdata=[SimData(0, count=_SIZE, values=0, datatype=DataType.REGISTERS)],
                    action=self._other_unit,
                )
            )
        self._server = ModbusTcpServer(
            devices,
            address=(self.host, self.port),
            ignore_missing_devices=self.other_units == "silent",
        )
        try:
            with quiet("pymodbus.logging", "Failed to start server"):
                await self._server.serve_forever(background=True)
        except RuntimeError:
            if self._server.transport is not None:
                raise  # not a failed listen
            self._server = None
            raise why_not_listening("Modbus TCP", self.host, self.port) from None
        transport: Any = self._server.transport
        self.port = transport.sockets[0].getsockname()[1]
        log.info("Modbus TCP server on %s:%d, unit id %d", self.host, self.port, self.unit_id)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    # -- image ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Mark the image stale; it is re-encoded from the plant at the next request."""
        self._dirty = True

    def _encode_all(self) -> None:
        tags = self.plant.state.tags
        for e in self._entries:
            value = tags[e.name]
            if e.table in ("coil", "discrete"):
                self._bits[e.table][e.address] = bool(value)
            else:
                self._words[e.table][e.address : e.end + 1] = encode(e, value)
        self._dirty = False

    def register_image(self, table: str, address: int, count: int) -> list[int]:
        """Current raw registers (for tests and debugging)."""
        if self._dirty:
            self._encode_all()
        return list(self._words[table][address : address + count])

    # -- pymodbus action --------------------------------------------------------------------

    async def _other_unit(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.other_units == "silent":
            raise NoSuchIdException("not our unit")
        return ExcCodes.GATEWAY_NO_RESPONSE

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        table = _FC_TABLE.get(function_code)
        if table is None:
            return self._exc(ExcCodes.ILLEGAL_FUNCTION)
        if self._dirty:
            self._encode_all()
        if table in ("coil", "discrete"):
            return self._bits_action(table, address, count, registers, set_values, function_code)
        if set_values is not None:
            return self._write_registers(table, address, registers, [int(v) for v in set_values], set_values)
        # read
        by_addr = self._by_addr[table]
        for a in range(address, address + count):
            if a not in by_addr:
                return self._exc(ExcCodes.ILLEGAL_ADDRESS)
        registers[address - start_address : address - start_address + count] = self._words[table][
            address : address + count
        ]
        return None

    def _exc(self, code: ExcCodes) -> ExcCodes:
        self.exceptions += 1
        return code

    def _refuse(self, where: str, tag: str | None, raw: object, reason: str, code: ExcCodes) -> ExcCodes:
        self.plant.plc.log_write(
            protocol="modbus",
            address=where,
            tag=tag,
            raw=raw,
            value=None,
            result=WriteResult(False, None, reason, "illegal_address"),
        )
        return self._exc(code)

    def _write_registers(
        self, table: str, address: int, registers: list[int], values: list[int], set_values: Any
    ) -> ExcCodes | None:
        count = len(values)
        where = _where(table, address, count)
        raw = [v & 0xFFFF for v in values]
        if table != "holding":
            return self._refuse(where, None, raw, "read-only table", ExcCodes.ILLEGAL_ADDRESS)
        by_addr = self._by_addr[table]
        touched: list[RegisterEntry] = []
        for a in range(address, address + count):
            e = by_addr.get(a)
            if e is None:
                return self._refuse(
                    where, None, raw, f"illegal address {_where(table, a, 1)}", ExcCodes.ILLEGAL_ADDRESS
                )
            if not touched or touched[-1] is not e:
                touched.append(e)
        for e in touched:
            if not e.writable:
                return self._refuse(where, e.name, raw, "read-only", ExcCodes.ILLEGAL_ADDRESS)
            if e.address < address or e.end >= address + count:
                return self._refuse(
                    where, e.name, raw, "write splits a 32-bit value", ExcCodes.ILLEGAL_ADDRESS
                )
        plc = self.plant.plc
        words = self._words[table]
        for e in touched:
            part = raw[e.address - address : e.end - address + 1]
            value = decode(e, part)
            result = plc.write(e.name, value, protocol="modbus", address=e.where, raw=part)
            if result.error == "illegal_value":
                self._sync_entry(e)
                return self._exc(ExcCodes.ILLEGAL_VALUE)
            self._sync_entry(e)
        # pymodbus stores set_values after the action: make them what the PLC decided
        if isinstance(set_values, list):
            set_values[:] = words[address : address + count]
        registers[address : address + count] = words[address : address + count]
        self.plant_state_changed()
        return None

    def _sync_entry(self, e: RegisterEntry) -> None:
        value = self.plant.plc.read(e.name)
        self._words[e.table][e.address : e.end + 1] = encode(e, value)
        if e.name == "Station.OperatorCommand":
            self._bits["coil"][0] = bool(int(value) & 1)
            self._bits["coil"][1] = bool(int(value) & 2)

    def plant_state_changed(self) -> None:
        """Writes change PLC memory that other tags derive from: re-encode at next read."""
        self._dirty = True

    def _bits_action(
        self,
        table: str,
        address: int,
        reg_count: int,
        registers: list[int],
        set_values: Sequence[bool] | Sequence[int] | None,
        function_code: int,
    ) -> ExcCodes | None:
        # pymodbus passes the number of 16-bit words covering the request, not the bit count
        first_reg = address // 16
        if first_reg + reg_count > _BIT_READABLE // 16:
            if set_values is not None:
                n = len(set_values)
                return self._refuse(
                    _where(table, address, n),
                    None,
                    list(set_values),
                    f"illegal address {_where(table, address, n)}",
                    ExcCodes.ILLEGAL_ADDRESS,
                )
            return self._exc(ExcCodes.ILLEGAL_ADDRESS)
        bits = self._bits[table]
        if set_values is not None:
            values = [bool(v) for v in set_values]
            where = _where(table, address, len(values))
            if table != "coil":
                return self._refuse(where, None, values, "read-only table", ExcCodes.ILLEGAL_ADDRESS)
            by_addr = self._by_addr["coil"]
            for k in range(len(values)):
                if address + k not in by_addr:
                    return self._refuse(
                        where,
                        None,
                        values,
                        f"illegal address {_where(table, address + k, 1)}",
                        ExcCodes.ILLEGAL_ADDRESS,
                    )
            plc = self.plant.plc
            for k, v in enumerate(values):
                e = by_addr[address + k]
                plc.write(e.name, v, protocol="modbus", address=e.where, raw=v)
                bits[e.address] = bool(plc.read(e.name))
            self._words["holding"][2] = int(plc.read("Station.OperatorCommand"))
            if isinstance(set_values, list):
                set_values[:] = bits[address : address + len(values)]
            self.plant_state_changed()
        for k in range(reg_count):
            word = 0
            base = (first_reg + k) * 16
            for b in range(16):
                if bits[base + b]:
                    word |= 1 << b
            registers[first_reg + k] = word
        return None
