"""The cycle's heartbeat (agent/runtime.py, Agent.cycle): it leaves before the alarms, HMI
blocks, recommendations and the Guard's decisions are worked out (its round trips overlap
them), it is done before the setpoints (the write-back is handed it), and a cycle that fails or is cancelled leaves no heartbeat task behind. A fake
driver at our seam (``make_driver``) logs every write; its replies take a while, as a
device's do."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import agent.runtime as runtime
from agent.config import parse_config
from agent.types import Value

CONFIG = """
agent: {{state_dir: {state}, cycle_ms: 50}}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    tags:
      - {{name: Station.Level, table: input, address: 0, type: float32}}
      - {{name: Agent.Heartbeat, table: holding, address: 0, type: uint16, access: read-write, purpose: heartbeat}}
      - {{name: Agent.Status, table: holding, address: 1, type: uint16, access: read-write, purpose: status}}
hmi: {{heartbeat_tag: Agent.Heartbeat, status_tag: Agent.Status}}
"""


class SlowDriver:
    """Every write is logged when asked and when answered; an answer takes ``reply_s``."""

    name = "plc"

    def __init__(self, events: list[str], reply_s: float = 0.005) -> None:
        self.events = events
        self.reply_s = reply_s
        self.hold: asyncio.Event | None = None  # set: writes wait for it

    async def write_many(self, items: Any, *, purpose: str) -> dict[str, Value]:
        self.events.append(f"{purpose} sent")
        try:
            if self.hold is not None:
                await self.hold.wait()
            await asyncio.sleep(self.reply_s)
        except asyncio.CancelledError:
            self.events.append(f"{purpose} cancelled")
            raise
        self.events.append(f"{purpose} answered")
        return {name: value for name, value in items}

    def unit_status(self) -> list[Any]:
        return []


class Setpoints:
    """Stands in for the write-back unit: logs when the setpoints would be written."""

    guard = None

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.outcomes: Counter[str] = Counter()

    async def step(self, inputs: Any, *, after: asyncio.Future[Any] | None = None) -> dict[str, Any]:
        self.events.append("decisions")  # made while the heartbeat is under way
        assert after is not None, "the cycle hands the write-back its heartbeat"
        await after  # as WriteBack.step does before a write (tests/unit/test_writeback.py)
        self.events.append("setpoints")
        return {}

    def holding(self) -> dict[str, Any]:
        return {}


def make_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[runtime.Agent, SlowDriver, list[str]]:
    events: list[str] = []
    driver = SlowDriver(events)
    monkeypatch.setattr(runtime, "make_driver", lambda device: driver)
    agent = runtime.Agent(parse_config(CONFIG.format(state=tmp_path)), config_path=tmp_path / "agent.yaml")
    agent.writeback = Setpoints(events)  # type: ignore[assignment]
    inner = agent._evaluate_alarms

    async def alarms(now: float, now_utc: Any) -> None:
        events.append("alarms")
        await inner(now, now_utc)

    agent._evaluate_alarms = alarms  # type: ignore[method-assign]
    made = agent._write_inputs

    def recommendations(now: float) -> Any:
        events.append("recommendations")
        return made(now)

    agent._write_inputs = recommendations  # type: ignore[method-assign]
    return agent, driver, events


async def test_the_heartbeat_leaves_before_the_work_and_is_done_before_the_setpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, _, events = make_agent(tmp_path, monkeypatch)
    for i in range(3):
        events.clear()
        await agent.cycle()
        assert events.index("heartbeat sent") < events.index("alarms")  # under way during them
        assert events.index("recommendations") < events.index("heartbeat answered")  # and these
        if "status sent" not in events:  # (the status word, when due, is written before them)
            assert events.index("decisions") < events.index("heartbeat answered")  # the Guard's
        assert events.index("heartbeat answered") < events.index("setpoints")
        assert events.count("heartbeat sent") == events.count("heartbeat answered") == 1
        assert events.index("decisions") < events.index("setpoints")
        if i == 0:  # the status word (written when it changed): made after the alarms
            assert events.index("alarms") < events.index("status sent") < events.index("setpoints")
    assert agent.hmi.stats["Agent.Heartbeat"].written == 3


@pytest.mark.parametrize("how", ["error", "cancel"])
async def test_a_cycle_that_ends_early_leaves_no_heartbeat_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    agent, driver, events = make_agent(tmp_path, monkeypatch)
    driver.hold = asyncio.Event()  # the heartbeat's reply does not come
    before = asyncio.all_tasks()

    async def broken(now: float, now_utc: Any) -> None:
        events.append("alarms")
        if how == "error":
            raise RuntimeError("a bug in the alarms")
        await asyncio.Event().wait()

    agent._evaluate_alarms = broken  # type: ignore[method-assign]
    task = asyncio.create_task(agent.cycle())
    await asyncio.sleep(0.01)
    if how == "cancel":
        task.cancel()
    with pytest.raises(RuntimeError if how == "error" else asyncio.CancelledError):
        await task
    assert events == ["heartbeat sent", "alarms", "heartbeat cancelled"]
    assert asyncio.all_tasks() == before
