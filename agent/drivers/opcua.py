"""OPC UA driver (asyncua): secure sessions, supervised subscriptions, typed writes.

One driver per server endpoint; it is a :class:`~agent.drivers.base.Source` and a
:class:`~agent.drivers.base.Sink`. asyncua is imported only when a driver connects (importing
this module costs nothing: asyncua adds about 25 MB of RSS).

Reading. In ``subscription`` mode the server samples the nodes and publishes changes; every
``poll(deadline)`` returns one sample per readable tag: the latest notification received since
the last poll, or, for a tag whose value did not change, its last value confirmed by the
subscription's keep-alives (the sample's ``mono`` is the time the server was last heard from,
so staleness in the tag table stays honest). A subscription silent for longer than twice its
keep-alive period (or the keep-alive period plus a timeout, whichever is longer) is treated as
lost and rebuilt, so "connected but no data" cannot last. Tags whose monitored item the server
refuses, and every tag when the server refuses subscriptions altogether, are read by polling
instead. In ``polling`` mode every poll reads all nodes (one Read service call per 500 nodes).
StatusCodes become qualities (Good / Uncertain / Bad, the code's name as the reason); the
source timestamp is kept, or the server timestamp when the source has none.

Reconnect. asyncua's own auto-reconnect is off: it re-creates monitored items with the numeric
node ids it had, which point at the wrong nodes when a restarted server has reordered its
namespace array. Instead, when the session is lost, every tag reads BAD "connection lost: ..."
and the driver connects again with a fresh client under :class:`~agent.running.CircuitBreaker`
backoff, resolves every ``nsu=`` namespace URI again, and creates a new subscription. Every
subscription has an epoch; a notification from an older one (a late callback from the previous
session) is dropped and counted, never taken for a new value.

Writing. The node's own data type is read once per session and cached; the value is sent as
a Variant of that type in a DataValue without StatusCode, SourceTimestamp or ServerTimestamp
(Siemens S7-1200/1500 and others refuse timestamps with BadWriteNotSupported). The value is
read back and returned. BadNotWritable and BadUserAccessDenied (servers differ in which one a
read-only node returns) are both reported as :class:`~agent.errors.WriteRefused` with a clear
message.

Security. Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss, Sign or
SignAndEncrypt. The server certificate is checked against the configured trust list (asyncua
checks nothing unless told to) before the session is activated, so no password is sent to an
untrusted server; an untrusted certificate is reported with its SHA-1 thumbprint and, with
``rejected_dir``, saved there to be moved into the trust directory. A server that refuses this
client's certificate is reported naming the client certificate's thumbprint, including servers
that close the channel during OpenSecureChannel (asyncua then raises a bare AssertionError).
The client certificate's expiry is checked at start and hourly (:attr:`OpcUaDriver.cert_warning`).

Library exceptions are translated here, at the seam; ``asyncio.CancelledError`` always
propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from agent.configbase import Purpose
from agent.drivers.base import WriteResults, check_purpose
from agent.drivers.modbus import UnitStatus
from agent.drivers.opcua_config import OpcUaDevice, OpcUaTag
from agent.errors import (
    AgentError,
    DeviceUnreachable,
    DriverError,
    ReadBackFailed,
    WriteRefused,
    WriteUnconfirmed,
)
from agent.ops import certs
from agent.running import Backoff, CircuitBreaker, Counters
from agent.types import Quality, QualityCode, Sample, Value, utcnow

__all__ = ["OpcUaDriver", "OpcUaStatus", "UnitStatus", "quality_of_status"]

log = structlog.get_logger("agent.drivers.opcua")

_POLICY_CLASSES = {
    "Basic256Sha256": "SecurityPolicyBasic256Sha256",
    "Aes128_Sha256_RsaOaep": "SecurityPolicyAes128Sha256RsaOaep",
    "Aes256_Sha256_RsaPss": "SecurityPolicyAes256Sha256RsaPss",
}
_MAX_NODES_PER_READ = 500
_MARGIN_S = 0.005
_MIN_BUDGET_S = 0.050
_CLOSE_TIMEOUT_S = 2.0
_CERT_RECHECK_S = 3600.0
_MAX_READ_TIMEOUTS = 3
_EPOCH_1601 = datetime(1601, 1, 2, tzinfo=UTC)
# Status codes that mean the session or channel is gone (reconnect), not that a node is bad.
_SESSION_GONE = frozenset(
    {
        "BadSessionIdInvalid",
        "BadSessionClosed",
        "BadSessionNotActivated",
        "BadSecureChannelIdInvalid",
        "BadSecureChannelClosed",
        "BadConnectionClosed",
        "BadServerHalted",
        "BadShutdown",
        "BadCommunicationError",
        "BadNotConnected",
        "BadTimeout",
    }
)
_FILTER_REFUSED = frozenset(
    {
        "BadFilterNotAllowed",
        "BadMonitoredItemFilterUnsupported",
        "BadMonitoredItemFilterInvalid",
        "BadDeadbandFilterInvalid",
    }
)
_USER_REFUSED = frozenset(
    {"BadIdentityTokenInvalid", "BadIdentityTokenRejected", "BadUserAccessDenied", "BadUserSignatureInvalid"}
)
_INT_RANGES: dict[str, tuple[int, int]] = {
    "SByte": (-(2**7), 2**7 - 1),
    "Byte": (0, 2**8 - 1),
    "Int16": (-(2**15), 2**15 - 1),
    "UInt16": (0, 2**16 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "UInt32": (0, 2**32 - 1),
    "Int64": (-(2**63), 2**63 - 1),
    "UInt64": (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


# --------------------------------------------------------------------------- status codes


def _lib(module: str) -> Any:
    """An asyncua module, imported on first use (never at import of this module).

    Typed ``Any``: asyncua's own annotations are partial, and this module is the seam where
    its objects are translated into ours.
    """
    return importlib.import_module(module)


def _status_name(code: int) -> tuple[str, str]:
    """(name, description) of a StatusCode, ignoring its info bits."""
    status_codes = _lib("asyncua.ua.status_codes")

    name, doc = status_codes.get_name_and_doc(code & 0xFFFF0000)
    if name.startswith("Unknown") or not name:
        return f"0x{code:08X}", ""
    return str(name), str(doc)


def quality_of_status(code: int) -> Quality:
    """An OPC UA StatusCode as a quality: Good, Uncertain or Bad with the code's name."""
    severity = (code >> 30) & 0b11
    if severity == 0:
        return Quality.good()
    name, _ = _status_name(code)
    return Quality.uncertain(name) if severity == 1 else Quality.bad(name)


def _code_of(status: Any) -> int:
    """The integer value of a ua.StatusCode (None means Good, as on the wire)."""
    return 0 if status is None else int(status.value)


