"""`edge-agent demo`: the agent against the embedded pump station, with a live console view.

The plant (simulator/) is handed in by the CLI, the one place agent/ imports it. The demo runs
the agent exactly as `edge-agent run` does, on ``configs/demo.yaml`` (writes on, mode auto)
and the shipped models; the scenario puts a bearing fault on pump 1 after about a minute, so
the alarm rises on the HMI tags and the recommendation shifts load to pump 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog

from agent.config import Config, ModbusTcpDevice
from agent.console import render
from agent.ops.logging import setup_logging
from agent.runtime import Agent

__all__ = ["run_demo", "summary_lines"]

log = structlog.get_logger("agent.demo")

_COLUMNS = [
    ("speed rpm", "Pump{n}.Speed"),
    ("flow m3/h", "Pump{n}.Flow"),
    ("vib mm/s", "Pump{n}.Vibration"),
    ("bearing", "Pump{n}.VibBearing"),
    ("brg °C", "Pump{n}.BearingTemp"),
]


def _with_port(cfg: Config, port: int) -> Config:
    """The config with its (single) Modbus TCP device pointed at ``port``."""
    devices = [
        d.model_copy(update={"port": port}) if isinstance(d, ModbusTcpDevice) else d for d in cfg.devices
    ]
    return cfg.model_copy(update={"devices": devices})


def _plant_lines(plant: Any) -> list[str]:
    state = plant.state
    level, demand = state.level_m, state.demand_m3h
    spec = plant.energy_kwh / plant.volume_m3 if plant.volume_m3 > 0 else float("nan")
    oracle = plant.oracle_speed()
    oracle_spec = float(plant.specific_energy_curve([oracle])[0])
    faults = ", ".join(f"pump{i + 1}: {lab}" for i, lab in enumerate(state.fault_labels)) or "-"
    return [
        f"plant t={state.t_s:8.0f} s  level {level:.2f} m  demand {demand:.0f} m3/h  "
        f"energy {spec:.4f} kWh/m3 since start  (oracle now: {oracle:.0f} rpm, {oracle_spec:.4f} kWh/m3)",
        f"true faults: {faults}",
    ]


def summary_lines(agent: Agent, plant: Any, wall_s: float) -> list[str]:
    """The end-of-run summary (the scripted demo's output, checked in CI)."""
    v = agent.view
    raised = [a for a in v.alarms if a.state.name in ("UNACK", "ACKED")]
    alarms = sorted({f"{a.asset}:{a.name}" for a in raised if not a.is_alert})
    alerts = sorted({f"{a.asset}:{a.name}" for a in raised if a.is_alert})
    spec = plant.energy_kwh / plant.volume_m3 if plant.volume_m3 > 0 else float("nan")
    lines = [
        "",
        "=== demo summary ===",
        f"ran {wall_s:.0f} s wall, {plant.state.t_s:.0f} s plant time, {v.cycles} cycles",
        f"alarms raised: {', '.join(alarms) or 'none'}",
        f"alerts raised (no operator action defined): {', '.join(alerts) or 'none'}",
    ]
    for name, block in sorted(v.hmi.items()):
        lines.append(
            f"HMI {name}: alarm word 0x{block.alarm_word:04X}, highest severity {block.highest_severity}, "
            f"active {block.active_count}, first out {block.first_out_code}, "
            f"fault class {block.fault_class}, RUL {'-' if block.rul is None else f'{block.rul:.2f} h'}"
        )
    for tag, rec in sorted(v.recommendations.items()):
        d = v.decisions.get(tag)
        lines.append(f"last recommendation {tag}: {rec.value:.0f} rpm ({d.action if d else '-'})")
    lines.append(f"setpoint writes: {v.writes}, read-back mismatches: {v.verify_failures}")
    lines.append(f"specific energy since start: {spec:.4f} kWh/m3")
    return lines


async def run_demo(
    cfg: Config,
    *,
    config_path: str,
    serve: Callable[[int], AbstractAsyncContextManager[Any]],
    plant: Any,
    duration_s: float | None,
    modbus_port: int | None,
    console: bool,
    install_stop: Callable[[asyncio.Event], None],
) -> int:
    """Serve the plant, run the agent on it, show the view; return the exit code."""
    port = (
        modbus_port
        if modbus_port is not None
        else next(d.port for d in cfg.devices if isinstance(d, ModbusTcpDevice))
    )
    live = console and sys.stdout.isatty()
    setup_logging("error" if live else cfg.agent.log_level, cfg.agent.log_format)
    # The plant starts fresh: alarm state from an earlier demo would not match it.
    (cfg.agent.state_dir / "alarms.json").unlink(missing_ok=True)
    stop = asyncio.Event()
    install_stop(stop)
    t0 = time.monotonic()
    async with serve(port) as station:
        run_cfg = _with_port(cfg, station.modbus_port)
        agent = Agent(run_cfg, config_path=config_path)
        assets = [a.name for a in run_cfg.assets]
        scores = {a.name: a.anomaly_source for a in run_cfg.assets}  # what the HMI shows

        async def view() -> None:
            n = 0
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                n += 1
                header = [f"edge-agent demo: {config_path}  (Ctrl-C stops)", *_plant_lines(plant), ""]
                if live or n % 5 == 0:  # a live screen every second, a log every 5 s
                    print(
                        render(
                            agent.view,
                            assets=assets,
                            tag_columns=_COLUMNS,
                            header=header,
                            clear=live,
                            anomaly_sources=scores,
                        ),
                        flush=True,
                    )

        async def timer() -> None:
            if duration_s is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=duration_s)
                stop.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run(stop), name="agent")
            tg.create_task(view(), name="view")
            tg.create_task(timer(), name="timer")
        for line in summary_lines(agent, plant, time.monotonic() - t0):
            print(line)
    return 0
