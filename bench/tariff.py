"""Tariff benchmark: energy cost of the forecast + tariff schedule against an oracle and the PLC.

Run ``python bench/tariff.py`` (7 simulated days × 5 plant variants; about 10-15 minutes on
one core) or ``--quick`` (1 day × 5 variants). Prints a table and writes
``bench/results/tariff.json``. Targets are reported (OK / MISSED), never asserted.

**Plants**: the embedded plant with its structured demand (:mod:`simulator.demand`: weekdays,
holidays, temperature fronts, events, noise) and a tank of 450 m² nominal, each variant
perturbed by ``Plant(variant_seed=k)`` (pump curves ±15 %, wear, a trimmed impeller, static
head ±15 %, tank area ±20 %): the recommender is told the datasheet values only. Storage =
tank area × level band / mean demand (h); the targets apply to variants with ≥ 6 h.

**Tariff**: two rates every day, 0.28 EUR/kWh 07:00-23:00 and 0.11 otherwise.

**Rows** (same plant seed, same demand, side by side; control every ``CTRL_S`` = 5 simulated s):

* ``PLC level control``: the plant's own PI on the level, no agent;
* ``rule (energy only)``: today's pump-energy rule (no tariff, no forecast) through the Guard;
* ``agent (forecast + tariff)``: the agent's own units: :class:`agent.energyplan.TariffPlanner`
  (hourly history prefilled with the week before, the forecast bundle trained below, a plan
  every 5 min over 24 h) → the rule's ``planned_flow_m3h`` → the Guard (rate limits, deadband);
* ``agent + start/stop``: the same with both pumps on start/stop targets (the Guard's default
  limits): the plan prices a flow on the cheapest set of pumps, the rule chooses how many and
  which run, and rotates duty by run hours;
* ``cost oracle``: planned with the *true* pump curves and tank area and the *true* hourly
  demand (perfect forecast), replanned every 15 min over the next 24 h, speeds set directly
  (the pair of least power for the planned flow).

Also per row: the time the level spent in the reserve, the most starts any pump made within an
hour and the run-hours imbalance between the pumps (from the plant's truth).

All rows keep the same reserve (0.3 m above the bottom of the band) and margin (0.1 m). Costs
are compared per m³ pumped (EUR/m³): a row that ends the run with a lower tank has not saved,
it has borrowed. The plant integrates in steps of 5 s (``max_step_s``; 1 s elsewhere) so that
the 140 simulated plant-days fit in minutes.

**Forecast**: a bundle trained by :func:`export.forecast.build_forecast` on three other demand
seeds (12 weeks each), then scored on each variant's demand seed (unseen) over the benchmark
days: MAE of the 24 h forecast made every hour, against the seasonal-naive forecasts (same hour
last week / yesterday).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/export.py must not shadow the export package: the repository root comes first
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import logging  # noqa: E402

import numpy as np  # noqa: E402
import structlog  # noqa: E402

from agent.config import RecommenderSection  # noqa: E402
from agent.energyplan import TariffPlanner  # noqa: E402
from agent.modelstore.bundle import Bundle, load_bundle  # noqa: E402
from agent.pipeline.features import window_to_input  # noqa: E402
from agent.pipeline.forecast import forecast_window  # noqa: E402
from agent.pipeline.policy import PumpEnergyRule, PumpStationModel, RecommenderPump, StationState  # noqa: E402
from agent.pipeline.schedule import PowerTable, TankBand, plan  # noqa: E402
from agent.pipeline.tariff import TariffConfig  # noqa: E402
from bench.closed_loop import (  # noqa: E402
    StartStopLoop,
    guard_step,
    loop_summary,
    start_stop_targets,
    station_guard,
)
from simulator import Plant, StationParams  # noqa: E402
from simulator.demand import DemandModel, DemandParams, hourly_series, write_recording  # noqa: E402

CTRL_S = 5.0
AGENT_SS = "agent + start/stop"
MAX_STARTS_PER_HOUR = 4  # the start/stop targets' limit (StartStopTarget's default)
PUMPS = ("Pump1", "Pump2")
TARGETS = tuple(f"{p}.ExternalSpeedSetpoint" for p in PUMPS)
TANK_AREA = 450.0
RESERVE_M, MARGIN_M = 0.3, 0.1
TARIFF = TariffConfig.model_validate(
    {
        "currency": "EUR",
        "weekly": [
            {"days": "all", "from": "07:00", "to": "23:00", "price": 0.28},
            {"days": "all", "from": "00:00", "to": "24:00", "price": 0.11},
        ],
    }
)
BASE = StationParams(tank_area_m2=TANK_AREA, demand=DemandParams(), max_step_s=CTRL_S)
HOLIDAYS = [date.fromisoformat(d) for d in DemandParams().holidays]


def _section(tariff: bool, start_stop: bool = False) -> RecommenderSection:
    data: dict[str, Any] = {
        "station": PumpStationModel(tank_area_m2=TANK_AREA).model_dump(),  # the datasheet
        "level_tag": "Station.TankLevel",
        "demand_tag": "Station.OutletFlow",
        "pumps": [
            RecommenderPump(
                asset=p.lower(), target=t, start_stop_tag=f"{p}.RunRequest" if start_stop else None
            ).model_dump()
            for p, t in zip(PUMPS, TARGETS, strict=True)
        ],
        "forecast": {"temperature_tag": "Station.AmbientTemp", "holidays": HOLIDAYS},
        "schedule": {"every_s": 300, "horizon_h": 24, "reserve_m": RESERVE_M},
        "band_margin_m": MARGIN_M,
    }
    if tariff:
        data["tariff"] = TARIFF.model_dump(by_alias=True)
    return RecommenderSection.model_validate(data)


@dataclass
class Run:
    """What one row measured on one variant."""

    energy_kwh: float = 0.0
    cost: float = 0.0
    volume_m3: float = 0.0
    level_min: float = math.inf
    level_max: float = -math.inf
    unmet_m3: float = 0.0
    overflow_m3: float = 0.0
    reserve_s: float = 0.0
    wall_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "energy_kwh": self.energy_kwh,
            "cost_eur": self.cost,
            "volume_m3": self.volume_m3,
            "kwh_per_m3": self.energy_kwh / self.volume_m3 if self.volume_m3 else math.nan,
            "eur_per_m3": self.cost / self.volume_m3 if self.volume_m3 else math.nan,
            "level_min_m": self.level_min,
            "level_max_m": self.level_max,
            "in_band": bool(self.level_min >= 2.0 and self.level_max <= 4.0),
            "unmet_demand_m3": self.unmet_m3,
            "overflow_m3": self.overflow_m3,
            "reserve_s": self.reserve_s,
            "wall_s": self.wall_s,
            **self.notes,
        }


Controller = Callable[[Plant, float], None]


def _simulate(
    plant: Plant,
    days: float,
    control: Controller | None,
    demand_log: list[float] | None = None,
    loop: StartStopLoop | None = None,
) -> Run:
    """Step the plant; ``control(plant, t)`` every CTRL_S; price the energy of each step."""
    run = Run()
    t0 = time.perf_counter()
    epoch = plant.params.epoch_datetime
    steps = int(days * 86400 / CTRL_S)
    heartbeat = 0
    for k in range(steps):
        t = k * CTRL_S
        price = TARIFF.price_at(epoch + timedelta(seconds=t))
        e0 = plant.energy_kwh
        if control is not None:
            heartbeat = (heartbeat + 1) % 65536
            plant.plc.write("Station.AgentHeartbeat", heartbeat)
            control(plant, t)
        plant.step(CTRL_S)
        run.cost += (plant.energy_kwh - e0) * price
        lv = plant.level
        run.level_min, run.level_max = min(run.level_min, lv), max(run.level_max, lv)
        if lv < plant.params.level_low_m + RESERVE_M:
            run.reserve_s += CTRL_S
        if loop is not None:
            loop.observe(t + CTRL_S, CTRL_S)
        if demand_log is not None:
            demand_log.append(plant.state.demand_m3h)
    run.energy_kwh, run.volume_m3 = plant.energy_kwh, plant.volume_m3
    run.unmet_m3, run.overflow_m3 = plant.unmet_demand_m3, plant.overflow_m3
    run.wall_s = time.perf_counter() - t0
    run.notes["level_end_m"] = plant.level
    run.notes |= loop_summary(loop)
    return run


def _rule_controller(
    rule: PumpEnergyRule, planner: TariffPlanner | None, loop: StartStopLoop | None = None
) -> Controller:
    guard = station_guard(TARGETS, ttl_s=10)
    last_write: dict[str, float] = {}

    def control(plant: Plant, t: float) -> None:
        tags = plant.state.tags
        level, demand = float(tags["Station.TankLevel"]), float(tags["Station.OutletFlow"])
        good = math.isfinite(level) and math.isfinite(demand)
        pumps = loop.run_state(t) if loop is not None else {}
        state = StationState(level if good else None, demand if good else None, {}, good, pumps=pumps)
        planned = None
        if planner is not None:
            now_utc = plant.params.epoch_datetime + timedelta(seconds=t)
            planner.observe(now_utc, state.demand_m3h, float(tags["Station.AmbientTemp"]))
            planned = planner.planned_flow(t, now_utc, state.level_m, state.demand_m3h)
        recs = {r.target_tag: r for r in rule.recommend(state, t, planned)}
        guard_step(guard, plant, recs, t, last_write)
        if loop is not None:
            loop.step(recs, t)

    return control


def _true_table(plant: Plant, levels: np.ndarray, q_max: float, n_flows: int = 121) -> PowerTable:
    """The variant's true station power over (flow, level): the least power of any speed pair
    (every pump above its minimum continuous flow) delivering the flow, from the plant's own
    oracle table (bench only: the agent never sees it)."""
    flows = np.linspace(0.0, q_max, n_flows)
    dq = flows[1] - flows[0]
    tab = np.full((len(levels), n_flows), np.inf)
    for i, lv in enumerate(levels):
        _, q_tot, spec = plant._oracle_table(round(float(lv), 2))
        power = spec * q_tot
        idx = np.rint(q_tot / dq).astype(int)
        ok = (idx >= 0) & (idx < n_flows)
        np.minimum.at(tab[i], idx[ok], power[ok])
    return PowerTable(flows, np.asarray(levels, dtype=float), tab)


def _oracle_controller(plant: Plant, hourly_demand: np.ndarray, replan_s: float = 900.0) -> Controller:
    prm = plant.params
    tank = TankBand(prm.tank_area_m2, prm.level_low_m, prm.level_high_m, RESERVE_M, MARGIN_M)
    table = _true_table(plant, np.linspace(tank.lowest, tank.highest, 121), 260.0)
    state: dict[str, float] = {"next": -1.0, "flow": 0.0}
    epoch = prm.epoch_datetime

    def control(p: Plant, t: float) -> None:
        if t >= state["next"]:
            h0 = int(t // 3600)
            demand = list(hourly_demand[h0 : h0 + 24])
            demand += [demand[-1]] * (24 - len(demand))
            pl = plan(demand, TARIFF.prices(epoch + timedelta(seconds=t), 24), p.level, tank, table)
            state["flow"] = pl.first_flow_m3h
            state["next"] = t + replan_s
        speeds, q_tot, spec = p._oracle_table(round(p.level, 2))
        target = state["flow"]
        near = np.abs(q_tot - target) <= 3.0
        k = (
            int(np.argmin(np.where(near, spec * q_tot, np.inf)))
            if near.any()
            else int(np.argmin(np.abs(q_tot - target)))
        )
        for tag, n in zip(TARGETS, speeds[k], strict=True):
            p.plc.write(tag, float(n))

    return control


def _train_bundle(out: Path, weeks: int) -> tuple[Bundle, dict[str, Any]]:
    from export.forecast import ForecastConfig, build_forecast

    epoch = BASE.epoch_datetime - timedelta(weeks=weeks)  # the weeks before the benchmark
    files = [
        write_recording(
            out / f"train{s}.csv",
            DemandModel(DemandParams(), mean_m3h=BASE.demand_mean_m3h, epoch=epoch, seed=s),
            weeks * 168,
        )
        for s in (901, 902, 903)
    ]
    cfg = ForecastConfig(holidays=HOLIDAYS, hidden=32, epochs=60, test_fraction=0.2)
    report = build_forecast(cfg, files, out / "bundle")
    return load_bundle(out / "bundle"), report


def _forecast_errors(bundle: Bundle, model: DemandModel, days: float) -> dict[str, float]:
    """MAE (m³/h) of the 24 h forecast made at every hour of the benchmark, and the naives."""
    m = bundle.manifest
    L, H = m.window.length, 24
    n = int(days * 24)
    starts, d, temp = hourly_series(model, L + n + H, start_s=-L * 3600.0)
    raw = forecast_window(m.roles, d, temp, starts, HOLIDAYS)
    origins = range(L - 1, L - 1 + n)
    x = window_to_input(np.stack([raw[i - L + 1 : i + 1] for i in origins]), m)
    pred = bundle.run({m.model_input.name: x})[0]
    y = np.stack([d[i + 1 : i + 1 + H] for i in origins])
    week = np.stack([d[i + 1 - 168 : i + 1 - 168 + H] for i in origins])
    day = np.stack([d[i + 1 - 24 + np.arange(H) % 24] for i in origins])
    return {
        "model_mae_m3h": float(np.abs(pred - y).mean()),
        "naive_week_mae_m3h": float(np.abs(week - y).mean()),
        "naive_day_mae_m3h": float(np.abs(day - y).mean()),
    }


def bench_variant(v: int, days: float, bundle: Bundle) -> dict[str, Any]:
    seed = 1000 + v
    runs: dict[str, Run] = {}
    demand_log: list[float] = []
    pi = Plant(BASE, seed=seed, variant_seed=v, permissive=True)
    runs["PLC level control"] = _simulate(pi, days, None, demand_log)
    per_hour = int(3600 / CTRL_S)
    hourly = np.array(demand_log[: len(demand_log) // per_hour * per_hour]).reshape(-1, per_hour).mean(axis=1)

    plant = Plant(BASE, seed=seed, variant_seed=v, permissive=True)
    runs["rule (energy only)"] = _simulate(
        plant, days, _rule_controller(PumpEnergyRule(_section(False)), None)
    )

    plant = Plant(BASE, seed=seed, variant_seed=v, permissive=True)
    sec = _section(True)
    rule = PumpEnergyRule(sec)
    planner = TariffPlanner(sec, bundle, rule)
    model = plant.demand_model
    assert model is not None
    hist_starts, hist_d, hist_t = hourly_series(model, 168, start_s=-168 * 3600.0)
    planner.history.extend(hist_starts, hist_d, hist_t)
    runs["agent (forecast + tariff)"] = _simulate(plant, days, _rule_controller(rule, planner))
    runs["agent (forecast + tariff)"].notes["replans"] = planner.replans
    runs["agent (forecast + tariff)"].notes["last_forecast"] = (
        planner.forecast.source if planner.forecast else None
    )

    plant = Plant(BASE, seed=seed, variant_seed=v, permissive=True)
    sec = _section(True, start_stop=True)
    rule = PumpEnergyRule(sec)
    planner = TariffPlanner(sec, bundle, rule)
    planner.history.extend(hist_starts, hist_d, hist_t)
    loop = StartStopLoop(plant, sec, start_stop_targets(len(PUMPS)))
    runs[AGENT_SS] = _simulate(plant, days, _rule_controller(rule, planner, loop), loop=loop)

    plant = Plant(BASE, seed=seed, variant_seed=v, permissive=True)
    runs["cost oracle"] = _simulate(plant, days, _oracle_controller(plant, hourly))

    prm = plant.params
    storage_h = prm.tank_area_m2 * (prm.level_high_m - prm.level_low_m) / float(np.mean(hourly))
    return {
        "variant": v,
        "seed": seed,
        "storage_h": storage_h,
        "true": plant.variant.describe() if plant.variant else {},
        "rows": {k: r.as_dict() for k, r in runs.items()},
        "forecast": _forecast_errors(bundle, model, days),
    }


def main(argv: list[str] | None = None) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="1 day x 5 variants")
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--variants", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tariff.json")
    args = ap.parse_args(argv)
    days, n_var = (1.0, 5) if args.quick else (args.days, args.variants)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bundle, report = _train_bundle(Path(tmp), weeks=16)
        print(f"forecast bundle: {report['summary']}", flush=True)
        results = []
        for v in range(1, n_var + 1):
            r = bench_variant(v, days, bundle)
            results.append(r)
            rows = r["rows"]
            print(
                f"variant {v} (storage {r['storage_h']:.1f} h): "
                + ", ".join(f"{k} {x['cost_eur']:.0f} EUR" for k, x in rows.items()),
                flush=True,
            )
            _write(args.out, days, n_var, report, results, t0, complete=v == n_var)
    _print(results, _summary(results), days)
    print(f"wrote {args.out}")
    return 0


def _write(
    out: Path,
    days: float,
    n_var: int,
    report: dict[str, Any],
    results: list[dict[str, Any]],
    t0: float,
    *,
    complete: bool,
) -> None:
    """The JSON after every variant (``complete`` false until the last): a long run that is
    stopped keeps what it measured."""
    data: dict[str, Any] = {
        "benchmark": "tariff",
        "complete": complete,
        "days": days,
        "variants": n_var,
        "control_period_s": CTRL_S,
        "tariff": TARIFF.model_dump(by_alias=True),
        "tank_area_nominal_m2": TANK_AREA,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "wall_s": time.perf_counter() - t0,
        "forecast_training": report,
        "results": results,
        "summary": _summary(results),
        "utc": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    eligible = [r for r in results if r["storage_h"] >= 6.0]
    agent = "agent (forecast + tariff)"
    # per m³ pumped: a row that ends with a lower tank has not spent less, it has borrowed
    vs_oracle = [
        r["rows"][agent]["eur_per_m3"] / r["rows"]["cost oracle"]["eur_per_m3"] - 1 for r in eligible
    ]
    vs_plc = [
        1 - r["rows"][agent]["eur_per_m3"] / r["rows"]["PLC level control"]["eur_per_m3"] for r in eligible
    ]
    vs_rule = [
        1 - r["rows"][agent]["eur_per_m3"] / r["rows"]["rule (energy only)"]["eur_per_m3"] for r in eligible
    ]
    fc_gain = [
        1
        - r["forecast"]["model_mae_m3h"]
        / min(r["forecast"]["naive_week_mae_m3h"], r["forecast"]["naive_day_mae_m3h"])
        for r in results
    ]
    in_band = bool(all(r["rows"][agent]["in_band"] for r in results))
    ss = [r["rows"][AGENT_SS] for r in results if AGENT_SS in r["rows"]]
    ss_eligible = [r for r in eligible if AGENT_SS in r["rows"]]
    ss_vs_oracle = [
        r["rows"][AGENT_SS]["eur_per_m3"] / r["rows"]["cost oracle"]["eur_per_m3"] - 1 for r in ss_eligible
    ]
    ss_vs_plc = [
        1 - r["rows"][AGENT_SS]["eur_per_m3"] / r["rows"]["PLC level control"]["eur_per_m3"]
        for r in ss_eligible
    ]
    ss_vs_agent = [
        1 - r["rows"][AGENT_SS]["eur_per_m3"] / r["rows"][agent]["eur_per_m3"] for r in ss_eligible
    ]
    start_stop = {
        "cost_over_oracle_mean": float(np.mean(ss_vs_oracle)) if ss_vs_oracle else None,
        "cost_over_oracle_max": float(np.max(ss_vs_oracle)) if ss_vs_oracle else None,
        "saving_vs_plc_mean": float(np.mean(ss_vs_plc)) if ss_vs_plc else None,
        "saving_vs_plc_min": float(np.min(ss_vs_plc)) if ss_vs_plc else None,
        "saving_vs_agent_without_mean": float(np.mean(ss_vs_agent)) if ss_vs_agent else None,
        "kwh_per_m3_vs_agent_without_mean": float(
            np.mean([r["rows"][AGENT_SS]["kwh_per_m3"] / r["rows"][agent]["kwh_per_m3"] for r in ss_eligible])
        )
        if ss_eligible
        else None,
        "always_in_band": bool(all(x["in_band"] for x in ss)),
        "reserve_s": float(sum(x["reserve_s"] for x in ss)),
        "max_starts_per_hour": float(max((x["max_starts_per_hour"] for x in ss), default=0.0)),
        "max_run_hours_imbalance_h": float(max((x["max_run_hours_imbalance_h"] for x in ss), default=0.0)),
        "end_run_hours_imbalance_h": float(max((x["run_hours_imbalance_h"] for x in ss), default=0.0)),
    }
    return {
        "eligible_variants": [r["variant"] for r in eligible],
        "agent_cost_over_oracle_mean": float(np.mean(vs_oracle)) if vs_oracle else None,
        "agent_cost_over_oracle_max": float(np.max(vs_oracle)) if vs_oracle else None,
        "agent_saving_vs_plc_mean": float(np.mean(vs_plc)) if vs_plc else None,
        "agent_saving_vs_plc_min": float(np.min(vs_plc)) if vs_plc else None,
        "agent_saving_vs_rule_mean": float(np.mean(vs_rule)) if vs_rule else None,
        "forecast_gain_vs_best_naive_mean": float(np.mean(fc_gain)),
        "forecast_gain_vs_best_naive_min": float(np.min(fc_gain)),
        "agent_always_in_band": in_band,
        "agent_reserve_s": float(sum(r["rows"][agent]["reserve_s"] for r in results)),
        "start_stop": start_stop,
        "targets": {
            "cost within 5 % of the oracle (every eligible variant)": bool(
                vs_oracle and max(vs_oracle) <= 0.05
            ),
            "cost >= 15 % below PLC level control (every eligible variant)": bool(
                vs_plc and min(vs_plc) >= 0.15
            ),
            "tank always in band": in_band,
            "forecast error >= 20 % below seasonal-naive (every unseen seed)": bool(min(fc_gain) >= 0.20),
            "start/stop: starts per hour within limits": start_stop["max_starts_per_hour"]
            <= MAX_STARTS_PER_HOUR,
            "start/stop: tank always in band": start_stop["always_in_band"],
        },
    }


def _print(results: list[dict[str, Any]], summary: dict[str, Any], days: float) -> None:
    print(f"\nTariff benchmark: {days:g} simulated days per variant, two-rate tariff (0.28 / 0.11 EUR/kWh)\n")
    print(
        "| variant | storage h | row | kWh/m³ | EUR/m³ | cost EUR | level min..max m | reserve h "
        "| starts/h max | run-h imbalance | EUR/m³ vs oracle |"
    )
    print("|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in results:
        oracle = r["rows"]["cost oracle"]["eur_per_m3"]
        for name, x in r["rows"].items():
            cells = [
                str(r["variant"]),
                f"{r['storage_h']:.1f}",
                name,
                f"{x['kwh_per_m3']:.4f}",
                f"{x['eur_per_m3']:.4f}",
                f"{x['cost_eur']:.1f}",
                f"{x['level_min_m']:.2f}..{x['level_max_m']:.2f}",
                f"{x.get('reserve_s', 0.0) / 3600:.1f}",
                f"{x.get('max_starts_per_hour', 0.0):.0f}",
                f"{x.get('run_hours_imbalance_h', 0.0):.1f} "
                f"(max {x.get('max_run_hours_imbalance_h', 0.0):.1f})",
                f"{x['eur_per_m3'] / oracle - 1:+.1%}",
            ]
            print("| " + " | ".join(cells) + " |")
    print("\n| variant | forecast MAE m³/h | seasonal-naive week | seasonal-naive day |")
    print("|---|---:|---:|---:|")
    for r in results:
        f = r["forecast"]
        maes = (f["model_mae_m3h"], f["naive_week_mae_m3h"], f["naive_day_mae_m3h"])
        print(f"| {r['variant']} | " + " | ".join(f"{v:.2f}" for v in maes) + " |")
    print()
    for k, ok in summary["targets"].items():
        print(f"{'OK    ' if ok else 'MISSED'} {k}")
    s = summary
    print(
        f"\nagent vs oracle: mean {s['agent_cost_over_oracle_mean']:+.1%}, "
        f"worst {s['agent_cost_over_oracle_max']:+.1%}; "
        f"saving vs PLC: mean {s['agent_saving_vs_plc_mean']:.1%}, least {s['agent_saving_vs_plc_min']:.1%}; "
        f"vs rule (energy only): {s['agent_saving_vs_rule_mean']:.1%}; forecast vs best naive: "
        f"mean {s['forecast_gain_vs_best_naive_mean']:.1%}, least {s['forecast_gain_vs_best_naive_min']:.1%}"
        if s["agent_cost_over_oracle_mean"] is not None
        else "no variant with >= 6 h of storage"
    )
    ss = s["start_stop"]
    if ss["cost_over_oracle_mean"] is not None:
        print(
            f"agent + start/stop vs oracle: mean {ss['cost_over_oracle_mean']:+.1%}, worst "
            f"{ss['cost_over_oracle_max']:+.1%}; saving vs PLC: mean {ss['saving_vs_plc_mean']:.1%}, least "
            f"{ss['saving_vs_plc_min']:.1%}; vs the agent without start/stop: cost "
            f"{ss['saving_vs_agent_without_mean']:.1%} less, "
            f"kWh/m³ x{ss['kwh_per_m3_vs_agent_without_mean']:.4f}; "
            f"starts/h max {ss['max_starts_per_hour']:.0f}, run-hours imbalance max "
            f"{ss['max_run_hours_imbalance_h']:.1f} h, {ss['reserve_s'] / 3600:.1f} h in the reserve"
        )


if __name__ == "__main__":
    raise SystemExit(main())
