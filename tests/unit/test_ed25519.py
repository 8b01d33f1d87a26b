"""agent.modelstore.ed25519 (pure-Python verification) decides exactly as ``cryptography`` does.

The agent verifies bundle signatures without ``cryptography`` (memory: see the module); the
build machine signs with it. Both must agree on every signature: the RFC 8032 vectors, and
hypothesis-generated keys, messages and single-bit mutations of each part.
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.modelstore import ed25519

# RFC 8032, section 7.1: TEST 1, 2 and 3 (secret key, public key, message, signature).
RFC_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]

L = 2**252 + 27742317777372353535851937790883648493


def reference(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """What ``cryptography`` (OpenSSL) decides."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC_VECTORS)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    pub, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert ed25519.public_key_from_seed(bytes.fromhex(secret)) == pub
    assert Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret)).sign(msg) == sig
    assert ed25519.verify(pub, sig, msg) and reference(pub, sig, msg)
    assert not ed25519.verify(pub, sig, msg + b"\x00")
    assert not ed25519.verify(pub, sig[:-1] + bytes([sig[-1] ^ 0x01]), msg)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    message=st.binary(max_size=300),
    part=st.sampled_from(["none", "signature", "public", "message"]),
    bit=st.integers(min_value=0, max_value=255 * 8),
)
def test_agrees_with_cryptography_on_signatures_and_single_bit_mutations(
    seed: bytes, message: bytes, part: str, bit: int
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pub, sig = raw_public(key), key.sign(message)
    assert ed25519.public_key_from_seed(seed) == pub

    def flip(b: bytes) -> bytes:
        if not b:
            return b"\x01"
        i = bit % (len(b) * 8)
        return b[: i // 8] + bytes([b[i // 8] ^ (1 << (i % 8))]) + b[i // 8 + 1 :]

    if part == "signature":
        sig = flip(sig)
    elif part == "public":
        pub = flip(pub)
    elif part == "message":
        message = flip(message)
    ours = ed25519.verify(pub, sig, message)
    assert ours == reference(pub, sig, message)
    assert ours == (part == "none")


@settings(max_examples=60, deadline=None)
@given(
    public=st.binary(min_size=0, max_size=40),
    signature=st.binary(min_size=0, max_size=70),
    message=st.binary(max_size=40),
)
def test_garbage_is_refused_without_raising(public: bytes, signature: bytes, message: bytes) -> None:
    assert ed25519.verify(public, signature, message) == reference(public, signature, message) is False


def test_a_scalar_at_or_above_the_group_order_is_refused() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub, msg = raw_public(key), b"manifest"
    sig = key.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    malleated = sig[:32] + (s + L).to_bytes(32, "little")  # the same point, a non-canonical scalar
    assert ed25519.verify(pub, sig, msg)
    assert not ed25519.verify(pub, malleated, msg) and not reference(pub, malleated, msg)


def test_pem_keys_public_and_private() -> None:
    key = Ed25519PrivateKey.generate()
    spki = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert ed25519.public_key_from_pem(spki) == raw_public(key)
    assert ed25519.public_key_from_pem(pkcs8) == raw_public(key)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not a key", "no -----BEGIN PUBLIC KEY"),
        ("-----BEGIN PUBLIC KEY-----\nzz\xe9\n-----END PUBLIC KEY-----\n".encode("latin-1"), "not ASCII"),
        (b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n", "not valid base64"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n", "no -----END PUBLIC KEY----- line"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not an ed25519 one"),
    ],
)
def test_bad_pem_gives_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ed25519.public_key_from_pem(data)


def test_other_key_types_and_encrypted_keys_are_refused() -> None:
    rsa = generate_private_key(public_exponent=65537, key_size=1024)
    rsa_pub = rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="a PUBLIC KEY, but not an ed25519 one"):
        ed25519.public_key_from_pem(rsa_pub)
    enc = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ValueError, match="no -----BEGIN PUBLIC KEY"):  # ENCRYPTED PRIVATE KEY: not read
        ed25519.public_key_from_pem(enc)


def test_a_public_key_off_the_curve_is_refused() -> None:
    # y = 2 has no x on edwards25519 ((y^2 - 1) / (d y^2 + 1) is not a square mod p).
    off = (2).to_bytes(32, "little")
    assert not reference(off, bytes(64), b"")
    der = bytes.fromhex("302a300506032b6570032100") + off
    import base64

    pem = b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der) + b"\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ValueError, match="not a point of the curve"):
        ed25519.public_key_from_pem(pem)


def test_the_agent_verifies_a_signed_bundle_without_loading_cryptography() -> None:
    """The memory this module saves: a signed shipped bundle loads with its signature checked
    against the development key, and ``cryptography`` never enters the process."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys; from agent.modelstore.bundle import load_bundle; "
        "b = load_bundle('models/pca-pump', trusted_keys=['export/keys/dev-ed25519.pub']); "
        "print(b.signature.detail); "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'cryptography']; assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=root, capture_output=True, text=True)
    assert "signed by" in out.stdout, out.stdout
