"""Tests for agent.drivers.modbus_codec: golden vectors, round trips, orders and refusals."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.drivers.modbus_codec import (
    ORDERS_16,
    ORDERS_32,
    ORDERS_64,
    DataType,
    decode,
    default_order,
    encode,
    is_bit_type,
    normalize_order,
    register_count,
    set_bit,
    valid_orders,
)
from agent.errors import CodecError

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "codec"

INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
FLOAT_TYPES = (DataType.FLOAT32, DataType.FLOAT64)
NUMERIC = (*INT_RANGES, *FLOAT_TYPES)
NUMERIC_WITH_ORDERS = [(t, o) for t in NUMERIC for o in valid_orders(t)]


# --- golden vectors --------------------------------------------------------------------------


def _load(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((GOLDEN / name).read_text())["vectors"]
    return vectors


def _golden_cases() -> list[Any]:
    cases = []
    for file in sorted(p.name for p in GOLDEN.glob("*.json")):
        for vec in _load(file):
            cases.append(pytest.param(vec, id=f"{file}:{vec['name']}"))
    return cases


def _f32(value: float) -> float:
    """The float32 nearest to ``value`` (golden float32 values are short decimals)."""
    rounded: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return rounded


def _same(a: object, b: object) -> bool:
    """Equal, and for floats also the same sign of zero."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return type(a) is type(b) and a == b


def test_golden_files_present() -> None:
    assert len(_load("documented.json")) >= 80
    assert len(_load("mbpoll.json")) >= 150
    for vec in _load("documented.json") + _load("mbpoll.json"):
        assert vec["source"], vec["name"]


@pytest.mark.parametrize("vec", _golden_cases())
def test_golden_vector(vec: dict[str, Any]) -> None:
    dtype = DataType(vec["type"])
    order = vec.get("order")
    words = [int(w, 16) for w in vec["words"]]
    byte_swap = bool(vec.get("byte_swap", False))

    if "error" in vec:
        with pytest.raises(CodecError, match=vec["error"]):
            decode(words, dtype, order, byte_swap=byte_swap)
        return

    got = decode(words, dtype, order, byte_swap=byte_swap)
    if "mbpoll_text" in vec and dtype is DataType.FLOAT32 and not vec["exact"]:
        # mbpoll prints C's %g: compare at its precision, and its text is no value to encode.
        assert f"{got:g}" == vec["mbpoll_text"]
        return
    expected = vec["value"]
    if dtype is DataType.FLOAT32:
        expected = _f32(expected)
    elif dtype is DataType.FLOAT64:
        expected = float(expected)
    assert _same(got, expected), f"decoded {got!r}, expected {expected!r}"
    length = len(words) if dtype is DataType.STRING else 0
    assert encode(expected, dtype, order, length=length, byte_swap=byte_swap) == words


# --- round trips -----------------------------------------------------------------------------


def _values(dtype: DataType) -> st.SearchStrategy[Any]:
    if dtype in INT_RANGES:
        low, high = INT_RANGES[dtype]
        return st.integers(min_value=low, max_value=high)
    if dtype is DataType.FLOAT32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    return st.floats(allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize(("dtype", "order"), NUMERIC_WITH_ORDERS, ids=lambda x: str(x))
@given(data=st.data())
def test_value_round_trip(dtype: DataType, order: str, data: st.DataObject) -> None:
    value = data.draw(_values(dtype))
    words = encode(value, dtype, order)
    assert len(words) == register_count(dtype)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert _same(decode(words, dtype, order), value)


@pytest.mark.parametrize(("dtype", "order"), NUMERIC_WITH_ORDERS, ids=lambda x: str(x))
@given(data=st.data())
def test_words_round_trip(dtype: DataType, order: str, data: st.DataObject) -> None:
    n = register_count(dtype)
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n))
    try:
        value = decode(words, dtype, order)
    except CodecError as exc:  # only NaN/Inf bit patterns may refuse
        assert dtype in FLOAT_TYPES and str(exc).startswith("not finite: ")
        return
    assert encode(value, dtype, order) == words


