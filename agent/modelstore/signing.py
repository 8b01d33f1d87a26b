"""Bundle signatures: ed25519 over the manifest bytes (no torch, no export/ import).

The manifest already holds the sha256 and size of every file in the bundle (each ONNX variant
and every ``files`` entry), and :func:`agent.modelstore.bundle.load_bundle` checks them, so
one signature over the exact bytes of ``manifest.json`` covers the whole bundle. It lives
beside the manifest in ``signature.json``::

    {
      "algorithm": "ed25519",
      "key_id": "3f1c0a9be27d4410",
      "signed_file": "manifest.json",
      "manifest_sha256": "…",
      "signature": "<base64 of the 64-byte ed25519 signature over the manifest bytes>"
    }

Keys are PEM files: the private key PKCS#8 (``-----BEGIN PRIVATE KEY-----``, unencrypted),
the public key SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``). A key id is the first
16 hex digits of the sha256 of the raw 32-byte public key: short enough for messages, long
enough that two keys never share one by accident.

:func:`verify_bundle_signature` raises :class:`~agent.errors.ModelError` for an unsigned
bundle, a signature that does not match the manifest (tampered), a signature by a key that is
not trusted, or an unreadable key or signature file; it returns the key id that signed.
:func:`verify_manifest_signature` does the same on bytes already read, so that the loader
checks the very manifest bytes it parses. Both files are read as every bundle file is
(:mod:`agent.modelstore.files`: regular files inside the bundle, no links, size-limited).
Everything here is pure file reading and CPU work: call it from the model store, not the
event loop.

Verification (the agent's side) is :mod:`agent.modelstore.ed25519`, pure Python; signing and
key generation (the build machine's side, ``edge-export``) use ``cryptography``, imported
only when they run, so the agent never loads it for bundles (about 6 MB of resident memory).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ModelError
from agent.modelstore import ed25519
from agent.modelstore.files import MAX_METADATA_BYTES, BundleDir
from agent.modelstore.manifest import MANIFEST_FILE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "ALGORITHM",
    "SIGNATURE_FILE",
    "generate_key_pair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_bundle",
    "verify_bundle_signature",
    "verify_manifest_signature",
]

SIGNATURE_FILE = "signature.json"
ALGORITHM = "ed25519"


def key_id(public_key: bytes) -> str:
    """The short fingerprint of a raw 32-byte public key (16 hex digits of its sha256)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def load_public_key(path: str | Path) -> bytes:
    """Read a PEM public key (or the public half of a PEM private key) as its raw 32 bytes;
    ModelError if it is not an ed25519 key or cannot be read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read public key {p}: {exc.strerror}") from None
    try:
        return ed25519.public_key_from_pem(data)
    except ValueError as exc:
        raise ModelError(f"{p}: not a PEM ed25519 key: {exc}") from None


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM (PKCS#8) ed25519 private key; ModelError otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read private key {p}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{p}: not an unencrypted PEM ed25519 private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelError(f"{p}: not an ed25519 private key ({type(key).__name__})")
    return key


def generate_key_pair(private_path: str | Path, public_path: str | Path) -> str:
    """Write a new ed25519 key pair as PEM files (private key mode 0600); return its key id.

    Refuses to overwrite an existing file (a lost signing key cannot be recovered).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv_p, pub_p = Path(private_path), Path(public_path)
    for p in (priv_p, pub_p):
        if p.exists():
            raise ModelError(f"{p} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    priv_p.parent.mkdir(parents=True, exist_ok=True)
    pub_p.parent.mkdir(parents=True, exist_ok=True)
    priv_p.touch(mode=0o600)
    priv_p.write_bytes(priv_pem)
    pub_p.write_bytes(pub_pem)
    return key_id(_raw_public(key))


def sign_bundle(
    bundle_dir: str | Path, private_key_path: str | Path, *, signed_file: str = MANIFEST_FILE
) -> str:
    """Sign ``bundle_dir/manifest.json`` and write ``signature.json``; return the key id.

    ``signed_file`` names another manifest (a recommender bundle signs ``station.json``).

    Sign last: any later change to the manifest (or to a file it hashes) breaks the signature
    or the hash check. ``signature.json`` is replaced (a new file renamed over it), so a link
    in its place is replaced, not written through.
    """
    d = Path(bundle_dir)
    try:
        with BundleDir(d) as bundle:
            data = bundle.read(signed_file, limit=MAX_METADATA_BYTES)
    except ModelError as exc:
        raise ModelError(f"cannot sign {d}: {exc}") from None
    key = load_private_key(private_key_path)
    kid = key_id(_raw_public(key))
    record = {
        "algorithm": ALGORITHM,
        "key_id": kid,
        "signed_file": signed_file,
        "manifest_sha256": hashlib.sha256(data).hexdigest(),
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
    }
    tmp = d / f".{SIGNATURE_FILE}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(d / SIGNATURE_FILE)
    return kid


def verify_bundle_signature(
    bundle_dir: str | Path, trusted_public_keys: Sequence[str | Path], *, signed_file: str = MANIFEST_FILE
) -> str:
    """Check ``signature.json`` against the manifest bytes and the trusted keys.

    Returns the key id of the trusted key that signed. Raises ModelError naming the bundle
    when it is unsigned, when the signature file is malformed, when the signing key is not
    among ``trusted_public_keys`` (PEM files), or when the signature does not match the
    manifest (the manifest, and so possibly any file, was changed after signing).
    """
    d = Path(bundle_dir)
    with BundleDir(d) as bundle:
        signature = bundle.read_optional(SIGNATURE_FILE, limit=MAX_METADATA_BYTES)
        manifest = bundle.read(signed_file, limit=MAX_METADATA_BYTES)
    return verify_manifest_signature(manifest, signature, trusted_public_keys, d, signed_file=signed_file)


def verify_manifest_signature(
    manifest: bytes,
    signature: bytes | None,
    trusted_public_keys: Sequence[str | Path],
    bundle_dir: str | Path,
    *,
    signed_file: str = MANIFEST_FILE,
) -> str:
    """Check the bytes of ``signature.json`` (None: there is none) against the bytes of
    ``manifest.json`` and the trusted keys; ``bundle_dir`` names the bundle in messages.

    Returns the key id that signed; raises ModelError exactly as
    :func:`verify_bundle_signature` does.
    """
    d = Path(bundle_dir)
    if signature is None:
        raise ModelError(
            f"bundle {d} is unsigned (no {SIGNATURE_FILE}); sign it with `edge-export sign` "
            "or allow unsigned bundles explicitly in the config"
        )
    try:
        record = json.loads(signature.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelError(f"bundle {d}: cannot read {SIGNATURE_FILE}: {exc}") from None
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM:
        got = record.get("algorithm") if isinstance(record, dict) else None
        raise ModelError(f"bundle {d}: {SIGNATURE_FILE} must use algorithm {ALGORITHM!r} (got {got!r})")
    if record.get("signed_file", MANIFEST_FILE) != signed_file:
        signed = record.get("signed_file")
        raise ModelError(f"bundle {d}: {SIGNATURE_FILE} signs {signed!r}, not {signed_file}")
    kid = record.get("key_id")
    try:
        raw = base64.b64decode(str(record.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise ModelError(f"bundle {d}: {SIGNATURE_FILE} holds no valid base64 signature") from None
    trusted: dict[str, bytes] = {}
    for p in trusted_public_keys:
        k = load_public_key(p)
        trusted[key_id(k)] = k
    if not trusted:
        raise ModelError(f"bundle {d} is signed by key {kid}, but no public key is trusted")
    key = trusted.get(str(kid))
    if key is None:
        raise ModelError(
            f"bundle {d} is signed by key {kid}, which is not trusted (trusted: {', '.join(sorted(trusted))})"
        )
    if not ed25519.verify(key, raw, manifest):
        raise ModelError(
            f"bundle {d}: signature by key {kid} does not match {signed_file}: the bundle was "
            "modified after signing (tampered) or the signature is corrupt"
        )
    return str(kid)
