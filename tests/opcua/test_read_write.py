"""Reading (polling and subscription), StatusCodes and timestamps, and typed writes."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import ua

from agent.drivers.opcua import OpcUaDriver, quality_of_status
from agent.errors import DeviceUnreachable, DriverError, ReadBackFailed, WriteRefused, WriteUnconfirmed
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

DISPLAY = {"purpose": "display"}


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


async def test_subscription_delivers_changes_and_keeps_unchanged_tags_fresh(
    opcua_server: ServerFactory,
) -> None:
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
        await plant.set(
            "Double", 1.25, status=ua.StatusCodes.UncertainLastUsableValue, source=src, server_ts=srv
        )
        await plant.set("Int32", 5, status=ua.StatusCodes.BadSensorFailure, source=src)
        await plant.set("Float", 0.5, server_ts=srv)  # no source timestamp: the server's is kept
        await plant.set("String", "x")  # no timestamp at all
        await plant.set("Ranged", 150.0, source=src)
        got = await poll_until(
            driver,
            lambda s: (
                s["t.Double"].value == 1.25 and s["t.String"].value == "x" and s["t.Ranged"].value == 150.0
            ),
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
async def test_writes_every_common_type_with_the_nodes_own_type(
    opcua_server: ServerFactory, mode: str
) -> None:
    plant = await opcua_server()
    async with OpcUaDriver(make_device(plant.url, mode=mode)) as driver:
        await driver.poll(time.monotonic() + 2)
        for name, (vtype, _, new) in TYPES.items():
            back = await driver.write(f"t.{name}", new, purpose="display")
            dv = await plant.value(name)
            assert dv.Value.VariantType == vtype, name  # e.g. a Float node got a Float, not a Double
            if vtype is ua.VariantType.DateTime:
                assert dv.Value.Value == datetime.fromisoformat(new)
                assert back == datetime.fromisoformat(new).isoformat()
            else:
                assert dv.Value.Value == new, name
                assert back == new, name
        # numbers given as the "wrong" Python type are converted to the node's type
        assert await driver.write("t.Float", 3, purpose="display") == 3.0
        assert (await plant.value("Float")).Value.VariantType == ua.VariantType.Float
        assert await driver.write("t.Int16", 12.0, purpose="display") == 12
        assert await driver.write("t.Bool", 1, purpose="display") is True
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
        await driver.write("t.Double", 12.5, purpose="display")
        await driver.write("t.Int32", 7, purpose="display")
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
        {"name": "ro", "node_id": f"nsu={PLANT};s=Plant.ReadOnly", "access": "read-write", **DISPLAY},
        {"name": "locked", "node_id": f"nsu={PLANT};s=Plant.Locked", "access": "read-write", **DISPLAY},
        {"name": "readonly_tag", "node_id": f"nsu={PLANT};s=Plant.Double", "access": "read"},
        {"name": "i16", "node_id": f"nsu={PLANT};s=Plant.Int16", "access": "read-write", **DISPLAY},
        {
            "name": "ranged",
            "node_id": f"nsu={PLANT};s=Plant.Ranged",
            "access": "read-write",
            "range": [0, 100],
            **DISPLAY,
        },
        {"name": "s", "node_id": f"nsu={PLANT};s=Plant.String", "access": "write", **DISPLAY},
    ]
    async with OpcUaDriver(make_device(plant.url, tags=tags)) as driver:
        # asyncua answers BadUserAccessDenied for a read-only node...
        with pytest.raises(WriteRefused, match=r"BadUserAccessDenied: an anonymous session may not write"):
            await driver.write("ro", 1.0, purpose="display")
        # ...other servers BadNotWritable: both are clear
        with pytest.raises(WriteRefused, match=r"BadNotWritable: the node is read-only on the server"):
            await driver.write("locked", 2.0, purpose="display")
        with pytest.raises(WriteRefused, match=r"read-only \(access: read\)"):
            await driver.write("readonly_tag", 1.0, purpose="display")
        with pytest.raises(WriteRefused, match=r"40000 does not fit \(-32768\.\.32767\)"):
            await driver.write("i16", 40000, purpose="display")
        with pytest.raises(WriteRefused, match="is not an integer"):
            await driver.write("i16", 1.5, purpose="display")
        with pytest.raises(WriteRefused, match="takes a number"):
            await driver.write("i16", "12", purpose="display")
        with pytest.raises(WriteRefused, match=r"outside plausible range \[0, 100\]"):
            await driver.write("ranged", 101.0, purpose="display")
        with pytest.raises(WriteRefused, match="not finite"):
            await driver.write("ranged", math.nan, purpose="display")
        with pytest.raises(WriteRefused, match="unknown tag"):
            await driver.write("nope", 1, purpose="display")
        assert (
            await driver.write("s", "ok", purpose="display") == "ok"
        )  # write-only tags are written, not polled
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
            await driver.write("t.Double", 1.0, purpose="display")
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
    dv = ua.DataValue(
        ua.Variant(1.0, ua.VariantType.Double), SourceTimestamp=datetime.now(UTC) - timedelta(seconds=1)
    )
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


# --------------------------------------------------------------------------- purpose, order, errors


async def test_a_write_for_another_purpose_is_refused_before_anything_is_sent(
    opcua_server: ServerFactory,
) -> None:
    plant = await opcua_server()
    tags = [
        {
            "name": "sp",
            "node_id": f"nsu={PLANT};s=Plant.Double",
            "access": "read-write",
            "purpose": "setpoint",
        },
        {"name": "word", "node_id": f"nsu={PLANT};s=Plant.Int32", "access": "read-write", **DISPLAY},
    ]
    async with OpcUaDriver(make_device(plant.url, tags=tags)) as driver:
        await driver.poll(time.monotonic() + 2)
        with pytest.raises(WriteRefused) as info:
            await driver.write("sp", 1.0, purpose="display")
        assert (
            str(info.value)
            == f"sp (nsu={PLANT};s=Plant.Double) is a setpoint tag: refused a write for purpose display"
        )
        got = await driver.write_many([("sp", 2.0), ("word", 4)], purpose="display")
        assert isinstance(got["sp"], WriteRefused) and got["word"] == 4
    assert [wv.NodeId.Identifier for wv in plant.writes] == ["Plant.Int32"]
    assert (await plant.value("Double")).Value.Value == 3.25


async def test_write_many_keeps_the_order_and_answers_each_item(opcua_server: ServerFactory) -> None:
    plant = await opcua_server()
    async with OpcUaDriver(make_device(plant.url)) as driver:
        await driver.poll(time.monotonic() + 2)
        got = await driver.write_many(
            [("t.Int16", 40000), ("t.String", "x"), ("t.Locked", 2.0), ("t.Double", 1.5), ("t.Int32", 3)],
            purpose="display",
        )
    assert list(got) == ["t.Int16", "t.String", "t.Locked", "t.Double", "t.Int32"]
    assert isinstance(got["t.Int16"], WriteRefused) and "does not fit" in str(got["t.Int16"])
    assert isinstance(got["t.Locked"], WriteRefused) and "BadNotWritable" in str(got["t.Locked"])
    assert (got["t.String"], got["t.Double"], got["t.Int32"]) == ("x", 1.5, 3)
    # one Write call per item, in the caller's order; the item that did not encode was never sent
    assert [wv.NodeId.Identifier for wv in plant.writes] == [
        "Plant.String",
        "Plant.Locked",
        "Plant.Double",
        "Plant.Int32",
    ]


async def test_read_is_one_read_issued_now_not_the_subscriptions_value(opcua_server: ServerFactory) -> None:
    plant = await opcua_server()
    async with OpcUaDriver(make_device(plant.url, mode="subscription", timeout_ms=2000)) as driver:
        await driver.poll(time.monotonic() + 2)
        plant.silence_subscriptions()
        await plant.node("Double").write_value(ua.Variant(6.5, ua.VariantType.Double))
        t0 = time.monotonic()
        s = await driver.read("t.Double")
        assert (s.value, s.quality.is_good) == (6.5, True) and s.mono >= t0
        polled = by_tag(await driver.poll(time.monotonic() + 1))
        assert polled["t.Double"].value == 3.25  # the silent subscription still has the old one
        await plant.set("Int32", 5, status=ua.StatusCodes.BadSensorFailure)
        bad = await driver.read("t.Int32")
        assert (bad.quality.code, bad.quality.reason, bad.value) == (
            QualityCode.BAD,
            "BadSensorFailure",
            None,
        )
        with pytest.raises(KeyError):
            await driver.read("nope")
        await plant.stop()
        down = await driver.read("t.Double")
        assert down.quality.code is QualityCode.BAD and down.quality.reason


async def test_a_write_the_server_does_not_answer_is_unconfirmed_and_the_rest_not_sent(
    opcua_server: ServerFactory,
) -> None:
    plant = await opcua_server()
    service = plant.server.iserver.attribute_service
    answer = service.write
    received: list[str] = []

    async def slow_write(params: ua.WriteParameters, *args: Any, **kwargs: Any) -> list[ua.StatusCode]:
        received.extend(wv.NodeId.Identifier for wv in params.NodesToWrite)
        await asyncio.sleep(0.6)  # longer than the client's timeout
        return await answer(params, *args, **kwargs)

    async with OpcUaDriver(make_device(plant.url, timeout_ms=300)) as driver:
        await driver.poll(time.monotonic() + 2)
        assert await driver.write("t.Double", 1.0, purpose="display") == 1.0  # caches the type
        service.write = slow_write  # type: ignore[method-assign]
        got = await driver.write_many([("t.Double", 2.0), ("t.Int32", 8)], purpose="display")
        assert isinstance(got["t.Double"], WriteUnconfirmed) and "possibly applied" in str(got["t.Double"])
        assert isinstance(got["t.Int32"], DeviceUnreachable) and "not sent" in str(got["t.Int32"])
    assert received == ["Plant.Double"]  # the write reached the server; the next one never left
    assert (await plant.value("Int32")).Value.Value == TYPES["Int32"][1]


async def test_an_acknowledged_write_whose_read_back_fails_is_applied_not_verified(
    opcua_server: ServerFactory,
) -> None:
    plant = await opcua_server()
    service = plant.server.iserver.attribute_service
    answer = service.read
    broken: set[str] = set()

    def failing_read(params: ua.ReadParameters) -> list[ua.DataValue]:
        results = answer(params)
        return [
            ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadDeviceFailure))
            if rv.NodeId.Identifier in broken and rv.AttributeId == ua.AttributeIds.Value
            else dv
            for rv, dv in zip(params.NodesToRead, results, strict=True)
        ]

    service.read = failing_read  # type: ignore[method-assign]
    async with OpcUaDriver(make_device(plant.url, mode="polling")) as driver:
        await driver.poll(time.monotonic() + 2)
        assert await driver.write("t.Double", 1.0, purpose="display") == 1.0
        broken.add("Plant.Double")
        with pytest.raises(
            ReadBackFailed, match=r"written, but the read-back is not valid: BadDeviceFailure"
        ):
            await driver.write("t.Double", 2.0, purpose="display")
    broken.clear()
    assert (await plant.value("Double")).Value.Value == 2.0  # applied
