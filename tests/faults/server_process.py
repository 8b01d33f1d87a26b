"""A Modbus TCP test server in a process of its own, to be killed with SIGKILL.

``python -m tests.faults.server_process PORT VALUE``: serves units 1 and 2 of
:class:`tests.modbus_server.ModbusTestServer` on 127.0.0.1:PORT (0: any free port), holding
register 0 of each holding VALUE, prints ``ready PORT`` and serves until killed. It stops by
itself after 60 s, should its test die before killing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from tests.modbus_server import ModbusTestServer

LIFETIME_S = 60.0


async def main(port: int, value: int) -> None:
    async with ModbusTestServer(units=[1, 2], port=port) as srv:
        for unit in (1, 2):
            await srv.set_registers(unit, 0, [value])
        print(f"ready {srv.port}", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LIFETIME_S):
                await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
