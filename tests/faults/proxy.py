"""A TCP fault-injection proxy for tests: client ⇄ proxy ⇄ a real server, all on 127.0.0.1.

``async with FaultProxy(server_port) as proxy:`` then connect the client to ``proxy.port``.
Each direction (``up``: client → server, ``down``: server → client) has its own
:class:`Fault`, set at any time with :meth:`FaultProxy.set` and applied to every frame that
follows, on every connection, current and new:

* ``delay_s``: hold each frame this long before forwarding it (in order);
* ``drop``: read the frame and discard it (the connection stays up);
* ``cut``: close the connection (both sockets) instead of forwarding the frame;
* ``half_open``: stop reading and forwarding in that direction, keep the sockets open (the
  peer sees silence, never a close); clearing it resumes, and what waited in the socket then
  comes late (as TCP retransmits over a link that is back);
* ``truncate``: forward only the first ``n`` bytes of the frame;
* ``corrupt``: XOR the bytes at the given offsets of the frame with the given masks;
* ``frames``: apply to the next ``n`` frames only, then forward unchanged.

:meth:`FaultProxy.freeze` turns the connections open now into dead ones for good (a pulled
cable, a hung gateway): nothing moves on them again, nothing closes them, while new
connections work. :meth:`FaultProxy.cut` closes the connections open now (``reset``: with an
RST). :attr:`FaultProxy.target` may be changed at any time: new connections go there (the
device behind the address changes, say from a web server to a Modbus server).

Frames are Modbus TCP (MBAP) frames: a 7-byte header whose length field says how many bytes
follow; a header whose length is impossible is forwarded as it came, and the connection then
forwards raw chunks (``framing="raw"`` does so from the start, for other protocols).

Bounded and self-stopping: it listens on 127.0.0.1 only and forwards only to a loopback
address, accepts at most ``max_connections`` at a time (more are closed at once), reads at
most one frame ahead per direction, and closes everything after ``lifetime_s`` even if the
test forgets to. Every task it starts is its own and ends when it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Literal, Self

__all__ = ["Fault", "FaultProxy"]

Direction = Literal["up", "down"]
_MBAP_HEADER = 7
_MAX_MBAP_LENGTH = 254  # unit id + the largest PDU (253 bytes)
_RAW_CHUNK = 4096


@dataclass(frozen=True)
class Fault:
    """What happens to the frames going one way (the default forwards them unchanged)."""

    delay_s: float = 0.0
    drop: bool = False
    cut: bool = False
    half_open: bool = False
    truncate: int | None = None
    corrupt: Mapping[int, int] = field(default_factory=dict)  # offset → XOR mask
    frames: int | None = None  # the next n frames only (None: until set again)

    @property
    def changes_frames(self) -> bool:
        return bool(self.delay_s or self.drop or self.cut or self.truncate is not None or self.corrupt)

    def apply(self, frame: bytes) -> bytes:
        """The bytes forwarded for ``frame`` (truncate, then corrupt)."""
        out = bytearray(frame if self.truncate is None else frame[: self.truncate])
        for offset, mask in self.corrupt.items():
            if 0 <= offset < len(out):
                out[offset] ^= mask & 0xFF
        return bytes(out)


PASS = Fault()


@dataclass
class _Connection:
    number: int
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    frozen: bool = False
    raw: dict[str, bool] = field(default_factory=lambda: {"up": False, "down": False})
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self, *, reset: bool = False) -> None:
        """Close both sockets and end the pumps (one parked by a fault would never see it)."""
        current = asyncio.current_task()
        for pump in self.pumps:
            if pump is not current:
                pump.cancel()
        for writer in (self.client, self.server):
            if writer is None or writer.is_closing():
                continue
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # RST instead of FIN, as a crashed peer or a reset middlebox sends
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
            writer.close()


class FaultProxy:
    """A loopback TCP proxy with programmable faults per direction (see the module docstring)."""

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        framing: Literal["mbap", "raw"] = "mbap",
        max_connections: int = 16,
        lifetime_s: float = 60.0,
    ) -> None:
        if not ipaddress.ip_address(target_host).is_loopback:
            raise ValueError(f"the fault proxy forwards to loopback only, not {target_host}")
        self.target = (target_host, target_port)
        self.framing = framing
        self.max_connections = max_connections
        self.lifetime_s = lifetime_s
        self.port = 0
        self.accepted = 0  # connections accepted since start
        self.refused = 0  # connections closed at once (over max_connections, or no server)
        self.frames: dict[str, int] = {"up": 0, "down": 0}
        self.faulted: dict[str, int] = {"up": 0, "down": 0}
        self._faults: dict[str, Fault] = {"up": PASS, "down": PASS}
        self._flowing: dict[str, asyncio.Event] = {"up": asyncio.Event(), "down": asyncio.Event()}
        for event in self._flowing.values():
            event.set()
        self._server: asyncio.Server | None = None
        self._connections: dict[int, _Connection] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self.expired = False

    # ------------------------------------------------------------------ control

    def set(self, *, up: Fault | None = None, down: Fault | None = None) -> None:
        """Set the fault of one or both directions (``None``: leave it as it is)."""
        for direction, fault in (("up", up), ("down", down)):
            if fault is None:
                continue
            self._faults[direction] = fault
            if fault.half_open:
                self._flowing[direction].clear()
            else:
                self._flowing[direction].set()

    def clear(self) -> None:
        """Forward everything unchanged again (frozen connections stay dead)."""
        self.set(up=PASS, down=PASS)

    def freeze(self) -> int:
        """Make the connections open now silent for good, sockets kept open; returns how many."""
        for conn in self._connections.values():
            conn.frozen = True
        return len(self._connections)

    def cut(self, *, reset: bool = False) -> int:
        """Close the connections open now (``reset``: with RST); returns how many."""
        conns = list(self._connections.values())
        for conn in conns:
            conn.close(reset=reset)
        return len(conns)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._expiry = asyncio.get_running_loop().call_later(self.lifetime_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._server is not None:
            self._server.close()
        self.cut()

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cut()
        # Closing a connection ends its handler; cancelling a handler task instead would make
        # asyncio.streams log a CancelledError traceback (Python 3.11).
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=5.0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ forwarding

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        conn = _Connection(self.accepted, client_writer)
        try:
            if len(self._connections) >= self.max_connections or self.expired:
                self.refused += 1
                return
            try:
                server_reader, conn.server = await asyncio.open_connection(*self.target)
            except OSError:
                self.refused += 1  # no server behind us: the client sees its connection closed
                return
            self._connections[conn.number] = conn
            async with asyncio.TaskGroup() as tg:
                conn.pumps.append(tg.create_task(self._pump(conn, "up", client_reader, conn.server)))
                conn.pumps.append(tg.create_task(self._pump(conn, "down", server_reader, client_writer)))
        finally:
            self._connections.pop(conn.number, None)
            conn.close()
            for writer in (conn.client, conn.server):
                if writer is not None:
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            self._handlers.discard(task)

    async def _read_frame(
        self, conn: _Connection, direction: Direction, reader: asyncio.StreamReader
    ) -> bytes:
        if self.framing == "raw" or conn.raw[direction]:
            return await reader.read(_RAW_CHUNK)
        try:
            header = await reader.readexactly(_MBAP_HEADER)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        length = int.from_bytes(header[4:6], "big")
        if not 1 <= length <= _MAX_MBAP_LENGTH:
            conn.raw[direction] = True  # not MBAP: forward as it comes from now on
            return header
        try:
            return header + await reader.readexactly(length - 1)
        except asyncio.IncompleteReadError as exc:
            return header + exc.partial

    def _take(self, direction: Direction) -> Fault:
        """The fault for the frame now going ``direction``, counting down ``frames``."""
        fault = self._faults[direction]
        if fault.frames is None:
            return fault
        if fault.frames <= 0:
            self._faults[direction] = PASS
            return PASS
        self._faults[direction] = replace(fault, frames=fault.frames - 1) if fault.frames > 1 else PASS
        return fault

    async def _pump(
        self,
        conn: _Connection,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while True:
                await self._flowing[direction].wait()
                if conn.frozen:
                    await asyncio.Event().wait()  # dead for good; close() cancels us
                frame = await self._read_frame(conn, direction, reader)
                if not frame:
                    break
                self.frames[direction] += 1
                if conn.frozen or not self._flowing[direction].is_set():
                    continue  # the fault came while we waited for this frame: it is lost
                fault = self._take(direction)
                if fault.changes_frames:
                    self.faulted[direction] += 1
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if fault.cut:
                    break
                if fault.drop:
                    continue
                writer.write(fault.apply(frame))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # one side ended (EOF, cut, reset): close both, as a proxy process would
            conn.close()
