"""Acquisition benchmark: registers per second for a 1,000-tag Modbus map, side by side.

Rows, measured in one run against the same in-process pymodbus server on 127.0.0.1:

* ``agent``: our ModbusDriver (planner, validation, decoding, quality, samples);
* ``bare pymodbus, planned``: a raw pymodbus loop issuing the same planned requests, no decoding
  (the protocol floor): target agent >= 0.9x of it;
* ``bare pymodbus, one request per tag``: what a naive poller does: target agent >= 10x.

OPC UA (the ``opcua`` section; ``--no-opcua`` leaves it out):

* ``subscription``: values per second our OpcUaDriver receives from a subscription on 1,000
  Double nodes, served by ``bench/opcua_server.py`` in its own process (asyncua, no security),
  every node changing ``--opcua-rate`` times a second. The driver is polled every 100 ms as the
  agent does; a value counts once its source timestamp is new. Also: the connect (session,
  namespace, initial read, 1,000 monitored items) and the CPU this process spent per value.
  No target; the server's own pace (late ticks) is reported, as the received rate can only be
  as high as what a Python server manages to send.
* ``rss``: ``edge-agent run`` in a fresh process (``python -m bench.rss``), without models,
  with the 1,000-tag Modbus device only vs with the 1,000-node OPC UA device too: VmRSS from
  /proc after import, connect and 20 cycles. What asyncua costs (FIELD.md: about 26 MB).

Prints a table and writes ``bench/results/acquisition.json``. Targets are reported, never
asserted: speed lives here, not in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from agent.config import ModbusTcpDevice  # noqa: E402
from agent.drivers.modbus import ModbusDriver  # noqa: E402
from agent.drivers.modbus_plan import plan  # noqa: E402
from agent.drivers.opcua import OpcUaDriver  # noqa: E402
from agent.drivers.opcua_config import OpcUaDevice  # noqa: E402
from agent.ops.logging import setup_logging  # noqa: E402
from bench import rss  # noqa: E402
from bench.opcua_server import node_id  # noqa: E402
from tests.modbus_server import ModbusTestServer  # noqa: E402

TYPES = [("uint16", 1), ("int16", 1), ("float32", 2), ("int32", 2), ("float64", 4), ("uint32", 2)]


def make_tags(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    tags = []
    address = 0
    for i in range(n):
        dtype, count = rng.choice(TYPES)
        tags.append({"name": f"t{i}", "table": "holding", "address": address, "type": dtype})
        address += count + (rng.random() < 0.2) * rng.randint(1, 4)  # some holes
    return tags


async def measure(fn: Any, seconds: float) -> tuple[float, int]:
    """Run fn() repeatedly for ``seconds``; return (cycles per second, cycles)."""
    await fn()  # warm up (connect)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await fn()
        n += 1
    return n / (time.perf_counter() - t0), n


# --------------------------------------------------------------------------- OPC UA


def opcua_device(endpoint: str, nodes: int) -> dict[str, Any]:
    return {
        "name": "bench-ua",
        "protocol": "opcua",
        "endpoint": endpoint,
        "security_policy": "None",
        "security_mode": "None",
        "allow_insecure": True,
        "mode": "subscription",
        "publishing_interval_ms": 100,
        "keepalive_count": 10,
        "timeout_ms": 2000,
        "poll_interval_ms": 100,
        "tags": [{"name": f"ua{i}", "node_id": node_id(i)} for i in range(nodes)],
    }


async def subscription(endpoint: str, nodes: int, seconds: float) -> dict[str, Any]:
    """Values per second received by OpcUaDriver, polled every 100 ms like the agent does."""
    dev = OpcUaDevice.model_validate(opcua_device(endpoint, nodes))
    interval = dev.poll_interval_ms / 1000
    last: dict[str, Any] = {}
    async with OpcUaDriver(dev) as drv:
        t0 = time.perf_counter()
        first = await drv.poll(time.monotonic() + 10)
        connect_s = time.perf_counter() - t0
        if not all(s.quality.is_good for s in first):
            bad = next(s for s in first if not s.quality.is_good)
            raise RuntimeError(f"OPC UA bench server: {bad.tag} is {bad.quality}")
        for _ in range(10):  # 1 s: notifications flowing
            await asyncio.sleep(interval)
            last = {s.tag: s.source_time for s in await drv.poll(time.monotonic() + interval)}
        notifications0 = drv.counters.per_unit["0"].get("notifications", 0)
        new = good = polls = 0
        cpu0, t0 = time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            polls += 1
            await asyncio.sleep(max(0.0, t0 + polls * interval - time.monotonic()))
            for s in await drv.poll(time.monotonic() + interval):
                good += s.quality.is_good
                if s.source_time != last.get(s.tag):
                    new += 1
                    last[s.tag] = s.source_time
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        notifications = drv.counters.per_unit["0"].get("notifications", 0) - notifications0
    return {
        "connect_s": connect_s,
        "seconds": elapsed,
        "polls": polls,
        "values_per_s": new / elapsed,
        "notifications_per_s": notifications / elapsed,
        "good_fraction": good / (polls * nodes),
        "cpu_fraction": cpu / elapsed,
        "cpu_us_per_value": 1e6 * cpu / max(1, notifications),
    }


def agent_config(tmp: Path, name: str, devices: list[dict[str, Any]]) -> Path:
    """A model-free agent config (devices only, cycle 100 ms) for the RSS rows."""
    cfg = {
        "agent": {
            "name": f"bench-{name}",
            "log_level": "warning",
            "state_dir": str(tmp / name),
            "cycle_ms": 100,
        },
        "devices": devices,
    }
    path = tmp / f"{name}.json"  # JSON is YAML
    path.write_text(json.dumps(cfg))
    return path


async def opcua_section(
    modbus_device: dict[str, Any], nodes: int, rate: float, seconds: float, ready_cycles: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-acq-") as d:
        tmp = Path(d)
        err = await asyncio.to_thread(open, tmp / "server.log", "wb")
        with err:
            server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.opcua_server",
                "--nodes",
                str(nodes),
                "--rate",
                str(rate),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert server.stdin is not None and server.stdout is not None
        try:
            line = await asyncio.wait_for(server.stdout.readline(), 60)
            if not line:
                log = await asyncio.to_thread((tmp / "server.log").read_text)
                raise RuntimeError(f"bench/opcua_server.py did not start: {log[-3000:]}")
            info = json.loads(line)
            sub = await subscription(info["endpoint"], nodes, seconds)
            modbus = dict(modbus_device, poll_interval_ms=1000)
            ua = opcua_device(info["endpoint"], nodes)
            footprint = {}
            for name, devices in (("modbus", [modbus]), ("modbus_opcua", [modbus, ua])):
                path = agent_config(tmp, name, devices)
                footprint[name] = await rss.run_agent(
                    path, tmp / f"{name}.out", ready_cycles=ready_cycles, timeout_s=60
                )
        finally:
            server.stdin.close()
            done = await asyncio.wait_for(server.stdout.readline(), 10)
            await server.wait()
    served = json.loads(done) if done else {}
    return {
        "nodes": nodes,
        "rate_hz": rate,
        "offered_values_per_s": nodes * rate,
        "server": {"startup_s": info["startup_s"], **served},
        "subscription": sub,
        "rss": footprint,
    }


# --------------------------------------------------------------------------- Modbus


async def run(seconds: float, n_tags: int, ua: dict[str, Any] | None = None) -> dict[str, Any]:
    tags = make_tags(n_tags)
    size = max(t["address"] for t in tags) + 8
    async with ModbusTestServer(size=size) as srv:
        modbus_device = {
            "name": "bench",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "port": srv.port,
            "timeout_ms": 2000,
            "tags": tags,
        }
        dev = ModbusTcpDevice.model_validate(modbus_device)
        counts = {"uint16": 1, "int16": 1, "float32": 2, "int32": 2, "float64": 4, "uint32": 2}
        spans_regs = sum(counts[t["type"]] for t in tags)
        from agent.drivers.modbus_plan import Span

        requests = plan(
            [Span(t["name"], t["address"], counts[t["type"]]) for t in tags],
            max_count=dev.max_registers,
            max_gap=dev.hole_fill_gap,
        )
        results: dict[str, Any] = {"tags": n_tags, "registers": spans_regs, "planned_requests": len(requests)}

        async with ModbusDriver(dev) as drv:

            async def ours() -> None:
                samples = await drv.poll(time.monotonic() + 10)
                assert all(s.quality.is_good for s in samples)

            results["agent"] = await measure(ours, seconds)

        client = AsyncModbusTcpClient("127.0.0.1", port=srv.port, retries=0, reconnect_delay=0)
        await client.connect()
        try:

            async def bare_planned() -> None:
                for r in requests:
                    rr = await client.read_holding_registers(r.start, count=r.count, device_id=1)
                    assert not rr.isError()

            async def bare_per_tag() -> None:
                for t in tags:
                    rr = await client.read_holding_registers(
                        t["address"], count=counts[t["type"]], device_id=1
                    )
                    assert not rr.isError()

            results["bare_planned"] = await measure(bare_planned, seconds)
            results["bare_per_tag"] = await measure(bare_per_tag, seconds)
        finally:
            client.close()
        if ua is not None:
            results["opcua"] = await opcua_section(modbus_device, **ua)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per row")
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--opcua-nodes", type=int, default=1000)
    ap.add_argument(
        "--opcua-rate",
        type=float,
        default=5.0,
        help="changes per node per second (5 x 1,000 is about what the Python server sustains here)",
    )
    ap.add_argument("--opcua-seconds", type=float, default=10.0)
    ap.add_argument("--no-opcua", action="store_true", help="Modbus rows only")
    ap.add_argument("--quick", action="store_true", help="short runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.opcua_seconds = 1.0, 3.0
    setup_logging("warning")
    ua = None
    if not args.no_opcua:
        ua = {
            "nodes": args.opcua_nodes,
            "rate": args.opcua_rate,
            "seconds": args.opcua_seconds,
            "ready_cycles": 10 if args.quick else 20,
        }
    res = asyncio.run(run(args.seconds, args.tags, ua))
    regs = res["registers"]
    rows = []
    for key, label in (
        ("agent", "agent (ModbusDriver)"),
        ("bare_planned", "bare pymodbus, same planned requests"),
        ("bare_per_tag", "bare pymodbus, one request per tag"),
    ):
        cps, n = res[key]
        rows.append({"row": label, "cycles_per_s": cps, "registers_per_s": cps * regs, "cycles": n})
    ours = rows[0]["registers_per_s"]
    ratio_planned = ours / rows[1]["registers_per_s"]
    ratio_per_tag = ours / rows[2]["registers_per_s"]
    print(f"Acquisition: {res['tags']} tags, {regs} registers, {res['planned_requests']} planned requests")
    print(f"{'row':40} {'cycles/s':>10} {'registers/s':>14}")
    for r in rows:
        print(f"{r['row']:40} {r['cycles_per_s']:10.1f} {r['registers_per_s']:14.0f}")
    verdict = {True: "OK", False: "MISSED"}
    print(f"agent vs bare planned:  {ratio_planned:.2f}x (target >= 0.9x) {verdict[ratio_planned >= 0.9]}")
    print(f"agent vs one-per-tag:   {ratio_per_tag:.1f}x (target >= 10x) {verdict[ratio_per_tag >= 10]}")
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "machine": platform.machine()},
        "tags": res["tags"],
        "registers": regs,
        "planned_requests": res["planned_requests"],
        "rows": rows,
        "ratio_vs_bare_planned": ratio_planned,
        "ratio_vs_per_tag": ratio_per_tag,
        "targets": {"vs_bare_planned": 0.9, "vs_per_tag": 10},
    }
    if "opcua" in res:
        results["opcua"] = res["opcua"]
        print_opcua(res["opcua"])
    out = ROOT / "bench" / "results" / "acquisition.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


def print_opcua(ua: dict[str, Any]) -> None:
    sub, srv = ua["subscription"], ua["server"]
    print()
    print(
        f"OPC UA: {ua['nodes']} Double nodes, each changing {ua['rate_hz']:g}/s "
        f"({ua['offered_values_per_s']:.0f} values/s offered; the server process was late on "
        f"{srv.get('late_ticks', '?')} of {srv.get('ticks', '?')} ticks), subscription publishing every "
        "100 ms, driver polled every 100 ms"
    )
    print(f"{'row':40} {'values/s':>10} {'CPU':>6} {'us/value':>9}")
    print(
        f"{'agent (OpcUaDriver, subscription)':40} {sub['values_per_s']:10.0f} "
        f"{100 * sub['cpu_fraction']:5.0f}% {sub['cpu_us_per_value']:9.1f}"
    )
    print(
        f"received/offered: {sub['values_per_s'] / ua['offered_values_per_s']:.2f}; connect, initial "
        f"read and {ua['nodes']} monitored items: {sub['connect_s']:.2f} s; "
        f"GOOD: {100 * sub['good_fraction']:.1f}%"
    )
    print()
    print("edge-agent run, fresh process, no models (import, connect, 20 cycles):")
    print(f"{'row':40} {'VmRSS':>8} {'VmHWM':>8} {'asyncua':>8} {'torch':>6}")
    for key, label in (("modbus", "Modbus device only"), ("modbus_opcua", "Modbus + OPC UA device")):
        p = ua["rss"][key]
        torch = p["modules"]["torch"] or p["torch_mapped_sampled"]
        print(
            f"{label:40} {p['rss_ready_mb']:6.1f}MB {p.get('hwm_mb', p['rss_sampled_peak_mb']):6.1f}MB "
            f"{p['modules']['asyncua']!s:>8} {torch!s:>6}"
        )
    extra = ua["rss"]["modbus_opcua"]["rss_ready_mb"] - ua["rss"]["modbus"]["rss_ready_mb"]
    print(f"an OPC UA device costs {extra:+.1f} MB (no target)")
    for key in ("modbus", "modbus_opcua"):
        if not ua["rss"][key]["stopped_cleanly"]:
            problem = ua["rss"][key].get("stop_problem")
            print(f"{key}: the agent did not stop within 10 s of SIGTERM:\n{problem}")


if __name__ == "__main__":
    sys.exit(main())
