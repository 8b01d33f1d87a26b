"""serve(): real time x speed, PLC behaviour in wall time, clean shutdown, lazy asyncua."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from simulator import Plant, serve
from simulator.listen import ListenError
from simulator.station import free_port

from .conftest import assert_no_other_tasks, f32, f32_regs


async def test_simulated_time_runs_at_speed() -> None:
    async with serve(Plant(seed=1), modbus_port=0, speed=50, tick_s=0.02) as st:
        t0 = time.monotonic()
        await st.wait_until(20.0, timeout_s=5)
        elapsed = time.monotonic() - t0
        assert st.dt_s == 0.1 and st.plant.t >= 20.0
        assert 0.25 < elapsed < 3.0  # 20 s at 50x is 0.4 s of wall time (not 20 s)
        assert st.ticks > 5 and st.lag_skips == 0
    assert_no_other_tasks()


async def test_plc_permissive_and_heartbeat_fallback_in_wall_time() -> None:
    async with serve(Plant(seed=2), modbus_port=0, speed=10, heartbeat_timeout_s=1.0, tick_s=0.02) as st:
        c = AsyncModbusTcpClient("127.0.0.1", port=st.modbus_port, timeout=1, retries=0)
        await c.connect()
        try:
            assert not (await c.write_coil(0, True, device_id=1)).isError()
            for k in range(1, 8):  # heartbeat every 0.1 s with the setpoint
                await c.write_register(0, k, device_id=1)
                await c.write_registers(120, f32_regs(2700.0), device_id=1)
                await c.write_registers(220, f32_regs(2700.0), device_id=1)
                await asyncio.sleep(0.1)
            di = (await c.read_discrete_inputs(0, count=2, device_id=1)).bits
            ir = (await c.read_input_registers(100, count=4, device_id=1)).registers
            assert di[:2] == [True, True]
            assert f32(ir[2:4], "ABCD") == 2700.0
            # the agent dies: no more heartbeat changes
            await asyncio.sleep(1.4)
            di = (await c.read_discrete_inputs(0, count=2, device_id=1)).bits
            assert di[:2] == [False, False]
            ir = (await c.read_input_registers(100, count=4, device_id=1)).registers
            assert f32(ir[2:4], "ABCD") != 2700.0  # the PLC's own PI drives the pumps again
            sp = (await c.read_holding_registers(120, count=2, device_id=1)).registers
            assert f32(sp, "ABCD") == f32(ir[2:4], "ABCD")  # the setpoint register tracks (bumpless)
            # a late setpoint is refused, not applied
            await c.write_registers(120, f32_regs(2000.0), device_id=1)
            assert st.write_log[-1].reason == "heartbeat stale"
            # heartbeat back, then the operator withdraws the permissive
            await c.write_register(0, 100, device_id=1)
            await c.write_registers(120, f32_regs(2100.0), device_id=1)
            await asyncio.sleep(0.1)
            assert st.plant.state.external_active
            await c.write_register(2, 0, device_id=1)  # OperatorCommand bit0 off
            await c.write_register(0, 101, device_id=1)
            await asyncio.sleep(0.1)
            assert not st.plant.state.external_active and not st.plant.plc.permissive
            messages = [e.message for e in st.plant.plc.events]
            assert "falling back to local PI control (heartbeat stale)" in messages
            assert messages[-1] == "falling back to local PI control (permissive off)"
            assert (await c.read_coils(0, count=1, device_id=1)).bits[0] is False
        finally:
            c.close()
    assert_no_other_tasks()


async def test_both_servers_shut_down_cleanly_with_clients_connected() -> None:
    threads = {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}
    async with serve(Plant(seed=1), modbus_port=0, opcua_port=0, speed=5) as st:
        assert st.opcua_endpoint and st.opcua_port and st.modbus_port
        mb = AsyncModbusTcpClient("127.0.0.1", port=st.modbus_port, timeout=1, retries=0)
        await mb.connect()
        ua_client = Client(st.opcua_endpoint, timeout=5)
        await ua_client.connect()
        assert not (await mb.read_input_registers(0, count=2, device_id=1)).isError()
        await ua_client.disconnect()
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1.0  # no 1 s wait for asyncua's clock task
    mb.close()
    await asyncio.sleep(0)
    assert_no_other_tasks()
    assert {t for t in threading.enumerate() if not t.name.startswith("asyncio_")} == threads


async def test_an_error_in_the_loop_is_raised_at_exit() -> None:
    plant = Plant(seed=1)

    def broken(dt_s: float = 0.1) -> None:
        raise RuntimeError("physics exploded")

    plant.step = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="physics exploded"):
        async with serve(plant, modbus_port=0, speed=10, tick_s=0.01):
            await asyncio.sleep(0.1)
    assert_no_other_tasks()


async def test_a_port_in_use_is_reported_and_nothing_leaks() -> None:
    port = free_port()
    async with serve(Plant(), modbus_port=port, speed=0):
        with pytest.raises(ListenError, match=f"cannot serve Modbus TCP on 127.0.0.1:{port}: address already in use"):
            async with serve(Plant(), modbus_port=port, speed=0):
                pass
    assert_no_other_tasks()


def test_asyncua_is_imported_only_when_opcua_is_served() -> None:
    code = (
        "import asyncio, sys\n"
        "from simulator import Plant, serve\n"
        "async def main():\n"
        "    async with serve(Plant(), modbus_port=0, opcua_port=None, speed=10) as st:\n"
        "        await asyncio.sleep(0.2)\n"
        "asyncio.run(main())\n"
        "assert 'asyncua' not in sys.modules, 'asyncua imported'\n"
        "assert 'agent' not in sys.modules, 'the simulator must not import agent'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
