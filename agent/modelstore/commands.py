"""``edge-agent models …``: the model store from the command line.

``install BUNDLE [--trial N] [--json]``, ``list``, ``show NAME``, ``rollback NAME [VERSION]``,
``verify BUNDLE``, ``remove NAME VERSION``. Every change is audited (the agent's audit log, as a
guest writer beside the running agent) with the OS user. A user who cannot write the store
but can write its ``incoming/`` folder (a member of the service group) gets the bundle queued
there: the running service verifies, self-tests and switches it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import AuditError, ModelError
from agent.modelstore.archive import is_archive, unpack_bundle
from agent.modelstore.manifest import Manifest, load_manifest
from agent.modelstore.store import INCOMING, Store
from agent.ops.audit import AuditLog, query_audit
from agent.types import utcnow

__all__ = ["add_models_parser", "open_store", "positive_int", "run_models", "trust_of"]


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_models_parser(sub: Any) -> None:
    """The ``models`` subcommand and its own subcommands."""
    m = sub.add_parser("models", help="the model store: install, list, show, rollback, verify, remove")
    m.add_argument("-c", "--config", required=True)
    m.add_argument("--store", type=Path, default=None, help="the store directory (default: models_store.dir)")
    ms = m.add_subparsers(dest="models_command", required=True)
    i = ms.add_parser("install", help="verify, self-test and switch to a bundle (directory or .tar.gz)")
    i.add_argument("bundle", type=Path)
    i.add_argument(
        "--trial",
        type=positive_int,
        default=None,
        metavar="N",
        help="run in shadow for N sample periods first",
    )
    i.add_argument("--json", action="store_true", help="the outcome as one JSON object")
    i.add_argument(
        "--queue", action="store_true",
        help="hand the bundle to the running service (incoming/) even where the store is writable",
    )  # fmt: skip
    i.add_argument(
        "--wait", type=float, default=300.0, metavar="S",
        help="queued for the service (incoming/): wait this long for its outcome",
    )  # fmt: skip
    ms.add_parser("list", help="every model with its versions")
    s = ms.add_parser("show", help="one model's versions, self-test results and trial")
    s.add_argument("name")
    r = ms.add_parser("rollback", help="make an earlier verified version current (audited)")
    r.add_argument("name")
    r.add_argument("version", nargs="?")
    v = ms.add_parser("verify", help="check a bundle as install does, without installing it")
    v.add_argument("bundle", type=Path)
    rm = ms.add_parser("remove", help="remove a version that is not current")
    rm.add_argument("name")
    rm.add_argument("version")


def trust_of(cfg: Config, config_path: str) -> tuple[list[Path], bool]:
    """The trusted key files (resolved against the config's directory) and allow_unsigned."""
    base = Path(os.path.abspath(config_path)).parent
    keys = [k if k.is_absolute() else base / k for k in cfg.models_trust.public_keys]
    return keys, cfg.models_trust.allow_unsigned


def open_store(
    cfg: Config, config_path: str, store_dir: Path | None, audit: AuditLog | None, user: str
) -> Store:
    """The config's store (``store_dir`` overrides ``models_store.dir``), auditing into ``audit``."""
    root = store_dir or cfg.models_store.dir
    if not root.is_absolute():
        root = Path(os.path.abspath(config_path)).parent / root

    def record(action: str, model: str, message: str, detail: Mapping[str, Any]) -> None:
        if audit is None:
            return
        extra = {k: v for k, v in detail.items() if k != "user"}
        try:
            audit.record_model(action, model, message, user=str(detail.get("user") or user), extra=extra)
        except AuditError as exc:
            print(f"warning: not audited: {exc}", file=sys.stderr)

    return Store(root, keep=cfg.models_store.keep, audit=record)


def _writable(d: Path) -> bool:
    return d.is_dir() and os.access(d, os.W_OK | os.X_OK)


def _manifest_of(bundle: Path) -> Manifest:
    if not is_archive(bundle):
        return load_manifest(bundle)
    with tempfile.TemporaryDirectory(prefix="edge-queue-") as tmp:
        return load_manifest(unpack_bundle(bundle, Path(tmp) / "b"))


def _queue(store: Store, cfg: Config, args: argparse.Namespace) -> int:
    """Drop the bundle into ``incoming/`` and wait (bounded) for the service's outcome."""
    try:
        manifest = _manifest_of(args.bundle)
    except ModelError as exc:
        return _say_refused(args, str(exc))
    since = utcnow()
    queued = store.drop(args.bundle, trial=args.trial)
    if not args.json:
        print(f"queued {queued}: the service verifies, self-tests and installs it")
    deadline = time.monotonic() + args.wait
    while queued.exists():
        if time.monotonic() > deadline:
            return _say_refused(
                args, f"the service did not take {queued} within {args.wait:g} s (is it running?)"
            )
        time.sleep(0.5)
    name, version = manifest.name, manifest.version
    st = store.state(name)
    rec = st.versions.get(version)
    if rec is None or rec.state == "rejected":
        why = "refused by the service"
        with contextlib.suppress(AuditError, OSError):
            rows = query_audit(cfg.audit_config(), since=since, kinds=["event"])
            why = next((r.message for r in reversed(rows) if r.action == "model_refused"), why)
        return _say_refused(args, why)
    state = "trial" if st.trial and st.trial.get("version") == version else "current"
    if state == "current" and store.current(name) != version:
        state = "verified"
    out = {"ok": True, "name": name, "version": version, "state": state, "variant": rec.variant}
    print(json.dumps(out) if args.json else f"installed {name} v{version}, variant {rec.variant}: {state}")
    return 0


def _say_refused(args: argparse.Namespace, why: str) -> int:
    print(json.dumps({"ok": False, "error": why}) if args.json else f"refused: {why}")
    return 1


def _install(store: Store, cfg: Config, args: argparse.Namespace, user: str) -> int:
    from agent.modelstore.configcheck import binding_checker

    keys, allow = trust_of(cfg, args.config)
    root = store.root
    if args.queue or (not _writable(root) and (root.exists() or not _writable(root.parent))):
        if _writable(root / INCOMING):
            return _queue(store, cfg, args)
        why = f"cannot write the model store {root} nor its {INCOMING}/ folder (uid {os.geteuid()})"
        print(json.dumps({"ok": False, "error": why}) if args.json else f"refused: {why}", file=sys.stdout)
        return 1
    try:
        res = store.install(
            args.bundle,
            trusted_keys=keys,
            allow_unsigned=allow,
            check=binding_checker(cfg, args.config),
            trial=args.trial,
            user=user,
        )
    except (ModelError, OSError) as exc:
        text = str(exc) if isinstance(exc, ModelError) else f"{exc.filename}: {exc.strerror}"
        if args.json:
            print(json.dumps({"ok": False, "error": text}))
        else:
            print(f"refused: {text}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": True, **res.as_dict()}))
        return 0
    if res.report is not None:
        print(f"self-test on this CPU ({len(res.report.cpu_flags)} flags): {res.report.summary()}")
    was = f" (was {res.previous})" if res.previous else ""
    lines = {
        "current": f"installed {res.name} v{res.version}, variant {res.variant}: current{was}",
        "trial": f"installed {res.name} v{res.version}, variant {res.variant}: on trial for "
        f"{args.trial} periods beside v{res.previous}",
        "unchanged": f"{res.name} v{res.version} is already current",
        "pending": f"copied {res.name} v{res.version}: pending its self-test at first start",
    }
    print(lines[res.state])
    return 0


