"""The OPC UA server, browsed, read and written by a real asyncua client (one server per module)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from asyncua import Client, ua

from simulator import NAMESPACE_URI, Plant, serve
from simulator.faults import Fault, FaultKind
from simulator.station import Station

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXTRA = ["urn:dummy:first", "urn:dummy:second"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def station() -> AsyncIterator[Station]:
    async with serve(
        Plant(seed=4),
        modbus_port=0,
        opcua_port=0,
        speed=0,
        tick_s=0.05,
        opcua_options={"extra_namespaces_first": EXTRA},
    ) as st:
        yield st


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(station: Station) -> AsyncIterator[Client]:
    c = Client(station.opcua_endpoint, timeout=5)
    async with c:
        yield c


async def _idx(client: Client) -> int:
    return await client.get_namespace_index(NAMESPACE_URI)


def _node(client: Client, idx: int, tag: str):
    return client.get_node(ua.NodeId(tag, idx))


async def _write(node, value, vtype: ua.VariantType) -> None:
    """A write the way a careful client does it: the node's own type, no timestamps."""
    await node.write_attribute(ua.AttributeIds.Value, ua.DataValue(ua.Variant(value, vtype)))


@pytest.fixture(autouse=True)
async def _reset(station: Station) -> None:
    plc = station.plant.plc
    plc.values["Station.Permissive"] = False
    plc.write_log.clear()
    plc.heartbeat_timeout_s = 10.0
    station.opcua.reject_write_timestamps = False  # type: ignore[union-attr]
    station.plant.clear(1)
    station.plant.clear(2)


async def test_namespace_index_shifts_and_uri_resolves(station: Station, client: Client) -> None:
    ns = await client.get_namespace_array()
    assert ns[2:4] == EXTRA and ns[4] == NAMESPACE_URI
    assert await _idx(client) == station.namespace_index == 4
    assert station.opcua.node_id("Pump1.Flow") == "ns=4;s=Pump1.Flow"  # type: ignore[union-attr]
    assert station.opcua.expanded_node_id("Pump1.Flow") == f"nsu={NAMESPACE_URI};s=Pump1.Flow"  # type: ignore[union-attr]


async def test_address_space_has_folders_per_pump(client: Client) -> None:
    idx = await _idx(client)
    objects = client.nodes.objects
    names = {(await c.read_browse_name()).Name for c in await objects.get_children()}
    assert {"Station", "Simulation"} <= names
    station_folder = await objects.get_child(f"{idx}:Station")
    children = {(await c.read_browse_name()).Name for c in await station_folder.get_children()}
    assert {"Pump1", "Pump2", "TankLevel", "Permissive", "AgentHeartbeat"} <= children
    pump1 = await station_folder.get_child(f"{idx}:Pump1")
    flow = await pump1.get_child(f"{idx}:Flow")
    assert flow.nodeid == ua.NodeId("Pump1.Flow", idx)
    assert (await pump1.read_node_class()) == ua.NodeClass.Object
    assert (await (await flow.get_child("0:EURange")).read_value()).High == 300.0
    eu = await (await flow.get_child("0:EngineeringUnits")).read_value()
    assert eu.DisplayName.Text == "m³/h" and eu.UnitId == (ord("M") << 16 | ord("Q") << 8 | ord("H"))


async def test_values_and_data_types_follow_the_plant(station: Station, client: Client) -> None:
    idx = await _idx(client)
    await station.step(20.0)
    tags = station.plant.state.tags
    types = {
        "Pump1.Flow": ua.ObjectIds.Double,
        "Pump1.AnomalyScore": ua.ObjectIds.Float,
        "Pump1.AlarmWord": ua.ObjectIds.UInt16,
        "Station.Permissive": ua.ObjectIds.Boolean,
        "Simulation.Pump1.FaultInject": ua.ObjectIds.UInt16,
    }
    for tag, type_id in types.items():
        assert (await _node(client, idx, tag).read_data_type()) == ua.NodeId(type_id, 0), tag
    for tag in ("Pump1.Flow", "Pump2.BearingTemp", "Station.TankLevel", "Simulation.Time"):
        dv = await _node(client, idx, tag).read_data_value()
        assert dv.Value.Value == pytest.approx(tags[tag], rel=1e-12), tag
        assert dv.StatusCode.is_good() and dv.SourceTimestamp is not None
    assert await _node(client, idx, "Simulation.Time").read_value() == pytest.approx(20.0)


