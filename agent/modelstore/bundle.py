"""Loading a model bundle: hashes, signature, ONNX session, contract check.

:func:`load_bundle` reads ``manifest.json``, verifies the sha256 of every file it lists, calls
the signature hook, creates one onnxruntime CPU session for the chosen variant, and checks the
session's inputs and outputs against the manifest (names, shapes, element types). Every
problem is a :class:`~agent.errors.ModelError` naming both sides; onnxruntime's own
exceptions are translated here, at the seam.

Every file is read once, through one open handle on the bundle directory
(:class:`~agent.modelstore.files.BundleDir`: regular files inside the bundle only, links never
followed, FIFOs refused without blocking, sizes limited). The manifest bytes that are parsed
are the bytes the signature is checked against, and the ONNX bytes that are hashed are the
bytes the session is built from, so a file swapped between the check and the use cannot slip
through. :attr:`Bundle.fingerprint` identifies exactly what was loaded (manifest bytes,
signature bytes, file hashes): a reload compares it to see a re-signed manifest.

Threading: intra-op threads come from the config (default 1: small models on small gateways
gain nothing from a thread pool, and a spinning pool steals the CPU the pollers need);
inter-op is always 1 (sequential execution). A :class:`Bundle`'s session may be run from one
thread at a time; :class:`agent.pipeline.scorer.Scorer` guarantees that.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from agent.errors import ModelError
from agent.modelstore.files import MAX_FILE_BYTES, MAX_METADATA_BYTES, MAX_MODEL_BYTES, BundleDir
from agent.modelstore.fingerprint import fingerprint_of
from agent.modelstore.manifest import MANIFEST_FILE, Dim, Manifest, Variant, parse_manifest
from agent.modelstore.signing import SIGNATURE_FILE, verify_manifest_signature

__all__ = ["Bundle", "SignatureStatus", "check_session", "load_bundle", "sha256_file", "verify_signature"]

_ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
}


@dataclass(frozen=True, slots=True)
class SignatureStatus:
    """What the signature check found: ``signed`` (by a trusted key), ``unsigned`` (and allowed
    by the caller), or ``unchecked`` (the caller gave no trust settings: tools and tests)."""

    state: Literal["signed", "unsigned", "unchecked"]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle with its live session. ``run`` is the one seam inference goes through.

    ``manifest_sha256`` and ``signature_sha256`` are the sha256 of the exact bytes of
    ``manifest.json`` and ``signature.json`` that were loaded (``signature_sha256`` is None for
    a bundle without a signature file); ``hashes`` the sha256 of every file checked.
    """

    path: Path
    manifest: Manifest
    variant: Variant
    session: Any  # onnxruntime.InferenceSession (untyped library)
    threads: int
    signature: SignatureStatus
    hashes: Mapping[str, str] = field(default_factory=dict)
    manifest_sha256: str = ""
    signature_sha256: str | None = None

    @property
    def ident(self) -> str:
        return self.manifest.ident

    @property
    def fingerprint(self) -> str:
        """What was loaded, as one sha256 (hex): the manifest bytes, the signature bytes and
        every file hash. Two loads are the same model exactly when their fingerprints are
        equal: a manifest re-signed with a new threshold has the same ident and file hashes,
        not the same fingerprint. The path and the chosen variant are not part of it."""
        return fingerprint_of(self.manifest_sha256, self.signature_sha256, self.hashes)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One session call returning every manifest output, in manifest order.

        Not thread-safe by contract: one call at a time (the scorer ensures it).
        Raises ModelError when onnxruntime fails.
        """
        names = [o.name for o in self.manifest.outputs]
        try:
            result = self.session.run(names, dict(feeds))
        except Exception as exc:  # onnxruntime raises its own untyped exception classes
            raise ModelError(f"model {self.ident} ({self.variant.file}): inference failed: {exc}") from exc
        return [np.asarray(r) for r in result]


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file's content."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_signature(
    bundle_dir: Path,
    manifest: Manifest,
    trusted_keys: Sequence[str | os.PathLike[str]] | None,
    allow_unsigned: bool = False,
) -> SignatureStatus:
    """Check the bundle's ed25519 signature (over ``manifest.json``, which holds the sha256 of
    every file) against ``trusted_keys``.

    ``trusted_keys=None`` checks nothing and says so (``unchecked``). An unsigned bundle is
    accepted only with ``allow_unsigned``; a tampered bundle, or one signed by a key not in the
    list, is always refused with ModelError.
    """
    with BundleDir(bundle_dir) as bundle:
        manifest_bytes = bundle.read(MANIFEST_FILE, limit=MAX_METADATA_BYTES)
        signature_bytes = bundle.read_optional(SIGNATURE_FILE, limit=MAX_METADATA_BYTES)
    key = _signed_by(bundle_dir, manifest_bytes, signature_bytes, trusted_keys, allow_unsigned)
    return _status(manifest.ident, trusted_keys, key)


def _signed_by(
    bundle_dir: Path,
    manifest_bytes: bytes,
    signature_bytes: bytes | None,
    trusted_keys: Sequence[str | os.PathLike[str]] | None,
    allow_unsigned: bool,
) -> str | None:
    """The trusted key id that signed these manifest bytes; None when nothing is checked or
    the bundle is unsigned and that is allowed. ModelError otherwise."""
    if trusted_keys is None or (allow_unsigned and signature_bytes is None):
        return None
    keys = [Path(k) for k in trusted_keys]
    return verify_manifest_signature(manifest_bytes, signature_bytes, keys, bundle_dir)


def _status(ident: str, trusted_keys: object, key: str | None) -> SignatureStatus:
    if trusted_keys is None:
        return SignatureStatus("unchecked", f"{ident}: no trust settings given, signature not checked")
    if key is None:
        return SignatureStatus("unsigned", f"{ident}: unsigned, allowed by models_trust.allow_unsigned")
    return SignatureStatus("signed", f"{ident}: signed by trusted key {key}")


def _read_verified(bundle: BundleDir, name: str, sha256: str, size: int, limit: int, ident: str) -> bytes:
    try:
        data = bundle.read(name, limit=limit, size=size)
    except ModelError as exc:
        raise ModelError(f"model {ident}: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelError(
            f"model {ident}: file {bundle.path / name} was modified or corrupted: manifest says "
            f"sha256 {sha256}, file has sha256 {actual} ({len(data)} bytes)"
        )
    return data


def _dims_match(manifest_dim: Dim, session_dim: object) -> bool:
    # A symbolic manifest dim (the batch) needs a dynamic session dim; a fixed one needs the
    # same size, or a dynamic session dim (the session accepts it).
    session_dynamic = not isinstance(session_dim, int) or session_dim < 0
    if isinstance(manifest_dim, str):
        return session_dynamic
    return session_dynamic or session_dim == manifest_dim


def _fmt_shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _tensor_problems(what: str, dtype: str, shape: Sequence[Dim], got: Any, where: str) -> list[str]:
    """Differences between a manifest tensor (dtype, shape) and a session's input/output."""
    problems: list[str] = []
    got_dtype = _ORT_DTYPES.get(got.type, got.type)
    if got_dtype != dtype:
        problems.append(f"{what}: manifest says {dtype}, {where} has {got_dtype}")
    got_shape = list(got.shape)
    if len(got_shape) != len(shape) or not all(
        _dims_match(m, s) for m, s in zip(shape, got_shape, strict=True)
    ):
        problems.append(
            f"{what}: manifest says shape {_fmt_shape(shape)}, {where} has shape {_fmt_shape(got_shape)}"
        )
    return problems


