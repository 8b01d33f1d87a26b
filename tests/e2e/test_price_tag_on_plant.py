"""The tariff's price from a PLC tag, read by the real agent over Modbus.

The demo config gets a tariff with a weekly table and a ``price_tag``. The embedded plant has no
price register, so a tag it does provide stands in for one (the pump room temperature, about
20: a dear price per kWh against the table's 0.10). The agent polls it like any tag, the planner
prices the current step with it and the rest of the horizon from the table, and says so in
``edge-agent status``; the saving the rule states is priced at it. When the tag is dropped from
the polls (BAD: stale) the table prices the current step again, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config
from agent.ops.status import status_document
from simulator import Plant, serve

from .plant_fixtures import demo_config_data, running_agent, wait_until

pytestmark = pytest.mark.timeout(90)


def _config(port: int, state: Path) -> Config:
    data = demo_config_data()
    data["agent"]["state_dir"] = str(state)
    data["devices"][0]["port"] = port
    data["recommender"]["tariff"] = {
        "currency": "EUR",
        "weekly": [{"days": "all", "from": "00:00", "to": "24:00", "price": 0.10}],
        "price_tag": "Station.AmbientTemp",
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
            assert plan["prices"] == "price tag Station.AmbientTemp now, weekly table after"
            ambient = float(plant.state.tags["Station.AmbientTemp"])
            assert planner.tag_price == pytest.approx(ambient, abs=0.5)
            assert planner.price_now(planner.status.made_utc) == planner.tag_price  # type: ignore[union-attr]
            # the rule's saving is priced at the tag's price
            await wait_until(lambda: "/kWh" in agent.view.recommender, timeout_s=10, what="a priced saving")
            assert f"at {planner.tag_price:g}/kWh" in agent.view.recommender
            # the tag goes stale (its device stops answering for it): the table prices now again
            agent.table._limits["Station.AmbientTemp"] = 0.001
            await wait_until(
                lambda: "not GOOD" in planner.prices(planner.status.made_utc, 2)[1],  # type: ignore[union-attr]
                timeout_s=10,
                what="the stale price tag noticed",
            )
            prices, source = planner.prices(planner.status.made_utc, 2)  # type: ignore[union-attr]
            assert prices == [0.10, 0.10]
            assert source.startswith(
                "price tag Station.AmbientTemp not GOOD (BAD (stale"
            ) and source.endswith("weekly table")
