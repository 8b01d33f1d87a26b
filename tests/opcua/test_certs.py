"""`edge-agent certs create|show` and the expiry warning."""

from __future__ import annotations

import argparse
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.ops.certs import (
    add_certs_parser,
    create_certificate,
    expiry_warning,
    run_certs,
    show_certificate,
)


def test_create_and_show(tmp_path: Path) -> None:
    cert, key = tmp_path / "own" / "cert.der", tmp_path / "own" / "key.pem"
    info = create_certificate(
        cert, key, application_uri="urn:gw7:edge-agent", hostnames=["gw7", "10.1.2.3"], days=90, organization="ACME"
    )
    assert info.application_uri == "urn:gw7:edge-agent"
    assert info.dns_names == ("gw7",) and info.ip_addresses == ("10.1.2.3",)
    assert 89.9 < info.days_left() <= 90.1
    assert len(info.thumbprint_sha1) == 40 and info.self_signed
    assert "O=ACME" in info.subject and "CN=edge-agent@gw7" in info.subject
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = x509.load_der_x509_certificate(cert.read_bytes())  # DER by default
    usage = loaded.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and usage.data_encipherment
    assert usage.content_commitment
    eku = loaded.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert private.public_key().public_numbers() == loaded.public_key().public_numbers()  # type: ignore[union-attr]
    assert show_certificate(cert) == info


def test_pem_certificate_by_suffix(tmp_path: Path) -> None:
    info = create_certificate(tmp_path / "c.pem", tmp_path / "k.pem", application_uri="urn:x", usage="both")
    assert (tmp_path / "c.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert show_certificate(tmp_path / "c.pem").thumbprint_sha1 == info.thumbprint_sha1
    assert info.extended_usage == ("client", "server")


def test_never_regenerated_silently(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.der", tmp_path / "k.pem"
    first = create_certificate(cert, key, application_uri="urn:x")
    with pytest.raises(FileExistsError, match="refusing to replace it"):
        create_certificate(cert, key, application_uri="urn:x")
    assert show_certificate(cert).thumbprint_sha1 == first.thumbprint_sha1
    second = create_certificate(cert, key, application_uri="urn:x", overwrite=True)
    assert second.thumbprint_sha1 != first.thumbprint_sha1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"application_uri": "edge-agent"}, "is not a URI"),
        ({"application_uri": "urn:x", "days": 0}, "days must be"),
        ({"application_uri": "urn:x", "key_size": 1024}, "key size"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_certificate(tmp_path / "c.der", tmp_path / "k.pem", **kwargs)  # type: ignore[arg-type]


def test_expiry_warning(tmp_path: Path) -> None:
    cert = tmp_path / "c.der"
    info = create_certificate(cert, tmp_path / "k.pem", application_uri="urn:x", days=365)
    assert expiry_warning(cert) is None
    soon = info.not_after - timedelta(days=20)
    warning = expiry_warning(cert, warn_days=30, now=soon)
    assert warning is not None and "expires in 20 days" in warning and info.thumbprint_sha1 in warning
    assert expiry_warning(cert, warn_days=10, now=soon) is None
    expired = expiry_warning(cert, now=info.not_after + timedelta(days=1))
    assert expired is not None and "EXPIRED" in expired
    early = expiry_warning(cert, now=datetime(2001, 1, 1, tzinfo=UTC))
    assert early is not None and "not valid before" in early and "clock" in early
    missing = expiry_warning(tmp_path / "nope.der")
    assert missing is not None and "cannot be read: No such file or directory" in missing
    (tmp_path / "junk.der").write_bytes(b"junk")
    junk = expiry_warning(tmp_path / "junk.der")
    assert junk is not None and "not a PEM or DER X.509 certificate" in junk


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edge-agent")
    add_certs_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "cert.der", tmp_path / "key.pem"
    argv = ["certs", "create", "--cert", str(cert), "--key", str(key), "--uri", "urn:gw:edge-agent",
            "--host", "gw", "--host", "127.0.0.1", "--days", "400"]
    assert run_certs(parse(argv)) == 0
    out = capsys.readouterr().out
    thumb = show_certificate(cert).thumbprint_sha1
    assert thumb in out and "urn:gw:edge-agent" in out and "gw, 127.0.0.1" in out
    assert run_certs(parse(argv)) == 1  # exists: refused
    assert "refused" in capsys.readouterr().err
    assert run_certs(parse([*argv, "--force"])) == 0
    capsys.readouterr()
    assert run_certs(parse(["certs", "show", str(cert)])) == 0
    out = capsys.readouterr().out
    assert "thumbprint SHA-1:" in out and "application URI:  urn:gw:edge-agent" in out
    assert run_certs(parse(["certs", "show", "--json", "--warn-days", "500", str(cert)])) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["application_uri"] == "urn:gw:edge-agent" and "expires in" in shown["warning"]
    assert run_certs(parse(["certs", "show", str(tmp_path / "missing.der")])) == 1
    assert run_certs(parse(["certs", "create", "--cert", str(tmp_path / "a.der"), "--key", str(tmp_path / "b.pem"),
                            "--uri", "no-uri"])) == 2
