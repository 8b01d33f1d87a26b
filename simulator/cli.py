"""Command line of the simulator (``python -m simulator``; ``edge-agent simulate`` calls ``main``).

Serve the plant alone (an HMI or any client can be pointed at it)::

    python -m simulator --modbus-port 5020 --opcua-port 4840 --speed 10 --scenario configs/scenarios/demo.yaml

Record a labelled CSV as fast as possible::

    python -m simulator --record data/day.csv --hours 24 --scenario configs/scenarios/all_faults.yaml
    python -m simulator --record data/day_long.csv --hours 24 --format long
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

from .faults import ScenarioError, ScenarioEvent, load_scenario, merge_events, parse_fault_flag
from .listen import ListenError
from .physics import Plant, StationParams
from .register_map import UNIT_ID, render_markdown

__all__ = ["build_parser", "main"]

log = logging.getLogger("simulator")


def build_parser(prog: str = "python -m simulator") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Pumping-station simulator: serves Modbus TCP and OPC UA like a PLC, "
        "or records labelled CSV.",
    )
    plant = p.add_argument_group("plant")
    plant.add_argument(
        "--pumps", type=int, default=None, help="number of pumps, 1-8 (default 2, or the scenario's)"
    )
    plant.add_argument("--seed", type=int, default=None, help="random seed (default 0, or the scenario's)")
    plant.add_argument(
        "--scenario", metavar="FILE", help="scenario YAML with timed faults and operator actions"
    )
    plant.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="PUMP:NAME[@T][,k=v]",
        help="inject a fault, e.g. 1:bearing_wear@60s,time_to_failure=2h or "
        "2:sensor_drift@10min,tag=BearingTemp (repeatable)",
    )
    plant.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=None,
        metavar="S",
        help="agent heartbeat timeout before the PLC falls back to its own control (default 10 s)",
    )
    plant.add_argument("--permissive", action="store_true", help="start with the operator permissive on")
    plant.add_argument(
        "--noise", type=float, default=None, metavar="SCALE", help="noise scale (0 = noise-free)"
    )

    srv = p.add_argument_group("serve (default mode)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument(
        "--modbus-port", type=int, default=5020, help="Modbus TCP port (default 5020, 0 = any free)"
    )
    srv.add_argument("--no-modbus", action="store_true", help="do not serve Modbus")
    srv.add_argument("--opcua-port", type=int, default=4840, help="OPC UA port (default 4840, 0 = any free)")
    srv.add_argument("--no-opcua", action="store_true", help="do not serve OPC UA (saves ~25 MB)")
    srv.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    srv.add_argument(
        "--dt", type=float, default=None, metavar="S", help="simulated step (default 0.1 s, 1 s above 50x)"
    )
    srv.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S wall seconds")
    srv.add_argument(
        "--extra-namespace",
        action="append",
        default=[],
        metavar="URI",
        help="register this OPC UA namespace before ours (shifts our index; repeatable)",
    )
    srv.add_argument(
        "--reject-write-timestamps",
        action="store_true",
        help="refuse OPC UA writes that carry timestamps, like Siemens S7 (BadWriteNotSupported)",
    )
    srv.add_argument(
        "--other-units",
        choices=("exception", "silent", "answer"),
        default="exception",
        help="Modbus requests to unit ids other than 1: exception 0x0B (default), no reply, or answer",
    )

    rec = p.add_argument_group("record")
    rec.add_argument("--record", metavar="FILE.csv", help="record a labelled CSV instead of serving")
    rec.add_argument("--hours", type=float, default=24.0, help="simulated hours to record (default 24)")
    rec.add_argument(
        "--format",
        choices=("wide", "long"),
        default="wide",
        help="wide (one row per sample) or long (historian export: one row per tag change)",
    )
    rec.add_argument(
        "--sample-period", type=float, default=1.0, metavar="S", help="sample period (default 1 s)"
    )
    rec.add_argument("--no-truth", action="store_true", help="long format: leave out the Simulation.* tags")

    p.add_argument(
        "--print-register-map", action="store_true", help="print the register map (markdown) and exit"
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return p


def _setup(args: argparse.Namespace) -> tuple[StationParams, int, tuple[ScenarioEvent, ...]]:
    scenario = load_scenario(args.scenario) if args.scenario else None
    flags = [parse_fault_flag(f) for f in args.fault]
    pumps = args.pumps or (scenario.pumps if scenario and scenario.pumps else 2)
    seed = (
        args.seed
        if args.seed is not None
        else (scenario.seed if scenario and scenario.seed is not None else 0)
    )
    params = StationParams(pumps=pumps)
    if args.heartbeat_timeout is not None:
        params = replace(params, heartbeat_timeout_s=args.heartbeat_timeout)
    if args.noise is not None:
        params = replace(params, noise_scale=args.noise)
    events = merge_events(scenario.events if scenario else (), flags)
    Plant(params, seed=seed, scenario=events)  # validates pump numbers against the station
    return params, seed, events


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the simulator CLI; returns the process exit code (``prog`` names it in --help)."""
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose or not args.record
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.verbose < 2:
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        logging.getLogger("pymodbus").setLevel(logging.WARNING)
    if args.print_register_map:
        print(render_markdown(pumps_shown=args.pumps or 2))
        return 0
    try:
        params, seed, events = _setup(args)
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.record:
        from .recorder import record

        try:
            summary = record(
                args.record,
                hours=args.hours,
                params=params,
                seed=seed,
                scenario=events,
                fmt=args.format,
                sample_s=args.sample_period,
                include_truth=not args.no_truth,
            )
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"wrote {summary.rows} rows ({summary.fmt}) to {summary.path}: {summary.sim_hours:g} h "
            f"simulated in {summary.wall_s:.1f} s, {summary.energy_kwh:.1f} kWh, {summary.volume_m3:.0f} m3"
        )
        return 0
    plant = Plant(params, seed=seed, scenario=events, permissive=args.permissive)
    try:
        return asyncio.run(_serve(args, plant))
    except KeyboardInterrupt:
        return 130
    except ListenError as exc:  # a usage problem (--host, --*-port): one line, exit 2
        hint = " (another program listens there: choose another port, or 0 for any free one)"
        print(f"error: {exc}{hint if exc.address_in_use else ''}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace, plant: Plant) -> int:
    from .station import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    opcua_options = {
        "extra_namespaces_first": args.extra_namespace,
        "reject_write_timestamps": args.reject_write_timestamps,
    }
    async with serve(
        plant,
        modbus_port=None if args.no_modbus else args.modbus_port,
        opcua_port=None if args.no_opcua else args.opcua_port,
        host=args.host,
        speed=args.speed,
        dt_s=args.dt,
        other_units=args.other_units,
        opcua_options=opcua_options,
    ) as station:
        lines = [
            f"simulator: {plant.pumps} pumps, seed {plant.seed}, speed {station.speed:g}x, "
            f"dt {station.dt_s:g} s"
        ]
        if station.modbus_port is not None:
            lines.append(
                f"  Modbus TCP {args.host}:{station.modbus_port} unit id {UNIT_ID}: Pump1.Speed IR 100-101 "
                f"(30101, float32 ABCD), Pump1 HMI block HR 100-110 (40101-40111), "
                f"Pump1.ExternalSpeedSetpoint HR 120-121 (40121), heartbeat HR 0 (40001), permissive coil 0"
            )
        if station.opcua_endpoint is not None:
            lines.append(
                f"  OPC UA {station.opcua_endpoint} namespace {station.namespace_uri} "
                f"(ns={station.namespace_index})"
            )
        lines.append(
            f"  PLC heartbeat timeout {plant.plc.heartbeat_timeout_s:g} s, permissive "
            f"{'on' if plant.plc.permissive else 'off'}; Ctrl-C to stop"
        )
        print("\n".join(lines), flush=True)
        try:
            async with asyncio.timeout(args.duration):
                await stop.wait()
        except TimeoutError:
            pass
    print(
        f"stopped at t={plant.t:.1f} s simulated; {len(plant.plc.write_log)} external writes; "
        f"{plant.energy_kwh:.2f} kWh",
        flush=True,
    )
    return 0
