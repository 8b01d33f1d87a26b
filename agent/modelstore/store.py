"""The model store on the gateway: verified versions side by side, an atomic ``current``.

Layout (``models_store.dir``, default ``/var/lib/edge-agent/models``)::

    <root>/
      .lock                   one install/switch at a time (flock)
      .tmp/                   staging: a bundle is copied here, fsynced, then renamed in
      incoming/               group-writable drop folder: `models install` as a member of the
                              service group puts a bundle here; the service verifies it
      <name>/
        <version>/            the bundle files (manifest.json, signature.json, variants)
        current -> <version>  a symlink, replaced by rename(2): never half-switched
        store.json            what the store verified (written atomically)

``store.json`` records, per version, the bundle fingerprint
(:attr:`~agent.modelstore.bundle.Bundle.fingerprint`) the self-test computed, the variant it
chose on this CPU, the CPU flags and the measured latencies; the activation history (for
rollback); a pending version (installed into an image with ``--target``, self-tested at the
box's first start); a running trial. The store only ever points ``current`` at a version it
recorded as verified, and :meth:`Store.load` refuses a ``current`` that points anywhere else, or
at a directory whose fingerprint is not the recorded one: a ``current`` turned by hand, or a
file changed in place, is refused, not run.

An install (:meth:`Store.install`) never touches the running version until its last step:
signature and manifest checked on the source, the manifest checked against the config's
bindings (the caller's ``check``), the files copied into ``.tmp`` (each hashed while copied
and fsynced), the directory fsynced and renamed to ``<name>/<version>``, the self-test run in a
subprocess (:mod:`agent.modelstore.selftest`), ``store.json`` replaced, and only then
``current`` switched. A SIGKILL at any moment leaves the previous ``current`` and a consistent
store (:meth:`Store.check`); leftovers in ``.tmp`` and unrecorded version directories are
removed by the next install.

Every install, switch, rollback, removal and refusal is reported to the ``audit`` callback
(the CLI and the agent pass :meth:`agent.ops.audit.AuditLog.record_model`).

Test seam: ``EDGE_AGENT_STORE_PAUSE=<point>`` (``before-copy``, ``mid-copy``, ``before-switch``,
``after-switch``) makes an install write ``<root>/.paused-<point>`` and sleep there, so that a
test can SIGKILL it at that point.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.errors import ModelError
from agent.modelstore.files import MAX_FILE_BYTES, MAX_METADATA_BYTES, MAX_MODEL_BYTES, BundleDir
from agent.modelstore.fingerprint import fingerprint_of
from agent.modelstore.manifest import MANIFEST_FILE, Manifest, parse_manifest
from agent.modelstore.signing import SIGNATURE_FILE, verify_manifest_signature

if TYPE_CHECKING:  # the install path's modules load when an install runs, not with every agent
    from agent.modelstore.selftest import SelfTestReport

if TYPE_CHECKING:
    from agent.modelstore.bundle import Bundle

__all__ = [
    "CURRENT",
    "INCOMING",
    "PAUSE_ENV",
    "STATE_FILE",
    "AuditHook",
    "InstallResult",
    "ModelState",
    "Store",
    "VersionRecord",
    "check_source",
    "verify_source",
]

CURRENT = "current"
STATE_FILE = "store.json"
INCOMING = "incoming"
PAUSE_ENV = "EDGE_AGENT_STORE_PAUSE"

AuditHook = Callable[[str, str, str, Mapping[str, Any]], None]
"""``audit(action, model, message, detail)``: one audit row per store change."""

_TMP = ".tmp"
_LOCK = ".lock"


def _utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pause(root: Path, point: str) -> None:
    if os.environ.get(PAUSE_ENV) == point:
        (root / f".paused-{point}").write_text(str(os.getpid()))
        while True:  # the test kills us here
            time.sleep(60)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass
class VersionRecord:
    """What the store knows of one version: ``state`` verified (self-tested here), pending
    (copied into an image, self-test at first start) or rejected (failed a trial)."""

    version: str
    state: Literal["verified", "pending", "rejected"]
    fingerprint: str
    installed_utc: str
    variant: str | None = None
    cpu_flags: list[str] = field(default_factory=list)
    latencies_us: dict[str, float] = field(default_factory=dict)
    signature: str = ""
    failed_variants: dict[str, str] = field(default_factory=dict)
    """Variants the self-test refused on this box, with the reason (the others may still run)."""


@dataclass
class ModelState:
    """``store.json`` of one model."""

    versions: dict[str, VersionRecord] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    """Versions in the order they became current (newest last)."""
    trial: dict[str, Any] | None = None
    """``{version, periods, started_utc}`` while a trial runs."""
    last_outcome: str = ""

    def to_json(self) -> bytes:
        data = {
            "versions": {v: vars(r) for v, r in self.versions.items()},
            "history": self.history,
            "trial": self.trial,
            "last_outcome": self.last_outcome,
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> ModelState:
        try:
            obj = json.loads(data)
            versions = {v: VersionRecord(**r) for v, r in obj["versions"].items()}
            return cls(versions, list(obj["history"]), obj.get("trial"), str(obj.get("last_outcome", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{where}: not a model store state file: {exc}") from None


@dataclass(frozen=True)
class InstallResult:
    """What an install did: ``state`` is ``current`` (switched), ``trial`` (verified, running in
    shadow once the agent sees it), ``pending`` (self-test at first start) or ``unchanged``."""

    name: str
    version: str
    state: Literal["current", "trial", "pending", "unchanged"]
    variant: str | None
    fingerprint: str
    previous: str | None
    report: SelfTestReport | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "variant": self.variant,
            "fingerprint": self.fingerprint,
            "previous": self.previous,
            "cpu_flags_count": len(self.report.cpu_flags) if self.report else None,
            "latencies_us": {v.file: v.latency_us for v in self.report.variants} if self.report else {},
        }


def _read_source(src: Path) -> tuple[bytes, bytes | None]:
    with BundleDir(src) as b:
        return b.read(MANIFEST_FILE, limit=MAX_METADATA_BYTES), b.read_optional(
            SIGNATURE_FILE, limit=MAX_METADATA_BYTES
        )


class Store:
    """One model store directory (see the module docstring). Methods are synchronous file
    work (call them from a thread in the agent); installs and switches hold ``.lock``."""

    def __init__(self, root: Path, *, keep: int = 3, audit: AuditHook | None = None) -> None:
        self.root = Path(root)
        self.keep = keep
        self._audit = audit
        self._installing = ""  # the model an install is about, for its refusal's audit row

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        """The models in the store (directories holding a state file)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / STATE_FILE).is_file())

    def state(self, name: str) -> ModelState:
        """The model's recorded state (empty for a model not in the store)."""
        path = self.root / name / STATE_FILE
        try:
            with BundleDir(path.parent) as b:
                data = b.read(STATE_FILE, limit=MAX_METADATA_BYTES)
        except ModelError:
            if not path.exists() and not path.is_symlink():
                return ModelState()
            raise
        return ModelState.from_json(data, path)

    def current(self, name: str) -> str | None:
        """The version ``current`` points at (None when there is none)."""
        try:
            target = os.readlink(self.root / name / CURRENT)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ModelError(
                f"model store {self.root}: {name}/{CURRENT} is not a link: {exc.strerror}"
            ) from None
        return target

    def resolve(self, name: str) -> tuple[Path, VersionRecord]:
        """The directory and record of ``name``'s current version; ModelError when there is
        none, or ``current`` points at a version the store did not verify."""
        version = self.current(name)
        where = f"model store {self.root}: {name}"
        if version is None:
            raise ModelError(f"{where} has no current version (install one with `edge-agent models install`)")
        rec = self.state(name).versions.get(version)
        if "/" in version or rec is None or rec.state != "verified":
            raise ModelError(
                f"{where}: current points at {version!r}, which the store did not verify "
                "(set by hand?): refused; use `edge-agent models rollback`"
            )
        return self.root / name / version, rec

    def load(
        self,
        name: str,
        *,
        threads: int = 1,
        variant: str | None = None,
        trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
        allow_unsigned: bool = False,
        version: str | None = None,
    ) -> Bundle:
        """Load the current (or the given verified) version with the variant the self-test
        chose (unless ``variant`` is given). A pending version is self-tested first (the box's
        first start). ModelError when the loaded fingerprint is not the recorded one."""
        from agent.modelstore.bundle import load_bundle

        if version is None and self.state(name).trial is None:
            self.finish_pending(name, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
        if version is None:
            path, rec = self.resolve(name)
        else:
            rec_or = self.state(name).versions.get(version)
            if rec_or is None or rec_or.state != "verified":
                raise ModelError(f"model store {self.root}: {name} v{version} is not a verified version")
            path, rec = self.root / name / version, rec_or
        bundle = load_bundle(
            path,
            threads=threads,
            variant=variant or rec.variant,
            trusted_keys=trusted_keys,
            allow_unsigned=allow_unsigned,
        )
        if bundle.fingerprint != rec.fingerprint:
            raise ModelError(
                f"model store {self.root}: {name} v{rec.version} changed since it was verified "
                f"(fingerprint {bundle.fingerprint[:16]}, recorded {rec.fingerprint[:16]}): refused"
            )
        return bundle

    def check(self) -> list[str]:
        """Consistency problems of the whole store (empty: consistent): every ``current``
        points at a verified version directory holding its manifest."""
        problems: list[str] = []
        for name in self.names():
            try:
                path, _ = self.resolve(name)
            except ModelError as exc:
                if self.current(name) is not None or self.state(name).history:
                    problems.append(str(exc))
                continue
            if not (path / MANIFEST_FILE).is_file():
                problems.append(f"{name}: current version directory {path} has no {MANIFEST_FILE}")
        return problems

    # ------------------------------------------------------------------ changing

    @contextlib.contextmanager
    def _locked(self) -> Any:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _record(self, action: str, name: str, message: str, **detail: Any) -> None:
        if self._audit is not None:
            self._audit(action, name, message, detail)

    def _save(self, name: str, st: ModelState) -> None:
        _write_atomic(self.root / name / STATE_FILE, st.to_json())

    def _switch(self, name: str, version: str) -> None:
        d = self.root / name
        tmp = d / f".{CURRENT}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(version, tmp)
        os.replace(tmp, d / CURRENT)
        _fsync_dir(d)

    def _clean_leftovers(self) -> None:
        tmp = self.root / _TMP
        if tmp.is_dir():
            for p in tmp.iterdir():
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".paused-*"):
            p.unlink(missing_ok=True)

    def _copy(self, src: Path, manifest: Manifest, dest: Path) -> None:
        """Copy the files the manifest lists (plus manifest and signature) through BundleDir
        (regular files inside the bundle only), checking each sha256 and size, fsynced."""
        listed: list[tuple[str, str | None, int | None, int]] = [
            (MANIFEST_FILE, None, None, MAX_METADATA_BYTES),
            (SIGNATURE_FILE, None, None, MAX_METADATA_BYTES),
        ]
        listed += [(v.file, v.sha256, v.size, MAX_MODEL_BYTES) for v in manifest.variants]
        listed += [(n, f.sha256, f.size, MAX_FILE_BYTES) for n, f in manifest.files.items()]
        dest.mkdir(mode=0o755)
        with BundleDir(src) as b:
            for i, (fname, sha, size, limit) in enumerate(listed):
                if fname == SIGNATURE_FILE:
                    data = b.read_optional(fname, limit=limit)
                    if data is None:
                        continue
                else:
                    data = b.read(fname, limit=limit, size=size)
                if sha is not None and hashlib.sha256(data).hexdigest() != sha:
                    raise ModelError(
                        f"model {manifest.ident}: file {src / fname} was modified or corrupted: manifest "
                        f"says sha256 {sha}, file has sha256 {hashlib.sha256(data).hexdigest()}"
                    )
                fd = os.open(dest / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if i == 0:
                    _pause(self.root, "mid-copy")
        _fsync_dir(dest)

    def install(
        self,
        source: Path,
        *,
        trusted_keys: Sequence[str | os.PathLike[str]],
        allow_unsigned: bool = False,
        check: Callable[[Manifest], None] | None = None,
        trial: int | None = None,
        pending: bool = False,
        user: str | None = None,
    ) -> InstallResult:
        """Verify ``source`` (a bundle directory or ``.tar.gz``) and install it (see the module
        docstring for the order). ``check`` checks the manifest against the config's bindings;
        ``trial`` leaves ``current`` alone and marks the version for an N-period shadow trial;
        ``pending`` (an image for another box) skips the self-test and leaves the version
        pending. Raises ModelError, audited as ``model_refused``, with the previous version
        still current."""
        source = Path(source)
        self._installing = _name_hint(source)
        from agent.modelstore.archive import is_archive, unpack_bundle

        with self._locked():
            (self.root / _TMP).mkdir(exist_ok=True)
            self._clean_leftovers()
            unpacked: Path | None = None
            try:
                if is_archive(source):
                    unpacked = self.root / _TMP / f"unpack-{os.getpid()}"
                    src = unpack_bundle(source, unpacked)
                else:
                    src = source
                return self._install(src, source, trusted_keys, allow_unsigned, check, trial, pending, user)
            except ModelError as exc:
                self._record(
                    "model_refused", self._installing, f"install of {source} refused: {exc}", user=user
                )
                raise
            finally:
                if unpacked is not None:
                    shutil.rmtree(unpacked, ignore_errors=True)

    def _install(
        self,
        src: Path,
        source: Path,
        trusted_keys: Sequence[str | os.PathLike[str]],
        allow_unsigned: bool,
        check: Callable[[Manifest], None] | None,
        trial: int | None,
        pending: bool,
        user: str | None,
    ) -> InstallResult:
        manifest, key = check_source(src, trusted_keys, allow_unsigned, check)
        self._installing = manifest.name
        name, version = manifest.name, manifest.version
        model_dir = self.root / name
        model_dir.mkdir(exist_ok=True)
        st = self.state(name)
        previous = self.current(name)
        dest = model_dir / version
        if st.trial is not None:
            raise ModelError(
                f"{name}: the trial of v{st.trial.get('version')} is running: wait for its outcome "
                "(edge-agent models show) before installing another version"
            )
        rec = st.versions.get(version)
        if rec is not None and rec.state == "verified" and dest.is_dir():
            fp = _fingerprint(dest)
            if fp != _fingerprint(src):
                raise ModelError(
                    f"{manifest.ident} is already in the store with other content: "
                    "give the new bundle a new version"
                )
        else:
            rec = None
            if dest.exists():  # a leftover of a killed install, never recorded: not trusted
                shutil.rmtree(dest)
            _pause(self.root, "before-copy")
            tmp = self.root / _TMP / f"{name}-{version}-{os.getpid()}"
            self._copy(src, manifest, tmp)
            os.rename(tmp, dest)
            _fsync_dir(model_dir)
        signature = f"signed by {key}" if key else "unsigned (allowed by models_trust.allow_unsigned)"
        report: SelfTestReport | None = None
        if rec is None:
            if pending:
                rec = VersionRecord(version, "pending", _fingerprint(dest), _utc(), signature=signature)
            else:
                from agent.modelstore.selftest import run_selftest

                try:
                    report = run_selftest(
                        dest, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned,
                        label=f"{manifest.ident} ({source})",
                    )  # fmt: skip
                except ModelError:
                    shutil.rmtree(dest, ignore_errors=True)
                    raise
                rec = VersionRecord(
                    version,
                    "verified",
                    report.fingerprint,
                    _utc(),
                    report.chosen,
                    report.cpu_flags,
                    {v.file: v.latency_us for v in report.variants if v.latency_us is not None},
                    signature,
                    {v.file: v.error for v in report.variants if not v.ok},
                )
            st.versions[version] = rec
        if pending:
            self._save(name, st)
            self._record("model_install", name, f"{manifest.ident} copied, pending its self-test at first start",  # noqa: E501
                         user=user, version=version, fingerprint=rec.fingerprint)  # fmt: skip
            return InstallResult(name, version, "pending", None, rec.fingerprint, previous)
        if trial and previous is not None and previous != version:
            st.trial = {"version": version, "periods": trial, "started_utc": _utc()}
            self._save(name, st)
            self._record(
                "model_install", name, f"{manifest.ident} verified, on trial for {trial} periods beside v{previous}",  # noqa: E501
                user=user, version=version, variant=rec.variant, fingerprint=rec.fingerprint,
            )  # fmt: skip
            return InstallResult(name, version, "trial", rec.variant, rec.fingerprint, previous, report)
        self._save(name, st)
        if previous == version:
            return InstallResult(name, version, "unchanged", rec.variant, rec.fingerprint, previous, report)
        _pause(self.root, "before-switch")
        self._activate(name, st, version)
        _pause(self.root, "after-switch")
        self._record(
            "model_install", name, f"{manifest.ident} verified and current (was {previous or 'none'})",
            user=user, version=version, previous=previous, variant=rec.variant, fingerprint=rec.fingerprint,
            signature=signature, cpu_flags=len(rec.cpu_flags), latencies_us=rec.latencies_us,
        )  # fmt: skip
        self._prune(name)
        return InstallResult(name, version, "current", rec.variant, rec.fingerprint, previous, report)

    def _activate(self, name: str, st: ModelState, version: str) -> None:
        st.history = [v for v in st.history if v != version] + [version]
        if st.trial is not None and st.trial.get("version") == version:
            st.trial = None
        self._save(name, st)
        self._switch(name, version)

    def _prune(self, name: str) -> None:
        st = self.state(name)
        cur = self.current(name)
        trial = st.trial.get("version") if st.trial else None
        order = [v for v in st.history if v in st.versions]
        order += sorted(
            (v for v in st.versions if v not in order), key=lambda v: st.versions[v].installed_utc
        )
        keep = set(order[-self.keep :]) | {cur, trial}
        drop = [v for v in st.versions if v not in keep]
        if not drop:
            return
        for v in drop:
            del st.versions[v]
        st.history = [v for v in st.history if v in st.versions]
        self._save(name, st)
        for v in drop:
            shutil.rmtree(self.root / name / v, ignore_errors=True)
            self._record(
                "model_remove", name, f"{name} v{v} removed (keeping the last {self.keep})", version=v
            )

    def finish_pending(
        self,
        name: str,
        *,
        trusted_keys: Sequence[str | os.PathLike[str]] | None,
        allow_unsigned: bool = False,
    ) -> str | None:
        """Self-test a pending version (installed into an image) on this box and make it
        current when it passes; a failure is audited and the version removed. Returns the
        outcome line (None: nothing pending)."""
        st = self.state(name)
        pending = [v for v, r in st.versions.items() if r.state == "pending"]
        if not pending:
            return None
        from agent.modelstore.selftest import run_selftest

        with self._locked():
            st = self.state(name)
            for version in pending:
                dest = self.root / name / version
                rec = st.versions[version]
                try:
                    report = run_selftest(
                        dest, trusted_keys=trusted_keys or [], allow_unsigned=allow_unsigned
                    )
                    if report.fingerprint != rec.fingerprint:
                        raise ModelError(f"{name} v{version} changed since it was copied into the image")
                except ModelError as exc:
                    del st.versions[version]
                    self._save(name, st)
                    shutil.rmtree(dest, ignore_errors=True)
                    self._record(
                        "model_refused", name, f"pending {name} v{version} refused at first start: {exc}"
                    )
                    return f"{name}: pending v{version} refused: {exc}"
                rec.state, rec.variant, rec.cpu_flags = "verified", report.chosen, report.cpu_flags
                rec.latencies_us = {v.file: v.latency_us for v in report.variants if v.latency_us is not None}
                rec.failed_variants = {v.file: v.error for v in report.variants if not v.ok}
                previous = self.current(name)
                self._activate(name, st, version)
                self._record("model_install", name, f"pending {name} v{version} self-tested here and current",
                             version=version, previous=previous, variant=rec.variant)  # fmt: skip
        return f"{name}: pending v{pending[-1]} installed"

    def rollback(self, name: str, version: str | None = None, *, user: str | None = None) -> str:
        """Make ``version`` (default: the version current before this one) current again;
        only verified versions. Audited. Returns the version now current."""
        with self._locked():
            st = self.state(name)
            cur = self.current(name)
            if version is None:
                earlier = [
                    v
                    for v in st.history
                    if v != cur and v in st.versions and st.versions[v].state == "verified"
                ]
                if not earlier:
                    raise ModelError(
                        f"model store {self.root}: {name} has no earlier verified version to roll back to"
                    )
                version = earlier[-1]
            rec = st.versions.get(version)
            if rec is None or rec.state != "verified" or not (self.root / name / version).is_dir():
                have = ", ".join(v for v, r in st.versions.items() if r.state == "verified") or "none"
                raise ModelError(
                    f"model store {self.root}: {name} v{version} is not a verified version (verified: {have})"
                )
            if version == cur:
                raise ModelError(f"{name} v{version} is already current")
            self._activate(name, st, version)
            self._record("model_rollback", name, f"{name} rolled back to v{version} (was v{cur})",
                         user=user, version=version, previous=cur)  # fmt: skip
        return version

    def remove(self, name: str, version: str, *, user: str | None = None) -> None:
        """Remove a version that is not current (nor on trial). Audited."""
        with self._locked():
            st = self.state(name)
            if version == self.current(name):
                raise ModelError(f"{name} v{version} is current: roll back or install another version first")
            if st.trial and st.trial.get("version") == version:
                raise ModelError(f"{name} v{version} is on trial: wait for the outcome")
            if version not in st.versions:
                raise ModelError(f"model store {self.root}: {name} has no version {version!r}")
            del st.versions[version]
            st.history = [v for v in st.history if v != version]
            self._save(name, st)
            shutil.rmtree(self.root / name / version, ignore_errors=True)
            self._record("model_remove", name, f"{name} v{version} removed", user=user, version=version)

    def end_trial(self, name: str, promote: bool, reason: str) -> str:
        """Promote the trial version (make it current) or reject it (``current`` stays);
        audited either way. Returns the outcome line."""
        with self._locked():
            st = self.state(name)
            if st.trial is None:
                raise ModelError(f"{name} has no trial running")
            version = str(st.trial["version"])
            cur = self.current(name)
            if promote:
                st.last_outcome = f"v{version} promoted: {reason}"
                self._activate(name, st, version)
                line = f"{name}: trial of v{version} passed, promoted (was v{cur}): {reason}"
            else:
                st.versions[version].state = "rejected"
                st.trial = None
                st.last_outcome = f"v{version} rolled back: {reason}"
                self._save(name, st)
                line = f"{name}: trial of v{version} failed, v{cur} stays: {reason}"
            self._record("model_trial", name, line, version=version, promoted=promote, reason=reason)
        if promote:
            self._prune(name)
        return line

    # ------------------------------------------------------------------ incoming

    def ensure_layout(self) -> None:
        """Create the store (0755: the service's alone) and ``incoming/`` (2770: members of the
        service's group drop bundles there; setgid keeps the group) when missing."""
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        d = self.root / INCOMING
        if not d.exists():
            d.mkdir()
            try:
                os.chmod(d, 0o2770)  # chmod, not mkdir's mode: the umask would take the group's write bit
            except PermissionError:  # systemd's RestrictSUIDSGID: drop() sets the group itself
                os.chmod(d, 0o770)

    @staticmethod
    def trial_of(entry: Path) -> int | None:
        """The trial periods an ``incoming/`` entry asks for (None: none)."""
        m = re.search(r"-trial(\d+)(?:\.tar\.gz)?$", entry.name)
        return int(m.group(1)) if m else None

    def incoming(self) -> list[Path]:
        """Bundles dropped into ``incoming/`` (complete ones: a ``.tar.gz``, or a directory
        renamed in without a leading dot), oldest first."""
        from agent.modelstore.archive import is_archive

        d = self.root / INCOMING
        if not d.is_dir():
            return []
        found = [p for p in d.iterdir() if not p.name.startswith(".") and (p.is_dir() or is_archive(p))]
        return sorted(found, key=lambda p: p.lstat().st_mtime)

    def drop(self, source: Path, *, trial: int | None = None) -> Path:
        """Put ``source`` (directory or archive) into ``incoming/`` for the service to install
        (what a member of the service group does: it cannot write the store itself), with an
        N-period trial when ``trial`` is given (carried in the entry's name). Copied under a
        hidden name, then renamed: the service never sees half a bundle."""
        from agent.modelstore.archive import is_archive

        d = self.root / INCOMING
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}" + (f"-trial{int(trial)}" if trial else "")
        final = d / (f"{stamp}.tar.gz" if is_archive(source) else stamp)
        hidden = d / f".{final.name}"
        if is_archive(source):
            shutil.copyfile(source, hidden)
        else:
            hidden.mkdir()
            with BundleDir(source) as b:
                for fname in sorted(os.listdir(source)):
                    data = b.read(fname, limit=MAX_MODEL_BYTES)
                    (hidden / fname).write_bytes(data)
        # The service (the folder's owner, in its group) must read and later remove what a
        # member drops, whatever that member's own group and umask are.
        gid = d.stat().st_gid
        for p in [hidden, *(hidden.iterdir() if hidden.is_dir() else [])]:
            os.chown(p, -1, gid)
            os.chmod(p, 0o770 if p.is_dir() else 0o640)
        os.rename(hidden, final)
        return final


