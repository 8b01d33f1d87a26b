"""Install and uninstall the agent as a systemd service (``edge-agent service install|uninstall``).

This module imports only the standard library at load, so that ``systemd/install.sh`` can run
it with a plain ``python3`` on a gateway that has nothing else. ``install``, in order:

1. the ``edge-agent`` system group and user (``groupadd``/``useradd``; with ``--root DIR`` the
   entries are written into ``DIR/etc/group`` and ``DIR/etc/passwd`` instead), and the
   ``dialout`` group the unit's ``SupplementaryGroups=`` names;
2. ``/opt/edge-agent/.venv`` (``python3 -m venv``) with the agent installed into it, from a
   wheel folder (``--wheels DIR``: ``pip --no-index``, nothing fetched) or from the checkout;
   the rest then runs in that venv's interpreter when this one lacks the agent's packages;
3. the directories, each with its owner and mode (see :data:`DIRECTORIES`): the config in
   ``/etc/edge-agent`` (0750 root:edge-agent: the agent reads it and cannot change it), the
   state in ``/var/lib/edge-agent`` (the agent's own), the model store in it
   (``/var/lib/edge-agent/models``: the agent's alone; members of the group install through its
   ``incoming/`` folder, which the agent creates), the OPC UA pki; the shipped bundles in
   ``/opt/edge-agent/models`` (root's, read-only: part of the software, replaced by an update;
   bind them by path, or install them into the store with ``edge-agent models install``);
4. the config (``--config FILE``, validated first; an existing one is kept when none is given);
5. the unit, and the drop-in ``edge-agent.service.d/credentials.conf`` with exactly the systemd
   credentials the config names (``{credential: NAME}``): ``LoadCredential=`` from
   ``/etc/edge-agent/credentials/NAME``, with an empty-line ``SetCredential=`` default so that
   a missing file never fails the start (the agent then starts with an empty secret);
6. ``systemctl daemon-reload`` when systemd runs (never with ``--root``).

``--root DIR`` installs files only (a test, an image being built): no useradd, no systemctl
and no venv (a venv is bound to the path it was built at: build it on the target).
``uninstall`` removes the unit, its drop-ins and ``/opt/edge-agent``, and keeps the config,
the state (audit log, models) and the user.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "CREDENTIALS_DIR",
    "DIRECTORIES",
    "SERVICE_USER",
    "Account",
    "InstallOptions",
    "ServiceError",
    "add_service_parser",
    "config_credentials",
    "credentials_dropin",
    "ensure_account",
    "install",
    "main",
    "run_service",
    "uninstall",
]

SERVICE_USER = "edge-agent"
SERIAL_GROUP = "dialout"
PACKAGE = "edge-inference-agent"

PREFIX = PurePosixPath("/opt/edge-agent")
VENV = PREFIX / ".venv"
CONFIG_DIR = PurePosixPath("/etc/edge-agent")
CONFIG = CONFIG_DIR / "agent.yaml"
CREDENTIALS_DIR = CONFIG_DIR / "credentials"
STATE_DIR = PurePosixPath("/var/lib/edge-agent")
MODELS_DIR = STATE_DIR / "models"  # the model store (models_store.dir)
SHIPPED_MODELS = PREFIX / "models"
UNIT = PurePosixPath("/etc/systemd/system/edge-agent.service")
DROPIN_DIR = PurePosixPath("/etc/systemd/system/edge-agent.service.d")
DROPIN = DROPIN_DIR / "credentials.conf"

ROOT_OWNED, SERVICE_OWNED = "root", "service"

DIRECTORIES: tuple[tuple[PurePosixPath, int, str, str], ...] = (
    # path, mode, owner, group ("service" = the edge-agent user or group)
    (PREFIX, 0o755, ROOT_OWNED, ROOT_OWNED),
    (CONFIG_DIR, 0o750, ROOT_OWNED, SERVICE_OWNED),
    # LoadCredential= is read by PID 1 as root: the secrets stay root's.
    (CREDENTIALS_DIR, 0o700, ROOT_OWNED, ROOT_OWNED),
    # OPC UA: own certificate and key, trusted servers (root decides whom the agent trusts)...
    (CONFIG_DIR / "pki", 0o750, ROOT_OWNED, SERVICE_OWNED),
    (CONFIG_DIR / "pki" / "own", 0o750, ROOT_OWNED, SERVICE_OWNED),
    (CONFIG_DIR / "pki" / "trusted", 0o750, ROOT_OWNED, SERVICE_OWNED),
    (STATE_DIR, 0o750, SERVICE_OWNED, SERVICE_OWNED),
    # ...and the certificates it refused, written by the agent (ProtectSystem=strict: /etc is read-only).
    (STATE_DIR / "pki", 0o750, SERVICE_OWNED, SERVICE_OWNED),
    (STATE_DIR / "pki" / "rejected", 0o750, SERVICE_OWNED, SERVICE_OWNED),
    # The model store: the agent's alone (it verifies what the group drops into incoming/).
    (MODELS_DIR, 0o750, SERVICE_OWNED, SERVICE_OWNED),
    (SHIPPED_MODELS, 0o755, ROOT_OWNED, ROOT_OWNED),
)

_CREDENTIAL_ID = re.compile(r"^[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,127}$")
_SYSTEM_ID_RANGE = range(999, 99, -1)  # as useradd --system: from the top of the system range down


class ServiceError(Exception):
    """The install or uninstall cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Account:
    """The service user's and group's numeric ids on the target."""

    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class InstallOptions:
    """What ``service install`` was asked to do (see the module docstring)."""

    root: Path = Path("/")
    config: Path | None = None
    wheels: Path | None = None
    source: Path | None = None
    venv: bool = True