def _list(store: Store) -> int:
    names = store.names()
    if not names:
        print(f"model store {store.root}: no models")
        return 0
    print(f"{'MODEL':20} {'CURRENT':10} VERSIONS")
    for name in names:
        st, cur = store.state(name), store.current(name)
        parts = []
        for v, rec in st.versions.items():
            mark = "*" if v == cur else ""
            trial = " trial" if st.trial and st.trial.get("version") == v else ""
            parts.append(f"{v}{mark} ({rec.state}{trial}, {rec.variant or '-'})")
        print(f"{name:20} {cur or '-':10} {', '.join(parts)}")
    return 0


def _show(store: Store, name: str) -> int:
    st = store.state(name)
    if not st.versions:
        print(f"refused: model store {store.root} has no model {name!r}", file=sys.stderr)
        return 1
    out = {
        "name": name,
        "current": store.current(name),
        "history": st.history,
        "trial": st.trial,
        "last_outcome": st.last_outcome,
        "versions": {v: {**vars(r), "cpu_flags": " ".join(r.cpu_flags)} for v, r in st.versions.items()},
        "problems": [p for p in store.check() if p.startswith(f"{name}") or f": {name}" in p],
    }
    print(json.dumps(out, indent=2))
    return 0


def _verify(cfg: Config, args: argparse.Namespace) -> int:
    from agent.modelstore.configcheck import binding_checker
    from agent.modelstore.store import verify_source

    keys, allow = trust_of(cfg, args.config)
    with tempfile.TemporaryDirectory(prefix="edge-verify-") as tmp:
        try:
            src = unpack_bundle(args.bundle, Path(tmp) / "b") if is_archive(args.bundle) else args.bundle
            report, manifest = verify_source(src, keys, allow, binding_checker(cfg, args.config))
        except ModelError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
    print(f"{manifest.ident}: signature, hashes and bindings OK")
    print(
        f"self-test on this CPU ({len(report.cpu_flags)} flags, {report.checks} checks): {report.summary()}"
    )
    print(f"would run variant {report.chosen}")
    return 0


def run_models(cfg: Config, args: argparse.Namespace, user: str) -> int:
    """Run one ``models`` subcommand; returns the exit code (1: refused, with the reason)."""
    if args.models_command == "verify":
        return _verify(cfg, args)
    changes = args.models_command in ("install", "rollback", "remove")
    audit = AuditLog(cfg.audit_config(), guest=True) if changes else None
    if audit is not None:
        try:
            audit.open()
        except AuditError as exc:
            print(f"warning: not audited: {exc}", file=sys.stderr)
            audit = None
    try:
        store = open_store(cfg, args.config, args.store, audit, user)
        cmd = args.models_command
        if cmd == "install":
            return _install(store, cfg, args, user)
        if cmd == "list":
            return _list(store)
        if cmd == "show":
            return _show(store, args.name)
        try:
            if cmd == "rollback":
                v = store.rollback(args.name, args.version, user=user)
                print(f"{args.name}: v{v} is current (rolled back)")
            else:
                store.remove(args.name, args.version, user=user)
                print(f"{args.name}: v{args.version} removed")
        except ModelError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        if audit is not None:
            audit.close()
