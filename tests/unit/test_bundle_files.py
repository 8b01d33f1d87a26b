"""Bundle files are read only as regular files inside the bundle, size-limited, and never block.

Every case starts from a real bundle of models/ copied into tmp_path and signed with the
development key (as models/build.sh signs them); the loader is called as the agent calls it,
with its trusted keys. Each refusal must name the file and the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ModelError
from agent.modelstore.bundle import Bundle, load_bundle
from agent.modelstore.files import (
    MAX_FILE_BYTES,
    MAX_METADATA_BYTES,
    MAX_MODEL_BYTES,
    BundleDir,
    _read_exactly,
)
from agent.modelstore.manifest import load_manifest
from agent.modelstore.signing import generate_key_pair, sign_bundle, verify_bundle_signature

ROOT = Path(__file__).resolve().parents[2]
DEV_KEY = ROOT / "export" / "keys" / "dev-ed25519.pem"
DEV_PUB = ROOT / "export" / "keys" / "dev-ed25519.pub"


def signed_copy(tmp_path: Path, model: str = "pca-pump") -> Path:
    dst = tmp_path / "bundles" / model
    shutil.copytree(ROOT / "models" / model, dst)
    sign_bundle(dst, DEV_KEY)
    return dst


def edit_and_sign(bundle: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    sign_bundle(bundle, DEV_KEY)


def load(bundle: Path, **kw: Any) -> Bundle:
    return load_bundle(bundle, trusted_keys=[DEV_PUB], **kw)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``: a
    blocking open() is interrupted by the signal and the handler's exception ends it."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused(bundle: Path, pattern: str, **kw: Any) -> str:
    """Load within 5 s; it must be refused with ``pattern``. Returns the message."""
    started = time.monotonic()
    with deadline(5.0), pytest.raises(ModelError, match=pattern) as err:
        load(bundle, **kw)
    assert time.monotonic() - started < 5.0
    return str(err.value)


def test_a_signed_copy_loads_and_its_fingerprint_is_stable(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    a, b = load(bundle), load(bundle)
    assert a.signature.state == "signed"
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a.manifest_sha256 == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert a.signature_sha256 == hashlib.sha256((bundle / "signature.json").read_bytes()).hexdigest()
    # The bundle directory itself may be a link (the model store's `current` is one).
    current = tmp_path / "current"
    current.symlink_to(bundle, target_is_directory=True)
    assert load(current).fingerprint == a.fingerprint


# --------------------------------------------------------------------------- links and FIFOs


def test_model_symlinked_to_dev_zero_is_refused_without_reading(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to("/dev/zero")
    msg = refused(bundle, r"model\.onnx: is a symbolic link \(to /dev/zero\)")
    assert "model pca-pump v1" in msg and "links are never followed" in msg


@pytest.mark.parametrize("name", ["manifest.json", "signature.json", "model.onnx"])
@pytest.mark.parametrize("how", ["symlink to a FIFO", "FIFO in its place"])
def test_a_fifo_never_blocks_the_load(tmp_path: Path, name: str, how: str) -> None:
    bundle = signed_copy(tmp_path)
    (bundle / name).unlink()
    if how == "symlink to a FIFO":
        os.mkfifo(tmp_path / "pipe")
        (bundle / name).symlink_to(tmp_path / "pipe")
        pattern = rf"{name}: is a symbolic link \(to {tmp_path / 'pipe'}\)"
    else:
        os.mkfifo(bundle / name)
        pattern = rf"{name}: is a FIFO \(named pipe\), not a regular file: refused"
    refused(bundle, pattern)


def test_a_bundle_path_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    refused(tmp_path / "pipe", r"pipe: not a bundle directory")


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("pca-pump", "manifest.json"),
        ("pca-pump", "signature.json"),
        ("pca-pump", "model.onnx"),
        ("rul-bearing", "report.md"),  # a file the manifest lists in `files`
    ],
)
def test_a_symlink_to_a_valid_file_outside_the_bundle_is_refused(tmp_path: Path, model: str, name: str) -> None:
    bundle = signed_copy(tmp_path, model)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(bundle / name, outside / name)  # the very bytes the manifest vouches for
    (bundle / name).symlink_to(Path("..") / ".." / "elsewhere" / name)
    refused(bundle, rf"{name}: is a symbolic link \(to \.\./\.\./elsewhere/{name}\)")
    if name in ("manifest.json", "signature.json"):
        with pytest.raises(ModelError, match=r"is a symbolic link"):
            verify_bundle_signature(bundle, [DEV_PUB])  # the tool's path refuses the same way


def test_a_link_between_two_files_of_the_bundle_is_refused_too(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    (bundle / "model.onnx").rename(bundle / "real.onnx")
    (bundle / "model.onnx").symlink_to("real.onnx")
    refused(bundle, r"model\.onnx: is a symbolic link \(to real\.onnx\)")


def test_a_dangling_signature_link_is_not_taken_for_unsigned(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    (bundle / "signature.json").unlink()
    (bundle / "signature.json").symlink_to(tmp_path / "nowhere.json")
    refused(bundle, r"signature\.json: is a symbolic link", allow_unsigned=True)
    (bundle / "signature.json").unlink()
    assert load(bundle, allow_unsigned=True).signature.state == "unsigned"  # truly absent: allowed


def test_a_directory_in_place_of_the_model_is_refused(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").mkdir()
    refused(bundle, r"model\.onnx: is a directory, not a regular file")


# --------------------------------------------------------------------------- names


HIDDEN_TRAVERSALS = [
    "model.onnx/../../elsewhere/model.onnx",
    "x/../../elsewhere/model.onnx",
    "model.onnx/\u200b../../elsewhere/model.onnx",  # a zero-width space before the ..
    "\u2024\u2024/elsewhere/model.onnx",  # one-dot leaders that look like ..
    "..\\elsewhere\\model.onnx",
    "model.onnx\n",  # `$` in re.match matches before a final newline
    ".",
    "..",
]


@pytest.mark.parametrize("name", HIDDEN_TRAVERSALS)
def test_a_hidden_parent_reference_in_a_variant_name_is_refused(tmp_path: Path, name: str) -> None:
    bundle = signed_copy(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(bundle / "model.onnx", tmp_path / "elsewhere" / "model.onnx")

    def point_out(m: dict[str, Any]) -> None:
        m["variants"][0]["file"] = name

    edit_and_sign(bundle, point_out)  # validly signed: only the name is wrong
    msg = refused(bundle, r"variants\[0\]\.file: .* is not a plain file name inside the bundle")
    assert repr(name) in msg


@pytest.mark.parametrize("name", HIDDEN_TRAVERSALS)
def test_a_hidden_parent_reference_in_a_listed_file_is_refused(tmp_path: Path, name: str) -> None:
    bundle = signed_copy(tmp_path, "rul-bearing")

    def point_out(m: dict[str, Any]) -> None:
        m["files"][name] = m["files"].pop("report.md")

    edit_and_sign(bundle, point_out)
    msg = refused(bundle, r"files: .* is not a plain file name inside the bundle")
    assert repr(name) in msg


@pytest.mark.parametrize("name", HIDDEN_TRAVERSALS)
def test_the_reader_itself_refuses_those_names(tmp_path: Path, name: str) -> None:
    bundle = signed_copy(tmp_path)
    with BundleDir(bundle) as d, pytest.raises(ModelError, match="is not a plain file name inside the bundle"):
        d.read(name, limit=MAX_MODEL_BYTES)


# --------------------------------------------------------------------------- sizes


def test_a_model_larger_than_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    os.truncate(bundle / "model.onnx", MAX_MODEL_BYTES + 1)  # sparse: costs no disk
    refused(bundle, rf"model\.onnx: has {MAX_MODEL_BYTES + 1} bytes, more than the limit of 64 MiB")


def test_a_manifest_declaring_a_model_over_the_limit_is_refused(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)

    def grow(m: dict[str, Any]) -> None:
        m["variants"][0]["size"] = MAX_MODEL_BYTES + 1

    edit_and_sign(bundle, grow)
    refused(bundle, rf"model\.onnx: the manifest declares {MAX_MODEL_BYTES + 1} bytes, more than the limit")


def test_a_model_of_another_size_than_declared_is_refused_before_reading(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    size = (bundle / "model.onnx").stat().st_size
    with (bundle / "model.onnx").open("ab") as f:
        f.write(b"\0")
    refused(bundle, rf"model\.onnx: has {size + 1} bytes, the manifest says {size}: refused")


@pytest.mark.parametrize(
    ("model", "name", "limit"),
    [
        ("pca-pump", "manifest.json", MAX_METADATA_BYTES),
        ("pca-pump", "signature.json", MAX_METADATA_BYTES),
        ("rul-bearing", "report.md", MAX_FILE_BYTES),
    ],
)
def test_oversized_metadata_and_listed_files_are_refused(tmp_path: Path, model: str, name: str, limit: int) -> None:
    bundle = signed_copy(tmp_path, model)
    os.truncate(bundle / name, limit + 1)
    refused(bundle, rf"{name}: has {limit + 1} bytes, more than the limit of {limit >> 20} MiB")


def test_reading_never_goes_past_the_size_fstat_gave(tmp_path: Path) -> None:
    """Enforced while reading: a descriptor that yields more than its size is refused after at
    most one extra byte (a pipe stands for a file that grows under the reader)."""
    r, w = os.pipe()
    try:
        os.write(w, b"0123456789")
        with pytest.raises(ModelError, match=r"grew while being read \(it had 5 bytes\)"):
            _read_exactly(r, 5, tmp_path / "f")
        assert os.read(r, 100) == b"6789"  # 5 bytes + 1 read, no more
        os.write(w, b"abc")
        os.close(w)
        w = -1
        with pytest.raises(ModelError, match=r"shrank while being read \(it had 5 bytes\)"):
            _read_exactly(r, 5, tmp_path / "f")
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# --------------------------------------------------------------------------- content


@pytest.mark.parametrize(
    ("model", "name", "pattern"),
    [
        ("pca-pump", "model.onnx", r"model\.onnx was modified or corrupted: manifest says sha256 [0-9a-f]{64}, "
                                   r"file has sha256 [0-9a-f]{64}"),
        ("pca-pump", "manifest.json", r"does not match manifest\.json: the bundle was modified after signing"),
        ("rul-bearing", "report.md", r"report\.md was modified or corrupted"),
    ],
)
def test_a_flipped_byte_is_refused(tmp_path: Path, model: str, name: str, pattern: str) -> None:
    bundle = signed_copy(tmp_path, model)
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    refused(bundle, pattern)


def test_a_flipped_signature_byte_is_refused(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    record = json.loads((bundle / "signature.json").read_text())
    sig = record["signature"]
    record["signature"] = sig[:10] + ("B" if sig[10] != "B" else "C") + sig[11:]
    (bundle / "signature.json").write_text(json.dumps(record, indent=2) + "\n")
    refused(bundle, r"signature by key [0-9a-f]{16} does not match manifest\.json")


# --------------------------------------------------------------------------- fingerprint


def test_a_re_signed_manifest_with_a_new_threshold_has_a_new_fingerprint(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    old = load(bundle)

    def raise_threshold(m: dict[str, Any]) -> None:
        m["outputs"][0]["thresholds"]["alarm"] *= 2

    edit_and_sign(bundle, raise_threshold)
    new = load(bundle)
    assert new.signature.state == "signed"
    # What the reload compared so far says "unchanged" ...
    assert new.ident == old.ident and new.hashes == old.hashes
    # ... the fingerprint does not.
    assert new.fingerprint != old.fingerprint and new.manifest_sha256 != old.manifest_sha256
    alarm = new.manifest.outputs[0].thresholds["alarm"]
    assert alarm == 2 * old.manifest.outputs[0].thresholds["alarm"]
    sign_bundle(bundle, DEV_KEY)  # ed25519 is deterministic: the same bytes again
    assert load(bundle).fingerprint == new.fingerprint


def test_the_signature_bytes_are_part_of_the_fingerprint(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    priv, pub = tmp_path / "k" / "ops.pem", tmp_path / "k" / "ops.pub"
    generate_key_pair(priv, pub)
    before = load_bundle(bundle, trusted_keys=[DEV_PUB, pub])
    sign_bundle(bundle, priv)  # same manifest, signed by another trusted key
    after = load_bundle(bundle, trusted_keys=[DEV_PUB, pub])
    assert after.manifest_sha256 == before.manifest_sha256
    assert after.fingerprint != before.fingerprint


def test_load_manifest_reads_the_same_way(tmp_path: Path) -> None:
    bundle = signed_copy(tmp_path)
    assert load_manifest(bundle).ident == "pca-pump v1"
    (bundle / "manifest.json").rename(tmp_path / "manifest.json")
    (bundle / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(ModelError, match=r"manifest\.json: is a symbolic link"):
        load_manifest(bundle)
