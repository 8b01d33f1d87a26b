"""The poller's columnar decoding equals the per-tag codec for any reply.

``compile_block`` (a whole read's registers into raw values in a few ``struct`` calls) against
``compile_decoder`` per value, and the driver's request decoder (``_Columns``: scale, offset,
finiteness and range over whole columns, samples built in bulk) against ``decode_tag`` per tag,
for any registers, types, orders, overlaps, scales, offsets and ranges.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ModbusTag
from agent.drivers import modbus_codec as codec
from agent.drivers.modbus import _Columns, _Table, decode_tag
from agent.drivers.modbus_codec import BlockField, DataType
from agent.drivers.modbus_plan import ReadRequest, RequestPlanner, Span
from agent.errors import CodecError
from agent.types import Quality

NUMERIC = [
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
    DataType.FLOAT32,
    DataType.FLOAT64,
]
# Words that make NaN, ±Inf, -0.0, extremes in some order, besides any word.
SPECIAL = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7FF0, 0xFFF0, 0x7FFF, 0xFFFF, 0x0001]
word = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(SPECIAL))


def same(a: object, b: object) -> bool:
    """Equal values of the same type; NaN equals NaN, and the sign of zero counts."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@st.composite
def block_fields(draw: st.DrawFn) -> tuple[list[BlockField], int]:
    count = draw(st.integers(1, 40))
    fields = []
    for dtype in draw(st.lists(st.sampled_from(NUMERIC), max_size=10)):
        n = codec.register_count(dtype)
        if n > count:
            continue
        order = draw(st.sampled_from((None, *codec.valid_orders(dtype))))
        fields.append(BlockField(draw(st.integers(0, count - n)), dtype, order))
    return fields, count


@settings(max_examples=400, deadline=None)
@given(block_fields(), st.data())
def test_block_equals_the_per_value_decoder(layout: tuple[list[BlockField], int], data: st.DataObject) -> None:
    fields, count = layout
    words = data.draw(st.lists(word, min_size=count, max_size=count))
    got = codec.compile_block(fields, count)(words)
    assert len(got) == len(fields)
    for f, value in zip(fields, got, strict=True):
        n = codec.register_count(f.dtype)
        try:
            expected = codec.compile_decoder(f.dtype, f.order)(words[f.offset : f.offset + n])
        except CodecError as exc:  # NaN/Inf: the block returns them, the caller checks
            assert str(exc).startswith("not finite") and not math.isfinite(value)
            continue
        assert same(value, expected), (f, words, value, expected)


def test_block_refuses_what_the_decoder_refuses() -> None:
    decode = codec.compile_block([BlockField(0, DataType.FLOAT32, "CDAB")], 2)
    with pytest.raises(CodecError, match="expected 2 register"):
        decode([1, 2, 3])
    with pytest.raises(CodecError, match=r"not in 0\.\.65535"):
        decode([1, 70000])
    with pytest.raises(CodecError, match="does not fit"):
        codec.compile_block([BlockField(1, DataType.FLOAT64)], 4)
    with pytest.raises(CodecError, match="not a fixed-size numeric"):
        codec.compile_block([BlockField(0, DataType.STRING)], 4)
    assert codec.compile_block([], 3)([1, 2, 3]) == ()


SCALES = [1.0, 1.0, 0.1, 0.01, -2.5, 1e-300, 1e300, 3.0]
OFFSETS = [0.0, 0.0, 0.0, 5.0, -273.15, 1e308]
BOUNDS = [0.0, 100.0, -1.0, 1.0, 65535.0, 32767.0, -math.inf, math.inf, 2.0**53, 2.0**63, -(2.0**63)]


@st.composite
def register_tags(draw: st.DrawFn) -> tuple[list[ModbusTag], int]:
    count = draw(st.integers(1, 30))
    tags: list[ModbusTag] = []
    for i in range(draw(st.integers(1, 12))):
        dtype = draw(st.sampled_from([*NUMERIC, *NUMERIC, DataType.BIT, DataType.STRING]))
        spec: dict[str, Any] = {"name": f"t{i}", "table": "holding", "type": dtype.value}
        if dtype is DataType.BIT:
            spec["bit"] = draw(st.integers(0, 15))
        elif dtype is DataType.STRING:
            spec["length"] = draw(st.integers(1, 4))
            spec["byte_swap"] = draw(st.booleans())
        else:
            order = draw(st.sampled_from((None, *codec.valid_orders(dtype))))
            if order is not None:
                spec["word_order"] = order
            spec["scale"] = draw(st.sampled_from(SCALES))
            spec["offset"] = draw(st.sampled_from(OFFSETS))
            if draw(st.booleans()):
                bound = st.one_of(st.sampled_from(BOUNDS), st.floats(allow_nan=False))
                lo, hi = sorted((draw(bound), draw(bound)))
                if lo < hi:
                    spec["range"] = (lo, hi)
        n = codec.register_count(dtype, spec.get("length", 0))
        if n > count:
            continue
        spec["address"] = draw(st.integers(0, count - n))
        tags.append(ModbusTag.model_validate(spec))
    return tags, count


