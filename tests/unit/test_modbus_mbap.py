"""The Modbus TCP receive check that runs before pymodbus parses a reply (scan_mbap)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers.modbus import scan_mbap


def frame(tid: int, pdu: bytes, *, unit: int = 1, protocol: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1 if length is None else length, unit) + pdu


def read_reply(registers: list[int], fc: int = 3) -> bytes:
    return bytes([fc, 2 * len(registers)]) + b"".join(struct.pack(">H", r) for r in registers)


@pytest.mark.parametrize(
    ("data", "fc"),
    [
        (frame(5, read_reply([1, 2, 3])), 3),
        (frame(5, read_reply([7], fc=4)), 4),
        (frame(5, bytes([0x83, 0x02])), 3),  # exception 02
        (frame(5, bytes([1, 1, 0b101])), 1),  # coils
        (frame(5, bytes([6, 0, 10, 0, 42])), 6),
        (frame(5, bytes([16, 0, 10, 0, 2])), 16),
        (frame(5, bytes([22, 0, 10, 0xFF, 0xF7, 0, 8])), 22),
    ],
)
def test_valid_replies_pass(data: bytes, fc: int) -> None:
    assert scan_mbap(data, 5, fc) == (None, None, 0)


def test_a_frame_begun_waits_for_the_rest() -> None:
    data = frame(5, read_reply([1, 2]))
    assert scan_mbap(data[:4], 5, 3) == (None, None, 3)
    assert scan_mbap(data[:9], 5, 3) == (None, None, len(data) - 9)


def test_a_reply_of_another_transaction_is_a_stray_and_the_next_frame_is_checked() -> None:
    late = frame(4, read_reply([9]))
    assert scan_mbap(late, 5, 3) == (None, 4, 0)
    assert scan_mbap(late + frame(5, read_reply([1])), 5, 3) == (None, 4, 0)
    problem, stray, _ = scan_mbap(late + frame(5, bytes([4, 2, 0, 1])), 5, 3)
    assert (problem, stray) == ("function code 4 in the reply to function 3", 4)


@pytest.mark.parametrize(
    ("data", "fc", "problem"),
    [
        (frame(5, read_reply([1]), protocol=1), 3, "protocol id 1 (Modbus TCP has 0)"),
        (frame(5, read_reply([1]), length=2), 3, "length field 2 (3..254 in Modbus TCP)"),
        (frame(5, read_reply([1]), length=300), 3, "length field 300 (3..254 in Modbus TCP)"),
        (b"HTTP/1.1 400 Bad Request\r\n", 3, "protocol id 21584 (Modbus TCP has 0)"),  # "TP"
        (frame(5, bytes([3, 4, 0, 1])), 3, "byte count 4 in a reply carrying 2 data bytes"),
        (frame(5, bytes([3, 3, 0, 1, 2])), 3, "odd byte count 3 in a register reply"),
        (frame(5, bytes([0x83, 2, 0])), 3, "an exception reply of 3 bytes (2 in Modbus)"),
        (frame(5, bytes([6, 0, 10, 0])), 6, "length field 5 in a reply to function 6"),
        (frame(5, read_reply([1], fc=4)), 3, "function code 4 in the reply to function 3"),
    ],
)
def test_invalid_replies_are_named(data: bytes, fc: int, problem: str) -> None:
    assert scan_mbap(data, 5, fc)[0] == problem


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    offset=st.sampled_from([2, 3, 4, 5, 7, 8]),
    mask=st.integers(1, 0xFF),
)
def test_a_corrupted_header_or_framing_byte_is_never_taken_for_a_whole_reply(
    registers: list[int], offset: int, mask: int
) -> None:
    good = frame(5, read_reply(registers))
    assert scan_mbap(good, 5, 3) == (None, None, 0)
    bad = bytearray(good)
    bad[offset] ^= mask
    assert scan_mbap(bytes(bad), 5, 3) != (None, None, 0)
