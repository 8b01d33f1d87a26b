"""Loading a model bundle: hashes, signature, ONNX session, contract check.

:func:`load_bundle` reads ``manifest.json``, verifies the sha256 of every file it lists, calls
the signature hook, creates one onnxruntime CPU session for the chosen variant, and checks the
session's inputs and outputs against the manifest (names, shapes, element types). Every
problem is a :class:`~agent.errors.ModelError` naming both sides; onnxruntime's own
exceptions are translated here, at the seam.

The ONNX bytes that are hashed are the bytes the session is built from (read once), so a file
swapped between the check and the load cannot slip through.

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
from agent.modelstore.manifest import MANIFEST_FILE, Dim, Manifest, Variant, load_manifest
from agent.modelstore.signing import SIGNATURE_FILE, verify_bundle_signature

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
    """A verified bundle with its live session. ``run`` is the one seam inference goes through."""

    path: Path
    manifest: Manifest
    variant: Variant
    session: Any  # onnxruntime.InferenceSession (untyped library)
    threads: int
    signature: SignatureStatus
    hashes: Mapping[str, str] = field(default_factory=dict)

    @property
    def ident(self) -> str:
        return self.manifest.ident

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
    if trusted_keys is None:
        return SignatureStatus(
            "unchecked", f"{manifest.ident}: no trust settings given, signature not checked"
        )
    if allow_unsigned and not (bundle_dir / SIGNATURE_FILE).exists():
        return SignatureStatus(
            "unsigned", f"{manifest.ident}: unsigned, allowed by models_trust.allow_unsigned"
        )
    key = verify_bundle_signature(bundle_dir, [Path(k) for k in trusted_keys])
    return SignatureStatus("signed", f"{manifest.ident}: signed by trusted key {key}")


def _read_verified(bundle_dir: Path, name: str, sha256: str, size: int, ident: str) -> bytes:
    p = bundle_dir / name
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"model {ident}: cannot read {p}: {exc.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelError(
            f"model {ident}: file {p} was modified or corrupted: manifest says sha256 {sha256}, "
            f"file has sha256 {actual} ({len(data)} bytes, manifest says {size})"
        )
    if len(data) != size:
        raise ModelError(f"model {ident}: file {p} has {len(data)} bytes, manifest says {size}")
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
) -> Bundle:
    """Load and verify a bundle directory; return it with a ready CPU session.

    Verifies the sha256 (and size) of every file the manifest lists (all variants and
    ``files``), the signature (:func:`verify_signature`: the agent always passes its
    ``models_trust``), builds the session for ``variant`` (default:
    the first listed) with ``threads`` intra-op threads and one inter-op thread, and checks the
    session against the manifest. Raises ModelError on any problem.
    """
    if threads < 1:
        raise ModelError(f"threads must be >= 1 (got {threads})")
    bundle_dir = Path(path)
    if not bundle_dir.is_dir():
        raise ModelError(f"{bundle_dir}: not a bundle directory (expected {MANIFEST_FILE} and ONNX files)")
    manifest = load_manifest(bundle_dir / MANIFEST_FILE)
    chosen = manifest.variant(variant)
    hashes: dict[str, str] = {}
    model_bytes = b""
    for v in manifest.variants:
        data = _read_verified(bundle_dir, v.file, v.sha256, v.size, manifest.ident)
        hashes[v.file] = v.sha256
        if v.file == chosen.file:
            model_bytes = data
    for name, fh in manifest.files.items():
        _read_verified(bundle_dir, name, fh.sha256, fh.size, manifest.ident)
        hashes[name] = fh.sha256
    signature = verify_signature(bundle_dir, manifest, trusted_keys, allow_unsigned)
    where = f"session of {bundle_dir / chosen.file}"
    session = _session(model_bytes, threads, str(bundle_dir / chosen.file), manifest.ident)
    check_session(manifest, session, where)
    return Bundle(bundle_dir, manifest, chosen, session, threads, signature, hashes)
