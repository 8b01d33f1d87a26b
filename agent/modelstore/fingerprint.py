"""The fingerprint of a bundle: what :attr:`agent.modelstore.bundle.Bundle.fingerprint` and the
model store compare (kept apart so that the store computes it without onnxruntime)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

__all__ = ["fingerprint_of"]


def fingerprint_of(manifest_sha256: str, signature_sha256: str | None, hashes: Mapping[str, str]) -> str:
    """One sha256 (hex) over the manifest bytes' hash, the signature bytes' hash (None: no
    signature file) and every listed file's hash, in name order."""
    h = hashlib.sha256()
    h.update(f"manifest {manifest_sha256}\nsignature {signature_sha256 or '-'}\n".encode())
    for name in sorted(hashes):
        h.update(f"file {name} {hashes[name]}\n".encode())
    return h.hexdigest()
