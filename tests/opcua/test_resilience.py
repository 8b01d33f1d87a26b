"""Server restarts with a reordered namespace array, silent subscriptions, CLI-style use."""

from __future__ import annotations

import asyncio
import time

import pytest
from asyncua import ua

from agent.drivers.base import Sink, Source
from agent.drivers.opcua import OpcUaDriver
from agent.types import QualityCode, Sample
from tests.opcua.conftest import (
    DECOY,
    OTHER,
    PLANT,
    Pki,
    ServerFactory,
    by_tag,
    free_port,
    make_device,
    poll_until,
    secure_overrides,
)


@pytest.mark.parametrize("mode", ["subscription", "polling"])
async def test_restart_with_reordered_namespaces_reads_the_right_nodes(
    opcua_server: ServerFactory, mode: str
) -> None:
    port = free_port()
    plant = await opcua_server(port=port, namespaces=(PLANT, OTHER))
    history: list[dict[str, Sample]] = []
    async with OpcUaDriver(make_device(plant.url, mode=mode)) as driver:
        await poll_until(driver, lambda s: s["t.Double"].value == 3.25)
        assert await driver.write("t.Int32", 5, purpose="display") == 5  # caches the Int32 data type
        old_index = plant.ns[PLANT]
        await plant.stop()

        lost = await poll_until(driver, lambda s: s["t.Double"].quality.code is QualityCode.BAD, history=history)
        assert lost["t.Double"].quality.reason.startswith("connection lost: ")
        assert driver.unit_status()[0].state == "lost"

        # Same port, namespaces registered the other way round: the old index now holds decoys.
        new = await opcua_server(port=port, namespaces=(OTHER, PLANT), values={"Double": 6.5, "Int32": 77})
        assert new.ns[PLANT] != old_index and new.ns[OTHER] == old_index
        got = await poll_until(driver, lambda s: s["t.Double"].quality.is_good, history=history)
        assert got["t.Double"].value == 6.5 and got["t.Int32"].value == 77
        assert got["t.Double"].value != DECOY
        assert driver.unit_status()[0].state == "ok"
        status = driver.status()
        assert status.connects == 2
        # After the loss, nothing GOOD came from the old session.
        for snapshot in history:
            s = snapshot["t.Double"]
            assert not s.quality.is_good or s.value == 6.5, s

        # Writes go to the re-resolved node, with the type read again on the new session.
        assert await driver.write("t.Double", 8.0, purpose="display") == 8.0
        assert await driver.write("t.Int32", 9, purpose="display") == 9
        assert (await new.value("Double")).Value.Value == 8.0
        decoy = new.server.get_node(ua.NodeId("Plant.Double", new.ns[OTHER]))
        assert (await decoy.read_value()) == DECOY
        if mode == "subscription":
            await new.node("Double").write_value(ua.Variant(9.5, ua.VariantType.Double))
            await poll_until(driver, lambda s: s["t.Double"].value == 9.5)


async def test_silent_subscription_is_detected_and_rebuilt(opcua_server: ServerFactory) -> None:
    plant = await opcua_server()
    dev = make_device(plant.url, publishing_interval_ms=50, keepalive_count=3, timeout_ms=500)
    async with OpcUaDriver(dev) as driver:
        await poll_until(driver, lambda s: s["t.Double"].quality.is_good)
        before = driver.status()
        assert before.keepalive_s == pytest.approx(0.15)
        assert plant.silence_subscriptions() == 1
        # This change is never published by the silenced subscription: only a rebuild sees it.
        await plant.node("Double").write_value(ua.Variant(5.0, ua.VariantType.Double))
        got = await poll_until(driver, lambda s: s["t.Double"].value == 5.0, within=5)
        assert got["t.Double"].quality.is_good
        after = driver.status()
        assert after.resubscribes == 1
        assert after.subscription_id != before.subscription_id
        assert after.connects == 1  # the session was fine: only the subscription was rebuilt
        await plant.node("Double").write_value(ua.Variant(6.0, ua.VariantType.Double))
        await poll_until(driver, lambda s: s["t.Double"].value == 6.0)


async def test_unchanged_values_age_while_the_subscription_is_silent(opcua_server: ServerFactory) -> None:
    """Until the silence is detected, re-issued values keep the time the server was last heard
    from, so a tag table sees them age instead of looking fresh."""
    plant = await opcua_server()
    dev = make_device(plant.url, publishing_interval_ms=50, keepalive_count=20, timeout_ms=500)
    async with OpcUaDriver(dev) as driver:
        await poll_until(driver, lambda s: s["t.Double"].quality.is_good)
        plant.silence_subscriptions()
        await asyncio.sleep(0.2)  # a publish response already on its way may still land
        first = by_tag(await driver.poll(time.monotonic() + 1))
        await poll_until(driver, lambda s: time.monotonic() - s["t.String"].mono > 0.5, within=1.5)
        later = by_tag(await driver.poll(time.monotonic() + 1))
        assert later["t.String"].mono == first["t.String"].mono


async def test_cli_style_check_read_write(opcua_server: ServerFactory, pki: Pki) -> None:
    """What `edge-agent check --connect`, `read` and `write` do with an OPC UA device."""
    plant = await opcua_server(secure=True, trusted_clients=pki.server_trust)
    dev = make_device(plant.url, **secure_overrides(pki))
    unopened = OpcUaDriver(dev)
    assert isinstance(unopened, Source) and isinstance(unopened, Sink)
    with pytest.raises(RuntimeError, match="outside 'async with'"):
        await unopened.poll(time.monotonic() + 1)
    # check --connect / read: one driver, one poll, then the unit status
    async with OpcUaDriver(dev) as driver:
        budget = dev.timeout_ms / 1000 * (len(dev.tags) + 2)
        samples = await driver.poll(time.monotonic() + budget)
        status = driver.unit_status()
    assert len(samples) == len(dev.tags)
    assert [(s.unit, s.state, s.last_error) for s in status] == [(0, "ok", "")]
    # write: a fresh driver, one write, the value read back
    async with OpcUaDriver(dev) as driver:
        assert await driver.write("t.Double", 42.5, purpose="display") == 42.5
    assert (await plant.value("Double")).Value.Value == 42.5
    # check --connect against a device that is not there
    gone = make_device(f"opc.tcp://127.0.0.1:{free_port()}/", **secure_overrides(pki))
    async with OpcUaDriver(gone) as driver:
        await driver.poll(time.monotonic() + 1)
        (st,) = driver.unit_status()
    assert st.state == "lost" and "connection refused" in st.last_error
