"""Acquisition benchmark: registers per second for a 1,000-tag Modbus map, side by side.

Rows, measured in one run against the same in-process pymodbus server on 127.0.0.1:

* ``agent``: our ModbusDriver (planner, validation, decoding, quality, samples);
* ``bare pymodbus, planned``: a raw pymodbus loop issuing the same planned requests, no decoding
  (the protocol floor): targets (issue 16) agent >= 0.8x of it and <= 1 us of CPU per tag
  above it;
* ``bare pymodbus, one request per tag``: what a naive poller does: target agent >= 10x.

Every sample of a poll before and after the measured rounds is checked GOOD, and the driver's
fault counters (failures, bad or short replies, skipped) must stay zero through them; the
check of each sample is outside the timed loop (it costs the bench about 0.3 us per tag).
Before the rounds, this process's start-up objects are frozen out of the garbage collector
(``agent.runtime.freeze_startup_objects``), as ``Agent.run`` does in the agent once started:
the rows measure the poll path in the state it runs in. The agent and the floor alternate in
rounds (``--rounds``), each row's time is the sum over its rounds, so load from other
processes falls on both alike. Besides cycles per second
(wall clock, the server in this process too) each row has its CPU time per cycle
(``time.process_time``); the CPU per tag above the floor is the agent's CPU per cycle less the
floor's, over the tags. Then a cProfile of the agent's polls: where the time above the floor
goes (``--no-profile`` leaves it out).

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
import gc
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
from agent.runtime import freeze_startup_objects  # noqa: E402
from bench import rss  # noqa: E402
from bench.opcua_server import node_id  # noqa: E402
from bench.profiling import profile_calls  # noqa: E402
from tests.modbus_server import ModbusTestServer  # noqa: E402

# the driver's counters of anything but a clean read (none may move while measured)
FAULTS = ("failures", "bad_replies", "short_replies", "skipped", "deferred")
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


class Row:
    """Cycles, wall and CPU seconds of one row, summed over its rounds."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.cycles, self.wall, self.cpu = fn, 0, 0.0, 0.0

    async def round(self, seconds: float) -> None:
        """Run fn() repeatedly for ``seconds`` (at least once)."""
        n = 0
        w0, c0 = time.perf_counter(), time.process_time()
        while n == 0 or time.perf_counter() - w0 < seconds:
            await self.fn()
            n += 1
        self.wall += time.perf_counter() - w0
        self.cpu += time.process_time() - c0
        self.cycles += n

    def result(self) -> dict[str, float]:
        return {
            "cycles_per_s": self.cycles / self.wall,
            "cycles": self.cycles,
            "cpu_ms_per_cycle": 1000 * self.cpu / self.cycles,
        }


