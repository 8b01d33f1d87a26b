"""Configuration of OPC UA devices and tags (pydantic, frozen, unknown keys rejected).

This module never imports asyncua (it costs about 25 MB of RSS): :mod:`agent.config` imports
it for every configuration, and asyncua is loaded only by :mod:`agent.drivers.opcua` when an
OPC UA device is actually used.

Node ids are written as OPC UA's string form, preferably with the namespace *URI*
(``nsu=urn:plc:app;s=Pump1.Speed``): namespace *indexes* can change when a server restarts,
URIs do not. The index is resolved at connect and again on every reconnect. ``ns=<index>;``
is accepted for servers whose indexes are known to be fixed, and a bare ``i=2258`` is a node
of namespace 0 (the standard one). Identifier types: ``i=`` numeric, ``s=`` string, ``g=``
GUID, ``b=`` opaque (base64).

Example::

    devices:
      - name: plc1
        protocol: opcua
        endpoint: opc.tcp://10.0.0.5:4840
        security_policy: Basic256Sha256
        security_mode: SignAndEncrypt
        certificate: /etc/edge-agent/pki/own/cert.der
        private_key: /etc/edge-agent/pki/own/key.pem
        trust_dir: /etc/edge-agent/pki/trusted
        rejected_dir: /etc/edge-agent/pki/rejected
        username: edge
        password: {credential: opcua-plc1-password}
        mode: subscription
        publishing_interval_ms: 500
        tags:
          - name: pump1.speed
            node_id: "nsu=urn:plc1:app;s=Pump1.Speed"
            engineering_unit: rpm
            range: [0, 3000]
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Self, cast
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from agent.configbase import FrozenModel, Purpose, Secret

__all__ = [
    "NodeIdKind",
    "OpcUaDevice",
    "OpcUaTag",
    "ParsedNodeId",
    "SecurityMode",
    "SecurityPolicy",
    "parse_node_id",
]

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
NodeIdKind = Literal["i", "s", "g", "b"]
Access = Literal["read", "write", "read-write"]

_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
_NSU = re.compile(r"^nsu=(?P<uri>.+?);(?P<kind>[isgb])=(?P<ident>.*)$", re.DOTALL)
_NS = re.compile(r"^ns=(?P<ns>\d+);(?P<kind>[isgb])=(?P<ident>.*)$", re.DOTALL)
_BARE = re.compile(r"^(?P<kind>[isgb])=(?P<ident>.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ParsedNodeId:
    """A node id split into its parts; exactly one of ``namespace_uri``/``namespace_index``."""

    namespace_uri: str | None
    namespace_index: int | None
    kind: NodeIdKind
    identifier: str

    def with_index(self, index: int) -> str:
        """The ``ns=<index>;...`` form, once the URI has been resolved."""
        return f"ns={index};{self.kind}={self.identifier}"


def parse_node_id(text: str) -> ParsedNodeId:
    """Parse ``nsu=<uri>;<k>=<id>``, ``ns=<n>;<k>=<id>`` or ``<k>=<id>`` (namespace 0).

    Raises ValueError with a message fit for a config error.
    """
    uri: str | None = None
    index: int | None = None
    if m := _NSU.match(text):
        uri = m["uri"]
    elif m := _NS.match(text):
        index = int(m["ns"])
        if index > 65535:
            raise ValueError(f"namespace index {index} is out of range (0..65535)")
    elif m := _BARE.match(text):
        index = 0
    else:
        raise ValueError(
            "node_id must look like 'nsu=<namespace uri>;s=<name>' (or i=, g=, b=); "
            "'ns=<index>;s=<name>' only if the server's namespace indexes never change"
        )
    kind = cast(NodeIdKind, m["kind"])  # the regexes admit only i, s, g, b
    ident: str = m["ident"]
    if kind == "i":
        if not ident.isdigit() or int(ident) > 0xFFFFFFFF:
            raise ValueError(f"numeric identifier i={ident!r} must be an integer 0..4294967295")
        ident = str(int(ident))
    elif kind == "s":
        if not ident:
            raise ValueError("string identifier s= must not be empty")
    elif kind == "g":
        try:
            ident = str(uuid.UUID(ident))
        except ValueError:
            raise ValueError(f"GUID identifier g={ident!r} is not a GUID") from None
    else:
        try:
            base64.b64decode(ident, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"opaque identifier b={ident!r} is not base64") from None
    return ParsedNodeId(uri, index, kind, ident)


class OpcUaTag(FrozenModel):
    """One variable node read (and possibly written) as a tag."""

    name: Annotated[str, Field(pattern=_NAME, max_length=64)]
    node_id: str
    engineering_unit: str = ""
    range: tuple[float, float] | None = None
    access: Access = "read"
    purpose: Purpose | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    stale_after_ms: Annotated[int, Field(gt=0)] | None = None
    description: str = ""

    @field_validator("node_id")
    @classmethod
    def _valid_node_id(cls, value: str) -> str:
        parse_node_id(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError("range must be [low, high] with low < high")
        return self

    @property
    def parsed(self) -> ParsedNodeId:
        return parse_node_id(self.node_id)

    @property
    def writable(self) -> bool:
        return self.access != "read"

    @property
    def readable(self) -> bool:
        return self.access != "write"

    @property
    def reference(self) -> str:
        """How messages name the tag's address (the node id as configured)."""
        return self.node_id