def check_session(manifest: Manifest, session: Any, where: str) -> None:
    """Compare a session's inputs and outputs with the manifest; ModelError naming both sides."""
    who = f"model {manifest.ident}"
    problems: list[str] = []
    inputs = {i.name: i for i in session.get_inputs()}
    spec = manifest.model_input
    if list(inputs) != [spec.name]:
        problems.append(f"{who} manifest declares input {spec.name!r}, {where} has inputs {sorted(inputs)}")
    if spec.name in inputs:
        problems += _tensor_problems(
            f"{who} input {spec.name}", spec.dtype, spec.shape, inputs[spec.name], where
        )
    outputs = {o.name: o for o in session.get_outputs()}
    declared = [o.name for o in manifest.outputs]
    missing = [n for n in declared if n not in outputs]
    extra = [n for n in outputs if n not in declared]
    if missing or extra:
        problems.append(f"{who} manifest declares outputs {declared}, {where} has outputs {list(outputs)}")
    for o in manifest.outputs:
        if o.name not in outputs:
            continue
        problems += _tensor_problems(f"{who} output {o.name}", o.dtype, o.shape, outputs[o.name], where)
    if problems:
        raise ModelError("\n".join(problems))


def _session(model: bytes, threads: int, where: str, ident: str) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No arena and no memory-pattern pre-allocation: these models need a few kB per call, and
    # an arena per session keeps its high-water mark for good (bench/cycle.py: RSS).
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
    if threads > 1:
        # Spinning worker threads burn the cores the pollers and the event loop need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises untyped Fail/InvalidGraph/InvalidProtobuf
        raise ModelError(f"model {ident}: onnxruntime cannot load {where}: {exc}") from exc