@given(
    text=st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), max_size=20),
    extra=st.integers(0, 3),
    byte_swap=st.booleans(),
)
def test_string_round_trip(text: str, extra: int, byte_swap: bool) -> None:
    length = max(1, (len(text) + 1) // 2 + extra)
    words = encode(text, DataType.STRING, length=length, byte_swap=byte_swap)
    assert len(words) == length
    assert decode(words, DataType.STRING, byte_swap=byte_swap) == text.rstrip(" ")


@given(word=st.integers(0, 0xFFFF), bit=st.integers(0, 15), value=st.booleans())
def test_set_bit_round_trip(word: int, bit: int, value: bool) -> None:
    new = set_bit(word, bit, value)
    assert decode([new], DataType.BIT, bit=bit) is value
    assert new & ~(1 << bit) == word & ~(1 << bit)  # no other bit changed


# --- how orders relate -----------------------------------------------------------------------


def _swap_bytes(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def _reverse(words: list[int]) -> list[int]:
    return words[::-1]


@pytest.mark.parametrize("dtype", [DataType.INT32, DataType.UINT32, DataType.FLOAT32])
@given(data=st.data())
def test_32_bit_orders_relate(dtype: DataType, data: st.DataObject) -> None:
    value = data.draw(_values(dtype))
    abcd = encode(value, dtype, "ABCD")
    assert encode(value, dtype, "CDAB") == abcd[::-1]
    assert encode(value, dtype, "BADC") == _swap_bytes(abcd)
    assert encode(value, dtype, "DCBA") == _swap_bytes(abcd[::-1])
    if dtype is DataType.FLOAT32:
        assert abcd == list(struct.unpack(">HH", struct.pack(">f", value)))
    # Words written in one order and read in another decode as the rearranged words.
    for write_order, read_order, rearrange in [
        ("ABCD", "CDAB", _reverse),
        ("ABCD", "BADC", _swap_bytes),
        ("CDAB", "DCBA", _swap_bytes),
    ]:
        words = encode(value, dtype, write_order)
        try:
            expected = decode(rearrange(words), dtype, write_order)
        except CodecError:
            with pytest.raises(CodecError, match="not finite"):
                decode(words, dtype, read_order)
            continue
        assert _same(decode(words, dtype, read_order), expected)


@pytest.mark.parametrize("dtype", [DataType.INT64, DataType.UINT64, DataType.FLOAT64])
@given(data=st.data())
def test_64_bit_orders_and_aliases(dtype: DataType, data: st.DataObject) -> None:
    value = data.draw(_values(dtype))
    big = encode(value, dtype, "ABCDEFGH")
    assert encode(value, dtype, "GHEFCDAB") == big[::-1]
    assert encode(value, dtype, "BADCFEHG") == _swap_bytes(big)
    assert encode(value, dtype, "HGFEDCBA") == _swap_bytes(big[::-1])
    aliases = {"ABCD": "ABCDEFGH", "CDAB": "GHEFCDAB", "BADC": "BADCFEHG", "DCBA": "HGFEDCBA"}
    for alias, canonical in aliases.items():
        assert encode(value, dtype, alias) == encode(value, dtype, canonical)


@given(value=st.integers(0, 0xFFFF))
def test_16_bit_byte_swap(value: int) -> None:
    assert encode(value, DataType.UINT16, "BA") == _swap_bytes(encode(value, DataType.UINT16, "AB"))
    assert encode(value, DataType.UINT16) == [value]


def test_mixed_orders_concrete() -> None:
    words = encode(123456789, DataType.INT32, "ABCD")
    assert words == [0x075B, 0xCD15]
    # The same words read word-swapped: 0xCD15075B as int32 (mbpoll's default decoding).
    assert decode(words, DataType.INT32, "CDAB") == 0xCD15075B - 2**32 == -854259877
    assert decode(words, DataType.UINT32, "BADC") == 0x5B0715CD
    assert decode(words, DataType.UINT32, "DCBA") == 0x15CD5B07


# --- NaN / Inf -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "words", "message"),
    [
        (DataType.FLOAT32, [0x7FC0, 0x0000], "not finite: nan"),
        (DataType.FLOAT32, [0xFFC0, 0x0000], "not finite: nan"),
        (DataType.FLOAT32, [0x7F80, 0x0000], "not finite: inf"),
        (DataType.FLOAT32, [0xFF80, 0x0000], "not finite: -inf"),
        (DataType.FLOAT64, [0x7FF8, 0, 0, 0], "not finite: nan"),
        (DataType.FLOAT64, [0xFFF0, 0, 0, 0], "not finite: -inf"),
    ],
)
def test_decode_not_finite(dtype: DataType, words: list[int], message: str) -> None:
    with pytest.raises(CodecError) as info:
        decode(words, dtype)
    assert str(info.value) == message


@pytest.mark.parametrize("dtype", [*FLOAT_TYPES, DataType.INT32, DataType.UINT16])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_encode_not_finite(dtype: DataType, value: float) -> None:
    with pytest.raises(CodecError, match="not finite"):
        encode(value, dtype)


# --- range and type errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dtype", "fragment"),
    [
        (70000, DataType.UINT16, "uint16: value 70000 out of range 0..65535"),
        (-1, DataType.UINT16, "0..65535"),
        (32768, DataType.INT16, "int16: value 32768 out of range -32768..32767"),
        (-32769, DataType.INT16, "-32768..32767"),
        (-1, DataType.UINT32, "uint32: value -1 out of range 0..4294967295"),
        (2**31, DataType.INT32, "-2147483648..2147483647"),
        (2**63, DataType.INT64, "int64"),
        (-(2**63) - 1, DataType.INT64, "int64"),
        (2**64, DataType.UINT64, "0..18446744073709551615"),
        (1.5, DataType.INT16, "int16: value 1.5 is not an integer in -32768..32767"),
        (1e30, DataType.INT64, "int64"),
        ("12", DataType.INT16, "int16"),
        (True, DataType.UINT16, "uint16"),
        (None, DataType.INT32, "int32"),
        (1e39, DataType.FLOAT32, "float32: value 1e+39 out of range"),
        ("1.0", DataType.FLOAT32, "float32"),
        (False, DataType.FLOAT64, "float64"),
    ],
)
def test_encode_refuses(value: Any, dtype: DataType, fragment: str) -> None:
    with pytest.raises(CodecError, match=re.escape(fragment)):
        encode(value, dtype)