def _timestamp(ts: Any) -> datetime | None:
    if not isinstance(ts, datetime) or ts < _EPOCH_1601.replace(tzinfo=ts.tzinfo):
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _python_value(variant: Any) -> tuple[Value, str | None]:
    """A Variant's value as a pipeline value, or (None, reason) when it has no such form."""
    ua = _lib("asyncua.ua")

    if variant is None or variant.Value is None:
        return None, "no value (null)"
    v = variant.Value
    if isinstance(v, list | tuple):
        return None, f"array values are not supported ({len(v)} elements of {variant.VariantType.name})"
    if isinstance(v, bool | str):
        return v, None
    if isinstance(v, int):
        return int(v), None
    if isinstance(v, float):
        return float(v), None
    if isinstance(v, datetime):
        return v.isoformat(), None
    if isinstance(v, bytes):
        return v.hex(), None
    if isinstance(v, ua.LocalizedText):
        return v.Text, None
    if isinstance(v, ua.StatusCode):
        return _status_name(_code_of(v))[0], None
    if isinstance(v, ua.NodeId | ua.QualifiedName):
        return v.to_string(), None
    if variant.VariantType is ua.VariantType.Guid:
        return str(v), None
    return None, f"unsupported data type {variant.VariantType.name}"


def _sample(tag: OpcUaTag, dv: Any, mono: float | None = None, received_at: datetime | None = None) -> Sample:
    """One DataValue of ``tag`` → Sample (quality from the StatusCode, range check)."""
    quality = quality_of_status(_code_of(dv.StatusCode))
    source_time = _timestamp(dv.SourceTimestamp) or _timestamp(dv.ServerTimestamp)
    mono = time.monotonic() if mono is None else mono
    received_at = received_at or utcnow()
    if quality.code is QualityCode.BAD:
        return Sample(tag.name, None, quality, received_at, mono, source_time)
    value, problem = _python_value(dv.Value)
    if problem is not None:
        return Sample(tag.name, None, Quality.bad(problem), received_at, mono, source_time)
    if isinstance(value, float) and not math.isfinite(value):
        return Sample(tag.name, None, Quality.bad(f"not finite: {value}"), received_at, mono, source_time)
    if tag.range is not None and isinstance(value, int | float) and not isinstance(value, bool):
        low, high = tag.range
        if not low <= value <= high:
            reason = f"out of range: {value:g} not in [{low:g}, {high:g}]"
            return Sample(tag.name, value, Quality.bad(reason), received_at, mono, source_time)
    return Sample(tag.name, value, quality, received_at, mono, source_time)


def _bad(tag: OpcUaTag, reason: str) -> Sample:
    return Sample.now(tag.name, None, Quality.bad(reason))


# --------------------------------------------------------------------------- internals


class _SessionLost(Exception):
    """The session or its transport is gone; the poll drops it and reconnects with backoff."""


@dataclass
class OpcUaStatus:
    """The driver's state for ``status`` and ``check --connect``."""

    device: str
    endpoint: str
    state: str
    last_error: str
    security: str
    mode: str
    subscription_id: int | None
    publishing_interval_ms: float | None
    keepalive_s: float | None
    connects: int
    resubscribes: int
    unresolved: dict[str, str]
    cert_warning: str | None


@dataclass
class _Session:
    """One asyncua client and what was resolved and created on it."""

    client: Any
    gen: int
    namespaces: list[str] = field(default_factory=list)
    nodeids: dict[str, Any] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)
    polled: set[str] = field(default_factory=set)
    sub: Any = None
    sub_epoch: int = 0
    sub_error: str | None = None
    sub_problem: str | None = None
    sub_created: float = 0.0
    revised_interval_ms: float = 0.0
    keepalive_s: float = 0.0
    silence_limit_s: float = 0.0
    lost_reason: str | None = None
    read_timeouts: int = 0
    vtypes: dict[str, Any] = field(default_factory=dict)


class _Handler:
    """asyncua subscription handler bound to one subscription epoch.

    asyncua calls it from its own tasks; it only stores the notification (latest per tag, a
    bounded dict) through the driver, which drops anything from an older epoch.
    """

    def __init__(self, driver: OpcUaDriver, epoch: int, handles: dict[int, str]) -> None:
        self._driver = driver
        self._epoch = epoch
        self._handles = handles

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        item = data.monitored_item
        self._driver._on_datachange(self._epoch, self._handles.get(int(item.ClientHandle)), item.Value)

    def status_change_notification(self, status: Any) -> None:
        self._driver._on_status_change(self._epoch, status.Status)


def _first_cert(der: bytes) -> bytes:
    """The leading certificate of a DER blob that may hold a whole chain."""
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der


