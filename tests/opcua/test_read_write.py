"""Reading (polling and subscription), StatusCodes and timestamps, and typed writes."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua

from agent.drivers.opcua import OpcUaDriver, quality_of_status
from agent.errors import DriverError, WriteRefused
from agent.types import QualityCode
from tests.opcua.conftest import (
    OTHER,
    PLANT,
    TYPES,
    ServerFactory,
    by_tag,
    expected_read,
    make_device,
    poll_until,
)


def test_status_codes_become_qualities() -> None:
    assert quality_of_status(0).is_good
    q = quality_of_status(ua.StatusCodes.UncertainLastUsableValue)
    assert (q.code, q.reason) == (QualityCode.UNCERTAIN, "UncertainLastUsableValue")
    q = quality_of_status(ua.StatusCodes.BadSensorFailure)
    assert (q.code, q.reason) == (QualityCode.BAD, "BadSensorFailure")
    # info bits (here: overflow) do not hide the name
    q = quality_of_status(ua.StatusCodes.BadCommunicationError | 0x0480)
    assert q.reason == "BadCommunicationError"


@pytest.mark.parametrize("mode", ["polling", "subscription"])
async def test_reads_every_common_type(opcua_server: ServerFactory, mode: str) -> None:
    plant = await opcua_server()
    async with OpcUaDriver(make_device(plant.url, mode=mode)) as driver:
        got = by_tag(await driver.poll(time.monotonic() + 2))
        assert driver.unit_status()[0].state == "ok"
    for name, (_, initial, _) in TYPES.items():
        s = got[f"t.{name}"]
        assert s.quality.is_good, (name, s.quality)
        assert s.value == expected_read(name, initial), name
        assert type(s.value) is type(expected_read(name, initial)), name
        assert s.source_time is not None and s.source_time.tzinfo is not None
    assert got["t.ReadOnly"].value == 7.5
    assert len(got) == len(TYPES) + 3


async def test_subscription_delivers_changes_and_keeps_unchanged_tags_fresh(opcua_server: ServerFactory) -> None:
    plant = await opcua_server()
    async with OpcUaDriver(make_device(plant.url)) as driver:
        first = by_tag(await driver.poll(time.monotonic() + 2))
        assert first["t.Double"].value == 3.25
        await plant.node("Double").write_value(ua.Variant(4.5, ua.VariantType.Double))
        got = await poll_until(driver, lambda s: s["t.Double"].value == 4.5)
        assert got["t.Double"].quality.is_good
        # unchanged tags come back every poll, vouched for by the subscription's keep-alives
        assert got["t.String"].value == "hello" and got["t.String"].quality.is_good
        await asyncio.sleep(0.5)
        later = by_tag(await driver.poll(time.monotonic() + 1))
        assert time.monotonic() - later["t.String"].mono < 0.5  # confirmed by a recent keep-alive
        assert driver.counters.per_unit["0"]["notifications"] >= 1
        assert driver.status().subscription_id is not None


@pytest.mark.parametrize("mode", ["polling", "subscription"])
async def test_status_codes_and_timestamps(opcua_server: ServerFactory, mode: str) -> None:
    plant = await opcua_server()
    src = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    srv = datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC)
    async with OpcUaDriver(make_device(plant.url, mode=mode)) as driver:
        await driver.poll(time.monotonic() + 2)
        await plant.set("Double", 1.25, status=ua.StatusCodes.UncertainLastUsableValue, source=src, server_ts=srv)
        await plant.set("Int32", 5, status=ua.StatusCodes.BadSensorFailure, source=src)
        await plant.set("Float", 0.5, server_ts=srv)  # no source timestamp: the server's is kept
        await plant.set("String", "x")  # no timestamp at all
        await plant.set("Ranged", 150.0, source=src)
        got = await poll_until(
            driver,
            lambda s: s["t.Double"].value == 1.25 and s["t.String"].value == "x" and s["t.Ranged"].value == 150.0,
        )
    d = got["t.Double"]
    assert (d.quality.code, d.quality.reason) == (QualityCode.UNCERTAIN, "UncertainLastUsableValue")
    assert d.source_time == src
    i = got["t.Int32"]
    assert (i.quality.code, i.quality.reason, i.value) == (QualityCode.BAD, "BadSensorFailure", None)
    assert got["t.Float"].source_time == srv and got["t.Float"].quality.is_good
    assert got["t.String"].source_time is None and got["t.String"].quality.is_good
    r = got["t.Ranged"]
    assert r.quality.code is QualityCode.BAD and r.quality.reason.startswith("out of range: 150")


async def test_unknown_namespace_and_unknown_node(opcua_server: ServerFactory) -> None:
    plant = await opcua_server()
    tags = [
        {"name": "good", "node_id": f"nsu={PLANT};s=Plant.Double"},
        {"name": "decoy", "node_id": f"nsu={OTHER};s=Plant.Double"},
        {"name": "nons", "node_id": "nsu=urn:nowhere;s=Plant.Double"},
        {"name": "nonode", "node_id": f"nsu={PLANT};s=Plant.Missing"},
        {"name": "std", "node_id": "i=2259"},  # Server_ServerStatus_State, namespace 0
    ]
    for mode in ("subscription", "polling"):
        async with OpcUaDriver(make_device(plant.url, tags=tags, mode=mode)) as driver:
            got = by_tag(await driver.poll(time.monotonic() + 2))
            assert got["good"].value == 3.25 and got["good"].quality.is_good
            assert got["decoy"].value == -999.0
            assert got["nons"].quality.code is QualityCode.BAD
            assert "namespace urn:nowhere is not on the server" in got["nons"].quality.reason
            assert got["nonode"].quality.reason == "BadNodeIdUnknown"
            assert got["std"].quality.is_good and got["std"].value == 0  # ServerState.Running
            assert driver.status().unresolved.keys() == {"nons"}


@pytest.mark.parametrize("mode", ["polling", "subscription"])
async def test_writes_every_common_type_with_the_nodes_own_type(opcua_server: ServerFactory, mode: str) -> None:
    plant = await opcua_server()
    async with OpcUaDriver(make_device(plant.url, mode=mode)) as driver:
        await driver.poll(time.monotonic() + 2)
        for name, (vtype, _, new) in TYPES.items():
            back = await driver.write(f"t.{name}", new)
            dv = await plant.value(name)
            assert dv.Value.VariantType == vtype, name  # e.g. a Float node got a Float, not a Double
            if vtype is ua.VariantType.DateTime:
                assert dv.Value.Value == datetime.fromisoformat(new)
                assert back == datetime.fromisoformat(new).isoformat()
            else:
                assert dv.Value.Value == new, name
                assert back == new, name
        # numbers given as the "wrong" Python type are converted to the node's type
        assert await driver.write("t.Float", 3) == 3.0
        assert (await plant.value("Float")).Value.VariantType == ua.VariantType.Float
        assert await driver.write("t.Int16", 12.0) == 12
        assert await driver.write("t.Bool", 1) is True
        if mode == "subscription":
            # the subscription reports what was written (in its own time)
            await poll_until(driver, lambda s: s["t.Int16"].value == 12 and s["t.Bool"].value is True)
    # the data type is read once per session and cached
    assert driver.counters.per_unit["0"]["writes"] == len(TYPES) + 3


async def test_writes_carry_no_timestamps(opcua_server: ServerFactory) -> None:
    from asyncua.ua.ua_binary import struct_to_binary

    plant = await opcua_server()
    sent: list[bytes] = []
    async with OpcUaDriver(make_device(plant.url)) as driver:
        await driver.poll(time.monotonic() + 2)
        uaclient = driver._session.client.uaclient  # type: ignore[union-attr]
        original = uaclient.write

        async def spy(params: ua.WriteParameters) -> list[ua.StatusCode]:
            sent.extend(struct_to_binary(wv.Value) for wv in params.NodesToWrite)
            return await original(params)

        uaclient.write = spy
        await driver.write("t.Double", 12.5)
        await driver.write("t.Int32", 7)
    # On the wire, the DataValue's encoding mask says: a value, and nothing else (no status
    # code, no source or server timestamp or picoseconds).
    assert [b[0] for b in sent] == [0x01, 0x01]
    assert len(plant.writes) == 2
    for wv in plant.writes:  # what the server received
        assert wv.AttributeId == ua.AttributeIds.Value
        assert wv.Value.SourceTimestamp is None
        assert wv.Value.ServerTimestamp is None
        assert wv.Value.SourcePicoseconds is None and wv.Value.ServerPicoseconds is None
    assert plant.writes[0].Value.Value.VariantType == ua.VariantType.Double
    assert plant.writes[1].Value.Value.VariantType == ua.VariantType.Int32


async def test_refused_writes_are_reported_clearly(opcua_server: ServerFactory) -> None:
    plant = await opcua_server()
    tags = [
        {"name": "ro", "node_id": f"nsu={PLANT};s=Plant.ReadOnly", "access": "read-write"},
        {"name": "locked", "node_id": f"nsu={PLANT};s=Plant.Locked", "access": "read-write"},
        {"name": "readonly_tag", "node_id": f"nsu={PLANT};s=Plant.Double", "access": "read"},
        {"name": "i16", "node_id": f"nsu={PLANT};s=Plant.Int16", "access": "read-write"},
        {"name": "ranged", "node_id": f"nsu={PLANT};s=Plant.Ranged", "access": "read-write", "range": [0, 100]},
        {"name": "s", "node_id": f"nsu={PLANT};s=Plant.String", "access": "write"},
    ]
    async with OpcUaDriver(make_device(plant.url, tags=tags)) as driver:
        # asyncua answers BadUserAccessDenied for a read-only node...
        with pytest.raises(WriteRefused, match=r"BadUserAccessDenied: an anonymous session may not write"):
            await driver.write("ro", 1.0)
        # ...other servers BadNotWritable: both are clear
        with pytest.raises(WriteRefused, match=r"BadNotWritable: the node is read-only on the server"):
            await driver.write("locked", 2.0)
        with pytest.raises(WriteRefused, match=r"read-only \(access: read\)"):
            await driver.write("readonly_tag", 1.0)
        with pytest.raises(WriteRefused, match=r"40000 does not fit \(-32768\.\.32767\)"):
            await driver.write("i16", 40000)
        with pytest.raises(WriteRefused, match="is not an integer"):
            await driver.write("i16", 1.5)
        with pytest.raises(WriteRefused, match="takes a number"):
            await driver.write("i16", "12")
        with pytest.raises(WriteRefused, match=r"outside plausible range \[0, 100\]"):
            await driver.write("ranged", 101.0)
        with pytest.raises(WriteRefused, match="not finite"):
            await driver.write("ranged", math.nan)
        with pytest.raises(WriteRefused, match="unknown tag"):
            await driver.write("nope", 1)
        assert await driver.write("s", "ok") == "ok"  # write-only tags are written, not polled
        assert "s" not in by_tag(await driver.poll(time.monotonic() + 1))
    assert (await plant.value("ReadOnly")).Value.Value == 7.5
    assert (await plant.value("Locked")).Value.Value == 1.0


async def test_device_down_is_reported_per_tag_and_retried_with_backoff(opcua_server: ServerFactory) -> None:
    from tests.opcua.conftest import free_port

    port = free_port()
    dev = make_device(f"opc.tcp://127.0.0.1:{port}/", backoff_ms=300, backoff_max_ms=300)
    async with OpcUaDriver(dev) as driver:
        assert driver.unit_status()[0].state == "unknown"
        first = await driver.poll(time.monotonic() + 1)
        assert {s.quality.code for s in first} == {QualityCode.BAD}
        assert "connection refused" in first[0].quality.reason
        second = await driver.poll(time.monotonic() + 1)
        assert "next attempt in" in second[0].quality.reason
        st = driver.unit_status()[0]
        assert st.state == "lost" and "connection refused" in st.last_error
        with pytest.raises(DriverError, match="connection refused"):
            await driver.write("t.Double", 1.0)
        plant = await opcua_server(port=port)
        got = await poll_until(driver, lambda s: s["t.Double"].quality.is_good)
        assert got["t.Double"].value == 3.25
        assert driver.unit_status()[0].state == "ok"
        await plant.stop()


async def test_cancellation_propagates_from_a_silent_server() -> None:
    """A TCP peer that accepts and never answers: the poll waits; cancelling it must work."""
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dev = make_device(f"opc.tcp://127.0.0.1:{port}/", timeout_ms=5000)
    try:
        async with OpcUaDriver(dev) as driver:
            task = asyncio.create_task(driver.poll(time.monotonic() + 10))
            await asyncio.sleep(0.3)
            assert accepted and not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # and a timeout (not a cancellation) is just a BAD sample
            dev2 = make_device(f"opc.tcp://127.0.0.1:{port}/", timeout_ms=200)
            async with OpcUaDriver(dev2) as quick:
                got = await quick.poll(time.monotonic() + 0.2)
                assert "timeout" in got[0].quality.reason
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


def test_old_epoch_notifications_are_dropped() -> None:
    dev = make_device("opc.tcp://127.0.0.1:4840/")
    driver = OpcUaDriver(dev)
    dv = ua.DataValue(ua.Variant(1.0, ua.VariantType.Double), SourceTimestamp=datetime.now(UTC) - timedelta(seconds=1))
    driver._on_datachange(driver._epoch - 1, "t.Double", dv)
    assert driver._pending == {}
    assert driver.counters.per_unit["0"]["dropped_old_subscription"] == 1
    driver._on_datachange(driver._epoch, "t.Double", dv)
    assert driver._pending["t.Double"].value == 1.0


async def test_deadband_applies_to_numeric_nodes(opcua_server: ServerFactory) -> None:
    plant = await opcua_server()
    async with OpcUaDriver(make_device(plant.url, deadband=1.0)) as driver:
        await driver.poll(time.monotonic() + 2)
        await plant.node("Double").write_value(ua.Variant(3.5, ua.VariantType.Double))  # within the deadband
        await plant.node("String").write_value(ua.Variant("changed", ua.VariantType.String))  # no deadband
        got = await poll_until(driver, lambda s: s["t.String"].value == "changed")
        await asyncio.sleep(0.2)
        got = by_tag(await driver.poll(time.monotonic() + 1))
        assert got["t.Double"].value == 3.25
        await plant.node("Double").write_value(ua.Variant(5.0, ua.VariantType.Double))
        await poll_until(driver, lambda s: s["t.Double"].value == 5.0)
