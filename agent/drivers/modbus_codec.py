"""Exact encode/decode of Modbus register words, with every byte order named by its bytes.

pymodbus's own converters know only big/little *word* order and never swap bytes inside a
register, so the agent does its own conversions here. Everything is pure and synchronous:
any thread or task may call any function concurrently.

Byte orders are strings of letters, one letter per byte; ``A`` is the most significant byte
of the value. The string lists the bytes in the order they travel on the wire, register 0
first and, inside each register, its high byte first (register word = high << 8 | low):

======== ============== ================================================================
type     orders         meaning
======== ============== ================================================================
16-bit   ``AB``         the register as sent (default)
         ``BA``         the two bytes of the register swapped
32-bit   ``ABCD``       big-endian, high word first (default)
         ``CDAB``       word-swapped: low word first (Modicon/Wago style; mbpoll's default)
         ``BADC``       bytes swapped inside each word, high word first
         ``DCBA``       little-endian
64-bit   ``ABCDEFGH``   big-endian (default); ``ABCD`` is accepted as an alias
         ``GHEFCDAB``   words in reverse order; alias ``CDAB``
         ``BADCFEHG``   bytes swapped inside each word; alias ``BADC``
         ``HGFEDCBA``   little-endian; alias ``DCBA``
======== ============== ================================================================

``bool`` (a coil or discrete input), ``bit`` (one bit of a register) and ``string`` take no
order: pass ``order=None`` (the default). Strings have ``byte_swap`` instead, which puts the
first character of each register in its low byte. ``byte_swap`` is refused on every other
type: use ``BA``/``BADC``/``BADCFEHG`` there, so one setting never has two spellings.

Values that cannot be represented raise :class:`agent.errors.CodecError`: words outside
0..65535 or the wrong number of words; NaN and ±Inf floats (``"not finite: nan"``) in either
direction; integers out of the type's range or not integral; non-ASCII or too long strings.
"""

from __future__ import annotations

import enum
import functools
import math
import numbers
import operator
import struct
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from agent.errors import CodecError

__all__ = [
    "ORDERS_16",
    "ORDERS_32",
    "ORDERS_64",
    "BlockDecoder",
    "BlockField",
    "DataType",
    "compile_block",
    "compile_decoder",
    "decode",
    "default_order",
    "encode",
    "is_bit_type",
    "normalize_order",
    "register_count",
    "set_bit",
    "valid_orders",
]


class DataType(enum.StrEnum):
    """The value types a Modbus tag can have; the value is the config spelling."""

    BOOL = "bool"  #: a coil or discrete input (1 bit, read from a bit table)
    BIT = "bit"  #: one bit of a 16-bit register (bit 0 = least significant)
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"  #: ``length`` registers, two ASCII characters per register


ORDERS_16: Final[tuple[str, ...]] = ("AB", "BA")
ORDERS_32: Final[tuple[str, ...]] = ("ABCD", "BADC", "CDAB", "DCBA")
ORDERS_64: Final[tuple[str, ...]] = ("ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA")

_ALIASES_64: Final[dict[str, str]] = {
    "ABCD": "ABCDEFGH",
    "CDAB": "GHEFCDAB",
    "BADC": "BADCFEHG",
    "DCBA": "HGFEDCBA",
}

# struct format (big-endian) and register count of each fixed-size numeric type.
_NUMERIC: Final[dict[DataType, tuple[str, int]]] = {
    DataType.INT16: (">h", 1),
    DataType.UINT16: (">H", 1),
    DataType.INT32: (">i", 2),
    DataType.UINT32: (">I", 2),
    DataType.INT64: (">q", 4),
    DataType.UINT64: (">Q", 4),
    DataType.FLOAT32: (">f", 2),
    DataType.FLOAT64: (">d", 4),
}

_INT_RANGES: Final[dict[DataType, tuple[int, int]]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}

