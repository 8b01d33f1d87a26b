"""Application instance certificates for OPC UA: create, show, and warn before they expire.

OPC UA authenticates applications, not just users: the client presents a certificate whose
SubjectAlternativeName carries its *application URI* (it must equal the URI the client
announces) and the host names it runs on; the server must trust that certificate, and the
client must trust the server's. Self-signed certificates expire (commonly after a year) and a
gateway whose clock is wrong at boot makes a valid one look expired or not yet valid, so:

* :func:`create_certificate` writes a new RSA key and self-signed certificate, and refuses to
  overwrite existing files unless asked to (a certificate is never regenerated silently: the
  servers that trust the old one would stop trusting the agent);
* :func:`show_certificate` reads one (PEM or DER) into a :class:`CertInfo`: subject, URI,
  host names, SHA-1 thumbprint (what OPC UA tools display) and SHA-256 fingerprint, validity;
* :func:`expiry_warning` returns a message well before the certificate expires (for the
  agent's status and logs), or when it is expired, not yet valid, or unreadable.

CLI glue: :func:`add_certs_parser` and :func:`run_certs` (``edge-agent certs create|show``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pwd
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # imported where used: the agent loads this module for every run (status,
    # CLI), and X.509 is needed only with an OPC UA certificate (about 1 MB of RSS otherwise)
    from cryptography import x509

__all__ = [
    "CertInfo",
    "CertUsage",
    "add_certs_parser",
    "create_certificate",
    "expiry_warning",
    "format_info",
    "info_of",
    "load_certificate",
    "run_certs",
    "show_certificate",
    "thumbprint",
]

CertUsage = Literal["client", "server", "both"]

_PEM_MARKER = b"-----BEGIN"


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What an engineer needs to know about a certificate (no key material)."""

    path: Path
    subject: str
    issuer: str
    application_uri: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    thumbprint_sha1: str
    fingerprint_sha256: str
    serial: str
    not_before: datetime
    not_after: datetime
    self_signed: bool
    key_bits: int | None
    extended_usage: tuple[str, ...]

    def days_left(self, now: datetime | None = None) -> float:
        """Days until expiry (negative once expired)."""
        now = now or datetime.now(UTC)
        return (self.not_after - now).total_seconds() / 86400.0

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """JSON-friendly view (for ``certs show --json`` and the status view)."""
        return {
            "path": str(self.path),
            "subject": self.subject,
            "issuer": self.issuer,
            "application_uri": self.application_uri,
            "dns_names": list(self.dns_names),
            "ip_addresses": list(self.ip_addresses),
            "thumbprint_sha1": self.thumbprint_sha1,
            "fingerprint_sha256": self.fingerprint_sha256,
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left(now), 1),
            "self_signed": self.self_signed,
            "key_bits": self.key_bits,
            "extended_usage": list(self.extended_usage),
        }


def _hex(data: bytes) -> str:
    return data.hex().upper()


