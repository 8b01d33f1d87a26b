"""The soak: the real agent against the embedded plant, cycles back to back, faults on a schedule.

``make soak`` runs 100,000 cycles; ``tests/soak/test_soak.py`` runs a short version in CI. The
agent runs in this process (``Agent.paced = False``: cycles back to back, the pollers at
their own interval) on the demo configuration, polling every 50 ms, against the plant served
at 20x over Modbus. On a schedule the operator's permissive drops and comes back, faults are
injected and cleared on both pumps (sensor faults among them: values go bad or drift), and the
operator moves a setpoint by hand.

Judged after a warm-up (so that caches, pools and the alarm engine have reached their size):

* RSS grows by at most 5 MB, and the numbers of asyncio tasks, threads and open file
  descriptors do not grow (threads other than the workers of asyncio's default executor: a
  pool bounded by construction that starts workers lazily when the load asks for them);
* every decision that changed something is in the audit log: the decisions the write-back unit
  made, reduced by an independent rule (a write, a clamp, a reject, a hold whose reason codes
  differ from the previous decision's), equal the audit's decision rows, one for one;
* every setpoint write the plant received had its decision committed before it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.ops.audit import AuditConfig, query_audit
from agent.pipeline.guard import GuardDecision, Reason
from agent.runtime import Agent
from agent.types import Action
from simulator import Plant, serve
from tests.e2e.plant_fixtures import DEMO_CONFIG, modbus_test_config

__all__ = ["SoakReport", "main", "soak"]

RSS_GROWTH_LIMIT_MB = 5.0


def _threads() -> int:
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class Sample:
    cycle: int
    rss_mb: float
    tasks: int
    threads: int
    fds: int


@dataclass
class SoakReport:
    cycles: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    changed_decisions: int = 0
    audited_decisions: int = 0
    plant_writes: int = 0
    unaudited_writes: list[str] = field(default_factory=list)

    @property
    def warm(self) -> Sample:
        return self.samples[len(self.samples) // 5]

    @property
    def last(self) -> Sample:
        return self.samples[-1]

    def problems(self) -> list[str]:
        out: list[str] = []
        growth = self.last.rss_mb - self.warm.rss_mb
        if growth > RSS_GROWTH_LIMIT_MB:
            out.append(f"RSS grew {growth:.1f} MB after warm-up (limit {RSS_GROWTH_LIMIT_MB} MB)")
        for what in ("tasks", "threads", "fds"):
            a, b = getattr(self.warm, what), getattr(self.last, what)
            if b > a:
                out.append(f"{what} grew from {a} to {b} after warm-up")
        if self.changed_decisions != self.audited_decisions:
            out.append(
                f"{self.changed_decisions} decisions changed something, {self.audited_decisions} are audited"
            )
        out += [f"write without a prior audit row: {w}" for w in self.unaudited_writes]
        return out

    def table(self) -> str:
        rows = [
            f"soak: {self.cycles} cycles in {self.seconds:.0f} s ({self.cycles / self.seconds:.0f} cycles/s)",
            f"{'cycle':>8} {'RSS MB':>8} {'tasks':>6} {'threads':>8} {'fds':>5}",
        ]
        rows += [f"{s.cycle:>8} {s.rss_mb:>8.1f} {s.tasks:>6} {s.threads:>8} {s.fds:>5}" for s in self.samples]
        rows.append(
            f"decisions that changed something: {self.changed_decisions}, audited: {self.audited_decisions}; "
            f"setpoint writes the plant received: {self.plant_writes}"
        )
        return "\n".join(rows)


def _codes(d: GuardDecision) -> tuple[str, ...]:
    out = []
    for r in d.reasons:
        try:
            out.append(str(Reason.of(r)))
        except ValueError:
            out.append(r)
    return tuple(out)


class ChangeCounter:
    """Decisions worth an audit row, by the rule written out here (not the agent's tracker):
    a write, a clamp, a reject, or a hold whose reason codes differ from the previous one's."""

    def __init__(self) -> None:
        self.changed = 0
        self._previous: dict[str, GuardDecision] = {}

    def add(self, decisions: Iterable[GuardDecision]) -> None:
        for d in decisions:
            p = self._previous.get(d.target)
            if d.action is not Action.HOLD or p is None or p.action is not Action.HOLD or _codes(p) != _codes(d):
                self.changed += 1
            self._previous[d.target] = d


async def soak(cycles: int, state_dir: Path, *, samples: int = 10) -> SoakReport:
    plant = Plant(seed=21, permissive=True)
    # The plant runs in this process: keep its own write log off the heap (on disk, read back at
    # the end), so that what grows is the agent's, not the test bench's.
    plant.plc.write_log = deque(maxlen=100)
    log_path = state_dir.parent / "plant-writes.jsonl"
    os.makedirs(state_dir, exist_ok=True)
    plant.plc.log_writes_to(log_path)
    changes = ChangeCounter()
    async with serve(plant, modbus_port=0, opcua_port=None, speed=20, heartbeat_timeout_s=5) as station:
        cfg = modbus_test_config(station.modbus_port, state_dir)
        data: dict[str, Any] = cfg.model_dump(mode="json", exclude_none=True)
        data["devices"][0]["poll_interval_ms"] = 50
        data["agent"]["log_level"] = "warning"
        cfg = type(cfg).model_validate(data)
        agent = Agent(cfg, config_path=DEMO_CONFIG)
        agent.paced = False
        assert agent.writeback is not None
        step = agent.writeback.step

        async def recording_step(inputs: Any, **kw: Any) -> dict[str, GuardDecision]:
            out = await step(inputs, **kw)
            changes.add(out.values())
            return out

        agent.writeback.step = recording_step  # type: ignore[method-assign]
        stop = asyncio.Event()
        report = SoakReport(cycles=cycles, seconds=0.0)
        t0 = time.monotonic()
        task = asyncio.create_task(agent.run(stop), name="soak-agent")
        every = max(1, cycles // samples)
        try:
            while agent.view.cycles < cycles:
                if task.done():
                    task.result()
                    raise AssertionError("the agent stopped")
                n = agent.view.cycles
                _schedule(plant, n)
                if n >= len(report.samples) * every:
                    report.samples.append(
                        Sample(
                            n,
                            _rss_mb(),
                            len(asyncio.all_tasks()),
                            _threads(),
                            len(os.listdir("/proc/self/fd")),
                        )
                    )
                await asyncio.sleep(0.005)
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task
        report.seconds = time.monotonic() - t0
        report.samples.append(
            Sample(agent.view.cycles, _rss_mb(), len(asyncio.all_tasks()), _threads(),
                   len(os.listdir("/proc/self/fd")))
        )  # fmt: skip
    plant.plc.close_write_log()
    logged = (json.loads(line) for line in log_path.read_text().splitlines() if line.strip())
    writes = [
        e for e in logged
        if e["protocol"] == "modbus" and (e["tag"] or "").endswith("ExternalSpeedSetpoint")
    ]  # fmt: skip
    report.changed_decisions = changes.changed
    rows = query_audit(AuditConfig(path=state_dir / "audit.sqlite"))
    audited = [r for r in rows if r.kind == "decision"]
    report.audited_decisions = len(audited)
    report.plant_writes = len(writes)
    used: set[int] = set()
    sends = [r for r in audited if r.action in ("WRITE", "CLAMP")]
    for e in writes:
        at = datetime.fromisoformat(e["wall_time"])
        match = next(
            (r for r in sends if r.id not in used and r.tag == e["tag"] and r.applied is not None
             and abs(r.applied - float(e["value"])) < 1e-3 and r.utc <= at),
            None,
        )  # fmt: skip
        if match is None:
            report.unaudited_writes.append(f"{e['tag']}={e['value']} at {e['wall_time']}")
        else:
            used.add(match.id)
    return report


_FAULTS = (1, 2, 3, 5, 7)  # bearing wear, cavitation, … and sensor faults (simulator/REGISTER_MAP.md)


def _schedule(plant: Plant, n: int) -> None:
    """Faults by cycle number: the permissive, injected faults, an operator's setpoint change."""
    plc = plant.plc
    phase = n % 2000
    if phase == 300:
        plc.write("Station.Permissive", False, protocol="scenario")
    elif phase == 400:
        plc.write("Station.Permissive", True, protocol="scenario")
    elif phase == 700:
        plc.write("Simulation.Pump1.FaultInject", _FAULTS[(n // 2000) % len(_FAULTS)], protocol="scenario")
    elif phase == 1200:
        plc.write("Simulation.Pump1.FaultInject", 0, protocol="scenario")
    elif phase == 1500:
        plc.write("Simulation.Pump2.FaultInject", _FAULTS[(n // 2000 + 2) % len(_FAULTS)], protocol="scenario")
    elif phase == 1800:
        plc.write("Simulation.Pump2.FaultInject", 0, protocol="scenario")
    elif phase == 1900:
        plc.write("Pump2.ExternalSpeedSetpoint", 2000.0, protocol="scenario")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the verdict here (the CI test reads it)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        report = asyncio.run(soak(args.cycles, Path(tmp) / "state"))
    print(report.table())
    problems = report.problems()
    if args.json is not None:
        verdict = {
            "problems": problems,
            "changed_decisions": report.changed_decisions,
            "audited_decisions": report.audited_decisions,
            "plant_writes": report.plant_writes,
        }
        args.json.write_text(json.dumps(verdict, indent=2) + "\n")
    for p in problems:
        print("FAILED:", p)
    print("soak: OK" if not problems else f"soak: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