async def test_writes_go_through_the_plc_with_their_own_types(station: Station, client: Client) -> None:
    idx = await _idx(client)
    sp = _node(client, idx, "Pump1.ExternalSpeedSetpoint")
    await _write(sp, 2500.0, ua.VariantType.Double)  # permissive off: Good on the wire, tracked value
    assert await sp.read_value() == pytest.approx(station.plant.state["Pump1.SpeedSetpoint"])
    await _write(_node(client, idx, "Station.Permissive"), True, ua.VariantType.Boolean)
    await _write(_node(client, idx, "Station.AgentHeartbeat"), 1, ua.VariantType.UInt16)
    await _write(sp, 3300.0, ua.VariantType.Double)
    assert await sp.read_value() == 2950.0
    await _write(_node(client, idx, "Pump1.AnomalyScore"), 0.5, ua.VariantType.Float)
    with pytest.raises(ua.UaStatusCodeError) as err:
        await _write(sp, 2500.0, ua.VariantType.Float)  # a Double node refuses a Float
    assert err.value.code == ua.StatusCodes.BadTypeMismatch
    with pytest.raises(ua.UaStatusCodeError) as err:
        await _write(_node(client, idx, "Pump1.Flow"), 1.0, ua.VariantType.Double)
    assert err.value.code == ua.StatusCodes.BadUserAccessDenied
    with pytest.raises(ua.UaStatusCodeError) as err:
        await _write(sp, math.nan, ua.VariantType.Double)
    assert err.value.code == ua.StatusCodes.BadOutOfRange
    await station.step(5.0)
    assert station.plant.state["Pump1.SpeedSetpoint"] == 2950.0
    assert station.plant.state["Pump1.AnomalyScore"] == 0.5
    log = station.write_log
    assert [(e.tag, e.accepted, e.reason) for e in log] == [
        ("Pump1.ExternalSpeedSetpoint", False, "permissive off"),
        ("Station.Permissive", True, "permissive on"),
        ("Station.AgentHeartbeat", True, "heartbeat changed"),
        ("Pump1.ExternalSpeedSetpoint", True, "clamped to 2950"),
        ("Pump1.AnomalyScore", True, "stored"),
        ("Pump1.ExternalSpeedSetpoint", False, "type mismatch: Float written to Double node"),
        ("Pump1.Flow", False, "read-only (BadUserAccessDenied)"),
        ("Pump1.ExternalSpeedSetpoint", False, "not finite"),
    ]
    assert all(e.protocol == "opcua" for e in log)
    assert log[0].address == f"nsu={NAMESPACE_URI};s=Pump1.ExternalSpeedSetpoint"


async def test_timestamped_writes_can_be_refused_like_siemens(station: Station, client: Client) -> None:
    idx = await _idx(client)
    node = _node(client, idx, "Pump2.RecommendedSpeed")
    await node.write_value(
        2100.0, ua.VariantType.Double
    )  # asyncua's convenience write adds a SourceTimestamp
    assert await node.read_value() == 2100.0
    station.opcua.reject_write_timestamps = True  # type: ignore[union-attr]
    with pytest.raises(ua.UaStatusCodeError) as err:
        await node.write_value(2200.0, ua.VariantType.Double)
    assert err.value.code == ua.StatusCodes.BadWriteNotSupported
    await _write(node, 2300.0, ua.VariantType.Double)
    assert await node.read_value() == 2300.0
    assert [e.accepted for e in station.write_log] == [True, False, True]


async def test_fault_injection_node_and_dropout_status(station: Station, client: Client) -> None:
    idx = await _idx(client)
    await _write(
        _node(client, idx, "Simulation.Pump2.FaultInject"),
        int(FaultKind.SENSOR_DROPOUT),
        ua.VariantType.UInt16,
    )
    assert station.plant.active_faults(2) == (Fault(FaultKind.SENSOR_DROPOUT, 2),)
    await station.step(1.0)
    dv = await _node(client, idx, "Pump2.DischargePressure").read_data_value(raise_on_bad_status=False)
    assert dv.StatusCode.value == ua.StatusCodes.BadSensorFailure
    assert await _node(client, idx, "Simulation.Pump2.FaultCode").read_value() == 9
    status = await _node(client, idx, "Pump2.Status").read_value()
    assert status & 0x80
    await _write(_node(client, idx, "Simulation.Pump2.FaultInject"), 0, ua.VariantType.UInt16)
    await station.step(1.0)
    dv = await _node(client, idx, "Pump2.DischargePressure").read_data_value()
    assert dv.StatusCode.is_good() and math.isfinite(dv.Value.Value)


async def test_heartbeat_fallback_in_wall_time(station: Station, client: Client) -> None:
    idx = await _idx(client)
    station.plant.plc.heartbeat_timeout_s = 1.0
    await _write(_node(client, idx, "Station.Permissive"), True, ua.VariantType.Boolean)
    hb = _node(client, idx, "Station.AgentHeartbeat")
    for k in range(10, 14):
        await _write(hb, k, ua.VariantType.UInt16)
        await _write(_node(client, idx, "Pump2.ExternalSpeedSetpoint"), 2600.0, ua.VariantType.Double)
        await station.step(0.2)
        assert station.plant.state.external_active
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.3)  # heartbeat stops changing
    await station.step(0.2)
    assert not station.plant.state.external_active
    remote = await _node(client, idx, "Station.RemoteActive").read_value()
    assert remote is False
    assert station.plant.plc.events[-1].message == "falling back to local PI control (heartbeat stale)"


async def test_subscription_sees_published_changes(station: Station, client: Client) -> None:
    idx = await _idx(client)
    got: asyncio.Queue[float] = asyncio.Queue()

    class Handler:
        def datachange_notification(self, node, val, data) -> None:
            got.put_nowait(val)

    sub = await client.create_subscription(50, Handler())
    try:
        await sub.subscribe_data_change(_node(client, idx, "Simulation.Time"))
        first = await asyncio.wait_for(got.get(), 2)
        await station.step(3.0)
        while (value := await asyncio.wait_for(got.get(), 2)) < first + 3.0 - 1e-6:
            pass
        assert value == pytest.approx(first + 3.0)
    finally:
        await sub.delete()
