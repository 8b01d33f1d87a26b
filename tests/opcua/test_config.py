"""OPC UA configuration: node ids, secure by default, validation messages."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.drivers.opcua_config import OpcUaDevice, OpcUaTag, ParsedNodeId, parse_node_id

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("nsu=urn:plc:app;s=Pump1.Speed", ParsedNodeId("urn:plc:app", None, "s", "Pump1.Speed")),
        ("nsu=http://x.org/UA/;i=1001", ParsedNodeId("http://x.org/UA/", None, "i", "1001")),
        # a string identifier may itself contain ';' and '='
        ("nsu=urn:a;s=DB1;X=2", ParsedNodeId("urn:a", None, "s", "DB1;X=2")),
        ("ns=3;s=\"DB1\".\"Speed\"", ParsedNodeId(None, 3, "s", '"DB1"."Speed"')),
        ("i=2258", ParsedNodeId(None, 0, "i", "2258")),
        (
            "nsu=urn:a;g=09087E75-8E5E-499B-954F-F2A9603DB28A",
            ParsedNodeId("urn:a", None, "g", "09087e75-8e5e-499b-954f-f2a9603db28a"),
        ),
        ("nsu=urn:a;b=M/RbKBsRVkePCePcx24oRA==", ParsedNodeId("urn:a", None, "b", "M/RbKBsRVkePCePcx24oRA==")),
    ],
)
def test_node_ids(text: str, parsed: ParsedNodeId) -> None:
    assert parse_node_id(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Pump1.Speed", "node_id must look like 'nsu=<namespace uri>;s=<name>'"),
        ("nsu=urn:a;x=1", "node_id must look like"),
        ("nsu=urn:a;i=12a", "must be an integer"),
        ("nsu=urn:a;s=", "must not be empty"),
        ("nsu=urn:a;g=not-a-guid", "is not a GUID"),
        ("nsu=urn:a;b=***", "is not base64"),
        ("ns=70000;i=1", "out of range"),
    ],
)
def test_bad_node_ids(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_node_id(text)
    with pytest.raises(ValidationError, match=message):
        OpcUaTag(name="t", node_id=text)


def device(**overrides: Any) -> OpcUaDevice:
    data: dict[str, Any] = {
        "protocol": "opcua",
        "name": "plc1",
        "endpoint": "opc.tcp://10.0.0.5:4840",
        "certificate": "/pki/own/cert.der",
        "private_key": "/pki/own/key.pem",
        "trust_dir": "/pki/trusted",
        "tags": [{"name": "pump1.speed", "node_id": "nsu=urn:plc1;s=Pump1.Speed", "range": [0, 3000]}],
    }
    data.update(overrides)
    return OpcUaDevice.model_validate(data)


def test_secure_by_default() -> None:
    dev = device()
    assert (dev.security_policy, dev.security_mode, dev.secure) == ("Basic256Sha256", "SignAndEncrypt", True)
    assert dev.endpoint == "opc.tcp://10.0.0.5:4840"
    assert dev.mode == "subscription"


def test_mode_none_needs_allow_insecure() -> None:
    with pytest.raises(ValidationError, match="set allow_insecure: true") as info:
        device(security_policy="None", security_mode="None")
    assert "security_mode None" in str(info.value)
    dev = device(security_policy="None", security_mode="None", allow_insecure=True)
    assert not dev.secure


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"security_policy": "None"}, "security_policy None goes with security_mode None only"),
        ({"security_mode": "None", "allow_insecure": True}, "security_policy None goes with"),
        ({"certificate": None}, "needs certificate"),
        ({"certificate": None, "private_key": None}, "needs certificate and private_key"),
        ({"trust_dir": None}, "needs trusted_server_certificates or trust_dir"),
        ({"password": {"env": "PW"}}, "password is set but username is not"),
        ({"endpoint": "http://10.0.0.5:4840"}, "endpoint must look like opc.tcp://"),
        ({"endpoint": "opc.tcp://user:pw@10.0.0.5:4840"}, "put no credentials in the endpoint URL"),
        ({"endpoint": "opc.tcp://10.0.0.5:99999"}, "invalid port"),
        ({"endpoint": "opc.tcp://10.0.0.5"}, "endpoint needs a port"),
        ({"security_policy": "Basic128Rsa15"}, "Input should be"),
        ({"backoff_ms": 5000, "backoff_max_ms": 1000}, "backoff_max_ms must be >= backoff_ms"),
        ({"queue_size": 0}, "greater than or equal to 1"),
        ({"tags": [{"name": "1bad", "node_id": "i=1"}]}, "String should match pattern"),
        ({"tags": [{"name": "t", "node_id": "i=1", "range": [5, 1]}]}, "range must be"),
        ({"publish_interval": 5}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_devices(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        device(**overrides)


def test_password_is_a_secret_and_never_printed() -> None:
    dev = device(username="edge", password={"env": "OPCUA_PW"})
    assert "OPCUA_PW" in repr(dev.password)
    assert dev.trusted_server_certificates == [] and dev.trust_dir == Path("/pki/trusted")


def test_stale_limits() -> None:
    dev = device(poll_interval_ms=1000, timeout_ms=2000, publishing_interval_ms=1000, keepalive_count=5)
    tag = dev.tags[0]
    assert dev.keepalive_s == 5.0
    assert dev.stale_limit_s(tag) == 12.0  # two keep-alive periods plus a timeout
    assert device(mode="polling").stale_limit_s(tag) == 5.0  # three polls plus a timeout
    assert device(stale_after_ms=700).stale_limit_s(tag) == 0.7
    tagged = device(tags=[{"name": "t", "node_id": "i=1", "stale_after_ms": 300}])
    assert tagged.stale_limit_s(tagged.tags[0]) == 0.3


def test_asyncua_is_imported_only_when_an_opcua_device_is_built() -> None:
    code = textwrap.dedent(
        """
        import sys
        import agent.drivers.opcua_config
        import agent.drivers.opcua
        import agent.ops.certs
        import agent.config
        import agent.drivers
        dev = agent.drivers.opcua_config.OpcUaDevice.model_validate(
            {"protocol": "opcua", "name": "p", "endpoint": "opc.tcp://h:4840", "security_mode": "None",
             "security_policy": "None", "allow_insecure": True,
             "tags": [{"name": "t", "node_id": "nsu=urn:x;s=a"}]})
        cfg = agent.config.parse_config("devices: [{name: m, protocol: modbus_tcp, host: h}]")
        agent.drivers.make_driver(cfg.devices[0])
        loaded = sorted(m for m in sys.modules if m == "asyncua" or m.startswith("asyncua."))
        if loaded:
            print("imported without an OPC UA device:", loaded)
            sys.exit(1)
        # Built with a device: imported now, while the agent is being built, not inside the
        # first poll on the event loop (that would stall the other devices).
        agent.drivers.opcua.OpcUaDriver(dev)
        sys.exit(0 if "asyncua" in sys.modules else 2)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
