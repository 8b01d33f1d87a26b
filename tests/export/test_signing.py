"""Bundle signatures: sign, verify, and refuse unsigned, tampered and untrusted bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.errors import ModelError
from agent.modelstore.bundle import load_bundle
from agent.modelstore.signing import (
    SIGNATURE_FILE,
    generate_key_pair,
    key_id,
    load_public_key,
    sign_bundle,
    verify_bundle_signature,
)
from export.cli import main

from .conftest import DEV_KEY, DEV_PUB, ROOT


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "pca-pump"
    shutil.copytree(ROOT / "models" / "pca-pump", dst)
    (dst / SIGNATURE_FILE).unlink(missing_ok=True)
    return dst


@pytest.fixture
def other_key(tmp_path: Path) -> tuple[Path, Path]:
    priv, pub = tmp_path / "k" / "other.pem", tmp_path / "k" / "other.pub"
    generate_key_pair(priv, pub)
    return priv, pub


def test_sign_then_verify_returns_the_key_id(bundle: Path) -> None:
    kid = sign_bundle(bundle, DEV_KEY)
    assert kid == key_id(load_public_key(DEV_PUB)) and len(kid) == 16
    assert verify_bundle_signature(bundle, [DEV_PUB]) == kid
    record = json.loads((bundle / SIGNATURE_FILE).read_text())
    assert record["algorithm"] == "ed25519" and record["signed_file"] == "manifest.json"


def test_signing_replaces_a_linked_signature_instead_of_writing_through_it(bundle: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (bundle / SIGNATURE_FILE).symlink_to(victim)
    kid = sign_bundle(bundle, DEV_KEY)
    assert victim.read_text() == "keep me\n"
    assert not (bundle / SIGNATURE_FILE).is_symlink()
    assert verify_bundle_signature(bundle, [DEV_PUB]) == kid


def test_a_linked_manifest_is_neither_signed_nor_verified(bundle: Path, tmp_path: Path) -> None:
    sign_bundle(bundle, DEV_KEY)
    (bundle / "manifest.json").rename(tmp_path / "manifest.json")
    (bundle / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(ModelError, match=r"manifest\.json: is a symbolic link"):
        verify_bundle_signature(bundle, [DEV_PUB])
    with pytest.raises(ModelError, match=r"cannot sign .*manifest\.json: is a symbolic link"):
        sign_bundle(bundle, DEV_KEY)


def test_unsigned_bundle_is_refused(bundle: Path) -> None:
    load_bundle(bundle)  # hashes are fine ...
    with pytest.raises(ModelError, match=r"unsigned \(no signature.json\)"):
        verify_bundle_signature(bundle, [DEV_PUB])  # ... but nobody vouches for it


def test_tampered_manifest_is_refused(bundle: Path) -> None:
    sign_bundle(bundle, DEV_KEY)
    m = json.loads((bundle / "manifest.json").read_text())
    m["outputs"][0]["thresholds"]["alarm"] *= 10  # silence the alarm, keep the hashes valid
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    load_bundle(bundle)  # the hash check alone cannot see this
    with pytest.raises(ModelError, match=r"does not match manifest\.json: the bundle was modified after signing"):
        verify_bundle_signature(bundle, [DEV_PUB])


def test_tampered_model_file_is_refused_by_the_loader(bundle: Path) -> None:
    sign_bundle(bundle, DEV_KEY)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-5] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    verify_bundle_signature(bundle, [DEV_PUB])  # the signed manifest is intact ...
    with pytest.raises(ModelError, match="was modified or corrupted"):
        load_bundle(bundle)  # ... and it says which bytes the file must have


def test_re_hashed_manifest_after_tampering_breaks_the_signature(bundle: Path) -> None:
    sign_bundle(bundle, DEV_KEY)
    import hashlib

    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-5] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    m = json.loads((bundle / "manifest.json").read_text())
    m["variants"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    with pytest.raises(ModelError, match="modified after signing"):
        verify_bundle_signature(bundle, [DEV_PUB])


def test_untrusted_key_is_refused(bundle: Path, other_key: tuple[Path, Path]) -> None:
    kid = sign_bundle(bundle, other_key[0])
    with pytest.raises(ModelError, match=f"signed by key {kid}, which is not trusted"):
        verify_bundle_signature(bundle, [DEV_PUB])
    with pytest.raises(ModelError, match="no public key is trusted"):
        verify_bundle_signature(bundle, [])
    assert verify_bundle_signature(bundle, [DEV_PUB, other_key[1]]) == kid


def test_corrupt_signature_file_and_bad_keys(bundle: Path, tmp_path: Path) -> None:
    (bundle / SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=r"cannot read signature\.json"):
        verify_bundle_signature(bundle, [DEV_PUB])
    (bundle / SIGNATURE_FILE).write_text(json.dumps({"algorithm": "rsa"}))
    with pytest.raises(ModelError, match="must use algorithm 'ed25519'"):
        verify_bundle_signature(bundle, [DEV_PUB])
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(ModelError, match="not a PEM ed25519 key"):
        load_public_key(bad)
    with pytest.raises(ModelError, match="refusing to overwrite"):
        generate_key_pair(DEV_KEY, tmp_path / "x.pub")


def test_cli_keygen_sign_verify(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys" / "ops")]) == 0
    assert (tmp_path / "keys" / "ops.pem").exists() and (tmp_path / "keys" / "ops.pub").exists()
    assert main(["verify", str(bundle), "--trust", str(tmp_path / "keys" / "ops.pub")]) == 1
    assert "unsigned" in capsys.readouterr().err
    assert main(["sign", str(bundle), "--key", str(tmp_path / "keys" / "ops.pem")]) == 0
    assert main(["verify", str(bundle), "--trust", str(tmp_path / "keys" / "ops.pub")]) == 0
    assert "signed by trusted key" in capsys.readouterr().out
    assert main(["verify", str(bundle), "--trust", str(DEV_PUB)]) == 1
    assert "not trusted" in capsys.readouterr().err


def test_the_agents_loader_enforces_its_trust_settings(bundle: Path, other_key: tuple[Path, Path]) -> None:
    """load_bundle as the agent calls it (models_trust from the config)."""
    with pytest.raises(ModelError, match="unsigned"):
        load_bundle(bundle, trusted_keys=[DEV_PUB], allow_unsigned=False)
    assert load_bundle(bundle, trusted_keys=[DEV_PUB], allow_unsigned=True).signature.state == "unsigned"
    sign_bundle(bundle, DEV_KEY)
    assert load_bundle(bundle, trusted_keys=[DEV_PUB]).signature.state == "signed"
    with pytest.raises(ModelError):
        load_bundle(bundle, trusted_keys=[other_key[1]])  # signed, but not by a trusted key
    with pytest.raises(ModelError):
        load_bundle(bundle, trusted_keys=[other_key[1]], allow_unsigned=True)  # never silently
    m = json.loads((bundle / "manifest.json").read_text())
    m["outputs"][0]["thresholds"]["alarm"] *= 10
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    with pytest.raises(ModelError):
        load_bundle(bundle, trusted_keys=[DEV_PUB], allow_unsigned=True)  # tampered: refused