_FLOATS: Final[frozenset[DataType]] = frozenset({DataType.FLOAT32, DataType.FLOAT64})
_NO_ORDER: Final[frozenset[DataType]] = frozenset({DataType.BOOL, DataType.BIT, DataType.STRING})


def _dtype(dtype: DataType | str) -> DataType:
    """Return ``dtype`` as a :class:`DataType`; a plain string must be a known type name."""
    if dtype.__class__ is DataType:  # the common case, without the enum's lookup (every encode)
        return dtype
    try:
        return DataType(dtype)
    except ValueError:
        names = ", ".join(t.value for t in DataType)
        raise CodecError(f"unknown data type {dtype!r}: must be one of {names}") from None


def register_count(dtype: DataType, length: int = 0) -> int:
    """Number of 16-bit registers (or bits, for ``bool``) one value of ``dtype`` occupies.

    ``bool``, ``bit`` and the 16-bit types take 1, 32-bit types 2, 64-bit types 4; a
    ``string`` takes ``length`` registers (``length`` >= 1, else :class:`CodecError`).
    ``length`` is ignored for the other types.
    """
    dtype = _dtype(dtype)
    if dtype is DataType.STRING:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise CodecError(f"string needs length >= 1 (registers), got {length!r}")
        return length
    if dtype in (DataType.BOOL, DataType.BIT):
        return 1
    return _NUMERIC[dtype][1]


def is_bit_type(dtype: DataType) -> bool:
    """True if ``dtype`` is read from a bit table (coils / discrete inputs): ``bool`` only."""
    return _dtype(dtype) is DataType.BOOL


def valid_orders(dtype: DataType) -> tuple[str, ...]:
    """All order spellings :func:`normalize_order` accepts for ``dtype`` (canonical first).

    16-bit types: ``ORDERS_16``; 32-bit: ``ORDERS_32``; 64-bit: ``ORDERS_64`` followed by the
    32-bit spellings as aliases. ``bool``, ``bit`` and ``string`` take no order: ``()``.
    """
    dtype = _dtype(dtype)
    if dtype in _NO_ORDER:
        return ()
    count = _NUMERIC[dtype][1]
    if count == 1:
        return ORDERS_16
    if count == 2:
        return ORDERS_32
    return ORDERS_64 + ORDERS_32


def _canonical_orders(dtype: DataType) -> tuple[str, ...]:
    """The canonical spellings for ``dtype`` (no aliases)."""
    orders = valid_orders(dtype)
    return orders[:4] if len(orders) > 4 else orders


def default_order(dtype: DataType) -> str | None:
    """The order used when none is given: ``AB``/``ABCD``/``ABCDEFGH``, or None if none applies."""
    orders = _canonical_orders(_dtype(dtype))
    return orders[0] if orders else None


def normalize_order(dtype: DataType, order: str) -> str:
    """Return the canonical spelling of ``order`` for ``dtype`` (case-insensitive).

    64-bit aliases are resolved (``CDAB`` -> ``GHEFCDAB``). Raises :class:`CodecError`
    ("... must be one of ...", listing the canonical orders) for an order the type does not
    take, including any order on ``bool``/``bit``/``string``.
    """
    dtype = _dtype(dtype)
    if dtype in _NO_ORDER:
        hint = "; strings take byte_swap instead" if dtype is DataType.STRING else ""
        raise CodecError(f"order {order!r} does not apply to {dtype.value}{hint}")
    key = order.upper() if isinstance(order, str) else order
    if key in valid_orders(dtype):
        return _ALIASES_64.get(key, key) if _NUMERIC[dtype][1] == 4 else key
    allowed = ", ".join(_canonical_orders(dtype))
    extra = " (or the 32-bit aliases ABCD, CDAB, BADC, DCBA)" if _NUMERIC[dtype][1] == 4 else ""
    raise CodecError(f"order {order!r} for {dtype.value}: must be one of {allowed}{extra}")