def test_encode_accepts_integral_floats_and_ints_for_floats() -> None:
    assert encode(2.0, DataType.INT16) == [2]
    assert encode(-1.0, DataType.INT32) == [0xFFFF, 0xFFFF]
    assert encode(1, DataType.FLOAT32) == [0x3F80, 0x0000]
    assert encode(10**20, DataType.FLOAT64) == encode(1e20, DataType.FLOAT64)


@pytest.mark.parametrize(
    ("words", "dtype", "fragment"),
    [
        ([0x0001], DataType.INT32, "expected 2 register word(s), got 1"),
        ([1, 2, 3], DataType.FLOAT32, "expected 2"),
        ([1, 2], DataType.UINT16, "expected 1"),
        ([0x10000], DataType.UINT16, "word 0 is 65536, not in 0..65535"),
        ([-1], DataType.INT16, "word 0 is -1"),
        ([0, 1.0], DataType.INT32, "word 1 is 1.0"),
        ([True], DataType.UINT16, "word 0 is True"),
        ([], DataType.STRING, "at least 1"),
        ([0x41FF], DataType.STRING, "0xFF is not ASCII"),
        ([2], DataType.BOOL, "not 0/1"),
        ([0, 1], DataType.BOOL, "exactly 1"),
    ],
)
def test_decode_refuses_bad_words(words: list[Any], dtype: DataType, fragment: str) -> None:
    with pytest.raises(CodecError, match=re.escape(fragment)):
        decode(words, dtype)


