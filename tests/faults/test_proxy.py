"""The fault proxy itself: each fault does what it says, and the proxy stays within bounds."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import Fault, FaultProxy

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """An echo server on 127.0.0.1: the port."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):  # the proxy may reset us
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in writers:
        w.close()
    server.close()
    await server.wait_closed()


def mbap(tid: int, payload: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(payload) + 1, 1) + payload


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):  # reset by the proxy
        await writer.wait_closed()


async def nothing_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await reader.read(1)
    except TimeoutError:
        return True
    return False


async def test_frames_pass_unchanged_and_are_counted(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await connect(proxy.port)
        frame = mbap(1, b"\x03\x00\x00\x00\x02")
        writer.write(frame[:5])  # a frame split on the wire is still one frame
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(frame[5:])
        assert await reader.readexactly(len(frame)) == frame
        await close(writer)
    assert proxy.frames == {"up": 1, "down": 1} and proxy.faulted == {"up": 0, "down": 0}


async def test_delay_truncate_corrupt_and_drop_apply_to_the_next_frames_only(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await connect(proxy.port)
        frame = mbap(7, b"\x03\x04\x00\x01\x00\x02")

        async def round_trip(n: int) -> bytes:
            writer.write(frame)
            await writer.drain()
            return await reader.readexactly(n)

        proxy.set(down=Fault(delay_s=0.2, frames=1))
        t0 = time.monotonic()
        assert await round_trip(len(frame)) == frame
        assert time.monotonic() - t0 >= 0.2
        proxy.set(down=Fault(corrupt={2: 0x01, 8: 0xFF, 99: 0xFF}, frames=1))
        got = await round_trip(len(frame))
        assert got[2] == 0x01 and got[8] == frame[8] ^ 0xFF and got[:2] == frame[:2] and got[9:] == frame[9:]
        proxy.set(down=Fault(truncate=9, frames=1))
        assert await round_trip(9) == frame[:9]
        proxy.set(up=Fault(drop=True, frames=2))
        writer.write(frame)
        writer.write(frame)
        assert await nothing_within(reader, 0.2)
        assert await round_trip(len(frame)) == frame  # the third passes
        await close(writer)
    assert proxy.faulted == {"up": 2, "down": 3}


async def test_cut_closes_both_sides(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await connect(proxy.port)
        proxy.set(up=Fault(cut=True, frames=1))
        writer.write(mbap(1, b"\x03\x00\x00\x00\x01"))
        async with asyncio.timeout(1):
            assert await reader.read(100) == b""  # closed, nothing forwarded
        await close(writer)
        await asyncio.sleep(0.05)
        assert proxy.open_connections == 0
        reader, writer = await connect(proxy.port)  # the next connection works
        writer.write(mbap(2, b"\x03\x00\x00\x00\x01"))
        assert len(await reader.readexactly(12)) == 12
        assert proxy.cut(reset=True) == 1
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(1):
                await reader.readexactly(1)
        await close(writer)


async def test_half_open_holds_a_direction_and_freeze_kills_a_connection_for_good(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await connect(proxy.port)
        frame = mbap(3, b"\x03\x00\x00\x00\x01")
        proxy.set(down=Fault(half_open=True))
        writer.write(frame)
        assert await nothing_within(reader, 0.2)  # silence, and no close either
        proxy.clear()
        # what waited in the socket comes late, as TCP retransmits over a link that is back
        async with asyncio.timeout(1):
            assert await reader.readexactly(len(frame)) == frame

        assert proxy.freeze() == 1
        writer.write(frame)
        assert await nothing_within(reader, 0.3)
        assert not reader.at_eof() and proxy.open_connections == 1
        reader2, writer2 = await connect(proxy.port)  # a new connection is not frozen
        writer2.write(frame)
        async with asyncio.timeout(1):
            assert await reader2.readexactly(len(frame)) == frame
        await close(writer)
        await close(writer2)


async def test_bounded_loopback_only_and_stops_by_itself(echo: int) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        FaultProxy(echo, "10.1.2.3")
    async with FaultProxy(echo, max_connections=2, lifetime_s=0.5) as proxy:
        conns = [await connect(proxy.port) for _ in range(3)]
        async with asyncio.timeout(1):
            assert await conns[2][0].read(10) == b""  # over the limit: closed at once
        assert proxy.refused == 1
        async with asyncio.timeout(2):
            for reader, _ in conns[:2]:
                assert await reader.read(10) == b""  # the lifetime ended: all closed
        assert proxy.expired
        with pytest.raises(OSError):
            await connect(proxy.port)  # and no longer listening
        for _, writer in conns:
            await close(writer)


async def test_a_frame_with_an_impossible_length_is_forwarded_raw(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await connect(proxy.port)
        text = b"GET / HTTP/1.0\r\n\r\n"
        writer.write(text)
        async with asyncio.timeout(1):
            assert await reader.readexactly(len(text)) == text
        await close(writer)