def columns_for(tags: list[ModbusTag], count: int) -> tuple[_Columns, ReadRequest]:
    spans = [Span(t.name, t.address, t.register_count) for t in tags]
    table = _Table("holding", RequestPlanner(spans, max_count=125, max_gap=125), {t.name: t for t in tags})
    keys = tuple(s.key for s in sorted(spans, key=lambda s: (s.start, s.key)))
    req = ReadRequest(0, count, keys)
    return table.columns_for(req), req


STAMP = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@settings(max_examples=400, deadline=None)
@given(register_tags(), st.data())
def test_columns_equal_the_per_tag_codec(layout: tuple[list[ModbusTag], int], data: st.DataObject) -> None:
    tags, count = layout
    if not tags:
        return
    words = data.draw(st.lists(word, min_size=count, max_size=count))
    cols, req = columns_for(tags, count)
    samples = cols.decode(words, STAMP, 12.5)
    by_name = {t.name: t for t in tags}
    assert [s.tag for s in samples] == list(req.keys)
    for s in samples:
        tag = by_name[s.tag]
        value, quality = decode_tag(tag, words[tag.address : tag.address + tag.register_count])
        assert same(s.value, value), (tag, words, s.value, value)
        assert s.quality == quality, (tag, words, s.quality, quality)
        assert (s.received_at, s.mono, s.source_time) == (STAMP, 12.5, None)
        assert s.stale(1.0, 13.0) is False  # a real Sample: its methods work


def test_one_bad_tag_gets_its_own_reason_and_the_neighbours_stay_good() -> None:
    tags = [
        ModbusTag.model_validate(t)
        for t in (
            {"name": "level", "table": "input", "address": 0, "type": "float32", "range": [0, 10]},
            {"name": "temp", "table": "input", "address": 2, "type": "int16", "scale": 0.1},
            {"name": "nan", "table": "input", "address": 3, "type": "float32", "word_order": "CDAB"},
            {"name": "big", "table": "input", "address": 5, "type": "uint16", "range": [0, 100]},
        )
    ]
    cols, _ = columns_for(tags, 6)
    good = cols.decode([0x4120, 0x0000, 0xFFF6, 0x0000, 0x3F80, 50], STAMP, 1.0)
    assert [(s.tag, s.value, s.quality.is_good) for s in good] == [
        ("level", 10.0, True),
        ("temp", -1.0, True),
        ("nan", 1.0, True),
        ("big", 50, True),
    ]
    assert isinstance(good[3].value, int)  # an unscaled integer stays an integer
    bad = cols.decode([0x4120, 0x0000, 0xFFF6, 0x0000, 0x7FC0, 500], STAMP, 1.0)
    assert [(s.tag, s.value, s.quality) for s in bad] == [
        ("level", 10.0, Quality.good()),
        ("temp", -1.0, Quality.good()),
        ("nan", None, Quality.bad("not finite: nan")),
        ("big", 500, Quality.bad("out of range: 500 not in [0, 100]")),
    ]


def test_bits_of_a_coil_reply() -> None:
    tags = [
        ModbusTag.model_validate({"name": f"c{i}", "table": "coil", "address": a, "type": "bool"})
        for i, a in enumerate((0, 3, 4))
    ]
    spans = [Span(t.name, t.address, 1) for t in tags]
    table = _Table("coil", RequestPlanner(spans, max_count=2000, max_gap=16), {t.name: t for t in tags})
    req = ReadRequest(0, 5, ("c0", "c1", "c2"))
    samples = table.columns_for(req).decode([True, False, False, True, False], STAMP, 2.0)
    assert [(s.tag, s.value, s.quality.is_good) for s in samples] == [
        ("c0", True, True),
        ("c1", True, True),
        ("c2", False, True),
    ]