def _resolve_order(dtype: DataType, order: str | None) -> str:
    """Canonical order for a numeric type, ``order=None`` meaning the type's default."""
    if order is None:
        default = default_order(dtype)
        assert default is not None  # only called for numeric types
        return default
    return normalize_order(dtype, order)


def _check_order_absent(dtype: DataType, order: str | None) -> None:
    """Refuse an order on a type that takes none."""
    if order is not None:
        normalize_order(dtype, order)  # always raises for these types


def _check_words(words: Sequence[int], expected: int, what: str) -> list[int]:
    """Validate register words: exactly ``expected`` ints in 0..65535."""
    if isinstance(words, (str, bytes, bytearray)) or not isinstance(words, Sequence):
        raise CodecError(f"{what}: expected a sequence of register words, got {type(words).__name__}")
    if len(words) != expected:
        raise CodecError(f"{what}: expected {expected} register word(s), got {len(words)}")
    out: list[int] = []
    for i, word in enumerate(words):
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise CodecError(f"{what}: word {i} is {word!r}, not in 0..65535")
        out.append(int(word))
    return out


def _words_to_wire(words: Sequence[int]) -> bytes:
    """Register words to the bytes as they travel (high byte of each word first)."""
    return b"".join(w.to_bytes(2, "big") for w in words)


def _wire_to_words(wire: bytes) -> list[int]:
    """Wire bytes (even length) back to register words."""
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


def _permute_to_wire(big_endian: bytes, order: str) -> bytes:
    """Arrange the value's big-endian bytes in wire order: wire[j] = value byte ``order[j]``."""
    return bytes(big_endian[ord(letter) - 65] for letter in order)


def _permute_from_wire(wire: bytes, order: str) -> bytes:
    """Inverse of :func:`_permute_to_wire`."""
    out = bytearray(len(wire))
    for j, letter in enumerate(order):
        out[ord(letter) - 65] = wire[j]
    return bytes(out)


def _swap_pairs(data: bytes) -> bytes:
    """Swap the two bytes of every register."""
    out = bytearray(data)
    out[0::2], out[1::2] = data[1::2], data[0::2]
    return bytes(out)


def decode(
    words: Sequence[int],
    dtype: DataType,
    order: str | None = None,
    *,
    bit: int | None = None,
    byte_swap: bool = False,
) -> bool | int | float | str:
    """Decode register words (as read, register 0 first) to a value of ``dtype``.

    ``order`` defaults to the type's big-endian order (``AB``/``ABCD``/``ABCDEFGH``) and must
    be None for ``bool``/``bit``/``string``. ``bit`` (0..15) is required for ``bit`` and
    refused otherwise. For ``bool`` pass the single bit as ``[0]``/``[1]`` (or a bool).
    Strings: as many registers as given, trailing NULs and spaces stripped (also anything after
    the first NUL, as C strings are terminated there). Raises :class:`CodecError`.
    """
    dtype = _dtype(dtype)
    if byte_swap and dtype is not DataType.STRING:
        raise CodecError(f"byte_swap applies to strings only; for {dtype.value} use a byte order")
    if bit is not None and dtype is not DataType.BIT:
        raise CodecError(f"bit= applies to type bit only, not {dtype.value}")

    if dtype is DataType.BOOL:
        _check_order_absent(dtype, order)
        if isinstance(words, (str, bytes, bytearray)) or not isinstance(words, Sequence) or len(words) != 1:
            raise CodecError(f"bool: expected exactly 1 bit, got {words!r}")
        (value,) = words
        if not isinstance(value, int) or value not in (0, 1):
            raise CodecError(f"bool: value {value!r} is not 0/1 or False/True")
        return bool(value)
    if dtype is DataType.BIT:
        _check_order_absent(dtype, order)
        (word,) = _check_words(words, 1, "bit")
        return bool((word >> _check_bit(bit)) & 1)
    if dtype is DataType.STRING:
        _check_order_absent(dtype, order)
        if len(words) < 1:
            raise CodecError("string: expected at least 1 register word, got 0")
        raw = _words_to_wire(_check_words(words, len(words), "string"))
        if byte_swap:
            raw = _swap_pairs(raw)
        raw = raw.split(b"\x00", 1)[0].rstrip(b" ")
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise CodecError(f"string: byte 0x{raw[exc.start]:02X} is not ASCII") from None

    _, count = _NUMERIC[dtype]
    return compile_decoder(dtype, order)(_check_words(words, count, dtype.value))


