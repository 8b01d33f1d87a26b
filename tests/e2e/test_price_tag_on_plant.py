"""The tariff's price from a PLC tag, read by the real agent over Modbus.

The demo config gets a tariff with a weekly table (0.10 a kWh) and a ``price_tag``: the plant's
``Station.EnergyPrice``, a register the site's energy management system writes (here through
the PLC's own write path). The agent polls it like any tag, the planner prices the current step
with it and the rest of the horizon from the table, and says so in ``edge-agent status``; the
saving the rule states is priced at it. When the EMS writes a value that is no price (NaN: the
sample is BAD), the table prices the current step again, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config
from agent.ops.status import status_document
from simulator import Plant, serve

from .plant_fixtures import demo_config_data, running_agent, wait_until

pytestmark = pytest.mark.timeout(90)

PRICE = "Station.EnergyPrice"


def _config(port: int, state: Path) -> Config:
    data = demo_config_data()
    data["agent"]["state_dir"] = str(state)
    data["devices"][0]["port"] = port
    data["devices"][0]["tags"].append(
        {"name": PRICE, "table": "holding", "address": 3, "type": "float32", "word_order": "ABCD",
         "engineering_unit": "EUR/kWh", "range": [0, 10]}
    )  # fmt: skip
    data["recommender"]["tariff"] = {
        "currency": "EUR",
        "weekly": [{"days": "all", "from": "00:00", "to": "24:00", "price": 0.10}],
        "price_tag": PRICE,
    }
    data["recommender"]["schedule"] = {"every_s": 10, "horizon_h": 6}
    return Config.model_validate(data)


async def test_the_current_price_comes_from_the_plc_tag(tmp_path: Path) -> None:
    plant = Plant(seed=3, permissive=True)
    async with serve(plant, modbus_port=0, speed=5, heartbeat_timeout_s=5) as station:
        assert station.modbus_port is not None
        async with running_agent(_config(station.modbus_port, tmp_path / "state")) as agent:
            planner = agent.planner
            assert planner is not None
            await wait_until(lambda: agent.view.plan is not None, timeout_s=20, what="a plan")
            plan = status_document(agent)["energy_plan"]
            assert plan["prices"] == f"price tag {PRICE} now, weekly table after"
            # the EMS sets a dear price: the current step is priced at it, the rest from the table
            plant.plc.write(PRICE, 0.35, protocol="ems")
            await wait_until(
                lambda: planner.tag_price is not None and abs(planner.tag_price - 0.35) < 1e-6,
                timeout_s=10,
                what="the EMS's price read",
            )
            await wait_until(lambda: planner.status is not None and planner.status.made_utc is not None,
                             timeout_s=10, what="a plan")  # fmt: skip
            prices, source = planner.prices(planner.status.made_utc, 2)  # type: ignore[union-attr]
            assert prices == [pytest.approx(0.35), 0.10], (prices, source)
            # the rule's saving is priced at the tag's price
            await wait_until(lambda: "at 0.35/kWh" in agent.view.recommender, timeout_s=15, what="a priced saving")
            # the EMS writes no price (NaN: the reply's sample is BAD): the table prices now again
            plant.plc.write(PRICE, float("nan"), protocol="ems")
            await wait_until(
                lambda: "not GOOD" in planner.prices(planner.status.made_utc, 2)[1],  # type: ignore[union-attr]
                timeout_s=10,
                what="the bad price noticed",
            )
            prices, source = planner.prices(planner.status.made_utc, 2)  # type: ignore[union-attr]
            assert prices == [0.10, 0.10]
            assert source.startswith(f"price tag {PRICE} not GOOD (BAD") and source.endswith("weekly table"), source
