"""The driver's pymodbus client with fewer Python-level hops per request (pymodbus 3.16).

:class:`~agent.drivers.modbus.ModbusDriver` sends one request at a time under its own lock
and its own deadline-clipped timeout, so three things pymodbus does on every request are
pure overhead for it:

* ``TransactionManager.execute`` takes a second lock, arms a second timer
  (``asyncio.wait_for``: a waiter future, a timer handle and a done callback per request in
  Python 3.11) and runs a retry loop for ``retries=0``. :func:`lean_execute` sends the same
  PDU (same transaction ids, same checks of the reply's unit and transaction) and waits on
  the same ``response_future`` the transport completes, bounded by the driver's timeout.
  With nothing between the future and the driver, a cancellation can no longer be lost to
  ``wait_for``'s race (the reply and the cancel in one loop pass): it always propagates.
* ``DecodePDU.decode`` formats every decoded reply (``str(pdu)``: every register as text)
  as the argument of a debug log call, before ``Log.debug`` looks at the level.
  :class:`QuietDecoder` skips that formatting unless pymodbus's logger is enabled for debug
  (then, and for anything but a plain reply, it is pymodbus's own ``decode``).
* A register reply (FC3, FC4) is unpacked one ``struct.unpack`` call per register; the
  quiet decoder unpacks all of a well-formed reply in one (the same registers; any other
  reply, a byte count that is odd or past the end included, goes through pymodbus's code).

A fourth is the driver's, not pymodbus's: the CPU time between a reply and the next request
delays the next reply by as much. ``ctx.while_waiting`` (see :func:`make_lean`) runs the
driver's deferred work right after a request has left, while the device answers it.

Only the driver's own client is changed (an instance, never pymodbus's classes): another
pymodbus client in the same process keeps pymodbus's behaviour. This module imports pymodbus:
it is imported when the first client is made, not with the driver.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections.abc import Callable
from typing import Any

from pymodbus.exceptions import ConnectionException
from pymodbus.logging import Log
from pymodbus.pdu import DecodePDU, ModbusPDU

__all__ = ["QuietDecoder", "lean_execute", "make_lean"]

_DEBUG = logging.DEBUG
_logger = Log._logger  # pymodbus decides on this logger whether to log (and format) at debug
_REGISTER_REPLIES = frozenset({3, 4})


@functools.cache
def _words(count: int) -> Callable[[bytes, int], tuple[int, ...]]:
    """``unpack_from`` of ``count`` big-endian register words."""
    return struct.Struct(f">{count}H").unpack_from


class QuietDecoder(DecodePDU):
    """pymodbus's client-side decoder without the debug string of every reply (see above)."""

    def __init__(self) -> None:
        super().__init__(is_server=False)

    def decode(self, frame: bytes) -> ModbusPDU | None:
        """The reply's PDU, as ``DecodePDU.decode`` gives it."""
        if _logger.isEnabledFor(_DEBUG) or not frame or frame[0] > 0x80:
            return super().decode(frame)  # debug on, exception replies, garbage: pymodbus's
        pdu_class = self.pdu_table.get(frame[0], (None, None))[self.pdu_inx]
        if pdu_class is None:
            return super().decode(frame)  # unknown function: pymodbus logs and refuses it
        pdu = pdu_class()
        if frame[0] in _REGISTER_REPLIES and len(frame) > 1:
            size = frame[1]  # pymodbus reads the registers of an even byte count inside the frame
            if not size % 2 and size + 2 <= len(frame):
                pdu.registers = list(_words(size // 2)(frame, 2))
                return pdu
        try:
            pdu.decode(frame[1:])
        except Exception:  # pymodbus's own path logs it and returns None
            return super().decode(frame)
        if pdu.sub_function_code >= 0:
            return super().decode(frame)  # diagnostics and the like: pymodbus's sub tables
        return pdu


async def lean_execute(ctx: Any, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU | None:
    """``TransactionManager.execute`` for a caller that serialises its requests and bounds
    each with its own timeout (see the module docstring). Raises pymodbus's own exceptions,
    with its messages, for a reply from another unit or transaction."""
    if not ctx.transport:
        raise ConnectionException("Client cannot connect (not connected)")
    request.transaction_id = ctx.getNextTID()
    ctx.recv_buffer = b""
    future: asyncio.Future[ModbusPDU] = asyncio.get_running_loop().create_future()
    ctx.response_future = future
    ctx.pdu_send(request)
    if (idle := ctx.while_waiting) is not None:
        idle()  # the caller's deferred work, while the device answers
    if no_response_expected:
        return None
    response = await future
    ctx.count_until_disconnect = ctx.max_until_disconnect
    if request.dev_id and response.dev_id != request.dev_id:
        raise ctx._io_exception_from_request(
            f"ERROR: request uses device id={request.dev_id} but received {response.dev_id}.", request
        )
    if response.transaction_id and response.transaction_id != request.transaction_id:
        raise ctx._io_exception_from_request(
            f"ERROR: request uses transaction id={request.transaction_id} but received "
            f"{response.transaction_id}.",
            request,
        )
    return response


def make_lean(client: Any) -> Any:
    """Give one pymodbus async client (TCP or serial) :func:`lean_execute` and
    :class:`QuietDecoder`; returns the client. ``client.ctx.while_waiting`` (None here) may be
    set to a callable that :func:`lean_execute` calls once each request has been handed to the
    transport, before it waits for the reply: work that is due before the next reply but not
    before the request leaves (the driver decodes its previous reply there)."""
    ctx = client.ctx
    ctx.execute = functools.partial(lean_execute, ctx)
    ctx.while_waiting = None
    ctx.framer.decoder = QuietDecoder()
    return client