class OpcUaDevice(FrozenModel):
    """One OPC UA server endpoint and the tags read from it.

    Security defaults to Basic256Sha256 / SignAndEncrypt; ``security_mode: None`` is refused
    unless ``allow_insecure: true`` says so explicitly. The server certificate is checked
    against ``trusted_server_certificates`` and/or every certificate file in ``trust_dir``
    (read again at every connect, so trusting a server takes effect without a restart).
    """

    protocol: Literal["opcua"]
    name: Annotated[str, Field(pattern=_NAME, max_length=64)]
    endpoint: str  # opc.tcp://host:port[/path]; never credentials (see username, password)

    security_policy: SecurityPolicy = "Basic256Sha256"
    security_mode: SecurityMode = "SignAndEncrypt"
    allow_insecure: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    private_key_password: Secret | None = None
    trusted_server_certificates: list[Path] = []
    trust_dir: Path | None = None
    rejected_dir: Path | None = None
    application_uri: str | None = None
    cert_warn_days: Annotated[int, Field(ge=1, le=3650)] = 30

    username: str | None = None
    password: Secret | None = None

    mode: Literal["subscription", "polling"] = "subscription"
    publishing_interval_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 1000
    sampling_interval_ms: Annotated[int, Field(ge=0, le=3_600_000)] | None = None
    keepalive_count: Annotated[int, Field(ge=1, le=1000)] = 5
    queue_size: Annotated[int, Field(ge=1, le=10000)] = 1
    deadband: Annotated[float, Field(ge=0)] = 0.0
    deadband_type: Literal["absolute", "percent"] = "absolute"

    timeout_ms: Annotated[int, Field(ge=10, le=60000)] = 2000
    session_timeout_ms: Annotated[int, Field(ge=1000, le=3_600_000)] = 60000
    poll_interval_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 1000
    stale_after_ms: Annotated[int, Field(gt=0)] | None = None
    backoff_ms: Annotated[int, Field(ge=10)] = 1000
    backoff_max_ms: Annotated[int, Field(ge=10)] = 60000
    tags: list[OpcUaTag] = []

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str) -> str:
        url = urlparse(value)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ValueError("endpoint must look like opc.tcp://<host>:<port>[/path]")
        try:
            port = url.port
        except ValueError:
            raise ValueError("endpoint has an invalid port") from None
        if port is None:
            raise ValueError(f"endpoint needs a port (OPC UA's default is 4840): opc.tcp://{url.hostname}:4840")
        if url.username or url.password:
            raise ValueError("put no credentials in the endpoint URL: use username and password (a secret)")
        return value

    @model_validator(mode="after")
    def _secure_by_default(self) -> Self:
        insecure_policy = self.security_policy == "None"
        insecure_mode = self.security_mode == "None"
        if insecure_policy != insecure_mode:
            raise ValueError(
                "security_policy None goes with security_mode None only (and a real policy with Sign "
                f"or SignAndEncrypt); got security_policy {self.security_policy}, "
                f"security_mode {self.security_mode}"
            )
        if insecure_mode:
            if not self.allow_insecure:
                raise ValueError(
                    "security_mode None sends everything in clear text and does not authenticate the "
                    "server; set allow_insecure: true to accept that (e.g. a simulator), or use "
                    "Sign/SignAndEncrypt"
                )
        else:
            missing = [f for f in ("certificate", "private_key") if getattr(self, f) is None]
            if missing:
                raise ValueError(
                    f"security_mode {self.security_mode} needs {' and '.join(missing)} "
                    "(create them with: edge-agent certs create)"
                )
            if not self.trusted_server_certificates and self.trust_dir is None:
                raise ValueError(
                    f"security_mode {self.security_mode} needs trusted_server_certificates or trust_dir: "
                    "the server's certificate is checked against them"
                )
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        if self.backoff_max_ms < self.backoff_ms:
            raise ValueError("backoff_max_ms must be >= backoff_ms")
        return self

    @property
    def secure(self) -> bool:
        return self.security_mode != "None"

    @property
    def keepalive_s(self) -> float:
        """How often the server sends a keep-alive when nothing changes (requested value)."""
        return self.publishing_interval_ms * self.keepalive_count / 1000.0

    def stale_limit_s(self, tag: OpcUaTag) -> float:
        """A tag not refreshed within this many seconds turns BAD (stale).

        In subscription mode an unchanged value is confirmed by the subscription's keep-alives,
        so the default allows two keep-alive periods plus a timeout.
        """
        ms = tag.stale_after_ms or self.stale_after_ms
        if ms is None:
            ms = 3 * self.poll_interval_ms + self.timeout_ms
            if self.mode == "subscription":
                ms = max(ms, 2 * self.publishing_interval_ms * self.keepalive_count + self.timeout_ms)
        return ms / 1000.0
