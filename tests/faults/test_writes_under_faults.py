"""The writing agent behind a faulty network, judged by the PLC's own log of the writes it got.

The real Agent (in this process) runs the demo config in ``auto`` against the embedded plant
(20x simulation speed; the demo scenario unloads pump 1, so the agent keeps moving setpoints),
but reaches the plant's Modbus server only through the fault proxy. On a schedule the link
delays replies past the timeout, drops them, cuts the connection, goes half-open, truncates
replies and corrupts a data byte of them, with a clean spell between faults. Then:

* the agent kept running and cycling, and its pollers never died;
* every setpoint write the plant received had a committed audit decision before it, made from
  inputs that were all GOOD (nothing from BAD or stale data);
* no setpoint moved faster than its rate limit: each write differs from what the register held
  just before it (the PLC's own record; its own control may have moved it in between) by no
  more than the rate allows since the previous write (the plant's simulated time, scaled back);
* while the link was dead (half-open, replies dropped or late), at most the one write already
  on its way reached the plant per target; once the link was back, writes resumed;
* a link that corrupts the same byte of every reply, once the agent holds on every target a
  value it verified (its own write, or the value it last verified still read after the spells
  in which it could not see the permissive), moves nothing: the confirmed but foreign value holds
  the target ("moved by another writer"). Right after the PLC itself moved a setpoint (its
  tracking while the agent's heartbeat was stale), before the agent's next verified write, such
  a lie cannot be told from that tracking by any reader: that case is not claimed.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from simulator import Plant, serve
from simulator.faults import load_scenario
from tests.e2e.plant_fixtures import modbus_test_config, running_agent, wait_until
from tests.e2e.test_writeback_on_plant import RATE_PER_S, TARGETS, audit_rows_before
from tests.faults.proxy import Fault, FaultProxy

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[2]
SPEED = 20
FAULTS: list[tuple[str, Fault, bool]] = [  # name, what the replies suffer, is the link dead
    ("late", Fault(delay_s=0.6), True),  # the demo's timeout is 300 ms
    ("dropped", Fault(drop=True), True),
    ("half-open", Fault(half_open=True), True),
    ("cut", Fault(cut=True), True),
    ("truncated", Fault(truncate=9), False),
    ("corrupted data", Fault(corrupt={10: 0x40}), False),
]
FAULT_S, CLEAN_S = 4.0, 5.0


async def test_writes_through_a_faulty_link_are_audited_good_and_rate_limited(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "configs" / "scenarios" / "demo.yaml")
    plant = Plant(seed=3, scenario=scenario)
    dead: list[tuple[str, float, float]] = []  # (fault, from, to) on the plant's simulated clock
    async with (
        serve(plant, modbus_port=0, opcua_port=None, speed=SPEED, heartbeat_timeout_s=30) as station,
        FaultProxy(station.modbus_port, lifetime_s=140) as proxy,
    ):
        cfg = modbus_test_config(proxy.port, tmp_path / "state")
        async with running_agent(cfg) as running:
            await asyncio.sleep(CLEAN_S + 4)  # origins confirmed, the demo's first moves made
            for name, fault, is_dead in FAULTS:
                if name == "corrupted data":
                    # A link that lies the same way on every reply cannot be told from the truth
                    # by any reader; the agent catches it as another writer once it holds, on
                    # each target, a value it verified since control last came back (a CI run
                    # once lied while pump 1 had none: any verified write is not enough).
                    wb = running.writeback
                    await wait_until(
                        lambda wb=wb: all(wb.anchored(t) for t in TARGETS),
                        timeout_s=30,
                        what="a verified value on every target after the link came back",
                    )
                start = plant.plc.sim_time_s
                proxy.set(down=fault)
                await asyncio.sleep(FAULT_S)
                proxy.clear()
                if is_dead:
                    dead.append((name, start, plant.plc.sim_time_s))
                cycles = running.view.cycles
                await asyncio.sleep(CLEAN_S)
                assert running.view.cycles > cycles, f"no cycle after {name}"
            resumed_from = plant.plc.sim_time_s - CLEAN_S * SPEED
        log = list(station.write_log)
    writes = [e for e in log if e.tag in TARGETS and e.protocol == "modbus"]
    assert len(writes) >= 5, "too few writes to judge"
    for row in audit_rows_before(writes, tmp_path / "state" / "audit.sqlite"):
        assert row.qualities and all(q == "GOOD" for q in row.qualities.values()), row
    taken = [e for e in writes if e.accepted]
    for e in taken:
        assert 1500 <= float(e.value) <= 2950, e
    for tag in TARGETS:
        seq = [e for e in taken if e.tag == tag]
        for a, b in itertools.pairwise(seq):
            dt_s = (b.sim_time_s - a.sim_time_s) / SPEED
            assert b.previous is not None
            assert abs(float(b.value) - float(b.previous)) <= RATE_PER_S * (dt_s + 0.25) + 1e-6, (a, b)
        for name, start, end in dead:
            during = [e for e in seq if start + 1.0 * SPEED < e.sim_time_s <= end]
            assert len(during) <= 1, f"{tag}: {len(during)} writes reached the plant while the link was {name}"
    # once the link is clean the agent writes again: setpoints after the first dead spell, the
    # heartbeat (every cycle) in the last clean spell
    assert any(e.sim_time_s > dead[0][2] for e in taken), "no setpoint write after the link came back"
    beats = [e for e in log if e.tag == "Station.AgentHeartbeat" and e.accepted]
    assert any(e.sim_time_s >= resumed_from for e in beats), "no heartbeat once the link was clean again"
