"""The tariff planner: demand history → forecast → receding-horizon flow plan, in the agent.

One :class:`TariffPlanner` per agent when ``recommender.tariff`` is configured. Every cycle the
agent calls :meth:`TariffPlanner.planned_flow` with what it measured; the planner adds the
demand (and temperature) to its hourly history, and every ``schedule.every_s`` (and at the
first call) forecasts the next ``schedule.horizon_h`` hours (:mod:`agent.pipeline.forecast`:
the forecast bundle once its window is whole, else the fallbacks) and plans the station flow
against the tariff (:mod:`agent.pipeline.schedule`). Between replans it returns the current
plan's first flow, which the pump-energy rule follows within the level band; the Guard still
decides every write.

The station's power is the pump-energy rule's own: the least-power split of a station flow
over the pumps on the curves the rule plans on (the identified station when
``recommender.station_bundle`` is loaded, else the datasheet), tabulated again whenever the
rule switches curves; the tank area from the same curves; the level band from
``recommender.station``, less ``schedule.reserve_m`` at the bottom and the rule's
``band_margin_m`` at the top. Not thread-safe: call from the event loop only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
import structlog

from agent.pipeline.forecast import DemandForecaster, Forecast, HourlyHistory
from agent.pipeline.policy import PumpEnergyRule
from agent.pipeline.schedule import Plan, PowerTable, TankBand, plan

if TYPE_CHECKING:
    from agent.config import RecommenderSection
    from agent.modelstore.bundle import Bundle

__all__ = ["PlanStatus", "TariffPlanner", "load_forecast_bundle", "rule_power"]

log = structlog.get_logger("agent.energyplan")


def rule_power(rule: PumpEnergyRule) -> Callable[[float, float], float]:
    """``power(station flow m³/h, level m) -> kW``: the rule's least-power split of that flow
    over all its pumps on its current curves (inf outside what they can deliver: below every
    pump's minimum continuous flow, above every pump at maximum speed)."""
    curves = rule.curves
    running = tuple(range(len(curves.pumps)))

    def power(q: float, level: float) -> float:
        hs = curves.static_head_m + level
        lo, hi = rule._flow_range(hs, running, ())
        if not lo - 1e-6 <= q <= hi + 1e-6:
            return math.inf
        return rule._split(q, hs, running, (), {}).power_kw

    return power


@dataclass(frozen=True, slots=True)
class PlanStatus:
    """The current plan as the console, status and logs show it."""

    made_utc: datetime
    forecast_source: str
    first_flow_m3h: float
    specific_energy_kwh_m3: float
    energy_kwh: float
    cost: float
    currency: str
    feasible: bool
    reason: str


class TariffPlanner:
    """See the module docstring. ``bundle``: the forecast bundle, already verified (or None)."""

    def __init__(self, rc: RecommenderSection, bundle: Bundle | None, rule: PumpEnergyRule) -> None:
        if rc.tariff is None:
            raise ValueError("a tariff planner needs recommender.tariff")
        self.rc = rc
        self.tariff = rc.tariff
        self.rule = rule
        self._curves: object = None
        self._station()
        sc = rc.schedule
        fc = rc.forecast
        self.forecaster = DemandForecaster(
            bundle, fc.holidays, horizon_h=sc.horizon_h, tz=ZoneInfo(fc.timezone)
        )
        self.history = HourlyHistory(max(self.forecaster.length, 24))
        self.plan: Plan | None = None
        self.forecast: Forecast | None = None
        self.status: PlanStatus | None = None
        self.replans = 0
        self._next_mono = -math.inf

    def _station(self) -> None:
        """Tank and power table from the rule's current curves (again after it switched)."""
        if self.rule.curves is self._curves:
            return
        st, sc, c = self.rc.station, self.rc.schedule, self.rule.curves
        self.tank = TankBand(
            c.tank_area_m2, st.level_low_m, st.level_high_m, sc.reserve_m, self.rc.band_margin_m
        )
        levels = np.linspace(self.tank.lowest, self.tank.highest, sc.level_grid)
        self.table = PowerTable.build(rule_power(self.rule), sc.max_flow_m3h, levels)
        self._curves = c

    def observe(self, now_utc: datetime, demand_m3h: float | None, temperature_c: float | None) -> None:
        """This cycle's GOOD demand and temperature (None when not GOOD)."""
        self.history.add(now_utc, demand_m3h, temperature_c)

    def planned_flow(
        self, now_mono: float, now_utc: datetime, level_m: float | None, demand_m3h: float | None
    ) -> float | None:
        """The station flow the plan asks for now (m³/h), or None without a GOOD level."""
        if level_m is None or demand_m3h is None:
            return None
        if now_mono >= self._next_mono or self.plan is None:
            self._replan(now_utc, level_m, demand_m3h)
            self._next_mono = now_mono + self.rc.schedule.every_s
        return self.plan.first_flow_m3h if self.plan is not None else None

    def _replan(self, now_utc: datetime, level_m: float, demand_m3h: float) -> None:
        self._station()
        h = self.rc.schedule.horizon_h
        fc = self.forecaster.forecast(self.history, now_utc, demand_m3h)
        demand: Sequence[float] = fc.values[:h]
        if len(demand) < h:
            demand = [*demand, *([demand[-1]] * (h - len(demand)))]
        # the first step is the rest of this hour: priced from now, not from the hour's start
        prices = self.tariff.prices(now_utc, h)
        p = plan(demand, prices, level_m, self.tank, self.table, end_level_m=None)
        was_feasible = self.plan.feasible if self.plan is not None else True
        self.plan, self.forecast = p, fc
        self.replans += 1
        self.status = PlanStatus(
            now_utc, fc.source, p.first_flow_m3h, p.specific_energy, p.energy_kwh, p.cost,
            self.tariff.currency, p.feasible, p.reason,
        )  # fmt: skip
        if p.feasible != was_feasible:
            (log.info if p.feasible else log.warning)("tariff plan", result=p.reason, forecast=fc.source)
        else:
            log.debug(
                "tariff plan", result=p.reason, forecast=fc.source, first_flow=round(p.first_flow_m3h, 1)
            )

    def next_replan_in(self, now_mono: float) -> float:
        return max(0.0, self._next_mono - now_mono)


def load_forecast_bundle(
    rc: RecommenderSection, resolve: Callable[[Path], Path], trusted: Sequence[Path], allow_unsigned: bool
) -> Bundle | None:
    """The configured forecast bundle, verified like every model (ModelError), or None."""
    if rc.forecast.bundle is None:
        return None
    from agent.modelstore.bundle import load_bundle
    from agent.pipeline.forecast import check_forecast_bundle

    b = load_bundle(resolve(rc.forecast.bundle), trusted_keys=list(trusted), allow_unsigned=allow_unsigned)
    check_forecast_bundle(b)
    log.info("forecast loaded", model=b.manifest.ident, signature=b.signature.detail)
    return b
