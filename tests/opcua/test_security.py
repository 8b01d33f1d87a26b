"""Security policies and modes, users, trust in both directions, certificate expiry."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import structlog
from asyncua import ua
from asyncua.server import uaprocessor
from asyncua.ua.ua_binary import struct_from_binary

from agent.drivers.opcua import OpcUaDriver
from agent.ops.certs import show_certificate
from agent.types import QualityCode
from tests.opcua.conftest import Pki, ServerFactory, by_tag, make_device, poll_until, secure_overrides


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        ("Basic256Sha256", "SignAndEncrypt"),
        ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
        ("Aes256_Sha256_RsaPss", "Sign"),
    ],
)
async def test_secure_channel_read_and_write(opcua_server: ServerFactory, pki: Pki, policy: str, mode: str) -> None:
    plant = await opcua_server(secure=True, insecure_endpoint=False, trusted_clients=pki.server_trust)
    dev = make_device(plant.url, **secure_overrides(pki, policy, mode))
    async with OpcUaDriver(dev) as driver:
        got = by_tag(await driver.poll(time.monotonic() + 3))
        assert got["t.Double"].value == 3.25 and got["t.Double"].quality.is_good, got["t.Double"]
        assert await driver.write("t.Int16", 321, purpose="display") == 321
        assert driver.status().security == f"{policy}/{mode}"
        assert driver.unit_status()[0].state == "ok"
    assert (await plant.value("Int16")).Value.Value == 321


async def test_username_password_over_sign_and_encrypt(
    opcua_server: ServerFactory, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "s3cret-Pa55-not-in-logs"
    monkeypatch.setenv("OPCUA_TEST_PASSWORD", password)
    monkeypatch.setenv("OPCUA_TEST_WRONG", "wrong-Pa55-not-in-logs")
    plant = await opcua_server(
        secure=True, insecure_endpoint=False, trusted_clients=pki.server_trust, users={"operator": password}
    )
    base = secure_overrides(pki, "Aes256_Sha256_RsaPss", "SignAndEncrypt")
    dev = make_device(plant.url, username="operator", password={"env": "OPCUA_TEST_PASSWORD"}, **base)
    with structlog.testing.capture_logs() as logs:
        async with OpcUaDriver(dev) as driver:
            got = by_tag(await driver.poll(time.monotonic() + 3))
            assert got["t.Double"].quality.is_good
            assert await driver.write("t.String", "by operator", purpose="display") == "by operator"
        wrong = make_device(plant.url, username="operator", password={"env": "OPCUA_TEST_WRONG"}, **base)
        async with OpcUaDriver(wrong) as driver:
            bad = by_tag(await driver.poll(time.monotonic() + 3))
        missing = make_device(plant.url, username="operator", password={"env": "OPCUA_TEST_UNSET"}, **base)
        async with OpcUaDriver(missing) as driver:
            unset = by_tag(await driver.poll(time.monotonic() + 3))
    reason = bad["t.Double"].quality.reason
    assert "refused user 'operator': BadUserAccessDenied" in reason
    assert "secret not set: environment variable OPCUA_TEST_UNSET" in unset["t.Double"].quality.reason
    everything = repr(logs) + reason + repr(dev)
    assert password not in everything and "wrong-Pa55" not in everything


async def test_untrusted_server_certificate_names_the_thumbprint_to_trust(
    opcua_server: ServerFactory, pki: Pki, tmp_path: Path
) -> None:
    plant = await opcua_server(secure=True, cert=(pki.impostor_cert, pki.impostor_key), trusted_clients=None)
    trust = tmp_path / "trusted"
    shutil.copytree(pki.client_trust, trust)
    rejected = tmp_path / "rejected"
    thumb = show_certificate(pki.impostor_cert).thumbprint_sha1
    dev = make_device(
        plant.url,
        **{**secure_overrides(pki), "trust_dir": str(trust), "rejected_dir": str(rejected)},
        backoff_ms=100,
        backoff_max_ms=100,
    )
    async with OpcUaDriver(dev) as driver:
        got = by_tag(await driver.poll(time.monotonic() + 3))
        reason = got["t.Double"].quality.reason
        assert got["t.Double"].quality.code is QualityCode.BAD
        assert f"server certificate of {plant.url} is not trusted" in reason
        assert f"SHA-1 thumbprint {thumb}" in reason
        assert f"copy it into {trust}" in reason
        saved = rejected / f"{thumb}.der"
        assert saved.read_bytes() == pki.impostor_cert.read_bytes()
        assert f"a copy was saved as {saved}" in reason
        assert "not trusted" in driver.unit_status()[0].last_error
        # The engineer trusts it; the next attempt succeeds without a restart.
        shutil.copy(saved, trust / saved.name)
        got = await poll_until(driver, lambda s: s["t.Double"].quality.is_good)
        assert got["t.Double"].value == 3.25


async def test_server_that_does_not_trust_the_client(opcua_server: ServerFactory, pki: Pki) -> None:
    plant = await opcua_server(secure=True, insecure_endpoint=False, trusted_clients=pki.server_trust)
    dev = make_device(
        plant.url,
        **{**secure_overrides(pki), "certificate": str(pki.untrusted_cert), "private_key": str(pki.untrusted_key)},
    )
    thumb = show_certificate(pki.untrusted_cert).thumbprint_sha1
    async with OpcUaDriver(dev) as driver:
        got = by_tag(await driver.poll(time.monotonic() + 3))
    reason = got["t.Double"].quality.reason
    assert f"{plant.url} refused this client's certificate: BadCertificateUntrusted" in reason
    assert f"have the server trust certificate {pki.untrusted_cert} (SHA-1 thumbprint {thumb}" in reason


async def test_server_refusing_at_open_secure_channel_is_not_a_bare_assertion(
    opcua_server: ServerFactory, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many PLC servers refuse an untrusted client already at OpenSecureChannel with a Bad
    status; asyncua then raises a bare AssertionError. The message must still say what to do."""
    original = uaprocessor.UaProcessor.open_secure_channel

    def refuse(self: uaprocessor.UaProcessor, algohdr: object, seqhdr: object, body: object) -> None:
        request = struct_from_binary(ua.OpenSecureChannelRequest, body.copy())  # type: ignore[attr-defined]
        if request.Parameters.SecurityMode == ua.MessageSecurityMode.None_:
            return original(self, algohdr, seqhdr, body)  # type: ignore[no-any-return]
        self._connection.select_policy(
            algohdr.SecurityPolicyURI,  # type: ignore[attr-defined]
            algohdr.SenderCertificate,  # type: ignore[attr-defined]
            request.Parameters.SecurityMode,
        )
        response = ua.OpenSecureChannelResponse()
        response.Parameters = self._connection.open(request.Parameters, self.iserver)
        response.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadSecurityChecksFailed)
        self.send_response(request.RequestHeader.RequestHandle, seqhdr, response, ua.MessageType.SecureOpen)
        return None

    monkeypatch.setattr(uaprocessor.UaProcessor, "open_secure_channel", refuse)
    plant = await opcua_server(secure=True)
    thumb = show_certificate(pki.client_cert).thumbprint_sha1
    async with OpcUaDriver(make_device(plant.url, **secure_overrides(pki))) as driver:
        got = by_tag(await driver.poll(time.monotonic() + 3))
    reason = got["t.Double"].quality.reason
    assert f"{plant.url} refused the secure channel (Basic256Sha256/SignAndEncrypt)" in reason
    assert "do not trust the client certificate" in reason
    assert f"SHA-1 thumbprint {thumb}" in reason
    assert "AssertionError" not in reason


