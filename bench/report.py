"""Run every benchmark in one go and write ``bench/REPORT.md``: every table, the machine, the date.

``make bench`` runs this. Each benchmark (a ``bench/*.py`` script listed in ``BENCHMARKS``, or
any other script there that has a ``main`` and is not a helper) runs in its own process, one
after the other, so their numbers come from the same machine in the same state; its table is
copied into the report as it printed it. The report starts with what the numbers depend on:
CPU model and the instruction-set flags that matter for onnxruntime (AVX2, AVX-512 VNNI, ARM
dot-product), cores, memory, the load average before and after the run, Python and library
versions. A benchmark that fails is reported as failed with its exit code and the end of its
output; the others still run (exit 1 at the end).

    python bench/report.py [--quick] [--only NAME ...] [--out bench/REPORT.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# The order `make bench` runs them in; scripts found in bench/ but not named here run after.
BENCHMARKS = ("acquisition", "cycle", "scoring", "export", "energy", "tariff")
# bench/ modules that are libraries or servers for the benchmarks, or gates run on bundles an
# export built (seqdistill: models/README.md), not benchmarks of what the repository ships.
HELPERS = frozenset(
    {
        "report", "rss", "opcua_server", "replay", "loadshift", "closed_loop", "profiling", "seqdistill",
        "seqcalib", "seqholds",
        "__init__",
    }
)
FLAGS_OF_INTEREST = (
    "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "sve", "i8mm",
)
LIBRARIES = ("numpy", "onnxruntime", "pymodbus", "asyncua", "pydantic", "torch", "onnx")


@dataclass(frozen=True)
class Outcome:
    name: str
    command: list[str]
    exit_code: int
    seconds: float
    output: str


def benchmarks(only: Sequence[str] = ()) -> list[str]:
    """The benchmark scripts to run, in order (``only`` restricts and orders them)."""
    found = {p.stem for p in BENCH.glob("*.py") if p.stem not in HELPERS and "def main(" in p.read_text()}
    if only:
        unknown = [n for n in only if n not in found]
        if unknown:
            have = ", ".join(sorted(found))
            raise SystemExit(f"bench/report.py: no benchmark {', '.join(unknown)} (have: {have})")
        return list(only)
    return [n for n in BENCHMARKS if n in found] + sorted(found - set(BENCHMARKS))


def cpu_info() -> dict[str, str]:
    """CPU model, the flags that decide onnxruntime's kernels, cores and memory (Linux /proc)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    present = [f for f in FLAGS_OF_INTEREST if f in flags]
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cores": str(os.cpu_count()),
        "memory": mem,
        "flags": ", ".join(present) or "none of " + ", ".join(FLAGS_OF_INTEREST),
    }


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> str:
    out = [f"Python {platform.python_version()}"]
    for lib in LIBRARIES:
        try:
            out.append(f"{lib} {importlib.metadata.version(lib)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{lib} (not installed)")
    return ", ".join(out)


def run(name: str, quick: bool) -> Outcome:
    cmd = [sys.executable, str(BENCH / f"{name}.py"), *(["--quick"] if quick else [])]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    took = time.monotonic() - start
    print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n", flush=True)
    return Outcome(name, cmd, proc.returncode, took, proc.stdout)


