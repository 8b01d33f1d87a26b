"""Modbus RTU over a real pseudo-terminal pair (socat), pymodbus serial server on one end."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.config import ModbusRtuDevice
from agent.drivers import modbus_codec as codec
from agent.drivers.modbus import ModbusDriver

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    socat = shutil.which("socat")
    assert socat, "socat is required for the RTU tests (.ci/run installs it)"
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert time.monotonic() < deadline, "socat did not create the pty pair"
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
async def rtu_server(pty_pair: tuple[str, str]) -> AsyncIterator[tuple[ModbusSerialServer, str]]:
    server_end, client_end = pty_pair
    regs = [SimData(0, count=100, values=0, datatype=DataType.REGISTERS)]
    bits = [SimData(0, count=100, values=False, datatype=DataType.BITS)]
    devices = [SimDevice(id=u, simdata=(bits, bits, regs, regs)) for u in (11, 12)]


    def silence_absent_units(sending: bool, data: bytes) -> bytes:
        # On a real bus an absent unit simply never answers; pymodbus would send exception 04.
        return b"" if sending and data and data[0] not in (11, 12) else data

    server = ModbusSerialServer(
        devices,
        framer=FramerType.RTU,
        port=server_end,
        baudrate=19200,
        parity="N",
        stopbits=1,
        bytesize=8,
        trace_packet=silence_absent_units,
    )
    await server.serve_forever(background=True)
    try:
        yield server, client_end
    finally:
        await server.shutdown()
        await asyncio.sleep(0.05)


async def test_rtu_bus_reads_and_writes_two_units(rtu_server: tuple[ModbusSerialServer, str]) -> None:
    server, port = rtu_server
    await server.async_setValues(11, 16, 0, codec.encode(-1.25, codec.DataType.FLOAT32, "CDAB"))
    await server.async_setValues(12, 16, 0, [321])
    dev = ModbusRtuDevice.model_validate(
        {
            "name": "bus",
            "protocol": "modbus_rtu",
            "serial_port": port,
            "baudrate": 19200,
            "parity": "N",  # a pty refuses parity settings; the bytes are the same
            "units": [11, 12, 13],
            "timeout_ms": 300,
            "tags": [
                {"name": "f", "unit": 11, "table": "holding", "address": 0, "type": "float32", "word_order": "CDAB"},
                {"name": "u", "unit": 12, "table": "holding", "address": 0, "type": "uint16"},
                {"name": "sp", "unit": 12, "table": "holding", "address": 5, "type": "uint16", "access": "read-write", "purpose": "setpoint"},
                {"name": "absent", "unit": 13, "table": "holding", "address": 0, "type": "uint16"},
            ],
        }
    )
    async with ModbusDriver(dev) as drv:
        got = {s.tag: s for s in await drv.poll(time.monotonic() + 3)}
        assert got["f"].value == -1.25 and got["f"].quality.is_good
        assert got["u"].value == 321 and got["u"].quality.is_good
        assert not got["absent"].quality.is_good and "timeout" in got["absent"].quality.reason
        assert await drv.write("sp", 77, purpose="setpoint") == 77
    assert list(await server.async_getValues(12, 3, 5, 1)) == [77]
