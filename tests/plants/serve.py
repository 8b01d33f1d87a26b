"""``python -m tests.plants.serve --dir build/site``: the reactor as a stand-in plant, for the
README's "Your own plant" walkthrough.

Writes the site's files into ``--dir`` (kept when already there):

* ``agent.yaml``: the agent config, the reactor over Modbus TCP on 127.0.0.1:PORT (17 tags);
  ``agent-run.yaml``: the same with the model bound, its alarm and the site key trusted;
* ``export.yaml``: the training config (the historian export with its maintenance log, the
  agent's recording, a normal run for thresholds);
* ``historian/R1-2026-11.csv`` + ``events.csv``: five days of the site historian (local time
  with an offset, irregular rows, gaps, duplicates, a text column) and its maintenance log;
* ``normal/``: a normal run (an agent recording), ``held-out/`` + ``held-out-events.csv``: a day
  and a half the model never sees, for ``edge-export evaluate``;

then serves the reactor on a clock ``--scale`` times faster (90: a 180 s sample every 2 s):
normal operation, and from ``--fault-after`` seconds on, its thermometer drifts. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.plants import cstr
from tests.plants.formats import Episode, write_agent_recording, write_events, write_historian_wide
from tests.plants.site import anomaly_model, device, export_config, roles_of, write_config

HISTORIAN_TIME = {"column": "Time (UTC+01:00)", "format": "%d.%m.%Y %H:%M:%S %z"}


def write_site(d: Path, port: int, scale: float) -> None:
    """The site's files (see the module docstring); existing files are kept."""
    if (d / "agent.yaml").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    period = cstr.PERIOD_S / scale
    history = cstr.simulate(5.0, seed=1).scaled(scale)
    write_historian_wide(history, d / "historian" / "R1-2026-11.csv", seed=1, jitter_s=0.2 * period)
    write_events(history, d / "events.csv")
    normal = cstr.simulate(2.0, seed=2, episodes="normal", start=datetime(2026, 11, 10, tzinfo=UTC))
    write_agent_recording(normal.scaled(scale), d / "normal")
    held_out = cstr.simulate(1.5, seed=3, start=datetime(2026, 11, 15, tzinfo=UTC)).scaled(scale)
    write_agent_recording(held_out, d / "held-out")
    write_events(held_out, d / "held-out-events.csv")
    base = {"name": "site", "log_level": "warning", "state_dir": str(d / "state"), "cycle_ms": 500}
    dev = device("reactor", port, history, poll_ms=500)
    write_config(d / "agent.yaml", {"agent": base, "devices": [dev]})
    write_config(
        d / "agent-run.yaml",
        {
            "agent": base,
            "devices": [dev],
            "models": [
                {
                    "name": "r1-anomaly",
                    "bundle": "models/r1-anomaly",
                    "assets": {"r1": roles_of(history, "R1.")},
                }
            ],
            "models_trust": {"public_keys": ["keys/site.pub"]},
            "assets": [{"name": "r1", "anomaly_source": "r1-anomaly.score"}],
            "alarms": {
                "defs": [
                    {
                        "name": "reactor_anomaly",
                        "code": 1,
                        "source": "r1-anomaly.anomaly",
                        "high": {"value": 0.5, "severity": 2},
                        "on_delay_s": 2 * period,
                        "response": "Compare TI201 with the spare thermometer; check the analyser and the jacket.",
                    }
                ]
            },
        },
    )
    model = anomaly_model(
        "r1-anomaly",
        d / "models" / "r1-anomaly",
        {
            "assets": ["r1"],
            "columns": "R1.*",
            "operating": ["FIC101_SP"],
            "events": str(d / "events.csv"),
            "window": {"sample_period_s": period, "length": 5, "stride": 1},
            "test_fraction": 0.2,
            "min_distinct": 2,
        },
        "reactor R1: anomaly of its 17 measurements (autoencoder)",
    )
    export_config(
        d / "export.yaml",
        [
            {
                "name": "history",
                "files": [str(d / "historian" / "*.csv")],
                "split": "train",
                "timestamp": HISTORIAN_TIME,
            },
            {"name": "recorded", "files": [str(d / "recorded")], "split": "train"},
            {"name": "normal", "files": [str(d / "normal")], "split": "calibration"},
        ],
        [model],
    )


async def serve(port: int, scale: float, fault_after_s: float, duration_s: float | None) -> None:
    """The reactor over Modbus on 127.0.0.1:``port`` until Ctrl-C (or ``duration_s``)."""
    from tests.replay_server import ReplayServer

    onset_h = 6.0 + fault_after_s * scale / 3600.0
    drift = Episode(
        "thermometer_drift", 1, onset_h * 3600, (onset_h + 2) * 3600, "r1", "R1.TI201", severity=5.0
    )
    run = cstr.simulate(onset_h / 24 + 0.2, seed=8, episodes=[drift]).scaled(scale)
    run = run.slice(int(6.0 * 3600 / cstr.PERIOD_S), len(run))  # a warm plant from the first row
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    srv = ReplayServer([t.name for t in run.tags], run.matrix(), period_s=run.period_s)
    srv.server.port = port  # a fixed port for a person to point the agent at (tests use port 0)
    async with srv:
        srv.play()
        onset = datetime.now(UTC) + timedelta(seconds=fault_after_s)
        print(
            f"serving reactor R1 ({len(run.tags)} tags) on 127.0.0.1:{port}, a sample every {run.period_s:g} s "
            f"({scale:g}x); its thermometer starts drifting at {onset:%H:%M:%S}Z",
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration_s)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.plants.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("build/site"), help="where the site's files go")
    ap.add_argument("--port", type=int, default=5021)
    ap.add_argument("--scale", type=float, default=90.0, help="plant seconds per real second")
    ap.add_argument("--fault-after", type=float, default=120.0, help="seconds of normal operation first")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    args = ap.parse_args(argv)
    write_site(args.dir, args.port, args.scale)
    print(
        f"site files in {args.dir}: agent.yaml, agent-run.yaml, export.yaml, historian/, events.csv, normal/, held-out/"
    )
    try:
        asyncio.run(serve(args.port, args.scale, args.fault_after, args.duration))
    except RuntimeError as exc:  # pymodbus: the port is taken (its own log line says which)
        print(f"error: cannot serve on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