NumericDecoder = Callable[[Sequence[int]], int | float]


@functools.lru_cache(maxsize=64)
def compile_decoder(dtype: DataType, order: str | None = None) -> NumericDecoder:
    """A fast decoder for one numeric type and order, for the poller's hot path.

    The four orders of each width are a choice of word order (as read, or reversed) and byte
    order within a word (big or little), so a value is two ``struct`` calls away: pack the
    words in that order, unpack the value big-endian. The decoder checks word count and range
    through ``struct`` (``CodecError`` on failure) and refuses NaN/Inf like :func:`decode`.
    """
    dtype = _dtype(dtype)
    if dtype not in _NUMERIC:
        raise CodecError(f"compile_decoder: {dtype.value} is not a fixed-size numeric type")
    fmt, count = _NUMERIC[dtype]
    canonical = _resolve_order(dtype, order)
    reverse, little = _word_layout(dtype, canonical)
    pack_words = struct.Struct(("<" if little else ">") + "H" * count).pack
    unpack_value = struct.Struct(fmt).unpack
    is_float = dtype in _FLOATS
    # Checked once here against the reference permutation, so the fast path cannot drift.
    probe = list(range(0x0102, 0x0102 + 0x0202 * count, 0x0202))
    expected = _permute_from_wire(_words_to_wire(probe), canonical)
    got = pack_words(*(probe[::-1] if reverse else probe))
    if got != expected:  # pragma: no cover - a programming error, caught by the golden tests
        raise AssertionError(f"fast decoder for {dtype.value} {canonical} disagrees with the reference")

    def decoder(words: Sequence[int]) -> int | float:
        if len(words) != count:
            raise CodecError(f"{dtype.value}: expected {count} register word(s), got {len(words)}")
        try:
            (value,) = unpack_value(pack_words(*(words[::-1] if reverse else words)))
        except struct.error:
            raise CodecError(f"{dtype.value}: a word is not in 0..65535: {list(words)!r}") from None
        if is_float and not math.isfinite(value):
            raise CodecError(f"not finite: {value!r}")
        return value  # type: ignore[no-any-return]

    return decoder


def _word_layout(dtype: DataType, order: str | None) -> tuple[bool, bool]:
    """How :func:`compile_decoder` reads one value: (words reversed, bytes little-endian)."""
    count = _NUMERIC[dtype][1]
    canonical = _resolve_order(dtype, order)
    letters = "ABCDEFGH"[: 2 * count]
    reverse = canonical[:2] != letters[:2] and canonical[:2] != letters[1::-1]
    return reverse, canonical[0] > canonical[1]


class BlockField(NamedTuple):
    """One numeric value inside a block of registers: its first register, type and order."""

    offset: int
    dtype: DataType
    order: str | None = None


BlockDecoder = Callable[[Sequence[int]], tuple[int | float, ...]]


