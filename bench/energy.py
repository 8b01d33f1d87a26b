"""Energy benchmark: the pump-energy rule on perturbed plants it was never told about.

Run ``python bench/energy.py`` (5 variants × 7 simulated days; a few minutes on 2 cores) or
``--quick`` (5 variants × 1 day). Per plant variant (:class:`simulator.physics.PlantVariant`:
pump curves ±15 %, wear, a trimmed impeller, static head, tank area), side by side, flat tariff:

* ``oracle``: the plant's energy oracle with the true per-pump curves
  (:meth:`simulator.physics.Plant.oracle_speeds`), every pump above its minimum flow;
* ``datasheet``: today's rule, planning on the simulator's default (datasheet) parameters;
* ``identified``: the same rule on the station identified by ``export.identify`` from two
  separate 12-hour recordings of the same variant (other seeds, the PLC's own level control);
  every pump runs (today's rule without start/stop);
* ``identified + start/stop``: the same, with both pumps on start/stop targets (the Guard's
  default limits: 15 min run, 5 min rest, 4 starts per hour): the rule chooses how many and
  which pumps run, and rotates duty by run hours (``duty_imbalance_h``).

The rules run closed loop through the Guard (rate limit, deadband, clamp) every
``--rule-s`` simulated seconds on what the PLC measures; the plant steps every ``--dt`` s.
Reported per run: specific energy (kWh/m³) and its ratio to the oracle and to today's rule,
the true tank level's range (band 2–4 m) and the time it spent in the reserve (the lowest
0.3 m of the band), the time any pump spends below its true minimum continuous flow (allowed:
60 s at a stretch, for drive ramps: a stopping pump passes through it), the most starts any pump
made within an hour, and the run-hours imbalance between the pumps (all from the plant's truth).
The oracle keeps every pump running: a rule that stops one can beat it. Targets (reported,
never asserted): identified within 3 % of the oracle on average and 5 % on every variant; level
always in band; no pump below its minimum flow beyond the allowed time; starts per hour within
the limit.

Writes ``bench/results/energy.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# first on the path, before bench/ itself: bench/export.py must not shadow the export package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p != str(ROOT)]

from agent.config import load_config  # noqa: E402
from agent.modelstore.station import StationManifest  # noqa: E402
from agent.pipeline.policy import PumpEnergyRule, RecommenderConfig, StationState  # noqa: E402
from bench.closed_loop import (  # noqa: E402
    StartStopLoop,
    guard_step,
    loop_summary,
    start_stop_targets,
    station_guard,
)
from export.identify import identify  # noqa: E402
from simulator.physics import Plant, StationParams  # noqa: E402
from simulator.recorder import record  # noqa: E402

CONFIG = ROOT / "configs" / "demo.yaml"
RESULTS = ROOT / "bench" / "results" / "energy.json"
ALLOWED_BELOW_MIN_FLOW_S = 60.0
MAX_STARTS_PER_HOUR = 4  # the start/stop targets' limit (StartStopTarget's default)
RESERVE_M = 0.3  # the lowest part of the band, kept for emergencies (the tariff schedule's reserve)
ROWS = ("oracle", "datasheet", "identified", "identified + start/stop")


def run(
    variant: int,
    drive: str,
    rc: RecommenderConfig,
    days: float,
    dt: float,
    rule_s: float,
    station: StationManifest | None = None,
    seed: int = 11,
    start_stop: bool = False,
) -> dict[str, Any]:
    """One closed-loop run; ``drive`` is ``oracle`` or ``rule`` (with ``station``, identified;
    with ``start_stop``, on start/stop targets)."""
    params = replace(StationParams(), max_step_s=dt)
    plant = Plant(params, seed=seed, permissive=True, variant_seed=variant)
    if start_stop:
        rc = rc.model_copy(
            update={
                "pumps": [
                    p.model_copy(update={"start_stop_tag": f"Pump{i + 1}.RunRequest"})
                    for i, p in enumerate(rc.pumps)
                ]
            }
        )
    rule = PumpEnergyRule(rc, station) if drive == "rule" else None
    guard = station_guard([f"Pump{i}.ExternalSpeedSetpoint" for i in range(1, plant.pumps + 1)], ttl_s=30)
    loop = StartStopLoop(plant, rc, start_stop_targets(plant.pumps)) if start_stop else None
    reserve_s = 0.0
    last_write: dict[str, float] = {}
    lo, hi = math.inf, -math.inf
    below = [0.0] * plant.pumps
    stretch = [0.0] * plant.pumps
    longest = [0.0] * plant.pumps
    heartbeat = 0
    steps = int(days * 86400 / dt)
    every = max(1, round(rule_s / dt))
    recs: dict[str, Any] = {}
    reasons: dict[str, int] = {}
    t0 = time.perf_counter()
    for k in range(steps):
        plant.step(dt)
        t = (k + 1) * dt
        lo, hi = min(lo, plant.level), max(hi, plant.level)
        if plant.level < params.level_low_m + RESERVE_M:
            reserve_s += dt
        if loop is not None:
            loop.observe(t, dt)
        for i in range(plant.pumps):
            if plant.q[i] < plant.min_flow_m3h(i + 1, plant.speed[i]) - 1e-9:
                below[i] += dt
                stretch[i] += dt
                longest[i] = max(longest[i], stretch[i])
            else:
                stretch[i] = 0.0
        heartbeat = (heartbeat + 1) % 65536
        plant.plc.write("Station.AgentHeartbeat", heartbeat)
        if k % every:
            continue
        if rule is None:
            for i, n in enumerate(plant.oracle_speeds()):
                plant.plc.write(f"Pump{i + 1}.ExternalSpeedSetpoint", n)
            continue
        tags = plant.state.tags
        level, demand = float(tags["Station.TankLevel"]), float(tags["Station.OutletFlow"])
        good = math.isfinite(level) and math.isfinite(demand)
        suction = {
            p.asset: (float(tags[p.suction_pressure_tag]), float(tags[p.flow_tag]))
            for p in rc.pumps
            if p.suction_pressure_tag is not None and p.flow_tag is not None
        }
        pumps = loop.run_state(t) if loop is not None else {}
        state = StationState(level if good else None, demand if good else None, {}, good, suction, pumps)
        recs = {r.target_tag: r for r in rule.recommend(state, t)}
        for code in rule.last_codes.values():
            reasons[code.name] = reasons.get(code.name, 0) + 1
        guard_step(guard, plant, recs, t, last_write, (rc.level_tag, rc.demand_tag))
        if loop is not None:
            loop.step(recs, t)
    return {
        "kwh_per_m3": plant.energy_kwh / plant.volume_m3,
        "energy_kwh": plant.energy_kwh,
        "volume_m3": plant.volume_m3,
        "level_min_m": lo,
        "level_max_m": hi,
        "below_min_flow_s": below,
        "longest_below_min_flow_s": longest,
        "reserve_s": reserve_s,
        "overflow_m3": plant.overflow_m3,
        "unmet_demand_m3": plant.unmet_demand_m3,
        "reason_codes": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "wall_s": time.perf_counter() - t0,
        **loop_summary(loop),
    }


def identify_variant(variant: int, rc_config: Path, work: Path, hours: float) -> StationManifest:
    """Fit the variant from two recordings of its own (other seeds than the runs)."""
    files = []
    for k in (1, 2):
        p = work / f"variant{variant}-id{k}.csv"
        record(
            p,
            hours=hours,
            seed=1000 + 10 * variant + k,
            variant_seed=variant,
            sample_s=10,
            include_truth=False,
        )
        files.append(p)
    return identify(files, rc_config, work / f"station{variant}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="5 variants x 1 day")
    ap.add_argument("--variants", type=int, default=5)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--dt", type=float, default=10.0, help="plant step, simulated s")
    ap.add_argument("--rule-s", type=float, default=20.0, help="rule and Guard every ... simulated s")
    ap.add_argument("--id-hours", type=float, default=12.0, help="length of each identification recording")
    args = ap.parse_args(argv)
    if args.quick:
        args.variants, args.days = 5, 1.0
    cfg = load_config(CONFIG)
    assert cfg.recommender is not None
    rc = cfg.recommender
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-energy-") as tmp:
        for v in range(1, args.variants + 1):
            station = identify_variant(v, CONFIG, Path(tmp), args.id_hours)
            row: dict[str, Any] = {"variant": v}
            row["oracle"] = run(v, "oracle", rc, args.days, args.dt, args.rule_s)
            row["datasheet"] = run(v, "rule", rc, args.days, args.dt, args.rule_s)
            row["identified"] = run(v, "rule", rc, args.days, args.dt, args.rule_s, station)
            row["identified + start/stop"] = run(
                v, "rule", rc, args.days, args.dt, args.rule_s, station, start_stop=True
            )
            row["station"] = station.model_dump(mode="json", include={"pumps", "system"})
            rows.append(row)
            _print_row(row)
    summary = _summary(rows)
    ss = summary["identified + start/stop"]
    targets = {
        "identified mean within 3 % of the oracle": bool(summary["identified"]["mean_ratio"] <= 1.03),
        "identified every variant within 5 %": bool(summary["identified"]["worst_ratio"] <= 1.05),
        "tank level always in band": summary["identified"]["level_in_band"] and ss["level_in_band"],
        f"no pump below its minimum flow for more than {ALLOWED_BELOW_MIN_FLOW_S:g} s": bool(
            summary["identified"]["min_flow_ok"] and ss["min_flow_ok"]
        ),
        "starts per hour within limits": ss["max_starts_per_hour"] <= MAX_STARTS_PER_HOUR,
    }
    print()
    print(
        f"{'':24} {'mean/oracle':>11} {'worst':>7} {'vs today':>8} {'in band':>8} {'reserve s':>9} "
        f"{'min flow':>9} {'starts/h':>8} {'imbal. h':>8}"
    )
    for k, s in summary.items():
        print(
            f"{k:24} {s['mean_ratio']:11.4f} {s['worst_ratio']:7.4f} {s['mean_vs_today']:8.4f} "
            f"{s['level_in_band']!s:>8} {s['reserve_s']:9.0f} {s['min_flow_ok']!s:>9} "
            f"{s['max_starts_per_hour']:8.0f} {s['max_run_hours_imbalance_h']:8.1f}"
        )
    for name, ok in targets.items():
        print(f"{'OK    ' if ok else 'MISSED'} {name}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "settings": {
                    "variants": args.variants,
                    "days": args.days,
                    "dt_s": args.dt,
                    "rule_s": args.rule_s,
                    "identification_hours": 2 * args.id_hours,
                    "tariff": "flat",
                },
                "rows": rows,
                "summary": summary,
                "targets": targets,
                "wall_s": time.perf_counter() - t_start,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row over the variants: energy against the oracle and today's rule (``identified``,
    every pump running), band, reserve, minimum flow, starts and run-hours imbalance."""
    out: dict[str, dict[str, Any]] = {}
    for k in ROWS[1:]:
        ratio = [r[k]["kwh_per_m3"] / r["oracle"]["kwh_per_m3"] for r in rows]
        today = [r[k]["kwh_per_m3"] / r["identified"]["kwh_per_m3"] for r in rows]
        out[k] = {
            "mean_ratio": sum(ratio) / len(ratio),
            "worst_ratio": max(ratio),
            "mean_vs_today": sum(today) / len(today),
            "level_in_band": all(r[k]["level_min_m"] >= 2.0 and r[k]["level_max_m"] <= 4.0 for r in rows),
            "reserve_s": sum(r[k]["reserve_s"] for r in rows),
            "min_flow_ok": all(
                max(r[k]["longest_below_min_flow_s"]) <= ALLOWED_BELOW_MIN_FLOW_S for r in rows
            ),
            "below_min_flow_s": sum(sum(r[k]["below_min_flow_s"]) for r in rows),
            "max_starts_per_hour": max(r[k]["max_starts_per_hour"] for r in rows),
            "max_run_hours_imbalance_h": max(r[k]["max_run_hours_imbalance_h"] for r in rows),
            "end_run_hours_imbalance_h": max(r[k]["run_hours_imbalance_h"] for r in rows),
        }
    return out


def _print_row(row: dict[str, Any]) -> None:
    o = row["oracle"]["kwh_per_m3"]
    for k in ROWS:
        r = row[k]
        print(
            f"variant {row['variant']} {k:24} {r['kwh_per_m3']:.5f} kWh/m³ ({r['kwh_per_m3'] / o:.4f}) "
            f"level [{r['level_min_m']:.2f}, {r['level_max_m']:.2f}] m (reserve {r['reserve_s']:.0f} s), "
            f"below min flow {'/'.join(f'{x:.0f}' for x in r['below_min_flow_s'])} s "
            f"(longest {max(r['longest_below_min_flow_s']):.0f} s), starts/h {r['max_starts_per_hour']:.0f}, "
            f"imbalance {r['run_hours_imbalance_h']:.1f} h (max {r['max_run_hours_imbalance_h']:.1f}), "
            f"{r['wall_s']:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(main())