async def interleaved(rows: dict[str, Any], seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    """Each row warmed up, then ``rounds`` rounds of ``seconds / rounds`` per row, alternating."""
    measured = {name: Row(fn) for name, fn in rows.items()}
    for row in measured.values():
        await row.fn()  # warm up (connect)
    for _ in range(rounds):
        for row in measured.values():
            await row.round(seconds / rounds)
    return {name: row.result() for name, row in measured.items()}


async def profile_polls(poll: Any, cycles: int, top: int = 14) -> list[dict[str, Any]]:
    """cProfile of ``cycles`` agent polls: the functions with the most own time."""
    return await profile_calls(poll, cycles, top)


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
            try:
                done = await asyncio.wait_for(server.stdout.readline(), 30)
            except TimeoutError:  # a server too loaded to report its pace: killed, pace unknown
                done = b""
                server.kill()
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


async def run(
    seconds: float, n_tags: int, ua: dict[str, Any] | None = None, rounds: int = 6, profile: bool = True
) -> dict[str, Any]:
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

        client = AsyncModbusTcpClient("127.0.0.1", port=srv.port, retries=0, reconnect_delay=0)
        await client.connect()
        try:
            async with ModbusDriver(dev) as drv:

                async def ours() -> None:
                    await drv.poll(time.monotonic() + 10)

                async def checked() -> None:
                    samples = await drv.poll(time.monotonic() + 10)
                    bad = [s for s in samples if not s.quality.is_good]
                    assert len(samples) == n_tags and not bad, bad[:3]

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

                await checked()
                freeze_startup_objects()  # this process stands for the agent: as Agent.run does once started
                try:
                    measured = await interleaved(
                        {"agent": ours, "bare_planned": bare_planned}, seconds, rounds
                    )
                finally:
                    gc.unfreeze()
                await checked()
                faults = {
                    k: v for per in drv.counters.per_unit.values() for k, v in per.items() if k in FAULTS
                }
                assert not any(faults.values()), f"the agent saw faults while measured: {faults}"
                measured |= await interleaved({"bare_per_tag": bare_per_tag}, seconds, 1)
                results.update(measured)
                if profile:
                    results["profile"] = await profile_polls(ours, max(20, int(50 * seconds)))
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
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds of the agent and the floor")
    ap.add_argument("--no-profile", action="store_true", help="leave out the cProfile of the agent's polls")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.opcua_seconds = 1.5, 3.0
    setup_logging("warning")
    ua = None
    if not args.no_opcua:
        ua = {
            "nodes": args.opcua_nodes,
            "rate": args.opcua_rate,
            "seconds": args.opcua_seconds,
            "ready_cycles": 10 if args.quick else 20,
        }
    res = asyncio.run(run(args.seconds, args.tags, ua, rounds=args.rounds, profile=not args.no_profile))
    regs, n_tags = res["registers"], res["tags"]
    rows = []
    for key, label in (
        ("agent", "agent (ModbusDriver)"),
        ("bare_planned", "bare pymodbus, same planned requests"),
        ("bare_per_tag", "bare pymodbus, one request per tag"),
    ):
        r = res[key]
        rows.append(
            {
                "row": label,
                "cycles_per_s": r["cycles_per_s"],
                "registers_per_s": r["cycles_per_s"] * regs,
                "cycles": r["cycles"],
                "cpu_ms_per_cycle": r["cpu_ms_per_cycle"],
            }
        )
    ours = rows[0]["registers_per_s"]
    ratio_planned = ours / rows[1]["registers_per_s"]
    ratio_per_tag = ours / rows[2]["registers_per_s"]
    cpu_ratio = rows[1]["cpu_ms_per_cycle"] / rows[0]["cpu_ms_per_cycle"]
    us_per_tag = 1000 * (rows[0]["cpu_ms_per_cycle"] - rows[1]["cpu_ms_per_cycle"]) / n_tags
    print(
        f"Acquisition: {n_tags} tags, {regs} registers, {res['planned_requests']} planned requests; "
        f"agent and floor alternate in {args.rounds} rounds ({args.seconds:g} s per row in all); "
        "the server runs in this process (in both rows)"
    )
    print(f"{'row':40} {'cycles/s':>10} {'registers/s':>14} {'CPU ms/cycle':>13}")
    for r in rows:
        print(
            f"{r['row']:40} {r['cycles_per_s']:10.1f} {r['registers_per_s']:14.0f} "
            f"{r['cpu_ms_per_cycle']:13.3f}"
        )
    verdict = {True: "OK", False: "MISSED"}
    print(
        f"agent vs bare planned:  {ratio_planned:.2f}x wall clock, {cpu_ratio:.2f}x CPU "
        f"(target >= 0.8x) {verdict[ratio_planned >= 0.8]}"
    )
    print(
        f"CPU above the floor:    {us_per_tag:.2f} us per tag (target <= 1 us) {verdict[us_per_tag <= 1.0]}"
    )
    print(f"agent vs one-per-tag:   {ratio_per_tag:.1f}x (target >= 10x) {verdict[ratio_per_tag >= 10]}")
    if "profile" in res:
        total, *top = res["profile"]
        print(
            f"\nProfile of the agent's polls (cProfile, which slows Python calls; own time per cycle, "
            f"all functions {total['total_own_us_per_cycle']:.0f} us; the server's are in it too):"
        )
        print(f"{'own us':>8} {'cum us':>8} {'calls':>7}  function")
        for p in top:
            print(
                f"{p['own_us_per_cycle']:8.0f} {p['cum_us_per_cycle']:8.0f} {p['calls_per_cycle']:7.0f}  "
                f"{p['function']}"
            )
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "machine": platform.machine()},
        "tags": n_tags,
        "registers": regs,
        "planned_requests": res["planned_requests"],
        "rows": rows,
        "ratio_vs_bare_planned": ratio_planned,
        "cpu_ratio_vs_bare_planned": cpu_ratio,
        "cpu_us_per_tag_above_floor": us_per_tag,
        "ratio_vs_per_tag": ratio_per_tag,
        "targets": {"vs_bare_planned": 0.8, "cpu_us_per_tag_above_floor": 1.0, "vs_per_tag": 10},
        "profile": res.get("profile"),
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