# --- orders ----------------------------------------------------------------------------------


def test_valid_orders() -> None:
    assert valid_orders(DataType.INT16) == valid_orders(DataType.UINT16) == ORDERS_16 == ("AB", "BA")
    for dtype in (DataType.INT32, DataType.UINT32, DataType.FLOAT32):
        assert valid_orders(dtype) == ORDERS_32
    for dtype in (DataType.INT64, DataType.UINT64, DataType.FLOAT64):
        assert valid_orders(dtype) == ORDERS_64 + ORDERS_32
    for dtype in (DataType.BOOL, DataType.BIT, DataType.STRING):
        assert valid_orders(dtype) == ()
        assert default_order(dtype) is None
    assert default_order(DataType.UINT16) == "AB"
    assert default_order(DataType.FLOAT32) == "ABCD"
    assert default_order(DataType.FLOAT64) == "ABCDEFGH"


def test_normalize_order() -> None:
    assert normalize_order(DataType.FLOAT64, "CDAB") == "GHEFCDAB"
    assert normalize_order(DataType.INT64, "abcd") == "ABCDEFGH"
    assert normalize_order(DataType.UINT64, "BADC") == "BADCFEHG"
    assert normalize_order(DataType.UINT64, "DCBA") == "HGFEDCBA"
    assert normalize_order(DataType.FLOAT32, "cdab") == "CDAB"
    assert normalize_order(DataType.INT16, "BA") == "BA"
    assert normalize_order("uint32", "DCBA") == "DCBA"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dtype", "order", "message"),
    [
        (DataType.INT16, "ABCD", "order 'ABCD' for int16: must be one of AB, BA"),
        (DataType.UINT16, "CDAB", "must be one of AB, BA"),
        (DataType.FLOAT32, "ABCDEFGH", "order 'ABCDEFGH' for float32: must be one of ABCD, BADC, CDAB, DCBA"),
        (DataType.INT32, "AB", "must be one of ABCD, BADC, CDAB, DCBA"),
        (DataType.FLOAT64, "ACBD", "must be one of ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA"),
        (DataType.STRING, "AB", "does not apply to string; strings take byte_swap"),
        (DataType.BOOL, "AB", "does not apply to bool"),
        (DataType.BIT, "ABCD", "does not apply to bit"),
    ],
)
def test_normalize_order_refuses(dtype: DataType, order: str, message: str) -> None:
    with pytest.raises(CodecError, match=re.escape(message)):
        normalize_order(dtype, order)
    with pytest.raises(CodecError, match=re.escape(message)):
        decode([0] * register_count(dtype, 1), dtype, order, bit=0 if dtype is DataType.BIT else None)


def test_unknown_type() -> None:
    with pytest.raises(CodecError, match="unknown data type 'int8'"):
        register_count("int8")  # type: ignore[arg-type]


def test_register_count_and_bit_type() -> None:
    one = (DataType.BOOL, DataType.BIT, DataType.INT16, DataType.UINT16)
    assert [register_count(t) for t in one] == [1] * 4
    assert [register_count(t) for t in (DataType.INT32, DataType.UINT32, DataType.FLOAT32)] == [2] * 3
    assert [register_count(t) for t in (DataType.INT64, DataType.UINT64, DataType.FLOAT64)] == [4] * 3
    assert register_count(DataType.STRING, 10) == 10
    with pytest.raises(CodecError, match="length >= 1"):
        register_count(DataType.STRING)
    assert is_bit_type(DataType.BOOL)
    assert not any(is_bit_type(t) for t in DataType if t is not DataType.BOOL)


def test_byte_swap_only_for_strings() -> None:
    with pytest.raises(CodecError, match="byte_swap applies to strings only"):
        decode([1, 2], DataType.FLOAT32, byte_swap=True)
    with pytest.raises(CodecError, match="byte_swap applies to strings only"):
        encode(1, DataType.UINT16, byte_swap=True)


