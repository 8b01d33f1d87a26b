"""Resident memory of a process, and ``edge-agent run`` instrumented to report its own footprint.

Library (standard library only, so importing it costs nothing in the measured process)::

    mem(pid)          -> Mem(rss_mb, hwm_mb)   VmRSS and VmHWM from /proc/<pid>/status
    rss_by_mapping(pid) -> {group: MiB}        where the RSS is (libraries by package, heap, anon)
    torch_mapped(pid) -> bool                  a torch shared library is mapped into the process
    spawn_agent(...)  -> Popen                 start the instrumented agent (below)
    report_of(text)   -> dict                  the last report the instrumented agent printed
    await run_agent(...) -> dict               spawn it, sample it, wait for it, its report

Command line (from the repository root)::

    python -m bench.rss [--ready-cycles N] [--until-full] [--timeout S] -- run -c CONFIG

runs exactly ``edge-agent run -c CONFIG`` (``agent.cli.main``) in this process, with
``Agent.__init__`` and ``Agent.cycle`` wrapped from outside to take timestamps; the agent's code
is not changed. A *full* cycle is one that starts after every device's first poll has
returned (the runtime starts its first cycle at once, on an empty tag table). With
``--ready-cycles N`` the process stops itself (SIGTERM, the normal shutdown path) N cycles
after it is *ready*: a full cycle has run and, if models are configured, a model has scored
(with ``--until-full``: a full cycle has run).
``--timeout`` stops it regardless. When ready it prints a line ``BENCH-RSS {json}`` on stdout
(``phase: ready``; the parent still has it if the shutdown hangs), and another one on exit
(``phase: exit``, with ``t_exit_s``, ``hwm_mb`` and ``modules``). SIGUSR1 prints the stack of
every asyncio task on stderr (to see where a shutdown hangs). Fields:

* ``t_python_s``: process start → this module runs (interpreter start-up);
* ``t_built_s``: → the Agent is built (imports, config, model bundles, sessions);
* ``t_first_cycle_s``, ``t_first_full_cycle_s``, ``t_ready_s``: → the end of those cycles;
* ``t_stop_s``, ``t_exit_s``: → it sent itself SIGTERM, → ``agent.cli.main`` returned;
* ``rss_*_mb``: VmRSS at the first full cycle and when ready; ``hwm_mb``: VmHWM at exit;
* ``rss_by_mapping``: when ready, :func:`rss_by_mapping` (where that RSS is);
* ``modules``: whether torch, asyncua, onnxruntime and pymodbus are in ``sys.modules``.

"Process start" is ``BENCH_T0`` (a ``time.monotonic()`` value taken by the parent just before
it spawned this process; CLOCK_MONOTONIC is shared by all processes) or, without it, the
process's start time from /proc (10 ms resolution).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MARK", "Mem", "mem", "report_of", "rss_by_mapping", "run_agent", "spawn_agent", "torch_mapped"]

MARK = "BENCH-RSS "
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mem:
    rss_mb: float
    hwm_mb: float


def mem(pid: int | str = "self") -> Mem:
    """VmRSS and VmHWM (peak RSS) of a process, in MiB."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) / 1024
    return Mem(fields["VmRSS"], fields["VmHWM"])


def rss_by_mapping(pid: int | str = "self", top: int = 12) -> dict[str, float]:
    """Where the resident memory is, in MiB, from /proc/<pid>/smaps: each shared library by
    its package (``numpy``, ``onnxruntime``, ``cryptography``, ...; ``python`` for the
    interpreter and its standard-library extensions, ``system`` for /usr/lib), ``[heap]``
    (brk: Python objects and small allocations), ``anonymous`` (mmap'd: large allocations,
    glibc's thread arenas, onnxruntime's buffers), ``[stack]``; largest first, the rest summed
    as ``other``."""
    groups: dict[str, float] = {}
    name = "anonymous"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if not head:
                continue
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                path = head[5].strip() if len(head) > 5 else ""
                name = _mapping_group(path)
            elif head[0] == "Rss:":
                groups[name] = groups.get(name, 0.0) + int(head[1]) / 1024
    ranked = sorted(groups.items(), key=lambda kv: -kv[1])
    out = dict(ranked[:top])
    if len(ranked) > top:
        out["other"] = sum(v for _, v in ranked[top:])
    return out