def thumbprint(cert: x509.Certificate) -> str:
    """The SHA-1 thumbprint of the DER encoding, upper-case hex (as OPC UA tools show it)."""
    from cryptography.hazmat.primitives import hashes

    return _hex(cert.fingerprint(hashes.SHA1()))  # identification, not security


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Read a certificate, PEM or DER (detected from the content, not the file name).

    Raises OSError when the file cannot be read and ValueError when it is not a certificate.
    """
    from cryptography import x509

    data = Path(path).read_bytes()
    try:
        if data.lstrip().startswith(_PEM_MARKER):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM or DER X.509 certificate ({exc})") from None


def _san(cert: x509.Certificate) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None, (), ()
    uris = ext.get_values_for_type(x509.UniformResourceIdentifier)
    dns = tuple(ext.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))
    return (uris[0] if uris else None), dns, ips


def _eku(cert: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    names = {ExtendedKeyUsageOID.CLIENT_AUTH: "client", ExtendedKeyUsageOID.SERVER_AUTH: "server"}
    return tuple(names.get(oid, oid.dotted_string) for oid in ext)


def info_of(cert: x509.Certificate, path: str | os.PathLike[str] = "") -> CertInfo:
    """Build a :class:`CertInfo` from a loaded certificate."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

    uri, dns, ips = _san(cert)
    key = cert.public_key()
    bits = key.key_size if isinstance(key, rsa.RSAPublicKey) else None
    return CertInfo(
        path=Path(path),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        application_uri=uri,
        dns_names=dns,
        ip_addresses=ips,
        thumbprint_sha1=thumbprint(cert),
        fingerprint_sha256=_hex(cert.fingerprint(hashes.SHA256())),
        serial=format(cert.serial_number, "X"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        self_signed=cert.issuer == cert.subject,
        key_bits=bits,
        extended_usage=_eku(cert),
    )


def show_certificate(path: str | os.PathLike[str]) -> CertInfo:
    """Read a certificate file (PEM or DER) and describe it."""
    return info_of(load_certificate(path), path)


def _is_pem_path(path: Path) -> bool:
    return path.suffix.lower() in (".pem", ".crt")


def _write_private(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` readable by the owner only, atomically (no half-written key on disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def create_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    application_uri: str,
    hostnames: Sequence[str] | None = None,
    common_name: str | None = None,
    organization: str | None = None,
    days: int = 365,
    key_size: int = 2048,
    usage: CertUsage = "client",
    overwrite: bool = False,
    now: datetime | None = None,
    owner: tuple[int, int] | None = None,
) -> CertInfo:
    """Create an RSA key and a self-signed OPC UA application instance certificate.

    The certificate follows OPC 10000-6 §6.2.2: the application URI as the first URI in the
    SubjectAlternativeName, with the host names (DNS) and IP addresses; key usage for signing
    and encryption; extended key usage for the client and/or server role. The certificate is
    written as DER unless its path ends in ``.pem``/``.crt``; the key always as PKCS#8 PEM,
    readable by the owner only: ``owner`` (uid, gid) gives both files to the account that runs
    the agent (root creating a key for the service user).

    Raises FileExistsError when either file exists and ``overwrite`` is false, ValueError for
    invalid arguments.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_file, key_file = Path(cert_path), Path(key_path)
    if not application_uri or ":" not in application_uri:
        raise ValueError(f"application URI {application_uri!r} is not a URI (e.g. urn:<host>:edge-agent)")
    if not 1 <= days <= 36500:
        raise ValueError(f"days must be 1..36500, not {days}")
    if key_size not in (2048, 3072, 4096):
        raise ValueError(f"key size must be 2048, 3072 or 4096, not {key_size}")
    if cert_file.resolve() == key_file.resolve():
        raise ValueError("certificate and key must be different files")
    if not overwrite:
        for p in (cert_file, key_file):
            if p.exists():
                raise FileExistsError(
                    f"{p} exists; refusing to replace it (servers that trust the old certificate "
                    "would stop trusting this one). Pass overwrite (--force) to replace it."
                )
    hosts = list(hostnames) if hostnames else [socket.gethostname()]
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"edge-agent@{hosts[0]}")]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    subject = x509.Name(attrs)

    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    start = (now or datetime.now(UTC)) - timedelta(minutes=5)  # tolerate small clock skew between peers
    eku = {
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "server": [ExtendedKeyUsageOID.SERVER_AUTH],
        "both": [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
    }[usage]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # Self-signed application certificates act as their own issuer (as asyncua and the
        # OPC Foundation stacks create them), hence cA and keyCertSign.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    cert = builder.sign(key, hashes.SHA256())
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    encoding = serialization.Encoding.PEM if _is_pem_path(cert_file) else serialization.Encoding.DER
    _write_private(key_file, key_bytes, owner)
    _write_public(cert_file, cert.public_bytes(encoding), owner)
    return info_of(cert, cert_file)


def expiry_warning(
    cert_path: str | os.PathLike[str], warn_days: int = 30, now: datetime | None = None
) -> str | None:
    """A warning when the certificate expires within ``warn_days`` (or already has), is not
    yet valid (often a wrong clock at boot), or cannot be read; None when all is well."""
    now = now or datetime.now(UTC)
    try:
        info = show_certificate(cert_path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"certificate {cert_path} cannot be read: {reason}"
    what = f"certificate {cert_path} (thumbprint {info.thumbprint_sha1})"
    if now < info.not_before:
        return (
            f"{what} is not valid before {info.not_before.isoformat()}; "
            f"the clock says {now.isoformat()} (is the clock set? NTP not synced yet?)"
        )
    left = info.days_left(now)
    if left <= 0:
        return (
            f"{what} EXPIRED on {info.not_after.isoformat()}; servers will refuse it. "
            "Create a new one (edge-agent certs create --force) and have every server trust it"
        )
    if left <= warn_days:
        return (
            f"{what} expires in {left:.0f} days, on {info.not_after.isoformat()}; "
            "create a new one and have every server trust it before then"
        )
    return None


def format_info(info: CertInfo, now: datetime | None = None) -> str:
    """A human-readable multi-line description (``certs show``)."""
    hosts = ", ".join((*info.dns_names, *info.ip_addresses)) or "-"
    lines = [
        f"{info.path}",
        f"  subject:          {info.subject}",
        f"  issuer:           {info.issuer}{' (self-signed)' if info.self_signed else ''}",
        f"  application URI:  {info.application_uri or '- (missing: OPC UA peers will refuse it)'}",
        f"  host names:       {hosts}",
        f"  usage:            {', '.join(info.extended_usage) or '-'}",
        f"  key:              RSA {info.key_bits or '?'} bit",
        f"  thumbprint SHA-1: {info.thumbprint_sha1}",
        f"  SHA-256:          {info.fingerprint_sha256}",
        f"  serial:           {info.serial}",
        f"  valid:            {info.not_before.isoformat()} .. {info.not_after.isoformat()}"
        f" ({info.days_left(now):.0f} days left)",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def add_certs_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``certs create|show`` to an argparse sub-parser collection; returns the parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "certs", help="OPC UA application certificates: create, show"
    )
    sub = p.add_subparsers(dest="certs_command", required=True)

    c = sub.add_parser("create", help="create a key and self-signed certificate (never overwrites silently)")
    c.add_argument("--cert", required=True, type=Path, help="certificate file (.der, or .pem for PEM)")
    c.add_argument("--key", required=True, type=Path, help="private key file (PEM, written mode 0600)")
    c.add_argument("--uri", required=True, help="application URI, e.g. urn:gateway-7:edge-agent")
    c.add_argument(
        "--host",
        action="append",
        default=None,
        help="host name or IP for the certificate (repeatable; default: this host)",
    )
    c.add_argument("--cn", default=None, help="subject common name (default: edge-agent@<host>)")
    c.add_argument("--org", default=None, help="subject organization")
    c.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    c.add_argument("--key-size", type=int, default=2048, choices=(2048, 3072, 4096))
    c.add_argument("--usage", default="client", choices=("client", "server", "both"))
    c.add_argument("--force", action="store_true", help="replace existing files")
    c.add_argument("--owner", default=None, help="user who owns both files (the service's: edge-agent)")

    s = sub.add_parser("show", help="subject, URI, thumbprint, validity of certificate files")
    s.add_argument("paths", nargs="+", type=Path)
    s.add_argument("--warn-days", type=int, default=30)
    s.add_argument("--json", action="store_true")
    return p


def run_certs(args: argparse.Namespace) -> int:
    """Run ``certs create`` or ``certs show``. Exit codes: 0 ok, 1 a warning or failure, 2 usage."""
    if args.certs_command == "create":
        owner = None
        if args.owner is not None:
            try:
                pw = pwd.getpwnam(args.owner)
            except KeyError:
                print(f"error: no user {args.owner!r}", file=sys.stderr)
                return 2
            owner = (pw.pw_uid, pw.pw_gid)
        try:
            info = create_certificate(
                args.cert,
                args.key,
                application_uri=args.uri,
                hostnames=args.host,
                common_name=args.cn,
                organization=args.org,
                days=args.days,
                key_size=args.key_size,
                usage=args.usage,
                overwrite=args.force,
                owner=owner,
            )
        except FileExistsError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 1
        print(format_info(info))
        print(f"  key:              {args.key} (mode 0600{', owner ' + args.owner if owner else ''})")
        print("Have each OPC UA server trust this certificate (copy it into its trusted folder).")
        return 0
    rc = 0
    for path in args.paths:
        try:
            info = show_certificate(path)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"{path}: cannot read: {reason}", file=sys.stderr)
            rc = 1
            continue
        warning = expiry_warning(path, args.warn_days)
        if args.json:
            print(json.dumps({**info.as_dict(), "warning": warning}))
        else:
            print(format_info(info))
            if warning:
                print(f"  WARNING: {warning}")
        if warning:
            rc = 1
    return rc