def load_bundle(
    path: str | os.PathLike[str],
    *,
    threads: int = 1,
    variant: str | None = None,
    trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
    allow_unsigned: bool = False,
    keep_checks: bool = False,
) -> Bundle:
    """Load and verify a bundle directory; return it with a ready CPU session.

    Reads every file once through :class:`~agent.modelstore.files.BundleDir` (regular files
    inside the bundle only; ``manifest.json`` and ``signature.json`` at most
    :data:`~agent.modelstore.files.MAX_METADATA_BYTES`, ONNX variants
    :data:`~agent.modelstore.files.MAX_MODEL_BYTES`, other files
    :data:`~agent.modelstore.files.MAX_FILE_BYTES`). Verifies the sha256 (and size) of every
    file the manifest lists (all variants and ``files``), the signature over the manifest
    bytes that were parsed (the policy of :func:`verify_signature`: the agent always passes
    its ``models_trust``), builds the session for ``variant`` (default: the first listed) from
    the very bytes that were hashed, with ``threads`` intra-op threads and one inter-op
    thread, and checks the session against the manifest. Raises ModelError on any problem.

    The manifest's check vectors (hundreds of windows with their expected outputs: about a
    megabyte of Python objects per bundle) are validated with the rest and then dropped from
    the returned manifest unless ``keep_checks``: they serve the install self-test
    (:mod:`agent.modelstore.selftest` asks for them), not a running agent.
    """
    if threads < 1:
        raise ModelError(f"threads must be >= 1 (got {threads})")
    bundle_dir = Path(path)
    with BundleDir(bundle_dir) as bundle:
        manifest_bytes = bundle.read(MANIFEST_FILE, limit=MAX_METADATA_BYTES)
        signature_bytes = bundle.read_optional(SIGNATURE_FILE, limit=MAX_METADATA_BYTES)
        # The signature first: bytes nobody trusted vouches for are not even parsed.
        key = _signed_by(bundle_dir, manifest_bytes, signature_bytes, trusted_keys, allow_unsigned)
        manifest = parse_manifest(manifest_bytes, bundle_dir / MANIFEST_FILE)
        if manifest.checks and not keep_checks:
            manifest = manifest.model_copy(update={"checks": ()})
        chosen = manifest.variant(variant)
        hashes: dict[str, str] = {}
        model_bytes = b""
        for v in manifest.variants:
            data = _read_verified(bundle, v.file, v.sha256, v.size, MAX_MODEL_BYTES, manifest.ident)
            hashes[v.file] = v.sha256
            if v.file == chosen.file:
                model_bytes = data
        for name, fh in manifest.files.items():
            _read_verified(bundle, name, fh.sha256, fh.size, MAX_FILE_BYTES, manifest.ident)
            hashes[name] = fh.sha256
    signature = _status(manifest.ident, trusted_keys, key)
    where = f"session of {bundle_dir / chosen.file}"
    session = _session(model_bytes, threads, str(bundle_dir / chosen.file), manifest.ident)
    check_session(manifest, session, where)
    return Bundle(
        bundle_dir,
        manifest,
        chosen,
        session,
        threads,
        signature,
        hashes,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signature_sha256=None if signature_bytes is None else hashlib.sha256(signature_bytes).hexdigest(),
    )
