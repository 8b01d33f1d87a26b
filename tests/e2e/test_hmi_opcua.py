"""The same HMI block, written to the plant over OPC UA.

The real ``Agent`` runs on the demo configuration with its device replaced by the plant's OPC UA
server (``simulator.serve(opcua_port=0)``): every demo tag becomes the node of the same name,
addressed by namespace URI (``nsu=urn:edge-inference-agent:simulator;s=Pump1.AlarmWord`` ...),
security None with ``allow_insecure: true`` (a simulator on 127.0.0.1). The server runs with
``reject_write_timestamps=True``, as Siemens S7-1200/1500 do: a write carrying a Source- or
ServerTimestamp is refused with ``BadWriteNotSupported``, so every HMI value that arrives proves
the agent wrote the bare value, with the node's own data type (words UInt16, AnomalyScore Float,
setpoints Double; a Variant of another type would be refused with ``BadTypeMismatch``).

What is scaled, and why:

* the plant runs at 10x (the cavitation signature is immediate; the speed only shortens the
  plant's own transients);
* every non-zero on-delay is 2 s instead of the demo's 10 s, every non-zero off-delay 2 s;
* the assets' ``anomaly_source`` is the overall vibration value instead of ``pca-pump.t2``: the
  PCA model scores only once its 60-sample window is full (60 s at the 1 s cycle), longer than
  this test may take, and without a source the agent writes nothing to the Float node
  ``PumpN.AnomalyScore``. The vibration value exercises the same write path (a float written to a
  Float node) from the first cycle.
* the operator permissive is on from the start (``Plant(permissive=True)``), so the Guard (auto)
  writes the Double setpoint nodes as well.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from agent.types import AlarmState
from simulator import FaultKind, Plant, serve

from .plant_fixtures import (
    CYCLE_S,
    NAMESPACE_URI,
    POLL_S,
    alarm_def,
    bit,
    demo_config_data,
    opcua_test_config,
    running_agent,
    status_has,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

SUCTION_LOW = alarm_def(demo_config_data(), "suction_low")["code"]


async def test_alarm_shows_in_the_plant_opcua_hmi_nodes_written_without_timestamps(tmp_path: Path) -> None:
    """Cavitation on pump 1 → suction_low in the plant's OPC UA node Pump1.AlarmWord.

    Read back with a plain asyncua client: the HMI nodes hold the agent's values with their own
    data types; the plant's write log shows no refused write from the agent (none with a
    timestamp, none of a wrong type), while a timestamped write of our own is refused, which
    shows the server really enforces it.
    """
    on_delay = 2.0
    plant = Plant(seed=4, permissive=True)
    async with serve(
        plant,
        modbus_port=None,
        opcua_port=0,
        speed=10,
        heartbeat_timeout_s=5,
        opcua_options={"reject_write_timestamps": True},
    ) as station:
        endpoint = station.opcua_endpoint
        assert endpoint is not None
        config = opcua_test_config(
            endpoint, tmp_path / "state", on_delay_s=on_delay, anomaly_source="vibration"
        )
        client = Client(endpoint, timeout=5)
        async with running_agent(config) as agent, client:
            ns = await client.get_namespace_index(NAMESPACE_URI)

            def node(tag: str) -> Any:
                return client.get_node(f"ns={ns};s={tag}")

            async def read(tag: str) -> ua.DataValue:
                dv = await node(tag).read_data_value()
                assert dv.StatusCode is None or dv.StatusCode.is_good(), f"{tag}: {dv.StatusCode}"
                return dv

            # the server refuses what asyncua's convenience write sends (a SourceTimestamp)
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await node("Pump1.RecommendedSpeed").write_value(1800.0, ua.VariantType.Double)
            assert refused.value.code == ua.StatusCodes.BadWriteNotSupported

            # the measurements arrive GOOD through the nsu= node ids
            await wait_until(
                lambda: all(
                    (s := agent.view.tags.get(t)) is not None and s.quality.is_good
                    for t in ("Pump1.SuctionPressure", "Pump2.SuctionPressure", "Station.Acknowledge")
                ),
                timeout_s=3 * CYCLE_S,
                what="GOOD samples over OPC UA",
            )

            # the operator injects cavitation through the simulation node (a bare UInt16, no timestamp)
            t_inject = time.monotonic()
            await node("Simulation.Pump1.FaultInject").write_value(
                ua.DataValue(ua.Variant(int(FaultKind.CAVITATION), ua.VariantType.UInt16))
            )
            assert plant.fault_code(1) == int(FaultKind.CAVITATION)

            async def raised() -> bool:
                return bool((await read("Pump1.AlarmWord")).Value.Value & bit(SUCTION_LOW))

            await wait_until(
                raised,
                timeout_s=on_delay + 2 * CYCLE_S + POLL_S + 3,
                what="suction_low bit on the OPC UA node",
            )
            assert time.monotonic() - t_inject >= on_delay
            assert agent.alarms.state("pump1", SUCTION_LOW) is AlarmState.UNACK

            # the whole block, read back from the server, each value with its node's type
            want = {
                "Pump1.AlarmWord": bit(SUCTION_LOW),
                "Pump1.HighestSeverity": 3,
                "Pump1.ActiveAlarmCount": 1,
                "Pump1.FirstOutCode": SUCTION_LOW,
                "Pump1.FaultClass": 0,
                "Pump2.AlarmWord": 0,
                "Pump2.HighestSeverity": 0,
                "Pump2.ActiveAlarmCount": 0,
                "Pump2.FirstOutCode": 0,
            }

            async def block_as_wanted() -> dict[str, Any] | None:
                got = {t: (await read(t)).Value.Value for t in want}
                return got if got == want else None

            await wait_until(block_as_wanted, timeout_s=CYCLE_S, what=f"HMI nodes = {want}")
            for tag in want:
                assert (await read(tag)).Value.VariantType is ua.VariantType.UInt16, tag
            assert plant.state.tags["Pump1.AlarmWord"] == bit(SUCTION_LOW)  # the PLC's own memory agrees

            # heartbeat and status word (UInt16 nodes)
            hb1 = await read("Station.AgentHeartbeat")
            await wait_until(
                lambda: _changed(read, "Station.AgentHeartbeat", hb1.Value.Value),
                timeout_s=2 * CYCLE_S + 0.5,
                what="heartbeat change",
            )
            assert hb1.Value.VariantType is ua.VariantType.UInt16
            status = await read("Station.AgentStatus")
            assert status.Value.VariantType is ua.VariantType.UInt16
            assert status_has(status.Value.Value, "running") and status_has(status.Value.Value, "audit_ok")
            assert status.Value.Value >> 8 == 0  # no device lost
            assert (await read("Station.HeartbeatOk")).Value.Value is True

            # AnomalyScore: a Float node, holding what the agent wrote
            score = await read("Pump1.AnomalyScore")
            assert score.Value.VariantType is ua.VariantType.Float
            written = [
                e for e in station.write_log if e.tag == "Pump1.AnomalyScore" and e.protocol == "opcua"
            ]
            assert written and all(e.accepted for e in written)
            assert math.isclose(score.Value.Value, float(written[-1].applied), rel_tol=1e-6)
            assert 0.3 < score.Value.Value < 25  # an overall vibration in mm/s

            # setpoints: the Guard (auto, permissive on) writes the Double nodes, verified by read-back
            await wait_until(
                lambda: any(
                    e.tag in ("Pump1.ExternalSpeedSetpoint", "Pump2.ExternalSpeedSetpoint") and e.accepted
                    for e in station.write_log
                ),
                timeout_s=4 * CYCLE_S,
                what="a setpoint write",
            )
            for tag in ("Pump1.ExternalSpeedSetpoint", "Pump2.ExternalSpeedSetpoint"):
                assert (await read(tag)).Value.VariantType is ua.VariantType.Double
            assert agent.view.writes >= 1
            assert agent.view.verify_failures == 0

            # nothing the agent wrote was refused: no timestamp, no type mismatch, no range error
            probe = "Pump1.RecommendedSpeed"  # written by the agent in advise mode only (this is auto)
            ours = [e for e in station.write_log if e.protocol == "opcua" and e.tag != probe]
            # RUL comes from a model with a 60 s window: not yet written in this short run
            hmi_tags = {t for a in config.assets for f, t in a.hmi.items() if f != "rul"}
            assert hmi_tags | {"Station.AgentHeartbeat", "Station.AgentStatus"} <= {e.tag for e in ours}
            refused_writes = [(e.tag, e.reason) for e in ours if not e.accepted]
            assert not refused_writes, refused_writes
            mine = [e for e in station.write_log if e.tag == probe]
            assert len(mine) == 1 and not mine[0].accepted and "timestamp" in mine[0].reason


async def _changed(read: Any, tag: str, before: Any) -> bool:
    return bool((await read(tag)).Value.Value != before)