async def test_policy_the_server_does_not_offer(opcua_server: ServerFactory, pki: Pki) -> None:
    plant = await opcua_server(
        secure=True, policies=[ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt], trusted_clients=pki.server_trust
    )
    dev = make_device(plant.url, **secure_overrides(pki, "Aes256_Sha256_RsaPss", "Sign"))
    async with OpcUaDriver(dev) as driver:
        got = by_tag(await driver.poll(time.monotonic() + 3))
    reason = got["t.Double"].quality.reason
    assert "offers no endpoint with Aes256_Sha256_RsaPss/Sign" in reason
    assert "it offers: Basic256Sha256/SignAndEncrypt, None/None" in reason


async def test_client_certificate_expiry_is_warned_well_ahead(opcua_server: ServerFactory, pki: Pki) -> None:
    plant = await opcua_server(secure=True, trusted_clients=pki.server_trust)
    overrides = {**secure_overrides(pki), "certificate": str(pki.expiring_cert), "private_key": str(pki.expiring_key)}
    with structlog.testing.capture_logs() as logs:
        async with OpcUaDriver(make_device(plant.url, **overrides)) as driver:
            warning = driver.cert_warning
            assert warning is not None and "expires in 10 days" in warning
            assert driver.status().cert_warning == warning
            got = by_tag(await driver.poll(time.monotonic() + 3))
            assert got["t.Double"].quality.is_good  # still valid: it works, with a warning
    assert [e for e in logs if e["event"] == "client certificate" and e["log_level"] == "warning"]
    async with OpcUaDriver(make_device(plant.url, **secure_overrides(pki))) as fine:
        assert fine.cert_warning is None


async def test_missing_client_certificate_is_a_clear_bad_reason(opcua_server: ServerFactory, pki: Pki,
                                                                tmp_path: Path) -> None:
    plant = await opcua_server(secure=True, trusted_clients=pki.server_trust)
    overrides = {**secure_overrides(pki), "certificate": str(tmp_path / "nope.der")}
    async with OpcUaDriver(make_device(plant.url, **overrides)) as driver:
        assert driver.cert_warning is not None and "cannot be read" in driver.cert_warning
        got = by_tag(await driver.poll(time.monotonic() + 3))
    assert f"client certificate {tmp_path / 'nope.der'}: No such file or directory" in got["t.Double"].quality.reason