def test_length_only_for_strings() -> None:
    assert encode(1, DataType.UINT32, length=2) == [0, 1]
    with pytest.raises(CodecError, match="length=3 does not apply to uint32"):
        encode(1, DataType.UINT32, length=3)


# --- strings ---------------------------------------------------------------------------------


def test_string_layout() -> None:
    assert encode("AB", DataType.STRING, length=1) == [0x4142]
    assert encode("AB", DataType.STRING, length=1, byte_swap=True) == [0x4241]
    assert encode("ABC", DataType.STRING, length=3) == [0x4142, 0x4300, 0x0000]
    assert encode("ABC", DataType.STRING, length=2, byte_swap=True) == [0x4241, 0x0043]
    assert decode([0x4241, 0x0043], DataType.STRING, byte_swap=True) == "ABC"
    assert decode([0x4142, 0x4300], DataType.STRING, byte_swap=True) == "BA"  # swapped: B A NUL C
    assert decode([0x4142, 0x2020, 0x2000], DataType.STRING) == "AB"  # trailing spaces + NUL
    assert decode([0x2041, 0x2020], DataType.STRING) == " A"  # leading space kept
    assert decode([0x4100, 0x4243], DataType.STRING) == "A"  # a C string ends at its NUL
    assert decode([0x0000], DataType.STRING) == ""


@pytest.mark.parametrize(
    ("value", "length", "fragment"),
    [
        ("ABCDE", 2, "5 characters do not fit 2 registers (max 4)"),
        ("Temp °C", 8, "character '°' is not ASCII"),
        ("A\x00B", 2, "contains NUL"),
        (b"AB", 1, "is not a str"),
        ("AB", 0, "string needs length >= 1"),
    ],
)
def test_string_refuses(value: Any, length: int, fragment: str) -> None:
    with pytest.raises(CodecError, match=re.escape(fragment)):
        encode(value, DataType.STRING, length=length)


def test_string_takes_no_order() -> None:
    with pytest.raises(CodecError, match="does not apply to string"):
        encode("A", DataType.STRING, "AB", length=1)


# --- bool, bit, set_bit ----------------------------------------------------------------------


def test_bool() -> None:
    assert decode([True], DataType.BOOL) is True
    assert decode([0], DataType.BOOL) is False
    assert encode(True, DataType.BOOL) == [1]
    assert encode(0, DataType.BOOL) == [0]
    with pytest.raises(CodecError, match="not True/False"):
        encode(2, DataType.BOOL)
    with pytest.raises(CodecError, match="not True/False"):
        encode(1.0, DataType.BOOL)


def test_bit() -> None:
    word = 0b1000_0000_0000_0101
    assert [decode([word], DataType.BIT, bit=b) for b in (0, 1, 2, 15)] == [True, False, True, True]
    with pytest.raises(CodecError, match=r"bit must be 0\.\.15"):
        decode([word], DataType.BIT)
    with pytest.raises(CodecError, match=r"bit must be 0\.\.15"):
        decode([word], DataType.BIT, bit=16)
    with pytest.raises(CodecError, match="bit= applies to type bit only"):
        decode([word], DataType.UINT16, bit=0)
    with pytest.raises(CodecError, match="set_bit"):
        encode(True, DataType.BIT)


def test_set_bit() -> None:
    assert set_bit(0x0000, 0, True) == 0x0001
    assert set_bit(0x0000, 15, True) == 0x8000
    assert set_bit(0xFFFF, 15, False) == 0x7FFF
    assert set_bit(0xFFFF, 0, False) == 0xFFFE
    assert set_bit(0x00F0, 4, True) == 0x00F0  # already set: unchanged
    with pytest.raises(CodecError, match=r"bit must be 0\.\.15"):
        set_bit(0, -1, True)
    with pytest.raises(CodecError, match=r"not in 0\.\.65535"):
        set_bit(0x10000, 0, True)
