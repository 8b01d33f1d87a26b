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
``band_margin_m`` at the top. Where the rule may start and stop pumps, a flow is priced on
the cheapest set of pumps that delivers it (one pump at night, two at the peak).

Prices: the weekly table (``tariff.weekly``); with ``tariff.price_tag`` the tag's GOOD value
prices the current step, and the future comes from the table or, without one, from the weekly
profile learned from the tag (:class:`agent.pipeline.tariff.PriceProfile`, persisted in
``state_dir/price_profile.json`` each time an hour is learned). A tag that is not GOOD leaves
the current step to the table (or the profile; with neither, the last GOOD price, else a flat
price: the plan is then energy-optimal), and the plan's ``price_source`` says so. Not
thread-safe: call from the event loop only.
"""

from __future__ import annotations

import json
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
from agent.pipeline.tariff import PriceProfile
from agent.pumprun import write_json_atomic
from agent.types import Sample

if TYPE_CHECKING:
    from agent.config import RecommenderSection
    from agent.modelstore.bundle import Bundle

__all__ = ["PRICE_PROFILE_FILE", "PlanStatus", "TariffPlanner", "load_forecast_bundle", "rule_power"]

log = structlog.get_logger("agent.energyplan")

PRICE_PROFILE_FILE = "price_profile.json"


def rule_power(rule: PumpEnergyRule) -> Callable[[float, float], float]:
    """``power(station flow m³/h, level m) -> kW``: the rule's least-power split of that flow
    on its current curves, over the cheapest set of pumps it may run (all of them, or where
    start/stop is allowed any set that keeps the others: :meth:`PumpEnergyRule.running_sets`);
    inf outside what they can deliver (below the minimum continuous flows, above every pump
    at maximum speed)."""
    curves = rule.curves
    sets = rule.running_sets()

    def power(q: float, level: float) -> float:
        hs = curves.static_head_m + level
        best = math.inf
        for running in sets:
            lo, hi = rule._flow_range(hs, running, ())
            if lo - 1e-6 <= q <= hi + 1e-6:
                best = min(best, rule._split(q, hs, running, (), {}).power_kw)
        return best

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
    price_source: str = "weekly table"
    """Where the prices came from: weekly table, price tag, learned profile, and why."""


class TariffPlanner:
    """See the module docstring. ``bundle``: the forecast bundle, already verified (or None);
    ``state_dir``: where the learned price profile is kept (None: in memory only)."""

    def __init__(
        self,
        rc: RecommenderSection,
        bundle: Bundle | None,
        rule: PumpEnergyRule,
        state_dir: Path | None = None,
    ) -> None:
        if rc.tariff is None:
            raise ValueError("a tariff planner needs recommender.tariff")
        self.rc = rc
        self.tariff = rc.tariff
        self.rule = rule
        self.profile_path = state_dir / PRICE_PROFILE_FILE if state_dir is not None else None
        self.profile = self._load_profile() if self.tariff.price_tag is not None else None
        self.tag_price: float | None = None  # the price tag's value this cycle (None: not GOOD)
        self.tag_problem: str | None = None  # why it is not GOOD
        self._last_good_price: float | None = None
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

    def _load_profile(self) -> PriceProfile:
        tz = self.tariff.tz
        if self.profile_path is None or not self.profile_path.exists():
            return PriceProfile(tz)
        try:
            return PriceProfile.from_json(json.loads(self.profile_path.read_text()), tz)
        except (OSError, ValueError, AttributeError) as exc:
            log.error(
                "price profile not restored: learning again", file=str(self.profile_path), error=str(exc)
            )
            return PriceProfile(tz)

    def observe(
        self,
        now_utc: datetime,
        demand_m3h: float | None,
        temperature_c: float | None,
        price: Sample | None = None,
    ) -> None:
        """This cycle's GOOD demand and temperature (None when not GOOD) and the price tag's
        sample (``tariff.price_tag``; None without one)."""
        self.history.add(now_utc, demand_m3h, temperature_c)
        if self.tariff.price_tag is None:
            return
        v = price.as_float() if price is not None and price.quality.is_good else math.nan
        if math.isfinite(v) and v >= 0:
            if self.tag_problem is not None:
                log.info("price tag recovered", tag=self.tariff.price_tag, price=v)
            self.tag_price, self.tag_problem = v, None
            self._last_good_price = v
        else:
            why = (
                "no sample"
                if price is None
                else str(price.quality)
                if not price.quality.is_good
                else f"{v!r}"
            )
            if self.tag_problem is None:
                log.warning(
                    "price tag not GOOD: the current step priced without it",
                    tag=self.tariff.price_tag,
                    why=why,
                )
            self.tag_price, self.tag_problem = None, why
        if self.profile is not None and self.profile.observe(
            now_utc, self.tag_price if self.tag_price is not None else math.nan
        ):
            self._save_profile()

    def _save_profile(self) -> None:
        if self.profile_path is None or self.profile is None:
            return
        try:  # once an hour, a small file
            write_json_atomic(self.profile_path, self.profile.to_json())
        except OSError as exc:
            log.warning("price profile not saved", file=str(self.profile_path), error=str(exc))

    def _base(self, now_utc: datetime, steps: int) -> tuple[list[float] | None, str]:
        """The table's (or the learned profile's) prices, None when neither has any."""
        if self.tariff.weekly is not None:
            return self.tariff.prices(now_utc, steps), "weekly table"
        if self.profile is not None and (base := self.profile.prices(now_utc, steps)) is not None:
            return base, f"learned profile ({self.profile.known} of 168 hours)"
        return None, "no profile yet"

    def prices(self, now_utc: datetime, steps: int) -> tuple[list[float], str]:
        """The price of each step from now, and where they came from (module docstring)."""
        tag = self.tariff.price_tag
        base, source = self._base(now_utc, steps)
        if self.tag_price is not None:
            if base is None:
                return [self.tag_price] * steps, f"price tag {tag} ({source}: flat)"
            return [self.tag_price, *base[1:]], f"price tag {tag} now, {source} after"
        bad = f"price tag {tag} not GOOD ({self.tag_problem}): " if tag is not None else ""
        if base is not None:
            return base, f"{bad}{source}"
        if self._last_good_price is not None:
            return [self._last_good_price] * steps, f"{bad}its last GOOD price, flat"
        return [1.0] * steps, f"{bad}no price known: flat (an energy-optimal plan)"

    def price_now(self, now_utc: datetime) -> float | None:
        """The price per kWh now (the tag's when GOOD, else the table's or the profile's, else
        the tag's last GOOD one), or None when none is known."""
        if self.tag_price is not None:
            return self.tag_price
        base, _ = self._base(now_utc, 1)
        return base[0] if base is not None else self._last_good_price

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
        prices, price_source = self.prices(now_utc, h)
        p = plan(demand, prices, level_m, self.tank, self.table, end_level_m=None)
        was_feasible = self.plan.feasible if self.plan is not None else True
        self.plan, self.forecast = p, fc
        self.replans += 1
        self.status = PlanStatus(
            now_utc, fc.source, p.first_flow_m3h, p.specific_energy, p.energy_kwh, p.cost,
            self.tariff.currency, p.feasible, p.reason, price_source,
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
