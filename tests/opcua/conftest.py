"""Real asyncua servers on 127.0.0.1 (free ports), with certificates the tests create.

* ``pki``: certificates made with :mod:`agent.ops.certs` (server, impostor server, client,
  untrusted client, soon-expiring client) and the trust folders of both sides.
* ``opcua_server``: a factory of "plant" servers with a variable of every common type in the
  namespace ``urn:test:plant``, and decoys with the same string ids in ``urn:test:other`` (a
  client that uses a stale namespace index reads a decoy). Options: port, namespace order,
  security, trusted clients, users. Servers are stopped at the end of the test.
* Startup cost: asyncua builds its standard address space in ~2-3 s; it is built once per
  session into a shelf that every server then loads lazily (~0.1 s).
* (tests/conftest.py checks that no task or thread outlives a test.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from agent.drivers.opcua import OpcUaDriver
from agent.drivers.opcua_config import OpcUaDevice
from agent.ops.certs import create_certificate
from agent.types import Sample

PLANT = "urn:test:plant"
OTHER = "urn:test:other"
SERVER_URI = "urn:test:opcua-server"
CLIENT_URI = "urn:test:edge-agent"

# name -> (VariantType, initial value, a different value to write)
TYPES: dict[str, tuple[ua.VariantType, Any, Any]] = {
    "Bool": (ua.VariantType.Boolean, True, False),
    "SByte": (ua.VariantType.SByte, -5, -100),
    "Byte": (ua.VariantType.Byte, 200, 7),
    "Int16": (ua.VariantType.Int16, -1234, 32000),
    "UInt16": (ua.VariantType.UInt16, 60000, 12),
    "Int32": (ua.VariantType.Int32, -100000, 2**31 - 1),
    "UInt32": (ua.VariantType.UInt32, 4_000_000_000, 5),
    "Int64": (ua.VariantType.Int64, -(2**40), 2**62),
    "UInt64": (ua.VariantType.UInt64, 2**63, 42),
    "Float": (ua.VariantType.Float, 1.5, 2.25),
    "Double": (ua.VariantType.Double, 3.25, -1e300),
    "String": (ua.VariantType.String, "hello", "world"),
    "DateTime": (ua.VariantType.DateTime, datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2025-06-07T08:09:10+00:00"),
}
DECOY = -999.0


def expected_read(name: str, value: Any) -> Any:
    """What the driver reports for a server value (DateTime as ISO text)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    root: Path
    server_cert: Path
    server_key: Path
    impostor_cert: Path
    impostor_key: Path
    client_cert: Path
    client_key: Path
    untrusted_cert: Path
    untrusted_key: Path
    expiring_cert: Path
    expiring_key: Path
    server_trust: Path  # the server trusts these clients
    client_trust: Path  # the agent trusts these servers


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    hosts = [socket.gethostname(), "localhost", "127.0.0.1"]

    def make(name: str, uri: str, usage: Any, days: int = 365) -> tuple[Path, Path]:
        cert, key = root / f"{name}.der", root / f"{name}.pem"
        create_certificate(cert, key, application_uri=uri, hostnames=hosts, usage=usage, days=days)
        return cert, key

    server = make("server", SERVER_URI, "both")
    impostor = make("impostor", SERVER_URI, "both")
    client = make("client", CLIENT_URI, "client")
    untrusted = make("untrusted", CLIENT_URI, "client")
    expiring = make("expiring", CLIENT_URI, "client", days=10)
    server_trust = root / "server-trusts"
    server_trust.mkdir()
    (server_trust / "client.der").write_bytes(client[0].read_bytes())
    (server_trust / "expiring.der").write_bytes(expiring[0].read_bytes())
    client_trust = root / "agent-trusts"
    client_trust.mkdir()
    (client_trust / "server.der").write_bytes(server[0].read_bytes())
    return Pki(root, *server, *impostor, *client, *untrusted, *expiring, server_trust, client_trust)


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def aspace_shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard address space, built once, loaded lazily by every test server."""
    path = tmp_path_factory.mktemp("aspace") / "standard"

    async def build() -> None:
        server = Server()
        await server.init(path)
        server.iserver.aspace._nodes = {}  # release memory; the shelf is written

    asyncio.run(build())
    path.touch()  # asyncua looks for the shelf by this name (dbm.dumb writes .dat/.dir beside it)
    return path


class _UserManager:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class PlantServer:
    server: Server
    port: int
    url: str
    ns: dict[str, int]
    nodes: dict[str, Any] = field(default_factory=dict)
    writes: list[Any] = field(default_factory=list)
    not_writable: set[Any] = field(default_factory=set)
    running: bool = True

    def node(self, name: str) -> Any:
        return self.nodes[name]

    async def set(
        self,
        name: str,
        value: Any,
        *,
        status: int = 0,
        source: datetime | None = None,
        server_ts: datetime | None = None,
    ) -> None:
        """Write a DataValue on the server side, with exactly the given status and timestamps."""
        node = self.nodes[name]
        vtype = (await node.read_data_value()).Value.VariantType
        dv = ua.DataValue(
            Value=ua.Variant(value, vtype),
            StatusCode=ua.StatusCode(status),
            SourceTimestamp=source,
            ServerTimestamp=server_ts,
        )
        await self.server.iserver.aspace.write_attribute_value(node.nodeid, ua.AttributeIds.Value, dv)

    async def value(self, name: str) -> ua.DataValue:
        return await self.nodes[name].read_data_value()

    def silence_subscriptions(self) -> int:
        """Make every subscription stop publishing (no data, no keep-alive), transport kept up."""
        subs = list(self.server.iserver.subscription_service.subscriptions.values())
        for sub in subs:
            sub._closing = True
            if sub._task is not None:
                sub._task.cancel()
            sub.publish_results = _never_publish  # publish requests must not revive it either
        return len(subs)

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        await self.server.stop()
        # Sessions with subscriptions outlive their connection (Part 4 §6.7) until their
        # timeout: a stopped test server closes them, as a restarted process would lose them.
        for session in list(self.server.iserver._external_sessions.values()):
            await session.close_session(True)
        source = getattr(self.server.iserver.aspace._nodes, "source", None)
        if source is not None:
            source.close()


async def _never_publish(*args: Any, **kwargs: Any) -> bool:
    return False


ServerFactory = Callable[..., Awaitable[PlantServer]]


@pytest.fixture
async def opcua_server(pki: Pki, aspace_shelf: Path) -> AsyncIterator[ServerFactory]:
    started: list[PlantServer] = []

    async def start(
        *,
        port: int | None = None,
        namespaces: Iterable[str] = (PLANT, OTHER),
        values: dict[str, Any] | None = None,
        secure: bool = False,
        insecure_endpoint: bool = True,
        policies: list[ua.SecurityPolicyType] | None = None,
        trusted_clients: Path | None = None,
        users: dict[str, str] | None = None,
        cert: tuple[Path, Path] | None = None,
    ) -> PlantServer:
        port = port or free_port()
        server = Server()
        await server.init(aspace_shelf)
        server.disable_clock(True)
        url = f"opc.tcp://127.0.0.1:{port}/"
        server.set_endpoint(url)
        server.set_server_name("test plant")
        await server.set_application_uri(SERVER_URI)
        chosen: list[ua.SecurityPolicyType] = []
        if secure:
            cert_path, key_path = cert or (pki.server_cert, pki.server_key)
            await server.load_certificate(str(cert_path))
            await server.load_private_key(str(key_path))
            chosen = policies or [
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
                ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
                ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
            ]
        if insecure_endpoint or not secure:
            chosen = [ua.SecurityPolicyType.NoSecurity, *chosen]
        server.set_security_policy(chosen)
        if trusted_clients is not None:
            store = TrustStore([trusted_clients], [])
            await store.load()
            server.set_certificate_validator(
                CertificateValidator(
                    CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store
                )
            )
        if users is not None:
            server.iserver.set_user_manager(_UserManager(users))  # type: ignore[arg-type]
            server.set_identity_tokens([ua.UserNameIdentityToken])

        ns: dict[str, int] = {}
        for uri in namespaces:
            ns[uri] = await server.register_namespace(uri)
        plant = PlantServer(server, port, url, ns)
        values = values or {}
        objects = server.nodes.objects
        folder = await objects.add_object(ua.NodeId("Plant", ns[PLANT]), "Plant")
        decoys = await objects.add_object(ua.NodeId("Plant", ns[OTHER]), "Decoys")
        for name, (vtype, initial, _) in TYPES.items():
            value = values.get(name, initial)
            node = await folder.add_variable(ua.NodeId(f"Plant.{name}", ns[PLANT]), name, ua.Variant(value, vtype))
            await node.set_writable()
            plant.nodes[name] = node
        for name, value, writable in (("ReadOnly", 7.5, False), ("Locked", 1.0, True), ("Ranged", 50.0, True)):
            node = await folder.add_variable(
                ua.NodeId(f"Plant.{name}", ns[PLANT]), name, ua.Variant(values.get(name, value), ua.VariantType.Double)
            )
            if writable:
                await node.set_writable()
            plant.nodes[name] = node
        for name in ("Double", "Int32"):
            vtype = TYPES[name][0]
            decoy_value = DECOY if vtype is ua.VariantType.Double else -999
            node = await decoys.add_variable(
                ua.NodeId(f"Plant.{name}", ns[OTHER]), f"decoy {name}", ua.Variant(decoy_value, vtype)
            )
            await node.set_writable()
        plant.not_writable.add(plant.nodes["Locked"].nodeid)

        service = server.iserver.attribute_service
        original_write = service.write

        async def recording_write(params: ua.WriteParameters, *args: Any, **kwargs: Any) -> list[ua.StatusCode]:
            plant.writes.extend(wv for wv in params.NodesToWrite if wv.NodeId.NamespaceIndex in ns.values())
            # Some servers answer BadNotWritable for read-only nodes (asyncua: BadUserAccessDenied).
            refused = [wv.NodeId in plant.not_writable for wv in params.NodesToWrite]
            allowed = ua.WriteParameters(
                NodesToWrite=[wv for wv, no in zip(params.NodesToWrite, refused, strict=True) if not no]
            )
            done = iter(await original_write(allowed, *args, **kwargs) if allowed.NodesToWrite else [])
            return [ua.StatusCode(ua.StatusCodes.BadNotWritable) if no else next(done) for no in refused]

        service.write = recording_write  # type: ignore[method-assign]
        await server.start()
        started.append(plant)
        return plant

    yield start
    for plant in started:
        await plant.stop()


# --------------------------------------------------------------------------- agent side


def plant_tags(access: str = "read-write") -> list[dict[str, Any]]:
    """Tag configs for every plant variable, by namespace URI."""
    tags = [
        {"name": f"t.{name}", "node_id": f"nsu={PLANT};s=Plant.{name}", "access": access} for name in TYPES
    ]
    tags += [
        {"name": "t.ReadOnly", "node_id": f"nsu={PLANT};s=Plant.ReadOnly", "access": "read-write"},
        {"name": "t.Locked", "node_id": f"nsu={PLANT};s=Plant.Locked", "access": "read-write"},
        {"name": "t.Ranged", "node_id": f"nsu={PLANT};s=Plant.Ranged", "access": "read-write", "range": [0, 100]},
    ]
    # every writable tag declares its purpose; the tests write them as display values
    return [t if t["access"] == "read" else {**t, "purpose": "display"} for t in tags]


def make_device(url: str, *, tags: list[dict[str, Any]] | None = None, **overrides: Any) -> OpcUaDevice:
    data: dict[str, Any] = {
        "protocol": "opcua",
        "name": "plc1",
        "endpoint": url,
        "security_policy": "None",
        "security_mode": "None",
        "allow_insecure": True,
        "timeout_ms": 1000,
        "publishing_interval_ms": 50,
        "keepalive_count": 4,
        "backoff_ms": 100,
        "backoff_max_ms": 400,
        "tags": plant_tags() if tags is None else tags,
    }
    data.update(overrides)
    return OpcUaDevice.model_validate(data)


def secure_overrides(pki: Pki, policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt") -> dict[str, Any]:
    return {
        "security_policy": policy,
        "security_mode": mode,
        "allow_insecure": False,
        "certificate": str(pki.client_cert),
        "private_key": str(pki.client_key),
        "trust_dir": str(pki.client_trust),
    }


def by_tag(samples: Iterable[Sample]) -> dict[str, Sample]:
    return {s.tag: s for s in samples}


async def poll_until(
    driver: OpcUaDriver,
    predicate: Callable[[dict[str, Sample]], bool],
    within: float = 8.0,
    interval: float = 0.05,
    history: list[dict[str, Sample]] | None = None,
) -> dict[str, Sample]:
    """Poll like the running wrapper does until ``predicate`` holds; fail with the last poll."""
    end = time.monotonic() + within
    last: dict[str, Sample] = {}
    while time.monotonic() < end:
        last = by_tag(await driver.poll(time.monotonic() + 1.0))
        if history is not None:
            history.append(last)
        if predicate(last):
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not reached in {within} s; last poll: {last}")


# --------------------------------------------------------------------------- hygiene


@pytest.fixture(autouse=True)
def quiet_asyncua() -> None:
    # asyncua logs every refused handshake with a traceback; the tests check our messages.
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    logging.getLogger("asyncuagds").setLevel(logging.CRITICAL)
