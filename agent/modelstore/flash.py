"""``edge-agent flash BUNDLE --host user@gw1 --host user@gw2 …``: one bundle onto many gateways.

Pushes with the system's OpenSSH client (``scp`` then ``ssh``, ``BatchMode=yes``: the user's
own keys, agent and ``known_hosts``; never a password prompt, never an unknown host key
accepted), runs ``edge-agent models install --json`` on each gateway (``--remote-cmd``
replaces the command, e.g. with ``sudo -u edge-agent edge-agent models -c …``), and prints one
row per host::

    HOST                 RESULT       VERSION  VARIANT          DETAIL
    ops@gw1              installed    2        model.onnx       current (was 1)
    ops@gw2              refused      -        -                bundle … signed by key …, which is not trusted
    ops@gw3              unreachable  -        -                ssh: connect to host gw3 port 22: Connection …

The exit code is 0 only when every host installed. ``--parallel N`` works on N hosts at a
time. ``--target DIR`` installs into the model store of a mounted edge-box image instead
(signature, manifest and hashes checked here; the version stays pending until its self-test
passes at the box's first start).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ModelError
from agent.modelstore.archive import is_archive
from agent.modelstore.commands import positive_int

__all__ = ["DEFAULT_REMOTE_CMD", "HostResult", "add_flash_parser", "flash_host", "run_flash"]

DEFAULT_REMOTE_CMD = "edge-agent models -c /etc/edge-agent/agent.yaml install"
_SSH_TIMEOUT_S = 10
_INSTALL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class HostResult:
    """One gateway's outcome: ``installed`` (``state`` current / trial / queued / unchanged),
    ``refused`` (the gateway said why) or ``unreachable`` (ssh/scp could not get there)."""

    host: str
    result: str
    version: str = "-"
    variant: str = "-"
    detail: str = ""


def add_flash_parser(sub: Any) -> None:
    """The ``flash`` subcommand."""
    f = sub.add_parser("flash", help="install a bundle on many gateways over SSH, or into a mounted image")
    f.add_argument("bundle", type=Path)
    f.add_argument("--host", action="append", default=[], help="user@gateway (repeatable)")
    f.add_argument("--parallel", type=positive_int, default=4, metavar="N")
    f.add_argument("--trial", type=positive_int, default=None, metavar="N")
    f.add_argument("--port", type=int, default=None, metavar="P")
    f.add_argument("--remote-cmd", default=DEFAULT_REMOTE_CMD, help=f"default: {DEFAULT_REMOTE_CMD}")
    f.add_argument("--ssh-config", type=Path, default=None, help="an ssh_config file (ssh -F)")
    f.add_argument("--target", type=Path, default=None, help="the model store directory of a mounted image")
    f.add_argument(
        "--trusted-key", type=Path, action="append", default=[], help="with --target: a public key"
    )
    f.add_argument("-c", "--config", default=None, help="with --target: take trusted keys from this config")


def _ssh_opts(args: argparse.Namespace, port_flag: str) -> list[str]:
    opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={_SSH_TIMEOUT_S}"]
    if args.ssh_config is not None:
        opts += ["-F", str(args.ssh_config)]
    if args.port is not None:
        opts += [port_flag, str(args.port)]
    return opts


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # ssh's own reason ("ssh: connect to host … Connection refused") before scp's summary
    said = [ln for ln in lines if ln.startswith("ssh:")]
    return said[-1] if said else lines[-1] if lines else "no output"


def flash_host(host: str, archive: Path, args: argparse.Namespace) -> HostResult:
    """Copy ``archive`` to ``host`` and install it there; never raises for the host's faults."""
    remote = f"/tmp/edge-bundle-{uuid.uuid4().hex[:12]}.tar.gz"
    scp = ["scp", *_ssh_opts(args, "-P"), str(archive), f"{host}:{remote}"]
    try:
        cp = subprocess.run(scp, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return HostResult(host, "unreachable", detail="scp timed out")
    if cp.returncode != 0:
        return HostResult(host, "unreachable", detail=_last_line(cp.stderr))
    cmd = f"{args.remote_cmd} {shlex.quote(remote)} --json"
    if args.trial:
        cmd += f" --trial {int(args.trial)}"
    cmd += f"; rc=$?; rm -f {shlex.quote(remote)}; exit $rc"
    ssh = ["ssh", *_ssh_opts(args, "-p"), host, cmd]
    try:
        run = subprocess.run(ssh, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return HostResult(host, "unreachable", detail="install timed out")
    try:
        out = json.loads(_last_line(run.stdout))
    except ValueError:
        out = None
    if not isinstance(out, dict):
        what = "unreachable" if run.returncode == 255 else "refused"
        return HostResult(host, what, detail=_last_line(run.stderr or run.stdout))
    if not out.get("ok"):
        return HostResult(host, "refused", detail=str(out.get("error", "refused")).splitlines()[0])
    state = str(out.get("state", "current"))
    was = f" (was {out['previous']})" if out.get("previous") else ""
    return HostResult(
        host, "installed", str(out.get("version", "-")), str(out.get("variant") or "-"), f"{state}{was}"
    )


def _as_archive(bundle: Path, tmp: Path) -> Path:
    if is_archive(bundle):
        return bundle
    out = tmp / f"{bundle.name}.tar.gz"
    import tarfile  # here, not at the top: the CLI imports this module for every command

    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(bundle.iterdir()):
            if p.is_symlink() or not p.is_file():
                raise ModelError(f"bundle {bundle}: {p.name} is not a regular file: refused")
            tf.add(p, arcname=p.name, recursive=False)
    return out


def _print_table(rows: list[HostResult]) -> None:
    print(f"{'HOST':20} {'RESULT':12} {'VERSION':8} {'VARIANT':16} DETAIL")
    for r in rows:
        print(f"{r.host:20} {r.result:12} {r.version:8} {r.variant:16} {r.detail}")


def _flash_target(args: argparse.Namespace) -> int:
    from agent.modelstore.store import Store

    keys: list[Path] = list(args.trusted_key)
    allow = False
    if args.config is not None:
        from agent.config import load_config
        from agent.modelstore.commands import trust_of

        cfg = load_config(args.config)
        more, allow = trust_of(cfg, args.config)
        keys += more
    store = Store(args.target)
    try:
        res = store.install(args.bundle, trusted_keys=keys, allow_unsigned=allow, pending=True)
    except (ModelError, OSError) as exc:
        row = HostResult(str(args.target), "refused", detail=str(exc).splitlines()[0])
    else:
        row = HostResult(
            str(args.target), "installed", res.version, "-", "pending its self-test at first start"
        )
    _print_table([row])
    return 0 if row.result == "installed" else 1


def run_flash(args: argparse.Namespace) -> int:
    """Run ``edge-agent flash``; returns 0 when every host (or the target) installed."""
    if args.target is not None:
        return _flash_target(args)
    if not args.host:
        print("flash: give --host user@gateway (repeatable) or --target DIR", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edge-flash-") as tmp:
        try:
            archive = _as_archive(args.bundle, Path(tmp))
        except (ModelError, OSError) as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            rows = list(pool.map(lambda h: flash_host(h, archive, args), args.host))
    _print_table(rows)
    return 0 if all(r.result == "installed" for r in rows) else 1