def issue16_targets(outcomes: Sequence[Outcome], results: Path = BENCH / "results") -> list[str]:
    """The speed and memory targets (issue 16) as ratios, from the JSON the acquisition and
    cycle benchmarks wrote in this run (a benchmark that failed or did not run adds nothing)."""
    ran = {o.name for o in outcomes if o.exit_code == 0}
    rows: list[tuple[str, str, str, bool]] = []

    def load(name: str) -> dict[str, Any] | None:
        path = results / f"{name}.json"
        if name not in ran or not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    acq = load("acquisition")
    if acq is not None and "cpu_us_per_tag_above_floor" in acq:
        r, us = acq["ratio_vs_bare_planned"], acq["cpu_us_per_tag_above_floor"]
        label = "acquisition, 1,000 tags: agent vs bare pymodbus (wall clock)"
        rows.append((label, f"{r:.2f}x", ">= 0.8x", r >= 0.8))
        rows.append(("acquisition: CPU per tag above the floor", f"{us:.2f} us", "<= 1 us", us <= 1.0))
    cyc = load("cycle")
    if cyc is not None:
        summary = cyc.get("summary", {})
        if "cycle_vs_floor" in summary:
            c = summary["cycle_vs_floor"]
            limit = f"<= {c['target']}x"
            value = f"{c['ratio']:.2f}x"
            if c.get("interval"):
                value += " ({:.2f}-{:.2f}x)".format(*c["interval"])
            label = "demo cycle vs its floor (mean; 95 % interval over the run's blocks)"
            rows.append((label, value, limit, c["ok"]))
        for key, label in (("rss_modbus", "RSS, Modbus only"), ("rss_modbus_opcua", "RSS with OPC UA")):
            if key in summary:
                m = summary[key]
                torch = ", torch imported" if m["torch"] else ""
                rows.append((label, f"{m['rss_mb']:.1f} MB{torch}", f"<= {m['target_mb']:.0f} MB", m["ok"]))
    if not rows:
        return []
    out = ["", "Speed and memory targets (issue 16), from the tables below:", ""]
    out += ["| target | measured | limit | |", "|---|---|---|---|"]
    out += [f"| {name} | {value} | {limit} | {'OK' if ok else 'MISSED'} |" for name, value, limit, ok in rows]
    return out


def render(outcomes: Sequence[Outcome], machine: dict[str, str], load_before: str, load_after: str,
           started: dt.datetime, quick: bool, targets: Sequence[str] = ()) -> str:
    lines = [
        "# Benchmark report",
        "",
        "Written by `make bench` (`bench/report.py`); do not edit by hand. Every table below was",
        "measured in this one run, on this machine, side by side; targets are reported, never",
        "asserted (see bench/README.md for what each row measures).",
        "",
        "| | |",
        "|---|---|",
        f"| date (UTC) | {started:%Y-%m-%d %H:%M} |",
        f"| mode | {'--quick (short runs)' if quick else 'full runs'} |",
        f"| CPU | {machine['cpu']} ({machine['arch']}) |",
        f"| cores | {machine['cores']} |",
        f"| memory | {machine['memory']} |",
        f"| CPU flags that matter | {machine['flags']} |",
        f"| load average before (1, 5, 15 min) | {load_before} |",
        f"| load average after | {load_after} |",
        f"| software | {versions()} |",
        "",
        "| benchmark | result | seconds |",
        "|---|---|---|",
    ]
    for o in outcomes:
        result = "ok" if o.exit_code == 0 else f"FAILED (exit {o.exit_code})"
        lines.append(f"| [{o.name}](#{o.name}) | {result} | {o.seconds:.0f} |")
    lines += targets
    for o in outcomes:
        lines += ["", f"## {o.name}", "", f"`python bench/{o.name}.py{' --quick' if quick else ''}`", ""]
        text = o.output if o.exit_code == 0 else "\n".join(o.output.splitlines()[-40:])
        lines += ["```", text.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every benchmark with --quick")
    ap.add_argument("--only", action="append", default=[], help="run only this benchmark (repeat)")
    ap.add_argument("--out", type=Path, default=BENCH / "REPORT.md")
    args = ap.parse_args(argv)
    names = benchmarks(args.only)
    started = dt.datetime.now(dt.UTC)
    machine, load_before = cpu_info(), load_average()
    outcomes = [run(n, args.quick) for n in names]
    targets = issue16_targets(outcomes)
    text = render(outcomes, machine, load_before, load_average(), started, args.quick, targets)
    args.out.write_text(text)
    failed = [o.name for o in outcomes if o.exit_code != 0]
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
