"""OPC UA server of the station (asyncua). Imported only when OPC UA is enabled (~25 MB).

Address space (namespace URI ``urn:edge-inference-agent:simulator``; its index depends on what
was registered before it, see ``extra_namespaces_first``)::

    Objects/
      Station/            Station.* variables          (ns=<idx>;s=Station.TankLevel ...)
        Pump1/            Pump1.* variables            (ns=<idx>;s=Pump1.BearingTemp ...)
        Pump2/ ...
      Simulation/         ground truth and fault injection (never bind these in the agent)
        Simulation.Pump1/ ...

Every tag of ``register_map`` is a variable whose string node id is the tag name, with its own
data type (Double, Float, UInt16, Boolean), and for analog values the ``EngineeringUnits``
(UNECE codes) and ``EURange`` properties. Measurements carry the wall-clock SourceTimestamp of
the tick; a sensor in dropout is published with status ``BadSensorFailure``.

Writes from clients go through the PLC logic and the write log, like Modbus writes:

- a variant of another type than the node's is refused with ``BadTypeMismatch``;
- a read-only node answers as asyncua does (``BadUserAccessDenied`` for non-admin users);
- ``reject_write_timestamps=True`` refuses any write carrying a Source/ServerTimestamp with
  ``BadWriteNotSupported``, like Siemens S7-1200/1500 (off by default);
- an illegal value (NaN setpoint, unknown fault code) is ``BadOutOfRange``;
- a setpoint refused by the PLC (permissive off, heartbeat stale) is ``Good`` at the protocol
  level but the node keeps tracking the setpoint in use; the write log says why.

Security is None by default; pass ``certificate`` / ``private_key`` and ``security_policies``
(``ua.SecurityPolicyType`` members or their names, e.g. ``"Basic256Sha256_SignAndEncrypt"``) to
turn encryption on, ``certificate_validator`` / ``user_manager`` / ``permission_ruleset`` as
asyncua takes them, or ``configure`` (called with the asyncua ``Server`` before it starts) for
anything else.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from .listen import ListenError, quiet
from .physics import Plant
from .plc import WriteResult
from .register_map import NAMESPACE_URI, RegisterEntry, build_register_map

__all__ = ["UNECE_UNITS", "OpcUaStationServer"]

log = logging.getLogger("simulator.opcua")

#: unit -> (UNECE common code, display name)
UNECE_UNITS: dict[str, tuple[str, str]] = {
    "m": ("MTR", "m"),
    "m3/h": ("MQH", "m³/h"),
    "m3": ("MTQ", "m³"),
    "bar": ("BAR", "bar"),
    "°C": ("CEL", "°C"),
    "kW": ("KWT", "kW"),
    "kWh": ("KWH", "kW·h"),
    "kWh/m3": ("KWH", "kW·h/m³"),  # no UNECE code for kWh/m3; KWH with the right display name
    "A": ("AMP", "A"),
    "rpm": ("RPM", "r/min"),
    "mm/s": ("C16", "mm/s"),
    "h": ("HUR", "h"),
    "s": ("SEC", "s"),
}

_VTYPES = {
    "Double": ua.VariantType.Double,
    "Float": ua.VariantType.Float,
    "UInt16": ua.VariantType.UInt16,
    "Boolean": ua.VariantType.Boolean,
}


_ADMIN = User(role=UserRole.Admin)  # asyncua's own default for internal writes


def _unit_id(code: str) -> int:
    value = 0
    for ch in code:
        value = (value << 8) | ord(ch)
    return value


async def _pem_or_der(source: str | bytes | Path) -> tuple[bytes, str]:
    """Content of a certificate or key (a path or the bytes) and its format, PEM or DER."""
    data = source if isinstance(source, bytes) else await asyncio.to_thread(Path(source).read_bytes)
    return data, "pem" if data.lstrip().startswith(b"-----BEGIN") else "der"


def _policy(p: Any) -> ua.SecurityPolicyType:
    if isinstance(p, ua.SecurityPolicyType):
        return p
    return ua.SecurityPolicyType[str(p)]


class OpcUaStationServer:
    """The station's OPC UA server. ``start()`` / ``stop()``, ``publish()`` every tick."""

    def __init__(
        self,
        plant: Plant,
        *,
        host: str = "127.0.0.1",
        port: int = 4840,
        endpoint: str | None = None,
        namespace_uri: str = NAMESPACE_URI,
        extra_namespaces_first: Sequence[str] = (),
        certificate: str | bytes | Path | None = None,
        private_key: str | bytes | Path | None = None,
        private_key_password: str | bytes | None = None,
        security_policies: Sequence[ua.SecurityPolicyType | str] | None = None,
        certificate_validator: Any = None,
        user_manager: Any = None,
        permission_ruleset: Any = None,
        reject_write_timestamps: bool = False,
        server_name: str = "Edge Inference Agent station simulator",
        application_uri: str = "urn:edge-inference-agent:simulator:server",
        configure: Callable[[Server], Awaitable[None] | None] | None = None,
    ) -> None:
        self.plant = plant
        self.host = host
        self.port = port
        self._endpoint = endpoint
        self.namespace_uri = namespace_uri
        self.extra_namespaces_first = list(extra_namespaces_first)
        self.certificate = certificate
        self.private_key = private_key
        self.private_key_password = private_key_password
        self.security_policies = [_policy(p) for p in security_policies] if security_policies else None
        self.certificate_validator = certificate_validator
        self.user_manager = user_manager
        self.permission_ruleset = permission_ruleset
        self.reject_write_timestamps = reject_write_timestamps
        self.server_name = server_name
        self.application_uri = application_uri
        self.configure = configure
        self.namespace_index = -1
        self.server: Server | None = None
        self._entries = {e.name: e for e in build_register_map(plant.pumps)}
        self._nodeids: dict[str, ua.NodeId] = {}
        self._tag_by_nodeid: dict[ua.NodeId, str] = {}
        self._published: dict[str, Any] = {}
        self._orig_write: Any = None
        self._last_state: Any = None

    @property
    def endpoint(self) -> str:
        return self._endpoint or f"opc.tcp://{self.host}:{self.port}/simulator/"

    def node_id(self, tag: str) -> str:
        """``ns=<idx>;s=<tag>`` with the index of this run."""
        return f"ns={self.namespace_index};s={tag}"

    def expanded_node_id(self, tag: str) -> str:
        """``nsu=<uri>;s=<tag>``: stable across restarts."""
        return f"nsu={self.namespace_uri};s={tag}"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        server = Server(user_manager=self.user_manager) if self.user_manager is not None else Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(self.server_name)
        await server.set_application_uri(self.application_uri)
        if self.certificate is not None:
            data, fmt = await _pem_or_der(self.certificate)
            await server.load_certificate(data, format=fmt)
        if self.private_key is not None:
            data, fmt = await _pem_or_der(self.private_key)
            await server.load_private_key(data, password=self.private_key_password, format=fmt)
        policies = self.security_policies
        if policies is None:
            policies = [ua.SecurityPolicyType.NoSecurity]
        server.set_security_policy(policies, permission_ruleset=self.permission_ruleset)
        if policies == [ua.SecurityPolicyType.NoSecurity] and self.user_manager is None:
            # nothing to sign or encrypt with: offer anonymous login only (use configure= to change)
            server.set_identity_tokens([ua.AnonymousIdentityToken])
        if self.certificate_validator is not None:
            server.set_certificate_validator(self.certificate_validator)
        for uri in self.extra_namespaces_first:
            await server.register_namespace(uri)
        self.namespace_index = await server.register_namespace(self.namespace_uri)
        await self._build(server)
        if self.configure is not None:
            maybe = self.configure(server)
            if maybe is not None:
                await maybe
        attr_service = server.iserver.attribute_service
        self._orig_write = attr_service.write
        attr_service.write = self._write  # every client write passes the PLC logic
        try:
            with quiet("asyncua.server.server", "error starting server"):
                await server.start()
        except OSError as exc:  # asyncua has stopped what it started
            raise ListenError.from_os_error("OPC UA", self.host, self.port, exc) from None
        self.server = server
        log.info(
            "OPC UA server on %s (namespace %s = ns=%d)",
            self.endpoint,
            self.namespace_uri,
            self.namespace_index,
        )

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        # asyncua's clock task sleeps 1 s between updates and stop() waits for it: end it here
        iserver = server.iserver
        task = getattr(iserver, "time_task", None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
            iserver.time_task = None
        await server.stop()

    async def __aenter__(self) -> OpcUaStationServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- address space ----------------------------------------------------------------------

    async def _build(self, server: Server) -> None:
        idx = self.namespace_index
        objects = server.nodes.objects
        station = await objects.add_folder(ua.NodeId("Station", idx), ua.QualifiedName("Station", idx))
        sim = await objects.add_folder(ua.NodeId("Simulation", idx), ua.QualifiedName("Simulation", idx))
        folders: dict[str, Any] = {"Station": station, "Simulation": sim}
        for i in range(1, self.plant.pumps + 1):
            folders[f"Pump{i}"] = await station.add_folder(
                ua.NodeId(f"Pump{i}", idx), ua.QualifiedName(f"Pump{i}", idx)
            )
            folders[f"Simulation.Pump{i}"] = await sim.add_folder(
                ua.NodeId(f"Simulation.Pump{i}", idx), ua.QualifiedName(f"Pump{i}", idx)
            )
        tags = self.plant.state.tags
        for name, e in self._entries.items():
            parent_key = name.rsplit(".", 1)[0]
            parent = folders[parent_key]
            vtype = _VTYPES[e.opcua_type]
            value = _convert(e, tags[name])
            nodeid = ua.NodeId(name, idx)
            var = await parent.add_variable(
                nodeid, ua.QualifiedName(e.relative_name, idx), _initial(e, value), vtype
            )
            await var.write_attribute(
                ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(e.description)))
            )
            if e.writable:
                await var.set_writable()
            if e.unit in UNECE_UNITS:
                code, display = UNECE_UNITS[e.unit]
                eu = ua.EUInformation(
                    NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                    UnitId=_unit_id(code),
                    DisplayName=ua.LocalizedText(display),
                    Description=ua.LocalizedText(e.unit),
                )
                await var.add_property(
                    ua.NodeId(f"{name}.EngineeringUnits", idx), ua.QualifiedName("EngineeringUnits", 0), eu
                )
            if e.eu_range is not None:
                rng = ua.Range(Low=float(e.eu_range[0]), High=float(e.eu_range[1]))
                await var.add_property(ua.NodeId(f"{name}.EURange", idx), ua.QualifiedName("EURange", 0), rng)
            self._nodeids[name] = nodeid
            self._tag_by_nodeid[nodeid] = name
            self._published[name] = value

    # -- publishing -------------------------------------------------------------------------

    async def publish(self) -> None:
        """Push the plant's current values (measurements always, PLC memory when changed)."""
        server = self.server
        if server is None:
            return
        state = self.plant.state
        tags = state.tags
        bad = state.bad_tags
        now = datetime.now(UTC)
        fresh = state is not self._last_state  # a new snapshot: new samples and timestamps
        self._last_state = state
        for name, e in self._entries.items():
            value = _convert(e, tags[name])
            if (e.writable or not fresh) and value == self._published.get(name):
                continue
            if name in bad:
                dv = ua.DataValue(
                    StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                )
            else:
                dv = ua.DataValue(
                    ua.Variant(value, _VTYPES[e.opcua_type]), SourceTimestamp=now, ServerTimestamp=now
                )
            await server.write_attribute_value(self._nodeids[name], dv)
            self._published[name] = value

    # -- writes -----------------------------------------------------------------------------

    async def _write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for wv in params.NodesToWrite:
            tag = self._tag_by_nodeid.get(wv.NodeId)
            if tag is None or wv.AttributeId != ua.AttributeIds.Value:
                single = ua.WriteParameters(NodesToWrite=[wv])
                status = (await self._orig_write(single, user=user))[0]
                if tag is not None:
                    self._log(
                        tag,
                        wv,
                        WriteResult(status.is_good(), None, f"attribute {wv.AttributeId}: {status.name}"),
                    )
                results.append(status)
                continue
            results.append(await self._write_tag(tag, wv, user))
        return results

    def _log(self, tag: str, wv: ua.WriteValue, result: WriteResult) -> None:
        raw = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
        self.plant.plc.log_write(
            protocol="opcua", address=self.expanded_node_id(tag), tag=tag, raw=raw, value=raw, result=result
        )

    async def _write_tag(self, tag: str, wv: ua.WriteValue, user: User) -> ua.StatusCode:
        e = self._entries[tag]
        dv = wv.Value
        if not e.writable:
            status = (await self._orig_write(ua.WriteParameters(NodesToWrite=[wv]), user=user))[0]
            self._log(tag, wv, WriteResult(False, None, f"read-only ({status.name})", "read_only"))
            if status.is_good():  # an admin may write anything; the next publish restores the value
                self._published.pop(tag, None)
            return status
        if self.reject_write_timestamps and (
            dv.SourceTimestamp is not None or dv.ServerTimestamp is not None
        ):
            self._log(
                tag, wv, WriteResult(False, None, "write with timestamp refused (BadWriteNotSupported)")
            )
            return ua.StatusCode(ua.StatusCodes.BadWriteNotSupported)
        variant = dv.Value
        expected = _VTYPES[e.opcua_type]
        if variant is None or variant.VariantType != expected:
            got = variant.VariantType.name if variant is not None else "null"
            self._log(
                tag, wv, WriteResult(False, None, f"type mismatch: {got} written to {expected.name} node")
            )
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            self._log(tag, wv, WriteResult(False, None, "written value has a bad status"))
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        plc = self.plant.plc
        result = plc.write(
            tag, variant.Value, protocol="opcua", address=self.expanded_node_id(tag), raw=variant.Value
        )
        if result.error == "illegal_value":
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        # store what the PLC holds now (the clamped value, or the tracked one when refused)
        value = _convert(e, plc.read(tag))
        now = datetime.now(UTC)
        assert self.server is not None
        await self.server.write_attribute_value(
            self._nodeids[tag],
            ua.DataValue(ua.Variant(value, expected), SourceTimestamp=now, ServerTimestamp=now),
        )
        self._published[tag] = value
        if tag in ("Station.Permissive", "Station.Acknowledge"):
            self._published.pop("Station.OperatorCommand", None)
        elif tag == "Station.OperatorCommand":
            self._published.pop("Station.Permissive", None)
            self._published.pop("Station.Acknowledge", None)
        return ua.StatusCode()


def _convert(e: RegisterEntry, value: Any) -> Any:
    t = e.opcua_type
    if t == "Boolean":
        return bool(value)
    if t == "UInt16":
        return int(value) & 0xFFFF
    return float(value)


def _initial(e: RegisterEntry, value: Any) -> Any:
    if e.opcua_type in ("Double", "Float") and isinstance(value, float) and math.isnan(value):
        return 0.0
    return value