def compile_block(fields: Sequence[BlockField], count: int) -> BlockDecoder:
    """A decoder of a whole block of ``count`` registers (one read's reply) into the raw values
    of ``fields``, in the order given: the poller's columnar path.

    Each value is what :func:`compile_decoder` returns for its words, except that NaN and ±Inf
    are returned as they are (the caller checks finiteness in bulk; :func:`compile_decoder`
    refuses them). Fields may overlap and come in any order; each must lie inside the block.

    The block is packed into bytes once per word order (registers as sent, and each register
    byte-swapped) and every field of one layout is unpacked by one precompiled ``struct``
    format: a four-byte-order value is a choice of word order and byte order (see
    :func:`compile_decoder`), and reversing the words of a value is reading the other packing
    little-endian. Raises :class:`CodecError` for a wrong number of words or a word outside
    0..65535 (at decode), and for a field that is not numeric or does not fit (here).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CodecError(f"compile_block: count must be >= 1, got {count!r}")
    # (packing little-endian?, value little-endian?) -> fields (index, byte offset, struct char)
    groups: dict[tuple[bool, bool], list[tuple[int, int, str, int]]] = {}
    for index, (offset, dtype, order) in enumerate(fields):
        dtype = _dtype(dtype)
        if dtype not in _NUMERIC:
            raise CodecError(f"compile_block: {dtype.value} is not a fixed-size numeric type")
        fmt, words = _NUMERIC[dtype]
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + words > count:
            raise CodecError(
                f"compile_block: {dtype.value} at offset {offset!r} does not fit {count} registers"
            )
        reverse, little = _word_layout(dtype, order)
        groups.setdefault((little != reverse, reverse), []).append((index, 2 * offset, fmt[1], 2 * words))
    # Each group is cut into layers of fields that do not overlap, one struct format per layer.
    layers: list[tuple[bool, struct.Struct]] = []
    position: list[int] = [0] * len(fields)  # where each field's value lands in the concatenation
    produced = 0
    for (swapped, value_little), members in groups.items():
        members.sort(key=lambda m: (m[1], m[0]))
        while members:
            parts, end, rest, taken = ["<" if value_little else ">"], 0, [], 0
            for member in members:
                index, start, char, size = member
                if start < end:
                    rest.append(member)
                    continue
                if start > end:
                    parts.append(f"{start - end}x")
                parts.append(char)
                end = start + size
                position[index] = produced + taken
                taken += 1
            layers.append((swapped, struct.Struct("".join(parts))))
            produced += taken
            members = rest
    pack_be = struct.Struct(f">{count}H").pack
    pack_le = struct.Struct(f"<{count}H").pack
    need_be = any(not swapped for swapped, _ in layers)
    need_le = any(swapped for swapped, _ in layers)
    unpackers = [(swapped, layout.unpack_from) for swapped, layout in layers]
    in_order = position == list(range(len(fields)))
    reorder = operator.itemgetter(*position) if len(position) > 1 else None
    single = position[0] if len(position) == 1 else 0

    def decode_block(words: Sequence[int]) -> tuple[int | float, ...]:
        if len(words) != count:
            raise CodecError(f"block: expected {count} register word(s), got {len(words)}")
        try:
            be = pack_be(*words) if need_be else b""
            le = pack_le(*words) if need_le else b""
        except struct.error:
            raise CodecError(f"block: a word is not in 0..65535: {list(words)!r}") from None
        if len(unpackers) == 1:
            swapped, unpack = unpackers[0]
            values: tuple[int | float, ...] = unpack(le if swapped else be)
        else:
            values = ()
            for swapped, unpack in unpackers:
                values += unpack(le if swapped else be)
        if in_order:
            return values
        if reorder is None:
            return (values[single],)
        return reorder(values)  # type: ignore[no-any-return]

    return decode_block


def encode(
    value: bool | int | float | str,
    dtype: DataType,
    order: str | None = None,
    *,
    length: int = 0,
    byte_swap: bool = False,
) -> list[int]:
    """Encode ``value`` as register words for ``dtype`` (register 0 first).

    ``order`` as for :func:`decode`. ``length`` (registers) is required for strings; for the
    other types it must be 0 or the type's own register count. Integer types take ints (and
    integral floats); floats take ints and floats. ``bit`` cannot be encoded on its own (the
    other 15 bits are unknown): read the register and use :func:`set_bit`. Raises
    :class:`CodecError` with the type and its range.
    """
    dtype = _dtype(dtype)
    if byte_swap and dtype is not DataType.STRING:
        raise CodecError(f"byte_swap applies to strings only; for {dtype.value} use a byte order")
    if dtype is not DataType.STRING and length not in (0, register_count(dtype)):
        raise CodecError(f"length={length!r} does not apply to {dtype.value}")

    if dtype is DataType.BOOL:
        _check_order_absent(dtype, order)
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return [int(value)]
        raise CodecError(f"bool: value {value!r} is not True/False (or 0/1)")
    if dtype is DataType.BIT:
        raise CodecError("bit values are written read-modify-write: read the register, use set_bit()")
    if dtype is DataType.STRING:
        _check_order_absent(dtype, order)
        return _encode_string(value, register_count(dtype, length), byte_swap)

    fmt, _count = _NUMERIC[dtype]
    canonical = _resolve_order(dtype, order)
    number = _as_float(value, dtype) if dtype in _FLOATS else _as_int(value, dtype)
    try:
        packed = struct.pack(fmt, number)
    except (OverflowError, struct.error):
        raise CodecError(f"{dtype.value}: value {value!r} out of range for {dtype.value}") from None
    return _wire_to_words(_permute_to_wire(packed, canonical))


def _as_int(value: object, dtype: DataType) -> int:
    """Exact integer for an integer type, range-checked."""
    low, high = _INT_RANGES[dtype]
    not_integer = f"{dtype.value}: value {value!r} is not an integer in {low}..{high}"
    number: int
    if isinstance(value, (bool, str)):
        raise CodecError(not_integer)
    # int and integer-like (e.g. numpy) types; what isinstance(value, typing.SupportsIndex) asks,
    # without the protocol check's cost (tens of us per call: this is on every write)
    if isinstance(value, int) or hasattr(value, "__index__"):
        number = operator.index(value)
    elif isinstance(value, numbers.Real):  # an integral float is exact; 1.5 is refused
        as_float = float(value)
        if not math.isfinite(as_float):
            raise CodecError(f"not finite: {as_float!r}")
        if not as_float.is_integer():
            raise CodecError(not_integer)
        number = int(as_float)
    else:
        raise CodecError(not_integer)
    if not low <= number <= high:
        raise CodecError(f"{dtype.value}: value {number} out of range {low}..{high}")
    return number


def _as_float(value: object, dtype: DataType) -> float:
    """Finite float for a float type."""
    if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
        raise CodecError(f"{dtype.value}: value {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise CodecError(f"{dtype.value}: value {value!r} out of range for {dtype.value}") from None
    if not math.isfinite(number):
        raise CodecError(f"not finite: {number!r}")
    return number


def _encode_string(value: object, count: int, byte_swap: bool) -> list[int]:
    """ASCII string into ``count`` registers, NUL-padded."""
    if not isinstance(value, str):
        raise CodecError(f"string: value {value!r} is not a str")
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise CodecError(f"string: character {value[exc.start]!r} is not ASCII") from None
    if b"\x00" in raw:
        raise CodecError("string: value contains NUL, which ends a string on the device")
    if len(raw) > 2 * count:
        raise CodecError(f"string: {len(raw)} characters do not fit {count} registers (max {2 * count})")
    raw = raw.ljust(2 * count, b"\x00")
    if byte_swap:
        raw = _swap_pairs(raw)
    return _wire_to_words(raw)


def _check_bit(bit: int | None) -> int:
    """Validate a bit index 0..15."""
    if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 15:
        raise CodecError(f"bit must be 0..15 (0 = least significant), got {bit!r}")
    return bit


def set_bit(word: int, bit: int, value: bool) -> int:
    """Return ``word`` with ``bit`` (0 = least significant) set to ``value``.

    The read-modify-write helper for ``bit`` tags: the caller reads the register, calls this,
    and writes the result back (the device may change other bits in between; Modbus function
    22, mask write, avoids that race where the device supports it).
    """
    (word,) = _check_words([word], 1, "set_bit")
    mask = 1 << _check_bit(bit)
    return (word | mask) if value else (word & ~mask & 0xFFFF)
