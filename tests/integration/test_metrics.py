"""The Prometheus endpoint of the real Agent against the embedded plant, scraped over HTTP.

Everything is real: the plant's Modbus server, the Agent on the demo config, the endpoint on
127.0.0.1 (a free port), prometheus-client's own parser. Counters are judged by exact changes
between two scrapes: a scrape is taken in one pass of the agent's event loop, so the counters
it shows are consistent with each other (every poll of a device is counted once in ``polls``,
in the latency histogram and in its samples).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config, parse_config
from agent.errors import ConfigError
from agent.ops.audit import AuditConfig, query_audit
from agent.ops.metrics import METRICS
from agent.ops.metrics_config import MetricsConfig
from agent.pipeline.alarms import ALARM_KINDS
from simulator import Fault, FaultKind, Plant, serve
from tests.e2e.plant_fixtures import demo_config_data, modbus_test_config, running_agent, wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(
    port: int, path: str = "/metrics", method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


async def scrape(port: int) -> tuple[Scrape, set[str]]:
    status, headers, body = await http_get(port)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    assert int(headers["content-length"]) == len(body)
    samples: Scrape = {}
    families = set()
    for fam in text_string_to_metric_families(body.decode()):
        families.add(fam.name)
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families


def val(samples: Scrape, metric: str, /, **labels: str) -> float:
    key = (metric, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {metric}{labels}; have {sorted(k for k in samples if k[0] == metric)}"
    return samples[key]


def labelled(samples: Scrape, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def with_metrics(cfg: Config, **changes: Any) -> Config:
    agent = cfg.agent.model_copy(update={"metrics": MetricsConfig(listen="127.0.0.1:0")})
    return cfg.model_copy(update={"agent": agent, **changes})


def readable_tags(cfg: Config) -> int:
    (dev,) = cfg.devices
    return sum(1 for t in dev.tags if t.access != "write")


async def polls_after(agent: Any, n: int) -> None:
    (runner,) = agent.runners.values()
    target = runner.counters.polls + n
    await wait_until(lambda: runner.counters.polls >= target, timeout_s=10, what=f"{n} more polls")


async def test_scraped_metrics_and_their_exact_changes_after_faults(tmp_path: Path) -> None:
    plant = Plant(seed=5, permissive=True)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=1) as station:
        cfg = with_metrics(modbus_test_config(station.modbus_port, tmp_path / "state"))
        n_tags = readable_tags(cfg)
        async with running_agent(cfg) as agent:
            port = agent.metrics_server.port
            assert port > 0
            await polls_after(agent, 2)
            m, families = await scrape(port)
            # every family the collector documents is there (and nothing undocumented of ours)
            ours = {f for f in families if f.startswith("edge_agent")}
            documented = {n + "_info" if kind == "info" else n for n, (kind, _) in METRICS.items()}
            assert ours == documented, ours ^ documented
            assert val(m, "edge_agent_info", name="demo-gateway", config=agent.config_path) == 1
            polls = val(m, "edge_agent_polls_total", device="plant")
            assert polls >= 2
            assert val(m, "edge_agent_poll_duration_seconds_count", device="plant") == polls
            assert val(m, "edge_agent_poll_duration_seconds_bucket", device="plant", le="+Inf") == polls
            assert val(m, "edge_agent_device_connected", device="plant") == 1
            assert val(m, "edge_agent_unit_up", device="plant", unit="1") == 1
            assert val(m, "edge_agent_breaker_open", device="plant", unit="1") == 0
            assert val(m, "edge_agent_audit_healthy") == 1
            assert val(m, "edge_agent_cycles_total") >= 1
            assert 0 <= val(m, "edge_agent_last_good_sample_age_seconds", device="plant") < 5
            manifest = json.loads((ROOT / "models" / "pca-pump" / "manifest.json").read_text())
            info = labelled(m, "edge_agent_model_info")
            pca = [dict(k) for k in info if dict(k)["model"] == "pca-pump"]
            assert len(pca) == 1 and pca[0]["version"] == str(manifest["version"])
            assert pca[0]["signature"] == "signed" and pca[0]["variant"].endswith(".onnx")
            # 4 severities x every alarm kind (alarm, alert, bad_pv), zero or not
            assert len(labelled(m, "edge_agent_alarms_active")) == 4 * len(ALARM_KINDS)
            # every sample of every poll is counted, by quality
            good = val(m, "edge_agent_samples_total", device="plant", quality="GOOD")
            bad = val(m, "edge_agent_samples_total", device="plant", quality="BAD")
            unc = val(m, "edge_agent_samples_total", device="plant", quality="UNCERTAIN")
            assert good + bad + unc == polls * n_tags

            # A sensor in dropout: exactly one tag BAD in every poll from now on.
            plant.inject(Fault(FaultKind.SENSOR_DROPOUT, pump=1, tag="DischargePressure"))
            await wait_until(
                lambda: not agent.table.get("Pump1.DischargePressure").quality.is_good,
                timeout_s=5,
                what="the dropout to reach the agent",
            )
            a, _ = await scrape(port)
            await polls_after(agent, 3)
            b, _ = await scrape(port)
            d_polls = val(b, "edge_agent_polls_total", device="plant") - val(
                a, "edge_agent_polls_total", device="plant"
            )
            assert d_polls >= 3

            def delta(metric: str, x: Scrape, y: Scrape, /, **labels: str) -> float:
                return val(y, metric, **labels) - val(x, metric, **labels)

            assert delta("edge_agent_samples_total", a, b, device="plant", quality="BAD") == d_polls
            assert delta("edge_agent_samples_total", a, b, device="plant", quality="GOOD") == d_polls * (
                n_tags - 1
            )
            assert delta("edge_agent_poll_duration_seconds_count", a, b, device="plant") == d_polls

            # The PLC's server goes away: every tag BAD in every poll, the link's breaker open.
            await station.modbus.stop()
            await wait_until(
                lambda: agent.drivers["plant"].unit_status()[0].breaker == "open",
                timeout_s=10,
                what="the breaker to open",
            )
            c, _ = await scrape(port)
            await polls_after(agent, 3)
            d, _ = await scrape(port)
            d_polls = val(d, "edge_agent_polls_total", device="plant") - val(
                c, "edge_agent_polls_total", device="plant"
            )
            assert d_polls >= 3
            assert delta("edge_agent_samples_total", c, d, device="plant", quality="GOOD") == 0
            assert delta("edge_agent_samples_total", c, d, device="plant", quality="BAD") == d_polls * n_tags
            assert val(d, "edge_agent_device_connected", device="plant") == 0
            assert val(d, "edge_agent_unit_up", device="plant", unit="1") == 0
            assert val(d, "edge_agent_breaker_open", device="plant", unit="1") == 1
            age_c = val(c, "edge_agent_last_good_sample_age_seconds", device="plant")
            assert val(d, "edge_agent_last_good_sample_age_seconds", device="plant") > age_c
            # the heartbeat could not be written: counted as failed HMI writes
            assert delta("edge_agent_hmi_writes_total", c, d, purpose="heartbeat", result="written") == 0
            assert delta("edge_agent_hmi_writes_total", c, d, purpose="heartbeat", result="failed") >= 1

            # only /metrics, only GET
            assert (await http_get(port, "/"))[0] == 404
            assert (await http_get(port, "/metrics", method="POST"))[0] == 405
    # the endpoint closed with the agent
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def _advise_with_unmapped_recommendation(port: int, state_dir: Path) -> Config:
    """The demo in advise mode, pump 1's recommendation tag moved to a holding register the
    PLC does not map (HR 300): the PLC refuses every write of it (exception 02)."""
    data = demo_config_data()
    data["agent"]["state_dir"] = str(state_dir)
    (device,) = data["devices"]
    device["port"] = port
    device["tags"].append(
        {
            "name": "Pump1.Advice",
            "table": "holding",
            "address": 300,
            "type": "float32",
            "word_order": "ABCD",
            "engineering_unit": "rpm",
            "access": "read-write",
            "purpose": "recommendation",
        }
    )
    guard = data["guard"]
    guard["mode"] = "advise"
    guard["allow_list"] = [*guard["allow_list"], "Pump1.Advice"]
    guard["targets"][0]["recommendation_tag"] = "Pump1.Advice"
    return with_metrics(Config.model_validate(data))


async def test_a_refused_write_is_counted_as_the_audit_and_the_plc_saw_it(tmp_path: Path) -> None:
    plant = Plant(seed=6, permissive=True)
    async with serve(plant, modbus_port=0, opcua_port=None, speed=1) as station:
        cfg = _advise_with_unmapped_recommendation(station.modbus_port, tmp_path / "state")
        async with running_agent(cfg) as agent:
            port = agent.metrics_server.port
            outcomes = agent.writeback.outcomes
            await wait_until(
                lambda: outcomes["refused"] >= 1 and outcomes["verified"] >= 1,
                timeout_s=30,
                what="a refused write (pump 1) and a verified one (pump 2)",
            )
            # The agent keeps writing while we look: take the audit and the PLC's write log
            # between two scrapes that agree, so all three describe the same moment.
            for _ in range(20):
                before, _ = await scrape(port)
                rows = query_audit(AuditConfig(path=tmp_path / "state" / "audit.sqlite"))
                plc_log = list(station.write_log)
                after, _ = await scrape(port)
                if labelled(before, "edge_agent_setpoint_writes_total") == labelled(
                    after, "edge_agent_setpoint_writes_total"
                ):
                    break
            else:
                pytest.fail("the write counters never held still across two scrapes")
            m = after
            refused = val(m, "edge_agent_setpoint_writes_total", outcome="refused")
            assert refused >= 1
            assert sum(1 for r in rows if r.kind == "outcome" and r.action == "refused") == refused
            plc = [e for e in plc_log if e.address.startswith("HR 300")]
            assert not any(e.accepted for e in plc)
            assert refused <= len(plc) <= refused + 1  # + one whose refusal is still on the wire
            decided = labelled(m, "edge_agent_guard_decisions_total")
            writes = sum(v for k, v in decided.items() if dict(k)["action"] in ("WRITE", "CLAMP"))
            assert writes >= refused  # every refused write was decided (and audited) first
            # pump 2's advice goes to its mapped register: verified, and the PLC took each one
            verified = val(m, "edge_agent_setpoint_writes_total", outcome="verified")
            assert sum(1 for r in rows if r.kind == "outcome" and r.action == "verified") == verified
            taken = [e for e in plc_log if e.tag == "Pump2.RecommendedSpeed" and e.accepted]
            assert 1 <= verified <= len(taken)
            holds = sum(v for k, v in decided.items() if dict(k)["action"] == "HOLD")
            assert holds >= 1  # before the origin was confirmed, and after the refusal


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("0.0.0.0:9108", "is not a loopback address"),
        ("192.168.1.10:9108", "is not a loopback address"),
        ("127.0.0.1", "expected host:port"),
        ("127.0.0.1:70000", "is not in 0..65535"),
    ],
)
def test_a_non_loopback_or_malformed_listen_is_refused_with_file_line_field(
    listen: str, problem: str
) -> None:
    text = f"agent:\n  name: x\n  metrics:\n    listen: {listen!r}\ndevices: []\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "configs/x.yaml")
    line = next(p for p in err.value.problems if "metrics" in p)
    assert line.startswith("configs/x.yaml:3 agent.metrics: ") or line.startswith(
        "configs/x.yaml:4 agent.metrics"
    )
    assert problem in line


def test_remote_listen_only_when_allowed() -> None:
    cfg = MetricsConfig(listen="0.0.0.0:9108", allow_remote=True)
    assert cfg.listen == "0.0.0.0:9108"
    assert MetricsConfig(listen="[::1]:9108").listen == "[::1]:9108"
    with pytest.raises(ValueError, match="not an IP address"):
        MetricsConfig(listen="gateway.local:9108", allow_remote=True)


def test_certificate_expiry_and_an_agent_not_yet_polling(tmp_path: Path) -> None:
    """The collector on an Agent that has not started (no pollers, no Guard, no model): every
    documented family is there, and the OPC UA client certificate's expiry as a timestamp."""
    from prometheus_client import generate_latest

    from agent.ops.certs import create_certificate
    from agent.ops.metrics import make_registry
    from agent.runtime import Agent

    cert, key = tmp_path / "cert.der", tmp_path / "key.pem"
    info = create_certificate(cert, key, application_uri="urn:test:agent", days=90)
    cfg = Config.model_validate(
        {
            "agent": {"state_dir": str(tmp_path / "state"), "metrics": {"listen": "127.0.0.1:0"}},
            "devices": [
                {
                    "protocol": "opcua",
                    "name": "ua",
                    "endpoint": "opc.tcp://127.0.0.1:4840",
                    "certificate": str(cert),
                    "private_key": str(key),
                    "trusted_server_certificates": [str(cert)],
                    "tags": [{"name": "x", "node_id": "ns=2;s=x"}],
                }
            ],
        }
    )
    agent = Agent(cfg, config_path=tmp_path / "agent.yaml")
    text = generate_latest(make_registry(agent)).decode()
    samples: Scrape = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert val(
        samples, "edge_agent_certificate_expiry_timestamp_seconds", device="ua", path=str(cert)
    ) == pytest.approx(info.not_after.timestamp())
    assert val(samples, "edge_agent_device_connected", device="ua") == 0
    assert val(samples, "edge_agent_unit_up", device="ua", unit="0") == 0
    assert val(samples, "edge_agent_poll_duration_seconds_count", device="ua") == 0
    assert val(samples, "edge_agent_cycles_total") == 0
    assert not labelled(samples, "edge_agent_setpoint_writes_total")  # no Guard: no writes
    assert val(samples, "process_resident_memory_bytes") > 0  # the process collector, same registry


async def test_a_port_in_use_is_logged_and_audited_and_the_agent_runs_on(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plant = Plant(seed=7, permissive=True)
        async with serve(plant, modbus_port=0, opcua_port=None, speed=1) as station:
            cfg = modbus_test_config(station.modbus_port, tmp_path / "state")
            agent_cfg = cfg.agent.model_copy(update={"metrics": MetricsConfig(listen=f"127.0.0.1:{port}")})
            async with running_agent(cfg.model_copy(update={"agent": agent_cfg})) as agent:
                assert agent.metrics_server is None
                await polls_after(agent, 2)  # control goes on
    rows = query_audit(AuditConfig(path=tmp_path / "state" / "audit.sqlite"))
    failed = [r for r in rows if r.kind == "event" and r.action == "service_failed"]
    assert len(failed) == 1 and f"metrics endpoint 127.0.0.1:{port}" in failed[0].message