def _trusts(anchor: x509.Certificate, cert: x509.Certificate) -> bool:
    """``cert`` is ``anchor`` itself, or was issued (signed) directly by it."""
    if anchor == cert:
        return True
    try:
        cert.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        return bool(anchor.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


# --------------------------------------------------------------------------- the driver


class OpcUaDriver:
    """Source and Sink for one OPC UA server endpoint (see the module docstring).

    Lifecycle: ``async with OpcUaDriver(device) as d`` opens nothing (a down server must not
    fail it); the first ``poll()`` or ``write()`` connects. One task polls; writes may come
    from another task of the same loop.
    """

    def __init__(
        self,
        device: OpcUaDevice,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.device = device
        self.name = device.name
        # Import asyncua now, while the agent is being built: imported inside the first poll
        # it would block the event loop for half a second (other devices' timeouts run out).
        _lib("asyncua")
        self._clock = clock
        self._timeout_s = device.timeout_ms / 1000.0
        self._tags: dict[str, OpcUaTag] = {t.name: t for t in device.tags}
        self._readable = [t for t in device.tags if t.readable]
        self._link = CircuitBreaker(
            f"{device.name} ({device.endpoint})",
            threshold=1,
            backoff=Backoff(
                device.backoff_ms / 1000, device.backoff_max_ms / 1000, 0.2, rng or random.Random()
            ),
            clock=clock,
        )
        self._lock = asyncio.Lock()
        self._session: _Session | None = None
        self._entered = False
        self._gen = 0
        self._epoch = 0
        self._pending: dict[str, Sample] = {}
        self._last: dict[str, Sample] = {}
        self._cert_warning: str | None = None
        self._cert_checked_at: float | None = None
        self._warned_trust: set[str] = set()
        self.counters = Counters()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._entered = True
        self._check_cert(force=True)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._entered = False
        sess, self._session = self._session, None
        self._forget_values()
        if sess is not None:
            await self._close_client(sess.client, graceful=True)

    # ------------------------------------------------------------------ status

    @property
    def connected(self) -> bool:
        """A session is up and its transport has not been reported lost."""
        sess = self._session
        return sess is not None and self._transport_problem(sess) is None

    @property
    def cert_warning(self) -> str | None:
        """A warning when the client certificate expires soon (or cannot be read), else None."""
        return self._cert_warning

    def unit_status(self) -> list[UnitStatus]:
        """The shape ``check --connect`` prints for Modbus units (one "unit" 0 here)."""
        per = self.counters.per_unit.get("0", {})
        if self.connected:
            state = "ok"
        elif not self._link.ever_connected and not self._link.last_error:
            state = "unknown"
        else:
            state = "lost"
        error = self._link.last_error if state != "ok" else ""
        return [
            UnitStatus(0, state, error, per.get("requests", 0), per.get("failures", 0), str(self._link.state))
        ]

    def status(self) -> OpcUaStatus:
        """Everything ``status`` shows about this device."""
        sess = self._session
        per = self.counters.per_unit.get("0", {})
        mode: str = self.device.mode
        if sess is not None and mode == "subscription" and sess.sub is None:
            mode = f"polling ({sess.sub_error or 'subscription unavailable'})"
        return OpcUaStatus(
            device=self.name,
            endpoint=self.device.endpoint,
            state=self.unit_status()[0].state,
            last_error=self._link.last_error,
            security=f"{self.device.security_policy}/{self.device.security_mode}",
            mode=mode,
            subscription_id=getattr(sess.sub, "subscription_id", None) if sess else None,
            publishing_interval_ms=sess.revised_interval_ms if sess and sess.sub else None,
            keepalive_s=sess.keepalive_s if sess and sess.sub else None,
            connects=per.get("connects", 0),
            resubscribes=per.get("resubscribes", 0),
            unresolved=dict(sess.unresolved) if sess else {},
            cert_warning=self._cert_warning,
        )

    def _check_cert(self, force: bool = False) -> None:
        path = self.device.certificate
        if path is None or not self.device.secure:
            return
        now = time.monotonic()
        if not force and self._cert_checked_at is not None and now - self._cert_checked_at < _CERT_RECHECK_S:
            return
        self._cert_checked_at = now
        warning = certs.expiry_warning(path, self.device.cert_warn_days)
        if warning != self._cert_warning:
            if warning is not None:
                log.warning("client certificate", device=self.name, warning=warning)
            elif self._cert_warning is not None:
                log.info("client certificate ok again", device=self.name, certificate=str(path))
        self._cert_warning = warning

    # ------------------------------------------------------------------ reading

    async def poll(self, deadline: float) -> list[Sample]:
        """One sample per readable tag. Never raises for a device fault (see base.Source)."""
        if not self._entered:
            raise RuntimeError("OpcUaDriver used outside 'async with'")
        self._check_cert()
        got = await self._ensure_session(deadline)
        if isinstance(got, str):
            return [_bad(t, got) for t in self._readable]
        sess = got
        try:
            if sess.sub is not None:
                return await self._poll_subscription(sess, deadline)
            return await self._read_tags(sess, self._readable, deadline)
        except _SessionLost as exc:
            reason = f"connection lost: {exc}"
            await self._drop(sess, reason)
            return [_bad(t, reason) for t in self._readable]

    async def _ensure_session(self, deadline: float) -> _Session | str:
        """The live session, connecting if the backoff allows; else the BAD reason."""
        async with self._lock:
            sess = self._session
            if sess is not None:
                problem = self._transport_problem(sess)
                if problem is None:
                    return sess
                reason = f"connection lost: {problem}"
                await self._drop_locked(sess, reason)
                return reason
            if not self._link.allow():
                wait = max(0.0, self._link.open_until - self._clock())
                return self._down(f"{self._link.last_error}; next attempt in {wait:.1f} s")
            reconnect = self._link.ever_connected
            try:
                sess = await self._connect(deadline)
            except DriverError as exc:
                self.counters.bump("0", "failures")
                self._link.record_failure(str(exc))
                return self._down(str(exc))
            self._link.record_success()
            self._session = sess
            self.counters.bump("0", "connects")
            if reconnect:
                self.counters.bump("0", "reconnects")
            return sess

    def _down(self, reason: str) -> str:
        """The BAD reason while not connected: "connection lost: ..." once it had been up."""
        if self._link.ever_connected and not reason.startswith("connection lost"):
            return f"connection lost: {reason}"
        return reason

    def _transport_problem(self, sess: _Session) -> str | None:
        if sess.lost_reason is not None:
            return sess.lost_reason
        state = sess.client.uaclient.state
        if getattr(state, "value", state) != "connected":
            return f"{self.device.endpoint}: transport {getattr(state, 'value', state)}"
        return None

    async def _drop(self, sess: _Session, reason: str) -> None:
        async with self._lock:
            await self._drop_locked(sess, reason)

    def _forget_values(self) -> None:
        """Nothing received so far counts any more (a new epoch: late callbacks are dropped)."""
        self._epoch += 1
        self._pending.clear()
        self._last.clear()

    async def _drop_locked(self, sess: _Session, reason: str) -> None:
        if self._session is not sess:
            return
        self._session = None
        self._forget_values()
        self.counters.bump("0", "failures")
        self._link.record_failure(reason)
        await self._close_client(sess.client, graceful=False)

    async def _poll_subscription(self, sess: _Session, deadline: float) -> list[Sample]:
        sub = sess.sub
        heard = sub.last_publish_at if sub.last_publish_at is not None else sess.sub_created
        silent_for = time.monotonic() - heard
        if sess.sub_problem is not None or silent_for > sess.silence_limit_s:
            reason = sess.sub_problem or (
                f"subscription silent for {silent_for:.1f} s "
                f"(keep-alive expected every {sess.keepalive_s:.1f} s)"
            )
            log.warning("subscription lost; rebuilding it", device=self.name, reason=reason)
            self.counters.bump("0", "resubscribes")
            await self._rebuild(sess, deadline)
            if sess.sub is None:
                return await self._read_tags(sess, self._readable, deadline)
            sub = sess.sub
            heard = sub.last_publish_at if sub.last_publish_at is not None else sess.sub_created
        fresh, self._pending = self._pending, {}
        now_mono = time.monotonic()
        now_utc = utcnow()
        alive_mono = heard
        out: list[Sample] = []
        polled: list[OpcUaTag] = []
        for tag in self._readable:
            if tag.name in sess.unresolved:
                out.append(_bad(tag, sess.unresolved[tag.name]))
            elif tag.name in sess.polled:
                polled.append(tag)
            elif (s := fresh.get(tag.name)) is not None:
                out.append(s)
            elif (s := self._last.get(tag.name)) is not None:
                # Unchanged since its notification: vouched for by the subscription's last
                # publish response (data or keep-alive), so it ages from then, not from now.
                mono = max(s.mono, alive_mono)
                at = now_utc - timedelta(seconds=max(0.0, now_mono - mono))
                out.append(Sample(s.tag, s.value, s.quality, at, mono, s.source_time))
            else:
                out.append(_bad(tag, "no value from the subscription yet"))
        if polled:
            out.extend(await self._read_tags(sess, polled, deadline))
        return out

    async def _read_tags(self, sess: _Session, tags: Sequence[OpcUaTag], deadline: float) -> list[Sample]:
        """Read the Value of ``tags`` (resolved ones) in as few Read calls as allowed."""
        out = [_bad(t, sess.unresolved[t.name]) for t in tags if t.name in sess.unresolved]
        todo = [t for t in tags if t.name not in sess.unresolved]
        for i in range(0, len(todo), _MAX_NODES_PER_READ):
            chunk = todo[i : i + _MAX_NODES_PER_READ]
            budget = max(_MIN_BUDGET_S, min(self._timeout_s, deadline - self._clock() - _MARGIN_S))
            out.extend(await self._read_chunk(sess, chunk, budget))
        return out

    async def _read_chunk(self, sess: _Session, tags: Sequence[OpcUaTag], budget: float) -> list[Sample]:
        ua = _lib("asyncua.ua")

        params = ua.ReadParameters()
        params.MaxAge = 0
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        for t in tags:
            rv = ua.ReadValueId()
            rv.NodeId = sess.nodeids[t.name]
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        self.counters.bump("0", "requests")
        try:
            async with asyncio.timeout(budget):
                results = await sess.client.uaclient.read(params)
        except ua.UaStatusCodeError as exc:
            self._reraise_if_cancelled()
            name, _ = _status_name(int(exc.code))
            if name in _SESSION_GONE:
                raise _SessionLost(f"{self.device.endpoint}: {name}") from None
            self.counters.bump("0", "failures")
            return [_bad(t, f"read refused: {name}") for t in tags]
        except TimeoutError:
            # One slow answer is not a lost session (asyncua's watchdog probes the server every
            # second and reports a dead one); a server that keeps not answering is.
            reason = f"timeout: {self.device.endpoint} did not answer a read within {budget * 1000:.0f} ms"
            self.counters.bump("0", "failures")
            sess.read_timeouts += 1
            if sess.read_timeouts >= _MAX_READ_TIMEOUTS:
                raise _SessionLost(f"{reason} ({sess.read_timeouts} times in a row)") from None
            return [_bad(t, reason) for t in tags]
        except (ConnectionError, OSError) as exc:
            self._reraise_if_cancelled()
            raise _SessionLost(f"{self.device.endpoint}: {exc or type(exc).__name__}") from None
        sess.read_timeouts = 0
        if len(results) != len(tags):
            self.counters.bump("0", "failures")
            return [_bad(t, f"bad reply: {len(results)} results for {len(tags)} nodes") for t in tags]
        return [_sample(t, dv) for t, dv in zip(tags, results, strict=True)]

    # ------------------------------------------------------------------ notifications

    def _on_datachange(self, epoch: int, tag_name: str | None, dv: Any) -> None:
        if epoch != self._epoch or tag_name is None:
            self.counters.bump("0", "dropped_old_subscription")
            return
        tag = self._tags[tag_name]
        sample = _sample(tag, dv)
        self.counters.bump("0", "notifications")
        if tag_name in self._pending:
            self.counters.bump("0", "coalesced")
        self._pending[tag_name] = sample
        self._last[tag_name] = sample

    def _on_status_change(self, epoch: int, status: Any) -> None:
        code = _code_of(status)
        if epoch != self._epoch or (code >> 30) == 0:
            return
        sess = self._session
        if sess is not None and sess.sub_epoch == epoch:
            sess.sub_problem = f"subscription status {_status_name(code)[0]}"

    # ------------------------------------------------------------------ connecting

    async def _connect(self, deadline: float) -> _Session:
        """A new client and session: security, namespaces, initial values, subscription."""
        Client = _lib("asyncua").Client

        client = Client(self.device.endpoint, timeout=self._timeout_s)
        client.name = client.description = f"edge-agent {self.device.name}"
        client.product_uri = "urn:edge-inference-agent"
        client.session_timeout = self.device.session_timeout_ms
        self._gen += 1
        sess = _Session(client, self._gen)

        async def lost(exc: Exception) -> None:
            sess.lost_reason = f"{self.device.endpoint}: {self._describe_loss(exc)}"

        client.connection_lost_callback = lost
        # A connect is several round trips (with security: endpoint discovery first); each
        # request has timeout_ms, the whole may overrun the poll's deadline up to this bound.
        budget = max(4 * self._timeout_s, deadline - self._clock())
        step = "connect"
        try:
            async with asyncio.timeout(budget):
                if self.device.secure:
                    step = "security setup"
                    await self._setup_security(client)
                if self.device.username is not None:
                    client.set_user(self.device.username)
                    if self.device.password is not None:
                        client.set_password(self.device.password.reveal())
                step = "connect"
                self.counters.bump("0", "requests")
                await client.connect()
                step = "namespace resolution"
                await self._resolve(sess)
                step = "initial read"
                self._forget_values()
                for s in await self._read_tags(sess, self._readable, self._clock() + self._timeout_s):
                    self._pending[s.tag] = s
                    self._last[s.tag] = s
                if self.device.mode == "subscription":
                    step = "subscription"
                    await self._subscribe(sess)
        except asyncio.CancelledError:
            self._abandon(client)
            self._forget_values()
            raise
        except BaseException as exc:
            self._forget_values()
            await self._close_client(client, graceful=False)
            if not isinstance(exc, Exception):
                raise
            self._reraise_if_cancelled()
            raise self._translate(exc, step, budget) from None
        log.info(
            "connected",
            device=self.name,
            endpoint=self.device.endpoint,
            security=f"{self.device.security_policy}/{self.device.security_mode}",
            mode="polling" if sess.sub is None else "subscription",
            unresolved=len(sess.unresolved),
        )
        return sess

    async def _setup_security(self, client: Any) -> None:
        ua = _lib("asyncua.ua")
        security_policies = _lib("asyncua.crypto.security_policies")
        CertProperties = _lib("asyncua.crypto.uacrypto").CertProperties

        dev = self.device
        assert dev.certificate is not None and dev.private_key is not None  # the config ensures it
        try:
            own = certs.load_certificate(dev.certificate)
        except (OSError, ValueError) as exc:
            raise DriverError(f"client certificate {dev.certificate}: {self._os_reason(exc)}") from None
        info = certs.info_of(own, dev.certificate)
        if info.application_uri is None:
            raise DriverError(
                f"client certificate {dev.certificate} has no application URI (SubjectAlternativeName "
                "URI); create one with: edge-agent certs create --uri ..."
            )
        if dev.application_uri is not None and dev.application_uri != info.application_uri:
            raise DriverError(
                f"application_uri {dev.application_uri} differs from the URI in certificate "
                f"{dev.certificate} ({info.application_uri}); servers refuse such a client"
            )
        client.application_uri = info.application_uri
        try:
            key_bytes = dev.private_key.read_bytes()
        except OSError as exc:
            raise DriverError(f"private key {dev.private_key}: {self._os_reason(exc)}") from None
        key_password = dev.private_key_password.reveal() if dev.private_key_password else None
        mode = getattr(ua.MessageSecurityMode, dev.security_mode)
        policy = getattr(security_policies, _POLICY_CLASSES[dev.security_policy])

        endpoints = await client.connect_and_get_server_endpoints()
        chosen = None
        for ep in endpoints:
            if ep.SecurityMode == mode and ep.SecurityPolicyUri == policy.URI:
                chosen = ep
                break
        if chosen is None:
            offered = sorted(
                {
                    f"{str(ep.SecurityPolicyUri).rsplit('#', 1)[-1]}/{ep.SecurityMode.name.rstrip('_')}"
                    for ep in endpoints
                }
            )
            raise DriverError(
                f"{dev.endpoint} offers no endpoint with {dev.security_policy}/{dev.security_mode}; "
                f"it offers: {', '.join(offered) or 'none'}"
            )
        server_der = _first_cert(bytes(chosen.ServerCertificate or b""))
        if not server_der:
            raise DriverError(f"{dev.endpoint} sent no server certificate for {dev.security_policy}")
        self._check_server_certificate(server_der, chosen.Server.ApplicationUri)
        key_ext = "pem" if key_bytes.lstrip().startswith(b"-----BEGIN") else "der"
        try:
            await client.set_security(
                policy,
                certificate=CertProperties(own.public_bytes(serialization.Encoding.DER), "der"),
                private_key=CertProperties(key_bytes, key_ext, key_password),
                server_certificate=CertProperties(server_der, "der"),
                mode=mode,
            )
        except (ValueError, TypeError) as exc:
            raise DriverError(f"private key {dev.private_key} cannot be loaded: {exc}") from None

        async def validate(cert: x509.Certificate, app: Any) -> None:
            self._check_server_certificate(cert.public_bytes(serialization.Encoding.DER), app.ApplicationUri)

        client.certificate_validator = validate

    def _trust_list(self) -> list[x509.Certificate]:
        """The trusted certificates, read again at every connect."""
        paths = list(self.device.trusted_server_certificates)
        if self.device.trust_dir is not None:
            try:
                paths.extend(
                    sorted(
                        p
                        for p in Path(self.device.trust_dir).iterdir()
                        if p.is_file() and p.suffix.lower() in (".der", ".pem", ".crt", ".cer")
                    )
                )
            except OSError as exc:
                self._warn_trust_once(str(self.device.trust_dir), self._os_reason(exc))
        out = []
        for p in paths:
            try:
                out.append(certs.load_certificate(p))
            except (OSError, ValueError) as exc:
                self._warn_trust_once(str(p), self._os_reason(exc))
        return out

    def _warn_trust_once(self, what: str, reason: str) -> None:
        if what not in self._warned_trust:
            self._warned_trust.add(what)
            log.warning("trust list entry unreadable", device=self.name, path=what, reason=reason)

    def _check_server_certificate(self, der: bytes, application_uri: str | None) -> None:
        """Raise DriverError unless the server's certificate is trusted and valid now."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise DriverError(f"{self.device.endpoint} sent an unreadable certificate: {exc}") from None
        info = certs.info_of(cert)
        if not any(_trusts(anchor, cert) for anchor in self._trust_list()):
            where = []
            if self.device.trust_dir is not None:
                where.append(f"copy it into {self.device.trust_dir}")
            if self.device.trusted_server_certificates or self.device.trust_dir is None:
                where.append("add its file to trusted_server_certificates")
            saved = self._save_rejected(cert, info)
            raise DriverError(
                f"server certificate of {self.device.endpoint} is not trusted: {info.subject}, "
                f"application URI {info.application_uri or '-'}, SHA-1 thumbprint {info.thumbprint_sha1}, "
                f"valid until {info.not_after.date().isoformat()}. If this is the right server, trust it: "
                + " or ".join(where)
                + (f" (a copy was saved as {saved})" if saved else "")
            )
        now = datetime.now(UTC)
        if now < info.not_before or now > info.not_after:
            raise DriverError(
                f"server certificate of {self.device.endpoint} (thumbprint {info.thumbprint_sha1}) is "
                f"valid {info.not_before.isoformat()} .. {info.not_after.isoformat()}, not now "
                f"({now.isoformat()}); is the clock of this gateway (or of the server) wrong?"
            )
        if application_uri and info.application_uri and application_uri != info.application_uri:
            raise DriverError(
                f"server certificate of {self.device.endpoint} (thumbprint {info.thumbprint_sha1}) names "
                f"application URI {info.application_uri}, but the server announces {application_uri}"
            )

    def _save_rejected(self, cert: x509.Certificate, info: certs.CertInfo) -> Path | None:
        if self.device.rejected_dir is None:
            return None
        path = Path(self.device.rejected_dir) / f"{info.thumbprint_sha1}.der"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        except OSError as exc:
            self._warn_trust_once(str(path), self._os_reason(exc))
            return None
        return path

    async def _resolve(self, sess: _Session) -> None:
        """Namespace URIs → indexes on this server, now (they may differ after a restart)."""
        ua = _lib("asyncua.ua")

        self.counters.bump("0", "requests")
        sess.namespaces = [str(u) for u in await sess.client.get_namespace_array()]
        sess.nodeids.clear()
        sess.unresolved.clear()
        for tag in self.device.tags:
            parsed = tag.parsed
            if parsed.namespace_uri is not None:
                if parsed.namespace_uri not in sess.namespaces:
                    sess.unresolved[tag.name] = (
                        f"namespace {parsed.namespace_uri} is not on the server "
                        f"(it has: {', '.join(sess.namespaces)})"
                    )
                    continue
                index = sess.namespaces.index(parsed.namespace_uri)
            else:
                index = parsed.namespace_index or 0
            sess.nodeids[tag.name] = ua.NodeId.from_string(parsed.with_index(index))
        if sess.unresolved:
            log.warning("namespace not found", device=self.name, tags=sorted(sess.unresolved))

    def _monitored_item(self, tag: OpcUaTag, handle: int, nodeid: Any, with_filter: bool) -> Any:
        ua = _lib("asyncua.ua")

        dev = self.device
        rv = ua.ReadValueId()
        rv.NodeId = nodeid
        rv.AttributeId = ua.AttributeIds.Value
        mp = ua.MonitoringParameters()
        mp.ClientHandle = handle
        mp.SamplingInterval = float(
            dev.sampling_interval_ms if dev.sampling_interval_ms is not None else dev.publishing_interval_ms
        )
        mp.QueueSize = dev.queue_size
        mp.DiscardOldest = True
        deadband = tag.deadband if tag.deadband is not None else dev.deadband
        if with_filter and deadband > 0:
            flt = ua.DataChangeFilter()
            flt.Trigger = ua.DataChangeTrigger.StatusValue
            flt.DeadbandType = 1 if dev.deadband_type == "absolute" else 2
            flt.DeadbandValue = float(deadband)
            mp.Filter = flt
        mir = ua.MonitoredItemCreateRequest()
        mir.ItemToMonitor = rv
        mir.MonitoringMode = ua.MonitoringMode.Reporting
        mir.RequestedParameters = mp
        return mir

    async def _subscribe(self, sess: _Session) -> None:
        """Create the subscription and its monitored items; fall back to polling if refused."""
        ua = _lib("asyncua.ua")
        Subscription = _lib("asyncua.common.subscription").Subscription

        dev = self.device
        self._epoch += 1
        epoch = self._epoch
        handles: dict[int, str] = {}
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = float(dev.publishing_interval_ms)
        params.RequestedMaxKeepAliveCount = dev.keepalive_count
        params.RequestedLifetimeCount = max(3 * dev.keepalive_count, 30)
        params.MaxNotificationsPerPublish = 10000
        params.PublishingEnabled = True
        params.Priority = 0
        # Not Client.create_subscription(): it would raise the keep-alive count to its own
        # default (75 % of the session timeout) whenever the server revises the interval, and
        # its stale-subscription watchdog would rebuild with the old numeric node ids.
        sub = Subscription(sess.client.uaclient.session, params, _Handler(self, epoch, handles))
        sess.polled.clear()
        sess.sub = None
        sess.sub_problem = None
        try:
            self.counters.bump("0", "requests")
            result = await sub.init()
        except ua.UaStatusCodeError as exc:
            name, _ = _status_name(int(exc.code))
            if name in _SESSION_GONE:
                raise
            sess.sub_error = f"subscription refused: {name}"
            log.warning("subscription refused by the server; polling instead", device=self.name, status=name)
            return
        sess.sub = sub
        sess.sub_epoch = epoch
        sess.sub_created = time.monotonic()
        sess.revised_interval_ms = float(result.RevisedPublishingInterval or dev.publishing_interval_ms)
        keepalive = int(result.RevisedMaxKeepAliveCount or dev.keepalive_count)
        sess.keepalive_s = sess.revised_interval_ms * keepalive / 1000.0
        sess.silence_limit_s = max(2 * sess.keepalive_s, sess.keepalive_s + self._timeout_s)

        tags = [t for t in self._readable if t.name in sess.nodeids]
        for i, tag in enumerate(tags, start=1):
            handles[i] = tag.name
        # A deadband is for numbers: servers refuse it on other types (or, like asyncua, fail
        # when they apply it), and the initial read told us which nodes hold numbers.
        numeric = {
            name
            for name, s in self._last.items()
            if isinstance(s.value, int | float) and not isinstance(s.value, bool)
        }
        todo = [(i, tag, tag.name in numeric) for i, tag in enumerate(tags, start=1)]
        while todo:
            self.counters.bump("0", "requests")
            results = await sub.create_monitored_items(
                [self._monitored_item(tag, i, sess.nodeids[tag.name], flt) for i, tag, flt in todo]
            )
            retry = []
            for (i, tag, flt), res in zip(todo, results, strict=True):
                if isinstance(res, ua.StatusCode):
                    name, _ = _status_name(_code_of(res))
                    if flt and name in _FILTER_REFUSED:
                        retry.append((i, tag, False))  # deadband not supported for this node
                        continue
                    # Served by reads instead: the read reports the node's own status each poll.
                    sess.polled.add(tag.name)
                    log.warning("monitored item refused; polling the node", device=self.name, tag=tag.name,
                                status=name)
            todo = retry

    async def _rebuild(self, sess: _Session, deadline: float) -> None:
        """Replace a silent or failed subscription on the same session."""
        ua = _lib("asyncua.ua")

        async with self._lock:
            if self._session is not sess:
                raise _SessionLost(self._link.last_error or "session replaced")
            old, sess.sub = sess.sub, None
            self._epoch += 1
            sess.vtypes.clear()
            try:
                async with asyncio.timeout(max(self._timeout_s, deadline - self._clock())):
                    if old is not None and old.subscription_id is not None:
                        # Already gone on the server, perhaps: that may be why it went silent.
                        with contextlib.suppress(ua.UaStatusCodeError):
                            await sess.client.uaclient.delete_subscriptions([old.subscription_id])
                    await self._resolve(sess)
                    await self._subscribe(sess)
            except TimeoutError:
                raise _SessionLost(
                    f"timeout: {self.device.endpoint} did not answer while resubscribing"
                ) from None
            except ua.UaStatusCodeError as exc:
                self._reraise_if_cancelled()
                raise _SessionLost(f"resubscribing failed: {_status_name(int(exc.code))[0]}") from None
            except (ConnectionError, OSError) as exc:
                self._reraise_if_cancelled()
                raise _SessionLost(f"{self.device.endpoint}: {exc or type(exc).__name__}") from None

    # ------------------------------------------------------------------ closing

    async def _close_client(self, client: Any, graceful: bool) -> None:
        """Close a client, with a deadline; whatever happens, no socket or task is left."""
        try:
            if graceful:
                async with asyncio.timeout(min(self._timeout_s, _CLOSE_TIMEOUT_S)):
                    await client.disconnect()
        except Exception as exc:  # closing a dead session must not raise
            log.debug("disconnect failed; closing the socket", device=self.name, error=repr(exc))
        finally:
            self._abandon(client)

    @staticmethod
    def _abandon(client: Any) -> None:
        """Stop asyncua's background tasks and close the socket, synchronously."""
        uaclient = client.uaclient
        uaclient.request_disconnect()
        for task in (
            getattr(client, "_supervisor_task", None),
            getattr(client, "_stale_watchdog_task", None),
            getattr(client, "_renew_channel_task", None),
            getattr(uaclient.session, "_publish_task", None),
        ):
            if task is not None and not task.done():
                task.cancel()
        client.disconnect_socket()

    # ------------------------------------------------------------------ errors

    @staticmethod
    def _reraise_if_cancelled() -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    @staticmethod
    def _os_reason(exc: BaseException) -> str:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        return str(exc) or type(exc).__name__

    @staticmethod
    def _describe_loss(exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return "the server stopped answering (keep-alive probe timed out)"
        text = str(exc)
        return text or type(exc).__name__

    def _own_cert_hint(self) -> str:
        path = self.device.certificate
        if path is None:
            return ""
        try:
            info = certs.show_certificate(path)
        except (OSError, ValueError):
            return f"have the server trust certificate {path}"
        return (
            f"have the server trust certificate {path} (SHA-1 thumbprint {info.thumbprint_sha1}, "
            f"application URI {info.application_uri}); many servers have just put it in their "
            "rejected list, from where it can be moved to the trusted list"
        )

    def _translate(self, exc: Exception, step: str, budget: float) -> DriverError:
        """An exception from connecting → DriverError with a message an engineer can act on."""
        ua = _lib("asyncua.ua")

        ep = self.device.endpoint
        if isinstance(exc, DriverError):
            return exc
        if isinstance(exc, _SessionLost):
            return DeviceUnreachable(f"connection lost during {step}: {exc}")
        if isinstance(exc, AgentError):  # SecretError: names the source, never the value
            return DriverError(str(exc))
        if isinstance(exc, AssertionError):
            # asyncua 2.1 asserts on an OpenSecureChannel answered with a Bad status: servers
            # (many PLCs among them) answer so when they do not trust the client certificate.
            return DriverError(
                f"{ep} refused the secure channel "
                f"({self.device.security_policy}/{self.device.security_mode}); servers do this when "
                f"they do not trust the client certificate: {self._own_cert_hint()}"
            )
        if isinstance(exc, ua.UaStatusCodeError):
            name, doc = _status_name(int(exc.code))
            if name.startswith("BadCertificate") or name in (
                "BadSecurityChecksFailed",
                "BadSecurityPolicyRejected",
                "BadNoValidCertificates",
            ):
                return DriverError(f"{ep} refused this client's certificate: {name}: {self._own_cert_hint()}")
            if name in _USER_REFUSED:
                who = f"user {self.device.username!r}" if self.device.username else "anonymous access"
                return DriverError(
                    f"{ep} refused {who}: {name} (check username, password and the user's rights)"
                )
            if name in ("BadTooManySessions", "BadMaxConnectionsReached"):
                return DriverError(
                    f"{ep} has no free session ({name}): other clients (or an earlier agent process) hold "
                    "them; abandoned sessions expire after the server's session timeout"
                )
            return DriverError(f"{step} failed: {name}" + (f" ({doc})" if doc else ""))
        if isinstance(exc, TimeoutError):
            return DeviceUnreachable(f"timeout: {ep} did not answer within {budget:.1f} s ({step})")
        if isinstance(exc, ConnectionRefusedError):
            return DeviceUnreachable(f"connect to {ep} failed: connection refused")
        if isinstance(exc, ConnectionError):
            return DeviceUnreachable(f"connection to {ep} lost during {step}: {exc or type(exc).__name__}")
        if isinstance(exc, OSError):
            return DeviceUnreachable(f"connect to {ep} failed: {self._os_reason(exc)}")
        if isinstance(exc, ua.UaError):
            return DriverError(f"{step} failed: {exc}")
        return DriverError(f"{step} failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ writing

    def tag(self, name: str) -> OpcUaTag:
        """The configured tag; WriteRefused when there is none by that name."""
        try:
            return self._tags[name]
        except KeyError:
            raise WriteRefused(f"unknown tag {name!r} on device {self.name}") from None

    async def read(self, tag_name: str) -> Sample:
        """One Read of the tag's Value attribute issued now (``MaxAge`` 0), never a subscription
        or poll value: the evidence a write is verified against. A fault gives a BAD sample
        with the reason; ``KeyError`` for a tag the device does not have (a bug of the caller).
        """
        tag = self._tags[tag_name]
        if not self._entered:
            raise RuntimeError("OpcUaDriver used outside 'async with'")
        got = await self._ensure_session(self._clock() + self._timeout_s)
        if isinstance(got, str):
            return _bad(tag, got)
        sess = got
        if tag.name in sess.unresolved:
            return _bad(tag, sess.unresolved[tag.name])
        try:
            return (await self._read_chunk(sess, [tag], self._timeout_s))[0]
        except _SessionLost as exc:
            reason = f"connection lost: {exc}"
            await self._drop(sess, reason)
            return _bad(tag, reason)

    async def write(self, tag_name: str, value: Value, *, purpose: Purpose) -> Value:
        """Write one tag and return the value read back by a Read issued after the write's
        reply. Raises the item's error of :meth:`write_many` (see there)."""
        result = (await self.write_many([(tag_name, value)], purpose=purpose))[tag_name]
        if isinstance(result, DriverError):
            raise result
        return result

    async def write_many(self, items: Sequence[tuple[str, Value]], *, purpose: Purpose) -> WriteResults:
        """Write ``items`` one by one in the order given (one Write call each: a server may
        apply the nodes of one call in any order); per tag, return the value read back by a
        Read issued after its write's reply, or that item's
        :class:`~agent.errors.DriverError`. Nothing is raised for a device fault or a refused
        item: the others are still written.

        Each value is sent with the node's own data type (read once per session) and no
        timestamps. Per item: :class:`~agent.errors.WriteRefused` (not applied: unknown or
        read-only tag, ``purpose`` not the tag's declared one, a value that does not fit the
        node's type, or the server refused it: BadNotWritable, BadUserAccessDenied, ...),
        :class:`~agent.errors.DeviceUnreachable` (not sent: no session, or the server left an
        earlier write of this call unanswered), :class:`~agent.errors.WriteUnconfirmed` (sent,
        no reply or the connection dropped: possibly applied),
        :class:`~agent.errors.ReadBackFailed` (acknowledged, the read-back failed).

        ``ValueError`` when a tag appears twice in ``items``.
        """
        names = [name for name, _ in items]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"write_many: tag(s) given more than once: {', '.join(twice)}")
        if not self._entered:
            raise RuntimeError("OpcUaDriver used outside 'async with'")
        out: WriteResults = {}
        todo: list[tuple[OpcUaTag, Value]] = []
        for name, value in items:
            try:
                tag = self.tag(name)
                if not tag.writable:
                    raise WriteRefused(f"{tag.name} ({tag.node_id}) is read-only (access: {tag.access})")
                check_purpose(tag.name, tag.node_id, tag.purpose, purpose)
            except WriteRefused as exc:
                out[name] = exc
                continue
            todo.append((tag, value))
        unanswered: str | None = None
        for tag, value in todo:
            reason = unanswered
            if reason is None:
                got = await self._ensure_session(self._clock() + self._timeout_s)
                if isinstance(got, str):
                    reason = got
            if reason is not None:
                out[tag.name] = DeviceUnreachable(f"{tag.name}: not sent: {reason}")
                continue
            assert isinstance(got, _Session)
            try:
                out[tag.name] = await self._write_one(got, tag, value)
            except WriteUnconfirmed as exc:
                out[tag.name] = exc
                unanswered = f"{self.device.endpoint} left an earlier write of this batch unanswered"
            except DriverError as exc:
                out[tag.name] = exc
        return {name: out[name] for name in names}

    async def _write_one(self, sess: _Session, tag: OpcUaTag, value: Value) -> Value:
        """Type, send, read back one item; the error says how far it got (see write_many)."""
        ua = _lib("asyncua.ua")

        where = f"{tag.name} ({tag.node_id})"
        if tag.name in sess.unresolved:
            raise WriteRefused(f"{tag.name}: {sess.unresolved[tag.name]}")
        try:
            vtype = await self._variant_type(sess, tag)
        except ua.UaStatusCodeError as exc:
            self._reraise_if_cancelled()
            name, _ = _status_name(int(exc.code))
            if name in _SESSION_GONE:
                await self._drop(sess, f"connection lost: {self.device.endpoint}: {name}")
            raise DeviceUnreachable(f"{where}: not sent: reading its data type failed: {name}") from None
        except TimeoutError:
            reason = f"timeout: {self.device.endpoint} did not answer within {self._timeout_s * 1000:.0f} ms"
            await self._drop(sess, f"connection lost: {reason}")
            raise DeviceUnreachable(f"{where}: not sent: reading its data type: {reason}") from None
        except (ConnectionError, OSError) as exc:
            self._reraise_if_cancelled()
            await self._drop(sess, f"connection lost: {exc}")
            raise DeviceUnreachable(f"{where}: not sent: connection lost: {exc}") from None
        payload = _coerce(tag, value, vtype)
        wv = ua.WriteValue()
        wv.NodeId = sess.nodeids[tag.name]
        wv.AttributeId = ua.AttributeIds.Value
        # Only the value: no StatusCode, no SourceTimestamp, no ServerTimestamp (asyncua's
        # convenience write adds a source timestamp, which Siemens servers refuse).
        wv.Value = ua.DataValue(Value=ua.Variant(payload, vtype), StatusCode=None)
        params = ua.WriteParameters()
        params.NodesToWrite = [wv]
        problem = self._transport_problem(sess)
        if problem is not None:
            await self._drop(sess, f"connection lost: {problem}")
            raise DeviceUnreachable(f"{where}: not sent: connection lost: {problem}")
        self.counters.bump("0", "requests")
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await sess.client.uaclient.write(params)
        except ua.UaStatusCodeError as exc:
            self._reraise_if_cancelled()
            name, _ = _status_name(int(exc.code))
            if name not in _SESSION_GONE:
                raise self._refusal(sess, tag, int(exc.code), None) from None
            await self._drop(sess, f"connection lost: {self.device.endpoint}: {name}")
            raise WriteUnconfirmed(
                f"{where}: sent, but the session failed ({name}): possibly applied"
            ) from None
        except TimeoutError:
            reason = f"timeout: {self.device.endpoint} did not answer within {self._timeout_s * 1000:.0f} ms"
            await self._drop(sess, f"connection lost: {reason}")
            raise WriteUnconfirmed(f"{where}: sent, but {reason}: possibly applied") from None
        except (ConnectionError, OSError) as exc:
            self._reraise_if_cancelled()
            await self._drop(sess, f"connection lost: {exc}")
            lost = exc or type(exc).__name__
            raise WriteUnconfirmed(
                f"{where}: sent, but the connection was lost ({lost}): possibly applied"
            ) from None
        code = _code_of(results[0]) if results else 0
        if (code >> 30) != 0:
            raise self._refusal(sess, tag, code, vtype)
        self.counters.bump("0", "writes")
        try:
            back = (await self._read_chunk(sess, [tag], self._timeout_s))[0]
        except _SessionLost as exc:
            await self._drop(sess, f"connection lost: {exc}")
            raise ReadBackFailed(
                f"{where}: written, but the read-back failed: connection lost: {exc}"
            ) from None
        if not back.quality.is_good and back.value is None:
            raise ReadBackFailed(f"{where}: written, but the read-back is not valid: {back.quality.reason}")
        return back.value

    def _refusal(self, sess: _Session, tag: OpcUaTag, code: int, vtype: Any) -> WriteRefused:
        name, doc = _status_name(code)
        where = f"{tag.name} ({tag.node_id})"
        if name == "BadNotWritable":
            why = "the node is read-only on the server"
        elif name == "BadUserAccessDenied":
            who = f"user {self.device.username!r}" if self.device.username else "an anonymous session"
            why = f"{who} may not write this node (read-only for this user)"
        elif name == "BadTypeMismatch":
            sess.vtypes.pop(tag.name, None)
            shown = getattr(vtype, "name", "?")
            why = f"the server expects another data type than {shown} (the type is read again next time)"
        elif name == "BadWriteNotSupported":
            why = "the server does not support this kind of write"
        elif name == "BadOutOfRange":
            why = "the value is outside the range the server accepts"
        else:
            why = doc or "refused"
        return WriteRefused(f"{where}: the server refused the write: {name}: {why}")

    async def _variant_type(self, sess: _Session, tag: OpcUaTag) -> Any:
        """The node's VariantType, read once per session (DataType, ValueRank attributes)."""
        ua = _lib("asyncua.ua")
        Node = _lib("asyncua.common.node").Node
        data_type_to_variant_type = _lib("asyncua.common.ua_utils").data_type_to_variant_type

        cached = sess.vtypes.get(tag.name)
        if cached is not None:
            return cached
        nodeid = sess.nodeids[tag.name]
        params = ua.ReadParameters()
        for attr in (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank, ua.AttributeIds.Value):
            rv = ua.ReadValueId()
            rv.NodeId = nodeid
            rv.AttributeId = attr
            params.NodesToRead.append(rv)
        self.counters.bump("0", "requests")
        async with asyncio.timeout(self._timeout_s):
            dtype_dv, rank_dv, value_dv = await sess.client.uaclient.read(params)
        code = _code_of(dtype_dv.StatusCode)
        if (code >> 30) != 0:
            raise WriteRefused(
                f"{tag.name} ({tag.node_id}): cannot read its data type: {_status_name(code)[0]}"
            )
        rank = rank_dv.Value.Value if rank_dv.Value is not None else -1
        if isinstance(rank, int) and rank >= 0:
            raise WriteRefused(
                f"{tag.name} ({tag.node_id}): array nodes (ValueRank {rank}) cannot be written"
            )
        dtype = dtype_dv.Value.Value
        if dtype.NamespaceIndex == 0 and isinstance(dtype.Identifier, int) and 1 <= dtype.Identifier <= 21:
            vtype = ua.VariantType(dtype.Identifier)
        else:
            async with asyncio.timeout(self._timeout_s * 4):
                vtype = await data_type_to_variant_type(Node(sess.client.uaclient.session, dtype))
        if vtype in (ua.VariantType.Variant, ua.VariantType.Null):
            current = value_dv.Value.VariantType if value_dv.Value is not None else ua.VariantType.Null
            if current is ua.VariantType.Null:
                raise WriteRefused(
                    f"{tag.name} ({tag.node_id}): the node's data type is abstract and it has no value"
                )
            vtype = current
        sess.vtypes[tag.name] = vtype
        return vtype


def _coerce(tag: OpcUaTag, value: Value, vtype: Any) -> Any:
    """``value`` as the Python object asyncua encodes as ``vtype``; WriteRefused if it does not fit."""
    ua = _lib("asyncua.ua")

    kind = vtype.name
    where = f"{tag.name} ({tag.node_id}, {kind})"
    if kind == "Boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise WriteRefused(f"{where}: takes true/false or 1/0, not {value!r}")
    if kind in ("String", "LocalizedText", "DateTime"):
        if not isinstance(value, str):
            raise WriteRefused(f"{where}: takes text, not {value!r}")
        if kind == "LocalizedText":
            return ua.LocalizedText(value)
        if kind == "DateTime":
            try:
                dt = datetime.fromisoformat(value)
            except ValueError:
                raise WriteRefused(f"{where}: {value!r} is not an ISO 8601 date and time") from None
            return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
        return value
    if kind not in _INT_RANGES and kind not in ("Float", "Double"):
        raise WriteRefused(f"{where}: data type {kind} is not supported for writes")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused(f"{where}: takes a number, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteRefused(f"{where}: not finite: {value}")
    if tag.range is not None and not tag.range[0] <= value <= tag.range[1]:
        raise WriteRefused(f"{where}: {value:g} outside plausible range [{tag.range[0]:g}, {tag.range[1]:g}]")
    if kind in _INT_RANGES:
        if isinstance(value, float):
            if not value.is_integer():
                raise WriteRefused(f"{where}: {value:g} is not an integer")
            value = int(value)
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise WriteRefused(f"{where}: {value} does not fit ({low}..{high})")
        return int(value)
    number = float(value)
    if kind == "Float" and abs(number) > _FLOAT32_MAX:
        raise WriteRefused(f"{where}: {number:g} does not fit a 32-bit float")
    return number
