"""Our codec and mbpoll decode the same registers of a real pymodbus TCP server alike.

The server (in-process, 127.0.0.1) holds our encodings of int32, uint32 and float32 values
in all four 32-bit orders and of int16/uint16 values in both 16-bit orders. A pymodbus
client reads the words back; mbpoll reads the same registers and prints its decoding. mbpoll
knows two 32-bit orders, ``-B`` (our ABCD) and its default, low word first (our CDAB), and
decodes *every* register pair both ways, so each pair checks two of our orders whichever
order wrote it. mbpoll prints 32-bit integers signed (``%d``), floats with ``%g`` and 16-bit
registers as ``unsigned (signed)``.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import shutil
import struct
import time
from typing import Any, cast

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from agent.drivers.modbus_codec import ORDERS_16, ORDERS_32, DataType, decode, encode
from agent.errors import CodecError

MBPOLL = shutil.which("mbpoll") or "/usr/bin/mbpoll"
UNIT = 1
MAX_READ = 120  # registers per request; Modbus allows 125

_rng = random.Random(20240611)
INT32_VALUES = [0, 1, -1, 255, 123456789, -123456789, 2**31 - 1, -(2**31), 0x00FF00FF] + [
    _rng.randint(-(2**31), 2**31 - 1) for _ in range(4)
]
UINT32_VALUES = [0, 1, 2**32 - 1, 123456789, 0x80000000, 0xAABBCCDD]
UINT32_VALUES += [_rng.randint(0, 2**32 - 1) for _ in range(4)]
FLOAT32_VALUES = [
    struct.unpack(">f", struct.pack(">f", f))[0]  # the float32 each one is stored as
    for f in [0.0, -0.0, 1.0, -2.5, 25.0, 123456.0, math.pi, 0.1, 1e-3, -1e10, 3.4028234663852886e38]
] + [struct.unpack(">f", struct.pack(">I", _rng.getrandbits(32) & 0xFF7FFFFF))[0] for _ in range(4)]
INT16_VALUES = [0, 1, -1, 255, 1883, -13035, 32767, -32768, _rng.randint(-32768, 32767)]
UINT16_VALUES = [0, 1, 255, 0x075B, 0xABCD, 0xCD15, 65535, _rng.randint(0, 65535)]
# Raw float32 words no encode() produces: our decode refuses them, mbpoll prints nan/inf.
NOT_FINITE = [[0x7FC0, 0x0000], [0xFFC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000]]


async def _start_server(words: list[int]) -> tuple[ModbusTcpServer, int]:
    """Serve ``words`` from holding/input register 0 (shared block) on a free 127.0.0.1 port.

    The free-port helper: bind port 0 and ask the listening socket which port the OS chose,
    so no other process can take the port between choosing and binding it.
    """
    device = SimDevice(id=UNIT, simdata=[SimData(address=0, values=words, datatype=SimType.REGISTERS)])
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    listener = cast(asyncio.Server, server.transport)  # pymodbus keeps the asyncio.Server here
    port: int = listener.sockets[0].getsockname()[1]
    return server, port


async def _mbpoll(
    port: int, table: str, address: int, count: int, big_endian: bool = False
) -> dict[int, str]:
    """Read ``count`` values with mbpoll; return {0-based address: printed text}.

    mbpoll sends one request per run and does not split it: 32-bit types take two registers a
    value, and more than 125 registers fail ("Too many data"). So read in chunks.
    """
    step = 2 if ":int" in table or ":float" in table else 1
    per_run = MAX_READ // step
    values: dict[int, str] = {}
    for first in range(0, count, per_run):
        n = min(per_run, count - first)
        values.update(await _mbpoll_once(port, table, address + first * step, n, big_endian))
    return values


async def _mbpoll_once(port: int, table: str, address: int, count: int, big_endian: bool) -> dict[int, str]:
    """Run mbpoll once (``-r`` is 1-based); return {0-based address: printed text}."""
    proc = await asyncio.create_subprocess_exec(
        MBPOLL, "-m", "tcp", "-p", str(port), "-a", str(UNIT), "-r", str(address + 1), "-c", str(count),
        "-t", table, *(["-B"] if big_endian else []), "-1", "-o", "2", "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, f"mbpoll -t {table} failed: {err.decode()}"
    _, _, body = out.decode().partition("-- Polling slave")
    values = {int(m[1]) - 1: m[2] for m in re.finditer(r"^\[(\d+)\]:\s+(.*?)\s*$", body, re.M)}
    step = 2 if ":int" in table or ":float" in table else 1
    assert sorted(values) == list(range(address, address + count * step, step)), out.decode()
    return values


def _layout() -> tuple[list[int], dict[str, list[tuple[int, DataType, str | None, Any]]]]:
    """All words, and per region the (address, type, order written, value) of each item."""
    words: list[int] = []
    regions: dict[str, list[tuple[int, DataType, str | None, Any]]] = {}

    def put(region: str, dtype: DataType, order: str | None, value: Any, ws: list[int]) -> None:
        regions.setdefault(region, []).append((len(words), dtype, order, value))
        words.extend(ws)

    for dtype, values in [(DataType.INT32, INT32_VALUES), (DataType.UINT32, UINT32_VALUES)]:
        for order in ORDERS_32:
            for v in values:
                put(dtype.value, dtype, order, v, encode(v, dtype, order))
    for order in ORDERS_32:
        for f in FLOAT32_VALUES:
            put("float32", DataType.FLOAT32, order, f, encode(f, DataType.FLOAT32, order))
    for raw in NOT_FINITE:
        put("float32", DataType.FLOAT32, None, None, raw)
    for dtype, values16 in [(DataType.INT16, INT16_VALUES), (DataType.UINT16, UINT16_VALUES)]:
        for order in ORDERS_16:
            for v in values16:
                put("16", dtype, order, v, encode(v, dtype, order))
    return words, regions


def _span(items: list[tuple[int, DataType, str | None, Any]], width: int) -> tuple[int, int]:
    start = items[0][0]
    return start, items[-1][0] + width - start


def _float_agrees(words: list[int], order: str, text: str) -> bool:
    try:
        value = decode(words, DataType.FLOAT32, order)
    except CodecError as exc:
        raw = struct.unpack(">f", struct.pack(">HH", *(words if order == "ABCD" else words[::-1])))[0]
        sign = "-" if math.copysign(1.0, raw) < 0 else ""
        return str(exc).startswith("not finite") and text == sign + ("nan" if math.isnan(raw) else "inf")
    return f"{value:g}" == text


async def test_mbpoll_agrees_with_codec() -> None:
    assert shutil.which(MBPOLL), "mbpoll is required (apt-get install mbpoll)"
    words, regions = _layout()
    server, port = await _start_server(words)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0)
    try:
        assert await client.connect()
        read: list[int] = []
        for address in range(0, len(words), MAX_READ):
            reply = await client.read_holding_registers(
                address, count=min(MAX_READ, len(words) - address), device_id=UNIT
            )
            assert not reply.isError(), reply
            read.extend(reply.registers)
        assert read == words  # what the server holds is what we encoded

        checked = 0
        for region in ("int32", "uint32", "float32"):
            items = regions[region]
            start, count = _span(items, 2)
            table = "4:float" if region == "float32" else "4:int"
            as_abcd = await _mbpoll(port, table, start, count // 2, big_endian=True)
            as_cdab = await _mbpoll(port, table, start, count // 2)
            for address, dtype, order, value in items:
                pair = read[address : address + 2]
                if order is not None:
                    assert decode(pair, dtype, order) == value
                for mb_order, printed in (("ABCD", as_abcd[address]), ("CDAB", as_cdab[address])):
                    checked += 1
                    if dtype is DataType.FLOAT32:
                        assert _float_agrees(pair, mb_order, printed), (pair, mb_order, printed)
                        continue
                    ours = decode(pair, dtype, mb_order)
                    assert isinstance(ours, int)
                    assert int(printed) == decode(pair, DataType.INT32, mb_order), (pair, mb_order, printed)
                    assert int(printed) % 2**32 == ours % 2**32
                    if mb_order == order:  # mbpoll reads back exactly what we wrote
                        assert int(printed) % 2**32 == value % 2**32
        assert checked == 2 * sum(len(regions[r]) for r in ("int32", "uint32", "float32"))

        items = regions["16"]
        start, count = _span(items, 1)
        printed_by_table = {t: await _mbpoll(port, t, start, count) for t in ("3", "4", "4:hex")}
        for address, dtype, order, value in items:
            word = read[address]
            assert decode([word], dtype, order) == value
            unsigned, signed = decode([word], DataType.UINT16), decode([word], DataType.INT16)
            expected = f"{unsigned}" if unsigned == signed else f"{unsigned} ({signed})"
            assert printed_by_table["3"][address] == expected  # input registers (FC4)
            assert printed_by_table["4"][address] == expected  # holding registers (FC3)
            assert printed_by_table["4:hex"][address] == f"0x{word:04X}"
    finally:
        client.close()
        await server.shutdown()  # type: ignore[no-untyped-call]


async def test_our_driver_agrees_with_mbpoll_on_every_type_and_order() -> None:
    """The same registers read by our ModbusDriver (as configured tags) and by mbpoll."""
    from agent.config import ModbusTcpDevice
    from agent.drivers.modbus import ModbusDriver

    words, regions = _layout()
    server, port = await _start_server(words)
    try:
        tags: list[dict[str, Any]] = []
        expect: dict[str, tuple[str, str]] = {}  # tag → (region, mbpoll text)
        printed: dict[tuple[str, str], dict[int, str]] = {}
        for region in ("int32", "float32"):
            items = regions[region]
            start, count = _span(items, 2)
            table = "4:float" if region == "float32" else "4:int"
            printed[(region, "ABCD")] = await _mbpoll(port, table, start, count // 2, big_endian=True)
            printed[(region, "CDAB")] = await _mbpoll(port, table, start, count // 2)
            for address, _dtype, _order, _value in items:
                for mb_order in ("ABCD", "CDAB"):
                    name = f"{region}_{address}_{mb_order}"
                    tags.append(
                        {"name": name, "table": "holding", "address": address, "type": region, "word_order": mb_order}
                    )
                    expect[name] = (region, printed[(region, mb_order)][address])
        items16 = regions["16"]
        start, count = _span(items16, 1)
        printed16 = await _mbpoll(port, "4", start, count)
        for address, _dtype, _order, _value in items16:
            for dtype in ("uint16", "int16"):
                name = f"{dtype}_{address}"
                tags.append({"name": name, "table": "holding", "address": address, "type": dtype})
                expect[name] = (dtype, printed16[address])
        dev = ModbusTcpDevice.model_validate(
            {"name": "mb", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "units": [UNIT], "tags": tags}
        )
        async with ModbusDriver(dev) as drv:
            samples = {s.tag: s for s in await drv.poll(time.monotonic() + 5)}
        assert set(samples) == set(expect)
        for name, (region, text) in expect.items():
            s = samples[name]
            if region == "float32":
                if text.lstrip("-") in ("nan", "inf"):
                    assert not s.quality.is_good and "not finite" in s.quality.reason, (name, text)
                else:
                    assert s.quality.is_good and f"{s.value:g}" == text, (name, s.value, text)
            elif region == "int32":
                assert s.quality.is_good and s.value == int(text), (name, s.value, text)
            else:  # mbpoll prints "unsigned (signed)" when the high bit is set
                unsigned, _, signed = text.partition(" (")
                want = int(signed.rstrip(")")) if (region == "int16" and signed) else int(unsigned)
                assert s.value == want, (name, s.value, text)
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