def check_source(
    src: Path,
    trusted_keys: Sequence[str | os.PathLike[str]],
    allow_unsigned: bool,
    check: Callable[[Manifest], None] | None,
) -> tuple[Manifest, str | None]:
    """The checks an install makes on the source before copying it: the signature over the
    manifest bytes (before they are parsed: bytes nobody trusted vouches for are not read),
    the manifest, and ``check`` (the config's bindings). Returns the manifest and the key id
    that signed (None: unsigned, allowed). ModelError otherwise."""
    manifest_bytes, signature_bytes = _read_source(src)
    key: str | None = None
    if not (allow_unsigned and signature_bytes is None):
        key = verify_manifest_signature(manifest_bytes, signature_bytes, [Path(k) for k in trusted_keys], src)
    manifest = parse_manifest(manifest_bytes, src / MANIFEST_FILE)
    if check is not None:
        check(manifest)
    return manifest, key


def verify_source(
    src: Path,
    trusted_keys: Sequence[str | os.PathLike[str]],
    allow_unsigned: bool,
    check: Callable[[Manifest], None] | None,
) -> tuple[SelfTestReport, Manifest]:
    """Everything an install checks, without installing: :func:`check_source`, then the
    self-test (hashes, sessions, checks, benchmark) in a subprocess on ``src`` itself."""
    from agent.modelstore.selftest import run_selftest

    manifest, _ = check_source(src, trusted_keys, allow_unsigned, check)
    return run_selftest(src, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned), manifest


def _name_hint(source: Path) -> str:
    return source.name.removesuffix(".tar.gz").removesuffix(".tgz")


def _fingerprint(d: Path) -> str:
    """The bundle fingerprint of the files in ``d`` as :class:`Bundle` computes it (manifest,
    signature, listed file hashes), without loading a session."""
    manifest_bytes, signature_bytes = _read_source(d)
    manifest = parse_manifest(manifest_bytes, d / MANIFEST_FILE)
    hashes = {v.file: v.sha256 for v in manifest.variants} | {n: f.sha256 for n, f in manifest.files.items()}
    return fingerprint_of(
        hashlib.sha256(manifest_bytes).hexdigest(),
        None if signature_bytes is None else hashlib.sha256(signature_bytes).hexdigest(),
        hashes,
    )
