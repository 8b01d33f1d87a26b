"""The driver's lean pymodbus client: the same PDUs as pymodbus, without its debug strings."""

from __future__ import annotations

import logging
import struct

import pytest
from pymodbus.logging import Log
from pymodbus.pdu import DecodePDU, ModbusPDU

from agent.drivers.modbus_lean import QuietDecoder

FRAMES = [
    bytes([3, 4]) + struct.pack(">HH", 7, 65535),  # read holding registers
    bytes([4, 2]) + struct.pack(">H", 1),  # read input registers
    bytes([1, 1, 0b101]),  # read coils
    bytes([2, 1, 0b1]),  # read discrete inputs
    bytes([6]) + struct.pack(">HH", 10, 42),  # write register
    bytes([16]) + struct.pack(">HH", 10, 3),  # write registers
    bytes([5]) + struct.pack(">HH", 3, 0xFF00),  # write coil
    bytes([22]) + struct.pack(">HHH", 20, 0xFFFE, 1),  # mask write
    bytes([0x83, 2]),  # exception 02
    bytes([0x80 | 16, 4]),  # exception 04
    bytes([99, 1, 2]),  # unknown function
    bytes([3, 9, 1]),  # byte count past the end
    bytes([8, 0, 0, 0x12, 0x34]),  # diagnostics (a sub-function)
    bytes([3, 250]) + struct.pack(">125H", *range(0, 65535, 525)),  # 125 registers, the most
    bytes([4, 0]),  # no register
    bytes([3, 4]) + struct.pack(">HHH", 1, 2, 3),  # more bytes than the byte count says
    bytes([3, 3, 1, 2, 3]),  # odd byte count
    bytes([3, 3, 1, 2, 3, 4]),  # odd byte count, a byte more
    bytes([3, 6, 1, 2]),  # byte count past the end
    bytes([3]),  # no byte count
]


def fields(pdu: ModbusPDU | None) -> object:
    if pdu is None:
        return None
    return (type(pdu), pdu.function_code, pdu.registers, pdu.bits, pdu.address, pdu.count, pdu.status)


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.hex())
def test_quiet_decoder_gives_what_pymodbus_gives(frame: bytes) -> None:
    assert fields(QuietDecoder().decode(frame)) == fields(DecodePDU(False).decode(frame))


def test_quiet_decoder_formats_nothing_unless_pymodbus_logs_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    formatted: list[str] = []
    cls = type(DecodePDU(False).decode(FRAMES[0]))

    def spy(self: ModbusPDU) -> str:
        formatted.append(type(self).__name__)
        return "pdu"

    monkeypatch.setattr(cls, "__str__", spy)
    QuietDecoder().decode(FRAMES[0])
    assert formatted == []
    DecodePDU(False).decode(FRAMES[0])  # pymodbus's own decoder formats it whatever the level
    assert formatted == [cls.__name__]
    level = Log._logger.level
    Log.setLevel(logging.DEBUG)
    try:
        QuietDecoder().decode(FRAMES[0])  # debug on: pymodbus's path, which logs the reply
    finally:
        Log.setLevel(level)
    assert formatted == [cls.__name__] * 2
