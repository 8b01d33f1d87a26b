"""Acquisition benchmark: registers per second for a 1,000-tag Modbus map, side by side.

Rows, measured in one run against the same in-process pymodbus server on 127.0.0.1:

* ``agent``: our ModbusDriver (planner, validation, decoding, quality, samples);
* ``bare pymodbus, planned``: a raw pymodbus loop issuing the same planned requests, no decoding
  (the protocol floor): target agent >= 0.9x of it;
* ``bare pymodbus, one request per tag``: what a naive poller does: target agent >= 10x.

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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from agent.config import ModbusTcpDevice  # noqa: E402
from agent.drivers.modbus import ModbusDriver  # noqa: E402
from agent.drivers.modbus_plan import plan  # noqa: E402
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


async def run(seconds: float, n_tags: int) -> dict[str, Any]:
    tags = make_tags(n_tags)
    size = max(t["address"] for t in tags) + 8
    async with ModbusTestServer(size=size) as srv:
        dev = ModbusTcpDevice.model_validate(
            {
                "name": "bench",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": srv.port,
                "timeout_ms": 2000,
                "tags": tags,
            }
        )
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
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per row")
    ap.add_argument("--tags", type=int, default=1000)
    args = ap.parse_args(argv)
    res = asyncio.run(run(args.seconds, args.tags))
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
    out = ROOT / "bench" / "results" / "acquisition.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "machine": platform.machine()},
                "tags": res["tags"],
                "registers": regs,
                "planned_requests": res["planned_requests"],
                "rows": rows,
                "ratio_vs_bare_planned": ratio_planned,
                "ratio_vs_per_tag": ratio_per_tag,
                "targets": {"vs_bare_planned": 0.9, "vs_per_tag": 10},
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
