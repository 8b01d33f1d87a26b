"""Ed25519 signature *verification* in pure Python (RFC 8032, section 5.1.7), and the two PEM
key formats the model store reads.

Why not ``cryptography``: the agent only ever verifies (the private keys live on the build
machine, where ``edge-export sign`` uses ``cryptography``), and importing ``cryptography`` in
the agent costs about 6 MB of resident memory on a gateway for the life of the process, for a
check that runs a few times at start and on reload. Verification handles public data only,
so the constant-time concerns of signing do not apply; what matters is that it accepts
exactly the signatures ``cryptography`` (OpenSSL) accepts. ``tests/unit/test_ed25519.py``
checks that: the RFC 8032 test vectors, and hypothesis-generated keys, messages, signatures
and mutations of each, decided both ways.

The check is OpenSSL's: the scalar ``S`` must be below the group order, the public key must
decode to a curve point, and ``[S]B - [k]A`` must *encode* to the exact 32 bytes of ``R``
(so a non-canonical ``R`` fails), with ``k = SHA-512(R || A || M) mod L``. About 10 ms per
signature on a gateway-class CPU.

Public API: :func:`verify` (True or False, never raises on malformed input) and
:func:`public_key_from_pem` (raw 32-byte public key; ``ValueError`` with a reason).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

__all__ = ["PUBLIC_KEY_BYTES", "SIGNATURE_BYTES", "public_key_from_pem", "public_key_from_seed", "verify"]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)  # a square root of -1 mod p

# A point in extended homogeneous coordinates (X, Y, Z, T): x = X/Z, y = Y/Z, x*y = T/Z.
_Point = tuple[int, int, int, int]
_IDENTITY: _Point = (0, 1, 1, 0)


def _add(p: _Point, q: _Point) -> _Point:
    # RFC 8032 5.1.4; complete on edwards25519 (a = -1, d not a square), so it also doubles.
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * _D * t1 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p: _Point) -> _Point:
    # RFC 8032 5.1.4, dedicated doubling (a = -1).
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _neg(p: _Point) -> _Point:
    x, y, z, t = p
    return (-x % _P, y, z, -t % _P)


def _double_scalar_mult(s: int, p: _Point, k: int, q: _Point) -> _Point:
    """[s]P + [k]Q, one shared chain of doublings (Straus-Shamir)."""
    pq = _add(p, q)
    r = _IDENTITY
    for i in range(max(s.bit_length(), k.bit_length()) - 1, -1, -1):
        r = _double(r)
        bits = ((s >> i) & 1, (k >> i) & 1)
        if bits == (1, 1):
            r = _add(r, pq)
        elif bits == (1, 0):
            r = _add(r, p)
        elif bits == (0, 1):
            r = _add(r, q)
    return r


def _encode(p: _Point) -> bytes:
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(s: bytes) -> _Point | None:
    """RFC 8032 5.1.3: the point a 32-byte string encodes, or None if it encodes none."""
    if len(s) != 32:
        return None
    n = int.from_bytes(s, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vx2 = v * x * x % _P
    if vx2 == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif vx2 != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _base() -> _Point:
    b = _decode((4 * pow(5, _P - 2, _P) % _P).to_bytes(32, "little"))  # y = 4/5, x even
    if b is None:  # pragma: no cover - a constant of the curve
        raise AssertionError("ed25519 base point")
    return b


_B = _base()


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is the ed25519 signature of ``message`` by ``public_key`` (raw
    32 bytes); False for any mismatch or malformed key or signature."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    a = _decode(public_key)
    if a is None:
        return False
    r_bytes, s = signature[:32], int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    k = int.from_bytes(hashlib.sha512(r_bytes + public_key + message).digest(), "little") % _L
    return _encode(_double_scalar_mult(s, _B, k, _neg(a))) == r_bytes


def public_key_from_seed(seed: bytes) -> bytes:
    """The raw public key of a raw 32-byte private key (RFC 8032 5.1.5)."""
    if len(seed) != 32:
        raise ValueError("an ed25519 private key is 32 bytes")
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a = (a & ((1 << 254) - 8)) | (1 << 254)
    return _encode(_double_scalar_mult(a, _B, 0, _IDENTITY))


# DER prefixes of the only two encodings an ed25519 key has (RFC 8410): SubjectPublicKeyInfo
# (public key) and PKCS#8 OneAsymmetricKey v1 (private key), each followed by the 32 raw bytes.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")


def _pem_body(text: str, label: str) -> bytes | None:
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    i = text.find(begin)
    if i < 0:
        return None
    j = text.find(end, i)
    if j < 0:
        raise ValueError(f"no {end} line")
    body = "".join(text[i + len(begin) : j].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {label} block is not valid base64") from None


def public_key_from_pem(data: bytes) -> bytes:
    """The raw 32-byte public key of a PEM ed25519 public key (SubjectPublicKeyInfo) or
    unencrypted private key (PKCS#8); ``ValueError`` naming what is wrong otherwise."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not a PEM file (not ASCII)") from None
    der = _pem_body(text, "PUBLIC KEY")
    if der is not None:
        if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
            raise ValueError("a PUBLIC KEY, but not an ed25519 one")
        key = der[len(_SPKI_PREFIX) :]
        if _decode(key) is None:
            raise ValueError("the ed25519 public key is not a point of the curve")
        return key
    der = _pem_body(text, "PRIVATE KEY")
    if der is not None:
        if len(der) != len(_PKCS8_PREFIX) + 32 or not der.startswith(_PKCS8_PREFIX):
            raise ValueError("a PRIVATE KEY, but not an unencrypted ed25519 one")
        return public_key_from_seed(der[len(_PKCS8_PREFIX) :])
    raise ValueError("no -----BEGIN PUBLIC KEY----- or -----BEGIN PRIVATE KEY----- block")
