"""edge-agent: the command line of the agent.

``run`` runs the agent (what systemd starts); ``status`` asks the running one what it is doing
(over its status socket). Commissioning: ``check`` (validate;
``--connect`` reaches every device and unit), ``read`` (one read of some or all tags),
``write`` (a deliberate, audited write of one writable tag). ``audit`` prints the audit log,
``certs`` manages OPC UA certificates, ``service`` installs the systemd service, ``simulate``
serves the embedded plant alone and ``demo`` runs the agent against it with a live console view.
``record`` records tags for training (the agent's drivers and poll policy, :mod:`agent.record`).

Exit codes: 0 success, 1 a device or tag problem was found, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import select
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.config import (
    AgentSection,
    AnyTag,
    Config,
    ModbusTag,
    check_models,
    check_paths,
    load_config,
    model_dir,
    model_periods,
    unsafe_permissions,
)
from agent.configbase import Purpose
from agent.drivers import make_driver
from agent.drivers.modbus import UnitStatus, encode_tag
from agent.errors import (
    AgentError,
    AuditError,
    ConfigError,
    DeviceUnreachable,
    DriverError,
    ModelError,
    ReadBackFailed,
    RecordError,
    StateFileError,
    WriteRefused,
    WriteUnconfirmed,
)
from agent.ops.logging import setup_logging
from agent.ops.ownership import FILE_NAME as OWNERSHIP_FILE
from agent.ops.ownership import owned_in_auto
from agent.recordconfig import RecordConfig
from agent.types import Sample, Value

if TYPE_CHECKING:  # the recorder loads for `edge-agent record`, not for `run`
    from agent.record import FileInfo, RecordTag

__all__ = ["main", "os_user", "parse_value"]

log = structlog.get_logger("agent.cli")


def _sample_json(s: Sample) -> dict[str, Any]:
    return {
        "tag": s.tag,
        "value": s.value,
        "quality": s.quality.code.name,
        "reason": s.quality.reason,
        "source_time": s.source_time.isoformat() if s.source_time else None,
        "received_at": s.received_at.isoformat(),
    }


async def _poll_once(cfg: Config, only: set[str] | None) -> tuple[list[Sample], dict[str, list[UnitStatus]]]:
    samples: list[Sample] = []
    status: dict[str, list[UnitStatus]] = {}
    for dev in cfg.devices:
        if only is not None and not any(t.name in only for t in dev.tags):
            continue
        async with make_driver(dev) as driver:
            # One cycle, with room for every request to time out once (a secure OPC UA
            # connect may take several round trips).
            budget = dev.timeout_ms / 1000 * (len(dev.tags) + 4)
            got = await driver.poll(time.monotonic() + budget)
            status[dev.name] = driver.unit_status()
        samples.extend(s for s in got if only is None or s.tag in only)
    return samples, status


def _cmd_check(cfg: Config, args: argparse.Namespace) -> int:
    # The file is valid (main loaded it); now what it points at: bundles (and each binding
    # against its manifest: roles, units, periods), keys, state directory.
    problems = check_paths(cfg, args.config)
    model_errors, warnings = check_models(cfg, args.config)
    problems += model_errors
    for line in problems:
        print(line, file=sys.stderr)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if problems:
        return 2
    n_tags = sum(len(d.tags) for d in cfg.devices)
    print(f"{args.config}: OK ({len(cfg.devices)} devices, {n_tags} tags)")
    for dev in cfg.devices:
        units = f" units {dev.units}" if dev.protocol != "opcua" else ""
        print(f"  {dev.name} {dev.protocol} {dev.endpoint}{units} poll {dev.poll_interval_ms} ms")
    for m, period in model_periods(cfg, args.config):
        print(f"  model {m}: a row every {period:g} s")
    if not args.connect:
        return 0
    _, status = asyncio.run(_poll_once(cfg, None))
    rc = 0
    for dev in cfg.devices:
        for st in status.get(dev.name, []):
            ok = st.state == "ok"
            rc = rc if ok else 1
            extra = "" if ok else f": {st.last_error}"
            opcua = dev.protocol == "opcua"
            where = f"{dev.name} ({dev.endpoint})" if opcua else f"{dev.name} unit {st.unit}"
            print(f"  {where}: {'reachable' if ok else 'NOT REACHABLE'}{extra}")
    return rc


def _cmd_read(cfg: Config, args: argparse.Namespace) -> int:
    only = set(args.tag) if args.tag else None
    if only:
        known = {t.name for _, t in cfg.iter_tags()}
        unknown = sorted(only - known)
        if unknown:
            print(f"unknown tag(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
    samples, _ = asyncio.run(_poll_once(cfg, only))
    rc = 0
    for s in samples:
        if not s.quality.is_good:
            rc = 1
        if args.json:
            print(json.dumps(_sample_json(s)))
        else:
            _, tag = cfg.tag(s.tag)
            value = "-" if s.value is None else f"{s.value}"
            unit = f" {tag.engineering_unit}" if tag.engineering_unit else ""
            print(f"{s.tag:32} {value + unit:>20}  {s.quality}  {s.received_at.isoformat()}")
    return rc


def parse_value(tag: AnyTag, text: str) -> Value:
    """Command-line text → a value of the tag's type (bool: true/false/1/0/on/off).

    OPC UA tags take a bool, number or text; the driver converts it to the node's own type.
    """
    if not isinstance(tag, ModbusTag):
        lowered = text.strip().lower()
        if lowered in ("true", "false", "on", "off"):
            return lowered in ("true", "on")
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text else number
    if tag.type in ("bool", "bit"):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "on", "yes"):
            return True
        if lowered in ("0", "false", "off", "no"):
            return False
        raise WriteRefused(f"{tag.name}: {text!r} is not a boolean (true/false, 1/0, on/off)")
    if tag.type == "string":
        return text
    try:
        number = float(text)
    except ValueError:
        raise WriteRefused(f"{tag.name}: {text!r} is not a number") from None
    return int(number) if number.is_integer() and tag.type.startswith(("int", "uint")) else number


_LOGINUID = Path("/proc/self/loginuid")
_LOGINUID_UNSET = 4294967295


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def os_user(loginuid: Path = _LOGINUID) -> str:
    """Who runs this command, from the kernel, never from the environment (``LOGNAME`` and
    ``USER`` are whatever the caller sets): the login uid, which ``sudo`` and ``su`` keep,
    else the real uid; as a name, with the account acted as when it differs
    (``alice (as root)``)."""
    real = os.getuid()
    try:
        login: int | None = int(loginuid.read_text().strip())
    except (OSError, ValueError):
        login = None
    if login is None or login == _LOGINUID_UNSET:
        return _user_name(real)
    if login == real:
        return _user_name(login)
    return f"{_user_name(login)} (as {_user_name(real)})"


def _owned_in_auto(cfg: Config, tag_name: str) -> str | None:
    """Why a commissioning write of ``tag_name`` is refused because the agent owns it in
    auto, or None. Asks the CLI's config and the ownership file the running agent keeps in
    its state directory (the config's, and the default one), so a copy of the config with
    the guard in shadow does not open the setpoint."""
    g = cfg.guard
    if g is not None and g.writes_enabled and g.mode == "auto" and any(t.tag == tag_name for t in g.targets):
        return "the config's guard writes it in mode auto"
    for state_dir in dict.fromkeys((cfg.agent.state_dir, AgentSection().state_dir)):
        if owned_in_auto(state_dir, tag_name):
            return f"the agent running on {state_dir} writes it in mode auto ({state_dir / OWNERSHIP_FILE})"
    return None


def _validated(cfg: Config, tag_name: str, text: str) -> tuple[AnyTag, Value, Purpose]:
    """Every check a commissioning write passes before anything is audited or sent; raises
    WriteRefused with the reason (the value parses and encodes for the tag, the tag declares
    a purpose and the running agent does not own it in auto)."""
    _, tag = cfg.tag(tag_name)
    if not tag.writable:
        raise WriteRefused(f"{tag.name} ({tag.reference}) is read-only (access: {tag.access})")
    value = parse_value(tag, text)
    if isinstance(tag, ModbusTag):
        encode_tag(tag, value)
    if tag.purpose is None:
        raise WriteRefused(f"{tag.name} ({tag.reference}) declares no purpose: it is not written")
    owned = _owned_in_auto(cfg, tag_name)
    if owned is not None:
        raise WriteRefused(
            f"{tag.name} is a setpoint the agent owns: {owned}; switch the guard to shadow or advise first"
        )
    return tag, value, tag.purpose


_OUTCOMES: dict[type[DriverError], str] = {
    WriteRefused: "refused",
    DeviceUnreachable: "not sent",
    WriteUnconfirmed: "unconfirmed",
    ReadBackFailed: "not verified",
}


async def _write(cfg: Config, tag_name: str, value: Value, purpose: Purpose, user: str) -> Value:
    """Audit the attempt, write, audit the outcome; the value read back, or the DriverError.

    The attempt is committed before anything is sent (no audit, no write); the outcome row
    (``event`` ``manual_write_outcome``) names the attempt's id, the outcome (written, refused,
    not sent, unconfirmed, not verified), the value read back or the reason.
    """
    from agent.ops.audit import AuditLog

    dev, tag = cfg.tag(tag_name)
    log.warning(
        "commissioning write", tag=tag_name, value=value, device=dev.name, reference=tag.reference, user=user
    )
    audit = AuditLog(cfg.audit_config(), guest=True)  # beside a running agent, if there is one
    try:
        try:
            audit.open()
            attempt = audit.record_manual_write(tag_name, value, user)
        except AuditError as exc:
            raise WriteRefused(f"not written: the audit log cannot record it ({exc})") from None
        detail: dict[str, Any] = {"attempt": attempt, "tag": tag_name, "value": value, "user": user}
        if isinstance(tag, ModbusTag) and tag.bit_write is not None:
            # a bit inside a holding register: say how it was changed (RMW is not atomic)
            detail["method"] = "FC22 mask write" if tag.bit_write == "mask" else "read-modify-write"
        try:
            async with make_driver(dev) as driver:
                back = await driver.write(tag_name, value, purpose=purpose)
        except DriverError as exc:
            outcome = next((o for k, o in _OUTCOMES.items() if isinstance(exc, k)), "failed")
            try:
                audit.record_event(
                    "manual_write_outcome",
                    f"{tag_name} {outcome}: {exc}",
                    extra={**detail, "outcome": outcome, "reason": str(exc)},
                )
            except AuditError as audit_exc:
                raise AuditError(
                    f"{tag_name} {outcome}: {exc}; its outcome is not audited: {audit_exc}"
                ) from None
            log.warning(
                "commissioning write failed", tag=tag_name, outcome=outcome, reason=str(exc), user=user
            )
            raise
        try:
            audit.record_event(
                "manual_write_outcome",
                f"{tag_name} written, read back {back}",
                extra={**detail, "outcome": "written", "read_back": back},
            )
        except AuditError as exc:
            raise AuditError(
                f"{tag_name} written and read back {back}, but its outcome is not audited: {exc}"
            ) from None
    finally:
        audit.close()
    log.warning("commissioning write done", tag=tag_name, read_back=back, user=user)
    return back


def _cmd_write(cfg: Config, args: argparse.Namespace) -> int:
    try:
        cfg.tag(args.tag)
    except KeyError:
        print(f"unknown tag {args.tag!r}", file=sys.stderr)
        return 2
    try:
        tag, value, purpose = _validated(cfg, args.tag, args.value)
    except (WriteRefused, StateFileError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    user = os_user()
    try:
        back = asyncio.run(_write(cfg, args.tag, value, purpose, user))
    except DriverError as exc:
        print(f"{'refused' if isinstance(exc, WriteRefused) else 'failed'}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.tag} ({tag.reference}) = {back} (read back), written by {user}")
    return 0


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def _cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from agent.runtime import Agent

    # A file-size limit or a quota must surface as an error (the audit log then stops auto
    # writes and the agent keeps running), not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    unsafe = unsafe_permissions(cfg, args.config)
    if unsafe:
        for line in unsafe:
            print(line, file=sys.stderr)
        return 2

    def apply_logging(section: AgentSection) -> None:
        setup_logging(section.log_level, section.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(stop)
        # A log level given on the command line wins over the config's, reloaded or not.
        agent = Agent(cfg, config_path=args.config, apply_logging=None if args.log_level else apply_logging)
        # SIGHUP: reload the config (validated; refused as a whole when a change needs a
        # restart) and the model bundles installed in place (a bad one is refused, the old stays)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, agent.request_reload)
        await agent.run(stop)

    asyncio.run(main())
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _hms(t_ms: int | None) -> str:
    from agent.record import format_utc

    return "-" if t_ms is None else format_utc(t_ms)[11:19] + "Z"


def _record_setup(cfg: Config, args: argparse.Namespace) -> tuple[list[RecordTag], float, RecordConfig]:
    """The tags, period and settings of ``edge-agent record``: the command line, else the
    config's ``record`` section. Raises RecordError or ValueError with one line."""
    from pydantic import ValidationError

    from agent.modelstore.manifest import MANIFEST_FILE, load_manifest
    from agent.record import default_period, tags_to_record

    section = cfg.record or RecordConfig()
    chosen = bool(args.tag or args.model)
    names = (args.tag or []) if chosen else section.tags
    model = args.model if chosen else section.model
    tags = tags_to_record(cfg, names, model)
    period = args.period if args.period is not None else section.period_s
    if period is None:
        model_period = None
        if model is not None:
            binding = next(m for m in cfg.models if m.name == model)
            bundle = model_dir(cfg, binding, Path(os.path.abspath(args.config)).parent)
            model_period = load_manifest(bundle / MANIFEST_FILE).window.sample_period_s
        period = default_period(tags, model_period)
    overrides: dict[str, float] = {"period_s": period}
    if args.rotate_mb is not None:
        overrides["rotate_mb"] = args.rotate_mb
    if args.quota_mb is not None:
        overrides["quota_mb"] = args.quota_mb
    try:
        settings = RecordConfig.model_validate({**section.model_dump(), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise ValueError(f"{where}: {message}" if where else message) from None
    return tags, period, settings


def _cmd_record(cfg: Config, args: argparse.Namespace) -> int:
    """Record tags at a period into ``--out`` until Ctrl-C, SIGTERM or ``--duration``."""
    from agent.record import Recorder
    from agent.running import RunningSource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is a write error, not death
    try:
        tags, period, settings = _record_setup(cfg, args)
    except (RecordError, ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = {t.name for t in tags}
    slowest = max(t.poll_s for t in tags)
    if period < slowest:
        log.warning(
            "the period is shorter than a poll interval: rows repeat samples", period_s=period, poll_s=slowest
        )
    pipe_broken = False

    def report(wide: FileInfo, long: FileInfo) -> None:
        nonlocal pipe_broken
        counts = wide.counts or []
        samples = sum(sum(c) for c in counts)
        good = sum(c[0] for c in counts) / samples if samples else 0.0
        line = (
            f"{wide.name}: {wide.rows} rows {_hms(wide.first_ms)}..{_hms(wide.last_ms)}, GOOD {good:.1%}, "
            f"{_size(wide.bytes)} + {_size(long.bytes)} gzip"
        )
        try:
            print(line, flush=True)
        except BrokenPipeError:  # nobody reads any more: end the recording cleanly
            pipe_broken = True
            stop.set()

    recorder = Recorder(Path(args.out), tags, period, settings, on_file=report)
    try:
        recorder.writer.open()
    except (OSError, RecordError) as exc:
        reason = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"error: {args.out}: {reason}", file=sys.stderr)
        return 2
    devices = [
        d.model_copy(update={"tags": [t for t in d.tags if t.name in names]})
        for d in cfg.devices
        if any(t.name in names for t in d.tags)
    ]
    stop = asyncio.Event()

    async def main() -> None:
        _install_stop(stop)
        async with contextlib.AsyncExitStack() as stack:
            runners = []
            for dev in devices:
                driver = make_driver(dev)
                await stack.enter_async_context(driver)
                runners.append(RunningSource(driver, dev.poll_interval_ms / 1000, recorder.observe))
            try:
                async with asyncio.TaskGroup() as tg:
                    for r in runners:
                        tg.create_task(r.run(), name=f"poll {r.source.name}")
                    tg.create_task(recorder.run(), name="record").add_done_callback(lambda _: stop.set())
                    tg.create_task(_until(stop, args.duration), name="record until")
            except* _Done:
                pass

    asyncio.run(main())
    doc = recorder.writer.manifest()
    st = recorder.status()
    gaps = len(doc["gaps"])
    summary = (
        f"recorded {st['rows']} rows of {len(tags)} tags every {period:g} s into {args.out}: "
        f"{st['files']} files, {_size(st['bytes'])}, {gaps} gap{'s' if gaps != 1 else ''}"
    )
    if recorder.stopped is not None:
        print(summary, flush=not pipe_broken)
        print(f"error: recording stopped: {recorder.stopped}", file=sys.stderr)
        return 2
    if pipe_broken:
        raise BrokenPipeError
    print(summary)
    return 0


class _Done(Exception):
    """Ends the record command's task group."""


async def _until(stop: asyncio.Event, duration_s: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration_s):
            await stop.wait()
    raise _Done


def _cmd_status(cfg: Config | None, args: argparse.Namespace) -> int:
    """Ask the running agent (its status socket) what it is doing."""
    from agent.ops.status import format_status, read_status, socket_candidates

    if args.socket:
        candidates = [Path(args.socket)]
    else:
        candidates = socket_candidates(cfg.agent.state_dir if cfg is not None else None)
    try:
        doc = read_status(candidates)
    except AgentError as exc:
        print(f"edge-agent status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else format_status(doc))
    return 0


def _cmd_audit(cfg: Config, args: argparse.Namespace) -> int:
    from agent.ops.audit import format_rows, parse_since, query_audit

    since = parse_since(args.since) if args.since else None
    rows = query_audit(cfg.audit_config(), since=since, limit=args.limit)
    for line in format_rows(rows, as_json=args.json):
        print(line)
    return 0


def _cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    from agent.demo import run_demo
    from simulator import Plant, serve
    from simulator.faults import load_scenario
    from simulator.listen import ListenError

    scenario = load_scenario(args.scenario)
    plant = Plant(seed=args.seed if args.seed is not None else (scenario.seed or 0), scenario=scenario)
    try:
        return asyncio.run(
            run_demo(
                cfg,
                config_path=args.config,
                serve=lambda port: serve(plant, modbus_port=port, opcua_port=None, speed=args.speed),
                plant=plant,
                duration_s=args.duration,
                modbus_port=args.modbus_port,
                console=not args.no_console,
                install_stop=_install_stop,
            )
        )
    except ListenError as exc:  # the plant's port is taken: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _cmd_models(cfg: Config, args: argparse.Namespace) -> int:
    from agent.modelstore.commands import run_models

    return run_models(cfg, args, os_user())


def _cmd_simulate(argv: Sequence[str]) -> int:
    from simulator.cli import main as simulate_main

    return simulate_main(list(argv), prog="edge-agent simulate")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def build_parser(full: bool = True) -> argparse.ArgumentParser:
    """The ``edge-agent`` parser. ``full=False`` leaves out ``models``, ``flash``, ``certs`` and
    ``service``, whose parsers live in their modules: importing those only to describe their
    arguments would cost the long-running ``run`` memory it never uses (bench/REPORT.md, RSS)."""
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="validate a config; --connect reaches every device and unit")
    c.add_argument("-c", "--config", required=True)
    c.add_argument("--connect", action="store_true")

    r = sub.add_parser("read", help="read tags once: value, quality, reason, timestamps")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("--tag", action="append", help="tag name (repeatable); all tags when omitted")
    r.add_argument("--json", action="store_true", help="one JSON object per tag per line")

    w = sub.add_parser("write", help="write one writable tag (logged with the OS user)")
    w.add_argument("-c", "--config", required=True)
    w.add_argument("tag")
    w.add_argument("value")

    rec = sub.add_parser("record", help="record tags at a period for training (rotating CSV files)")
    rec.add_argument("-c", "--config", required=True)
    rec.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the recording directory (continued if it holds the same tags)",
    )
    rec.add_argument(
        "--tag",
        action="append",
        metavar="NAME",
        help="tag name (repeatable); default: the config's record section, else every tag read",
    )
    rec.add_argument("--model", metavar="BINDING", help="record the tags bound to the model binding's roles")
    rec.add_argument(
        "--period",
        type=_positive,
        metavar="S",
        help="seconds between rows (default: the model's sample period)",
    )
    rec.add_argument(
        "--duration", type=_positive, metavar="S", help="stop after S seconds (default: Ctrl-C, SIGTERM)"
    )
    rec.add_argument(
        "--rotate-mb",
        type=_positive,
        metavar="N",
        help="a new file pair after N MiB (default: the record section's, else 16)",
    )
    rec.add_argument(
        "--quota-mb",
        type=_positive,
        metavar="N",
        help="the files never exceed N MiB (default: the record section's, else 1024)",
    )

    sub.add_parser(
        "simulate", help="serve the embedded pump station (see: edge-agent simulate --help)", add_help=False
    )

    run = sub.add_parser("run", help="run the agent (what the systemd service starts)")
    run.add_argument("-c", "--config", required=True)

    st = sub.add_parser("status", help="what the running agent is doing (from its status socket)")
    st.add_argument("-c", "--config", help="the agent's config: look in its state_dir too")
    st.add_argument(
        "--socket", help="the status socket (default: $RUNTIME_DIRECTORY, /run/edge-agent, then state_dir)"
    )
    st.add_argument("--json", action="store_true", help="the whole status document as JSON")

    a = sub.add_parser("audit", help="print the audit log: decisions, writes, alarm transitions")
    a.add_argument("-c", "--config", required=True)
    a.add_argument("--since", help="ISO time, or relative: 10m, 2h, 1d")
    a.add_argument("--limit", type=int, default=None, help="the newest N rows")
    a.add_argument("--json", action="store_true", help="one JSON object per row")

    d = sub.add_parser("demo", help="the agent against the embedded pump station, with a live view")
    d.add_argument("-c", "--config", default="configs/demo.yaml")
    d.add_argument("--scenario", default="configs/scenarios/demo.yaml")
    d.add_argument("--duration", type=float, default=None, help="stop after S seconds and print a summary")
    d.add_argument("--speed", type=float, default=1.0, help="simulation speed (x real time)")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--modbus-port", type=int, default=None, help="default: the config's; 0 picks a free one")
    d.add_argument("--no-console", action="store_true", help="log lines instead of the live screen")

    if not full:
        return p
    from agent.modelstore.commands import add_models_parser

    add_models_parser(sub)
    from agent.modelstore.flash import add_flash_parser

    add_flash_parser(sub)
    from agent.ops.certs import add_certs_parser

    add_certs_parser(sub)
    from agent.ops.service import add_service_parser

    add_service_parser(sub)
    return p


def _stdout_gone() -> bool:
    """True when nobody reads our stdout any more (the reader of a pipe has exited)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``edge-agent`` entry point; returns the exit code.

    ``edge-agent read --json | head -1`` ends quietly once ``head`` has what it wants, as a
    program killed by SIGPIPE would (exit 141), and Ctrl-C ends with 130: no traceback for
    either. A broken pipe that is not our stdout (a socket) is not hidden.
    """
    try:
        rc = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        # Nothing more can be written; the flush at exit must not fail again on what is buffered.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return 130
    return rc


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand's name in ``argv``: its first word that is neither an option nor the
    value of ``--log-level`` (the only option before the subcommand)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulate":
        return _cmd_simulate(argv[1:])
    args = build_parser(full=_command_of(argv) != "run").parse_args(argv)
    if args.command == "certs":
        from agent.ops.certs import run_certs

        setup_logging(args.log_level or "info")
        return run_certs(args)
    if args.command == "service":
        from agent.ops.service import run_service

        return run_service(args)
    if args.command == "flash":
        from agent.modelstore.flash import run_flash

        return run_flash(args)
    if args.command == "status" and not args.config:
        return _cmd_status(None, args)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(args.log_level or cfg.agent.log_level, cfg.agent.log_format)
    handlers = {
        "check": _cmd_check,
        "read": _cmd_read,
        "write": _cmd_write,
        "run": _cmd_run,
        "status": _cmd_status,
        "audit": _cmd_audit,
        "demo": _cmd_demo,
        "record": _cmd_record,
        "models": _cmd_models,
    }
    try:
        return handlers[args.command](cfg, args)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