def _at(root: Path, path: PurePosixPath) -> Path:
    """``path`` of the target system, under ``root`` on this one."""
    return root / path.relative_to("/")


def _say(message: str) -> None:
    print(message, flush=True)


def _venv_env() -> dict[str, str]:
    """The environment for the venv's tools: without the PYTHONPATH install.sh sets to the
    checkout (pip would take the checkout's metadata for an installed agent and skip it)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
    try:
        subprocess.run(list(cmd), check=True, env=env)
    except FileNotFoundError:
        raise ServiceError(f"{cmd[0]} not found") from None
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"{' '.join(cmd)} failed (exit {exc.returncode})") from None


# --------------------------------------------------------------------------- accounts


def _read_db(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _append_line(path: Path, line: str, mode: int) -> None:
    """Append to an account database, keeping its owner and mode (shadow is root:shadow 0640)."""
    uid, gid = 0, 0
    text = ""
    if path.exists():
        st = path.stat()
        uid, gid, mode = st.st_uid, st.st_gid, st.st_mode & 0o7777
        text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text += "\n"
    _write_file(path, (text + line + "\n").encode(), mode, uid, gid)


def _free_id(taken: set[int]) -> int:
    for n in _SYSTEM_ID_RANGE:
        if n not in taken:
            return n
    raise ServiceError("no free system user/group id in 100..999")


def _account_in_files(root: Path) -> Account:
    """The service account in ``root/etc/{passwd,group}`` (and shadow files when present)."""
    etc = root / "etc"
    groups = _read_db(etc / "group")
    users = _read_db(etc / "passwd")
    gids = {int(g[2]) for g in groups if len(g) > 2 and g[2].isdigit()}
    uids = {int(u[2]) for u in users if len(u) > 2 and u[2].isdigit()}
    days = int(time.time() // 86400)

    def ensure_group(name: str) -> int:
        for g in _read_db(etc / "group"):
            if g[0] == name:
                return int(g[2])
        gid = _free_id(gids | uids)
        gids.add(gid)
        _append_line(etc / "group", f"{name}:x:{gid}:", 0o644)
        if (etc / "gshadow").exists():
            _append_line(etc / "gshadow", f"{name}:!::", 0o640)
        return gid

    ensure_group(SERIAL_GROUP)
    gid = ensure_group(SERVICE_USER)
    for u in users:
        if u[0] == SERVICE_USER:
            return Account(int(u[2]), gid)
    uid = gid if gid not in uids else _free_id(uids | gids)
    _append_line(
        etc / "passwd",
        f"{SERVICE_USER}:x:{uid}:{gid}:edge inference agent:{STATE_DIR}:/usr/sbin/nologin",
        0o644,
    )
    if (etc / "shadow").exists():
        _append_line(etc / "shadow", f"{SERVICE_USER}:!:{days}::::::", 0o640)
    return Account(uid, gid)


def _account_on_host() -> Account:
    for group in (SERIAL_GROUP, SERVICE_USER):
        try:
            grp.getgrnam(group)
        except KeyError:
            _run(["groupadd", "--system", group])
            _say(f"created group {group}")
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        _run(
            [
                "useradd", "--system", "--gid", SERVICE_USER, "--home-dir", str(STATE_DIR),
                "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", "edge inference agent",
                SERVICE_USER,
            ]
        )  # fmt: skip
        _say(f"created user {SERVICE_USER}")
    return Account(pwd.getpwnam(SERVICE_USER).pw_uid, grp.getgrnam(SERVICE_USER).gr_gid)


def ensure_account(root: Path) -> Account:
    """Create the service user and group (and ``dialout``) if missing; return their ids."""
    return _account_on_host() if root == Path("/") else _account_in_files(root)


# --------------------------------------------------------------------------- files


def _write_file(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write atomically with its owner and mode set before it appears under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _make_dir(path: Path, mode: int, uid: int, gid: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)  # after chown: chown clears setgid on some systems


def _owner(who: str, account: Account, *, group: bool) -> int:
    if who == ROOT_OWNED:
        return 0
    return account.gid if group else account.uid


def _copy_tree(src: Path, dst: Path, account: Account, dir_mode: int, file_mode: int) -> None:
    _make_dir(dst, dir_mode, account.uid, account.gid)
    for item in sorted(src.iterdir()):
        if item.is_dir():
            _copy_tree(item, dst / item.name, account, dir_mode, file_mode)
        elif item.is_file():
            _write_file(dst / item.name, item.read_bytes(), file_mode, account.uid, account.gid)


# --------------------------------------------------------------------------- config and credentials


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    fields = getattr(type(obj), "model_fields", None)
    if isinstance(fields, dict):
        for name in fields:
            yield from _walk(getattr(obj, name))
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _walk(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _walk(item)


def config_credentials(config: object) -> list[str]:
    """The systemd credential names a loaded :class:`~agent.config.Config` uses, sorted.

    Raises ServiceError for a name systemd cannot take (it becomes a file name, and ``:``
    separates it from the path in ``LoadCredential=``).
    """
    from agent.configbase import Secret

    names: set[str] = set()
    for item in _walk(config):
        if isinstance(item, Secret) and item.credential is not None:
            if not _CREDENTIAL_ID.match(item.credential):
                raise ServiceError(
                    f"credential name {item.credential!r} cannot be a systemd credential: use letters, "
                    "digits and . _ - @ (at most 128)"
                )
            names.add(item.credential)
    return sorted(names)


def _environment_secrets(config: object) -> list[str]:
    from agent.configbase import Secret

    return sorted({i.env for i in _walk(config) if isinstance(i, Secret) and i.env is not None})


def credentials_dropin(names: Sequence[str], config_path: PurePosixPath = CONFIG) -> str:
    """The drop-in that passes exactly ``names`` to the service as systemd credentials.

    Each is loaded from ``/etc/edge-agent/credentials/NAME``; a ``SetCredential=`` of the same
    name holding an empty line is its default, so a missing file is not fatal (systemd.exec(5)):
    the agent starts with an empty secret instead of failing with 243/CREDENTIALS.
    """
    lines = [
        f"# Written by `edge-agent service install` from {config_path}: the systemd credentials",
        "# that config names, and no other. Each secret goes in its file (mode 0600, root), e.g.",
        f"#   systemd-ask-password -n | install -m 0600 /dev/stdin {CREDENTIALS_DIR}/NAME",
        "# A missing file gives the agent an empty value (the SetCredential= default), not a failed start.",
        "[Service]",
    ]
    if not names:
        lines.append("# (the config names no credential)")
    for name in names:
        # systemd refuses an empty SetCredential= value: an empty line, which the agent reads as "".
        lines.append(f"SetCredential={name}:\\n")
        lines.append(f"LoadCredential={name}:{CREDENTIALS_DIR / name}")
    return "\n".join(lines) + "\n"


def _load_config(path: Path) -> object:
    from agent.config import load_config
    from agent.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        raise ServiceError(f"config refused, nothing installed from it:\n{exc}") from None


def _agent_importable() -> bool:
    try:
        import agent.config  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- steps


def _default_source() -> Path | None:
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() and (here / "systemd").is_dir() else None


def _check_venv_module() -> None:
    probe = subprocess.run([sys.executable, "-m", "ensurepip", "--version"], capture_output=True, check=False)
    if probe.returncode != 0:
        raise ServiceError(
            f"{sys.executable} -m venv cannot install pip (no ensurepip): install the Debian package "
            "python3-venv (apt-get install python3-venv), then run the install again"
        )


def _make_venv(opts: InstallOptions, source: Path) -> None:
    venv = _at(opts.root, VENV)
    python = sys.executable
    if not (venv / "bin" / "python").exists():
        _say(f"creating {VENV}")
        _run([python, "-m", "venv", str(venv)], _venv_env())
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if opts.wheels is not None:
        if not opts.wheels.is_dir():
            raise ServiceError(f"wheel folder {opts.wheels} does not exist")
        _say(f"installing {PACKAGE} from {opts.wheels} (offline)")
        pip += ["--no-index", "--find-links", str(opts.wheels)]
        what = PACKAGE
    else:
        _say(f"installing {PACKAGE} from {source} (its dependencies from the package index)")
        what = str(source)
    _run([*pip, "--upgrade", what], _venv_env())
    # The agent itself again: a rebuilt wheel of the same version must replace the old code.
    _run([*pip, "--no-deps", "--force-reinstall", what], _venv_env())


def _install_config(opts: InstallOptions, source: Path, account: Account) -> object:
    target = _at(opts.root, CONFIG)
    if opts.config is not None:
        config = _load_config(opts.config)
        data = opts.config.read_bytes()
        if target.exists() and target.read_bytes() != data:
            _write_file(target.with_name("agent.yaml.bak"), target.read_bytes(), 0o640, 0, account.gid)
            _say(f"{CONFIG}: replaced (the previous one is agent.yaml.bak)")
        _write_file(target, data, 0o640, 0, account.gid)
        _say(f"{CONFIG}: from {opts.config}")
        return config
    if target.exists():
        _say(f"{CONFIG}: kept")
        return _load_config(target)
    example = source / "configs" / "plant-example.yaml"
    config = _load_config(example)
    _write_file(target, example.read_bytes(), 0o640, 0, account.gid)
    _say(f"{CONFIG}: the example from {example}; edit it for this plant")
    return config


def _install_models(opts: InstallOptions, source: Path, account: Account) -> None:
    """The shipped bundles, root's and read-only, replaced as a whole by each install (they are
    part of the software and signed); the model store is never touched."""
    del account  # root's, not the service's
    root = Account(0, 0)
    for bundle in sorted((source / "models").glob("*/manifest.json")):
        dst = _at(opts.root, SHIPPED_MODELS / bundle.parent.name)
        shutil.rmtree(dst, ignore_errors=True)
        _copy_tree(bundle.parent, dst, root, 0o755, 0o644)


def install(opts: InstallOptions) -> None:
    """Install (or update) the service; see the module docstring. Raises ServiceError."""
    if os.geteuid() != 0:
        raise ServiceError("the install sets owners and creates a system user: run it as root (sudo)")
    source = opts.source or _default_source()
    if source is None or not (source / "systemd" / "edge-agent.service").is_file():
        raise ServiceError(
            "no checkout to install from (its systemd/ and models/): run systemd/install.sh from one, "
            "or pass --source DIR"
        )
    real = opts.root == Path("/")
    build_venv = opts.venv and real
    if opts.venv and not real:
        _say(
            f"--root: {VENV} is not built (a venv is bound to the path it is built at): install on the target"
        )
    importable = _agent_importable()
    installed = _at(opts.root, VENV) / "bin" / "python"
    # A bare python3 (install.sh on a fresh gateway) hands the rest to the agent in the venv.
    hand_over = not importable and real and (opts.venv or installed.exists())
    if not importable and not hand_over:
        raise ServiceError(
            f"the agent's packages are not importable by {sys.executable}: run this with a venv's python "
            f"that has them (e.g. {VENV}/bin/python -m agent.ops.service install --no-venv)"
        )
    if importable and opts.config is not None:
        _load_config(opts.config)  # a bad config is refused before anything changes
    if build_venv:
        _check_venv_module()

    account = ensure_account(opts.root)
    for path, mode, owner, group in DIRECTORIES:
        _make_dir(
            _at(opts.root, path),
            mode,
            _owner(owner, account, group=False),
            _owner(group, account, group=True),
        )
    if build_venv:
        _make_venv(opts, source)
    if hand_over:
        cmd = [str(installed), "-m", "agent.ops.service", "install", "--no-venv", "--source", str(source)]
        if opts.config is not None:
            cmd += ["--config", str(opts.config.resolve())]
        if subprocess.run(cmd, env=_venv_env(), check=False).returncode != 0:
            raise ServiceError("configuring the service failed (see above)")
        return

    config = _install_config(opts, source, account)
    _install_models(opts, source, account)
    for doc in ("README.md", "docs/architecture.md"):
        if (source / doc).is_file():
            _write_file(_at(opts.root, PREFIX / doc), (source / doc).read_bytes(), 0o644, 0, 0)

    unit = (source / "systemd" / "edge-agent.service").read_bytes()
    _write_file(_at(opts.root, UNIT), unit, 0o644, 0, 0)
    names = config_credentials(config)
    _make_dir(_at(opts.root, DROPIN_DIR), 0o755, 0, 0)
    _write_file(_at(opts.root, DROPIN), credentials_dropin(names).encode(), 0o644, 0, 0)
    _say(f"{UNIT} and {DROPIN} ({', '.join(names) or 'no credentials'})")
    for name in names:
        if not _at(opts.root, CREDENTIALS_DIR / name).exists():
            _say(f"  secret {name!r}: put it in {CREDENTIALS_DIR / name} (mode 0600)")
    for variable in _environment_secrets(config):
        _say(
            f"  warning: the service has no environment variable {variable}: use {{credential: NAME}} instead"
        )

    if real and Path("/run/systemd/system").is_dir():
        _run(["systemctl", "daemon-reload"])
    _say(
        f"installed. Engineers: usermod -aG {SERVICE_USER} NAME (status, models). "
        "Start: systemctl enable --now edge-agent"
    )


def uninstall(root: Path = Path("/")) -> None:
    """Stop and remove the service and ``/opt/edge-agent``; keep config, state and the user."""
    if os.geteuid() != 0:
        raise ServiceError("run the uninstall as root (sudo)")
    systemd = root == Path("/") and Path("/run/systemd/system").is_dir()
    if systemd:
        subprocess.run(["systemctl", "disable", "--now", "edge-agent"], check=False)
    _at(root, UNIT).unlink(missing_ok=True)
    shutil.rmtree(_at(root, DROPIN_DIR), ignore_errors=True)
    shutil.rmtree(_at(root, PREFIX), ignore_errors=True)
    if systemd:
        _run(["systemctl", "daemon-reload"])
    _say(f"removed; {CONFIG_DIR} and {STATE_DIR} (config, audit log, models) and the user are kept")


# --------------------------------------------------------------------------- CLI


def add_service_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``service install|uninstall`` to an argparse sub-parser collection."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "service", help="install or uninstall the systemd service (as root)"
    )
    _add_commands(p)
    return p


def _add_commands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="service_command", required=True)
    i = sub.add_parser("install", help="user, venv, directories, config, unit and credentials drop-in")
    i.add_argument("--root", type=Path, default=Path("/"), help="files only, under DIR")
    i.add_argument("--config", type=Path, default=None, help="the config to install (validated first)")
    i.add_argument("--wheels", type=Path, default=None, help="offline: install from this wheel folder only")
    i.add_argument("--source", type=Path, default=None, help="the checkout (default: the one this runs from)")
    i.add_argument("--no-venv", dest="venv", action="store_false", help="keep /opt/edge-agent/.venv as it is")
    u = sub.add_parser("uninstall", help="remove the unit and /opt/edge-agent; keep config and state")
    u.add_argument("--root", type=Path, default=Path("/"))


def run_service(args: argparse.Namespace) -> int:
    """Run ``service install`` or ``service uninstall``. Exit codes: 0 done, 1 failed."""
    try:
        if args.service_command == "install":
            install(
                InstallOptions(
                    root=args.root.resolve(),
                    config=args.config,
                    wheels=args.wheels.resolve() if args.wheels else None,
                    source=args.source.resolve() if args.source else None,
                    venv=args.venv,
                )
            )
        else:
            uninstall(args.root.resolve())
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m agent.ops.service install|uninstall ...`` (what systemd/install.sh runs)."""
    parser = argparse.ArgumentParser(prog="edge-agent service")
    _add_commands(parser)
    return run_service(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