def _mapping_group(path: str) -> str:
    if not path:
        return "anonymous"
    if path.startswith("["):
        return "[heap]" if path == "[heap]" else "[stack]" if path.startswith("[stack") else "kernel"
    if "/site-packages/" in path:
        top = path.split("/site-packages/", 1)[1].split("/", 1)[0]
        return top.split(".libs")[0].split("-")[0].rstrip("_") or top
    if "/lib-dynload/" in path or "python3" in path.rsplit("/", 1)[-1] or "libpython" in path:
        return "python"
    return "system"


def torch_mapped(pid: int | str = "self") -> bool:
    """A torch shared library (libtorch*, torch/_C) is mapped: torch was imported."""
    with open(f"/proc/{pid}/maps") as f:
        return any("/torch/" in line or "libtorch" in line for line in f)


def spawn_agent(
    config: Path,
    output: Path,
    *,
    ready_cycles: int | None = None,
    until_full: bool = False,
    timeout_s: float | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m bench.rss ... -- run -c config`` with ``BENCH_T0`` set to now.

    Its stdout (the report) goes to ``output``, its stderr (the agent's log) to
    ``output`` + ``.log``: files, not pipes, so a chatty agent cannot block on a full pipe.
    """
    cmd = [sys.executable, "-m", "bench.rss"]
    if ready_cycles is not None:
        cmd += ["--ready-cycles", str(ready_cycles)]
    if until_full:
        cmd += ["--until-full"]
    if timeout_s is not None:
        cmd += ["--timeout", str(timeout_s)]
    cmd += ["--", "run", "-c", str(config)]
    env = dict(os.environ, BENCH_T0=repr(time.monotonic()), PYTHONPATH=str(ROOT))
    with open(output, "wb") as out, open(f"{output}.log", "wb") as err:
        return subprocess.Popen(cmd, cwd=cwd or ROOT, env=env, stdout=out, stderr=err)


async def run_agent(
    config: Path,
    output: Path,
    *,
    ready_cycles: int,
    timeout_s: float,
    until_full: bool = False,
    grace_s: float = 10.0,
) -> dict[str, Any]:
    """Run the instrumented agent until it stops itself; its report, plus what we saw.

    While it runs, VmRSS and the torch mappings are sampled from /proc every 100 ms
    (``rss_sampled_peak_mb``, ``torch_mapped_sampled``). A process that does not exit within
    ``grace_s`` of its ready report is sent SIGUSR1 (its tasks' stacks go to its log), killed,
    and reported with ``stopped_cleanly: False`` and ``stop_problem``; otherwise ``stop_s`` is
    the time from its SIGTERM to its exit. Raises if it fails or never gets ready.
    """
    import asyncio

    log_path = Path(f"{output}.log")
    proc = spawn_agent(config, output, ready_cycles=ready_cycles, until_full=until_full, timeout_s=timeout_s)
    peak, mapped, stop_problem = 0.0, False, None
    hung_at = time.monotonic() + timeout_s + grace_s  # it stops itself at timeout_s at the latest
    while proc.poll() is None:
        with contextlib.suppress(OSError, KeyError):
            peak = max(peak, mem(proc.pid).rss_mb)
            mapped = mapped or torch_mapped(proc.pid)
        if hung_at - time.monotonic() > grace_s and MARK in await asyncio.to_thread(output.read_text):
            hung_at = time.monotonic() + grace_s  # ready, and stopping
        if time.monotonic() > hung_at:
            proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(1)
            proc.kill()
            await asyncio.to_thread(proc.wait)
            log = await asyncio.to_thread(log_path.read_text, errors="replace")
            stop_problem = log[log.find("Stack for") :][:6000]
            break
        await asyncio.sleep(0.1)
    log = await asyncio.to_thread(log_path.read_text, errors="replace")
    try:
        report = report_of(await asyncio.to_thread(output.read_text))
    except RuntimeError:
        raise RuntimeError(f"agent failed (rc {proc.returncode}): {log[-3000:]}") from None
    if "rss_ready_mb" not in report:
        raise RuntimeError(f"agent did not get ready (report {report}): {log[-3000:]}")
    report["stopped_cleanly"] = report.get("phase") == "exit" and report.get("rc") == 0
    if stop_problem is not None:
        report["stop_problem"] = stop_problem
    elif report["stopped_cleanly"]:
        report["stop_s"] = report["t_exit_s"] - report["t_stop_s"]
    report["rss_sampled_peak_mb"] = peak
    report["torch_mapped_sampled"] = mapped
    return report


def report_of(stdout: str) -> dict[str, Any]:
    """The last report the instrumented agent printed (raises if there is none)."""
    reports = [line[len(MARK) :] for line in stdout.splitlines() if line.startswith(MARK)]
    if not reports:
        raise RuntimeError(f"no {MARK.strip()} line in the agent's output: {stdout[-2000:]!r}")
    return dict(json.loads(reports[-1]))


# --------------------------------------------------------------------------- the agent side


def _process_start() -> float:
    """This process's start as a time.monotonic() value."""
    t0 = os.environ.get("BENCH_T0")
    if t0:
        return float(t0)
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - since_start


def _modules() -> dict[str, bool]:
    return {k: k in sys.modules for k in ("torch", "asyncua", "onnxruntime", "pymodbus", "cryptography")}


def _instrument(report: dict[str, Any], t0: float, ready_cycles: int | None, until_full: bool) -> None:
    from agent import runtime

    agent_cls = runtime.Agent
    orig_init, orig_cycle = agent_cls.__init__, agent_cls.cycle
    state = {"after_ready": 0}

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        report["t_built_s"] = time.monotonic() - t0

    async def cycle(self: Any) -> None:
        full = bool(self.runners) and all(r.first_poll_done.is_set() for r in self.runners.values())
        await orig_cycle(self)
        now = time.monotonic() - t0
        report["cycles"] = self.view.cycles
        report.setdefault("t_first_cycle_s", now)
        if full and "t_first_full_cycle_s" not in report:
            report["t_first_full_cycle_s"] = now
            report["rss_first_full_mb"] = mem().rss_mb
        ready = until_full or not self.models or bool(self.view.scores)
        if "t_first_full_cycle_s" in report and "t_ready_s" not in report and ready:
            report["t_ready_s"] = now
        if "t_ready_s" in report and ready_cycles is not None:
            state["after_ready"] += 1
            if state["after_ready"] == ready_cycles:
                report["rss_ready_mb"] = mem().rss_mb
                report["rss_by_mapping"] = rss_by_mapping()
                report["phase"] = "ready"
                report["modules"] = _modules()
                report["t_stop_s"] = time.monotonic() - t0
                print(MARK + json.dumps(report), flush=True)  # in case the shutdown hangs
                os.kill(os.getpid(), signal.SIGTERM)

    agent_cls.__init__ = init  # type: ignore[method-assign]
    agent_cls.cycle = cycle  # type: ignore[method-assign]


def _dump_tasks(*_: Any) -> None:
    """SIGUSR1: print every asyncio task's stack on stderr (to see where a run hangs)."""
    import asyncio

    loop = asyncio._get_running_loop()
    for task in asyncio.all_tasks(loop) if loop is not None else ():
        task.print_stack(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    t0 = _process_start()
    signal.signal(signal.SIGUSR1, _dump_tasks)
    report: dict[str, Any] = {"t_python_s": time.monotonic() - t0}
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print(
            "usage: python -m bench.rss [--ready-cycles N] [--until-full] [--timeout S] -- run -c CONFIG",
            file=sys.stderr,
        )
        return 2
    split = argv.index("--")
    opts, cli_args = argv[:split], argv[split + 1 :]
    ready_cycles = int(opts[opts.index("--ready-cycles") + 1]) if "--ready-cycles" in opts else None
    timeout_s = float(opts[opts.index("--timeout") + 1]) if "--timeout" in opts else None
    if timeout_s is not None:
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    from agent import cli

    _instrument(report, t0, ready_cycles, "--until-full" in opts)
    rc = 1
    try:
        rc = cli.main(cli_args)
    except BaseException as exc:
        report["error"] = repr(exc)
        raise
    finally:
        m = mem()
        report["phase"] = "exit"
        report["t_exit_s"] = time.monotonic() - t0
        report["rc"] = rc
        report["hwm_mb"] = m.hwm_mb
        report["rss_exit_mb"] = m.rss_mb
        report["torch_mapped"] = torch_mapped()
        report["modules"] = _modules()
        print(MARK + json.dumps(report), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
