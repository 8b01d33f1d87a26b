"""The running agent's ``record:`` section against the embedded plant.

Real parts: the plant's Modbus server, a counting TCP proxy in front of it (the PLC's view of
its clients), the real Agent with the demo config. The agent records from the polls it already
makes: the PLC sees one client. A write error stops the recording and nothing else.
"""

from __future__ import annotations

import csv
import json

import pytest
from prometheus_client import generate_latest

from agent.config import Config
from agent.ops.metrics import make_registry
from agent.ops.status import format_status, status_document
from agent.record import MANIFEST_FILE
from simulator import Plant, serve
from tests.e2e.plant_fixtures import demo_config_data, running_agent, wait_until
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.timeout(90)


async def test_the_running_agent_records_from_its_own_polls_and_survives_a_write_error(tmp_path) -> None:
    rec_dir = tmp_path / "rec"
    async with serve(Plant(seed=4), modbus_port=0, opcua_port=None) as station:
        assert station.modbus_port is not None
        async with FaultProxy(station.modbus_port) as proxy:
            data = demo_config_data()
            data["agent"].update(state_dir=str(tmp_path / "state"), log_level="warning")
            data["devices"][0]["port"] = proxy.port
            data["record"] = {"model": "pca-pump", "dir": str(rec_dir), "flush_s": 0.5, "manifest_s": 0.5}
            config = Config.model_validate(data)
            binding = next(m for m in data["models"] if m["name"] == "pca-pump")
            bound = list(dict.fromkeys(tag for roles in binding["assets"].values() for tag in roles.values()))
            async with running_agent(config) as agent:
                rec = agent.recorder
                assert rec is not None and rec.period_s == 1.0  # the model's sample period
                await wait_until(lambda: rec.status()["rows"] >= 3, timeout_s=15, what="3 rows recorded")
                assert proxy.accepted == 1  # the agent's own connection, and no other

                doc = status_document(agent)
                assert doc["recording"]["state"] == "recording" and doc["recording"]["files"] == 2
                shown = format_status(doc)
                assert f"recording: recording, {len(bound)} tags every 1 s into {rec_dir}" in shown
                metrics = generate_latest(make_registry(agent)).decode()
                assert 'edge_agent_recording_state{state="recording"} 1.0' in metrics
                assert "edge_agent_recording_files 2.0" in metrics

                # a directory where the manifest is written: the next flush fails
                (rec_dir / (MANIFEST_FILE + ".tmp")).mkdir()
                await wait_until(lambda: rec.state == "stopped", timeout_s=10, what="recording stopped")
                cycles = agent.view.cycles
                await wait_until(lambda: agent.view.cycles >= cycles + 2, timeout_s=10, what="more cycles")
                doc = status_document(agent)
                assert doc["recording"]["state"] == "stopped"
                assert "Is a directory" in doc["recording"]["reason"]
                metrics = generate_latest(make_registry(agent)).decode()
                assert 'edge_agent_recording_state{state="stopped"} 1.0' in metrics
                assert "edge_agent_recording_write_errors_total 1.0" in metrics
                assert agent.audit.healthy and not agent.view.devices_lost
            assert proxy.accepted == 1

    manifest = json.loads((rec_dir / MANIFEST_FILE).read_text())  # the last one written
    wide = next(f for f in manifest["files"] if f["kind"] == "wide")
    with (rec_dir / wide["name"]).open() as fh:
        header, *rows = list(csv.reader(fh))
    assert header == ["timestamp", *bound]
    assert len(rows) >= 3 and all(all(cell for cell in r) for r in rows)  # every tag GOOD
