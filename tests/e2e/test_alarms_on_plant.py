"""Against the plant over Modbus: each injected fault sets its alarm bit on the PLC within the
configured delay.

The real ``Agent`` runs on ``configs/demo.yaml`` against the real plant server
(``simulator.serve``); faults are injected like an operator or a test bench would (writing the
plant's ``Simulation.Pump1.FaultInject`` register, HR 1001, through Modbus) or with
``plant.inject`` where the register cannot express the fault (it injects severity 1 only); the
PLC's HMI registers are read back with a plain pymodbus client.

What is scaled, and why (each test's docstring repeats what applies to it):

* **Simulation speed.** Bearing wear (6 h to failure) and a winding heating up (1500 s thermal
  time constant) take more than an hour of plant time to reach their alarm limits, so those tests
  serve the plant at 1000x or 2000x (simulated steps of 1 s). Faults whose signature is
  immediate run at 10x. Bearing wear stays at 1000x so that its HIGH (severity 3) goes active
  well before HIGH_HIGH (1.5 mm/s, severity 4) could.
* **Alarm delays.** The demo's ``on_delay_s`` (10 s) and ``off_delay_s`` (30 / 60 s) are wall
  time in the agent; the test copy of the config sets every non-zero on-delay to 2 s (1 s in the
  acknowledge tests, 4 s in the restart test, where it must be clearly longer than a cycle) and
  every non-zero off-delay to 2 s, so a test takes seconds. Limits, deadbands, severities,
  codes, the HMI block, tags and the 1 s cycle / 0.5 s poll are the demo's.

Which faults reach which tag-limit alarm of the demo config (physics in simulator/README.md,
crossing times measured on the plant at severity s, after onset, in simulated time):

============================  ==========================  =============================================
fault (how injected)          alarm (code, HMI severity)  physics
============================  ==========================  =============================================
bearing_wear s=1 (HR 1001=1)  bearing_defect (2, 3)       VibBearing = 0.25 r + 9 d, d = (t/6 h)^2:
                                                          above 0.6 mm/s after ~4300-4400 s; HIGH_HIGH
                                                          1.5 only after ~7600-7900 s
cavitation s=1 (HR 1001=2)    suction_low (6, 3)          SuctionPressure at once -0.59..-0.74 bar
                                                          (limit -0.5 bar)
imbalance s=2.5 (inject)      vibration_high (3, 3)       1x band (0.8 + 5 s) r^2: 5.0-6.5 mm/s at the
                                                          demo's ~2000 rpm, ISO zone C (4.5), below D
motor_electrical s=3 (inject) winding_temp_high (5, 3)    winding T_amb + 75 (I/40)^2 + 20 s, tau
                                                          1500 s: above 130 degC after ~4500-4700 s
============================  ==========================  =============================================

Not covered because the physics does not reach the limit: imbalance at severity 1 (what the
register injects) gives at most ~3.1 mm/s overall (zone B): ``test_heartbeat_status_and_no_alarm_
below_the_limit`` checks that it raises nothing. motor_electrical at severity 1 settles at
~67 degC winding, far below 130 degC. bearing_temp_high (60 degC) is reached only near bearing
failure (~20000 s) and is left out to keep the run short.

Also here: acknowledge through the operator's coil 1 and the return of a non-latched and a
latched alarm; the agent's heartbeat (HR 0) and status word (HR 1); alarm state across an agent
restart with the same ``state_dir``; the status word after an orderly stop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.types import AlarmState
from simulator import Fault, FaultKind, Plant, serve

from .plant_fixtures import (
    CYCLE_S,
    POLL_S,
    Hmi,
    HmiBlockRegs,
    LimitWatch,
    alarm_def,
    bit,
    demo_config_data,
    modbus_test_config,
    running_agent,
    status_has,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

ZERO_BLOCK = HmiBlockRegs(0, 0, 0, 0, 0)
SUCTION_LOW = 6  # code of suction_low in configs/demo.yaml


@dataclass(frozen=True)
class FaultCase:
    kind: FaultKind
    alarm: str  # the demo's alarm def
    tag: str  # the plant tag its source reads (pump 1)
    limit: str  # which limit of the def the signature crosses ("high" / "low")
    severity: int  # HighestSeverity expected when the bit first shows
    speed: float  # plant speed (x real time)
    fault_severity: float = 1.0  # 1.0: injected through the register (severity 1)
    signature_s: float = 1.0  # simulated seconds from onset to the crossing (upper estimate)

    @property
    def via_register(self) -> bool:
        return self.fault_severity == 1.0


CASES = [
    FaultCase(
        FaultKind.BEARING_WEAR, "bearing_defect", "Pump1.VibBearing", "high", 3, 1000, signature_s=4600
    ),
    FaultCase(FaultKind.CAVITATION, "suction_low", "Pump1.SuctionPressure", "low", 3, 10),
    FaultCase(FaultKind.IMBALANCE, "vibration_high", "Pump1.Vibration", "high", 3, 10, fault_severity=2.5),
    FaultCase(
        FaultKind.MOTOR_ELECTRICAL,
        "winding_temp_high",
        "Pump1.WindingTemp",
        "high",
        3,
        2000,
        fault_severity=3.0,
        signature_s=4900,
    ),
]


async def _both_blocks(hmi: Hmi, seen_pump2: list[HmiBlockRegs]) -> HmiBlockRegs:
    b1 = await hmi.block(1)
    seen_pump2.append(await hmi.block(2))
    return b1


@pytest.mark.parametrize("case", CASES, ids=[c.kind.label for c in CASES])
async def test_injected_fault_sets_its_alarm_bit_within_the_delay(case: FaultCase, tmp_path: Path) -> None:
    """Fault on pump 1 → its alarm bit in Pump1.AlarmWord (HR 100) and HighestSeverity (HR 101).

    Scaled: the plant runs at ``case.speed`` x real time (1000x-2000x for the slow signatures, see the
    module docstring), every on-delay is 2 s instead of the demo's 10 s. The bound is physical:
    from the moment the plant's published value went beyond the limit (watched in process), the
    bit must appear no sooner than the on-delay and no later than on-delay + two cycles + one
    poll (+0.5 s for scheduling); pump 2, healthy, keeps an all-zero block throughout.
    """
    data = demo_config_data()
    d = alarm_def(data, case.alarm)
    code, limit = d["code"], d[case.limit]["value"]
    on_delay = 2.0
    plant = Plant(seed=7)
    async with serve(plant, modbus_port=0, speed=case.speed, heartbeat_timeout_s=5) as station:
        port = station.modbus_port
        assert port is not None
        config = modbus_test_config(port, tmp_path / "state", on_delay_s=on_delay)
        async with running_agent(config) as agent, Hmi(port) as hmi:
            # healthy start: the agent has written both (all-zero) blocks
            await wait_until(
                lambda: {"Pump1.AlarmWord", "Pump2.AlarmWord"} <= {e.tag for e in station.write_log},
                timeout_s=3,
                what="the agent's first HMI writes",
            )
            assert await hmi.block(1) == ZERO_BLOCK
            assert await hmi.block(2) == ZERO_BLOCK

            seen_pump2: list[HmiBlockRegs] = []
            direction = "high" if case.limit.startswith("high") else "low"
            async with LimitWatch(plant, case.tag, limit, direction) as watch:
                assert watch.first_beyond is None, f"{case.tag} beyond {limit} before the fault"
                if case.via_register:
                    await hmi.inject_fault(1, int(case.kind))
                else:
                    plant.inject(Fault(case.kind, pump=1, severity=case.fault_severity))
                assert plant.fault_code(1) == int(case.kind) and plant.fault_code(2) == 0

                budget = case.signature_s / case.speed * 1.5 + on_delay + 2 * CYCLE_S + POLL_S + 3.0

                async def raised() -> HmiBlockRegs | None:
                    b1 = await _both_blocks(hmi, seen_pump2)
                    return b1 if b1.alarm_word & bit(code) else None

                block = await wait_until(raised, timeout_s=budget, what=f"{case.alarm} bit on HR 100")
                t_bit = time.monotonic()

            # timing against the physics
            assert watch.first_beyond is not None
            run_start = watch.run_start_before(t_bit)
            assert run_start is not None
            assert t_bit - watch.first_beyond >= on_delay - 0.25, (
                f"bit {t_bit - watch.first_beyond:.2f} s after {case.tag} first crossed {limit}: "
                f"on-delay {on_delay} s not honoured"
            )
            late = t_bit - run_start
            assert late <= on_delay + 2 * CYCLE_S + POLL_S + 0.5, f"bit {late:.2f} s after the crossing"

            # the whole block, as the PLC holds it. The agent writes the block tag by tag (one
            # Modbus write each, AlarmWord first), so a read right after the bit appeared may
            # catch HighestSeverity etc. a few milliseconds before their writes: wait for them.
            assert block.alarm_word & ~bit(code) == 0, f"unexpected alarm word 0x{block.alarm_word:04X}"
            want = HmiBlockRegs(bit(code), case.severity, 1, code, 0)
            await wait_until(_block_is(hmi, 1, want), timeout_s=CYCLE_S, what=f"HR 100-104 = {want}")
            assert agent.alarms.state("pump1", code) is AlarmState.UNACK
            raised_events = [a for a in agent.view.alarms if a.asset == "pump1" and a.code == code]
            assert raised_events and raised_events[-1].state is AlarmState.UNACK
            value = raised_events[-1].value
            assert value is not None and (value > limit if direction == "high" else value < limit)

            # the healthy pump: all zero the whole time, still after one more cycle
            await _both_blocks(hmi, seen_pump2)
            assert seen_pump2 and all(b == ZERO_BLOCK for b in seen_pump2), seen_pump2[-1]
            assert agent.view.hmi["pump2"].alarm_word == 0
            assert all(a.asset == "pump1" for a in agent.view.alarms if not a.is_alert)


async def test_heartbeat_status_and_no_alarm_below_the_limit(tmp_path: Path) -> None:
    """The agent's heartbeat (HR 0) changes every cycle and its status word (HR 1) says running.

    Also the negative case of the table above: imbalance injected through the register
    (severity 1) lifts Pump1.Vibration to about 3 mm/s only, inside the 4.5 mm/s limit, so no
    alarm bit may appear within on-delay + three cycles. Scaled: plant at 10x, on-delay 2 s.
    """
    plant = Plant(seed=11)
    async with serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=5) as station:
        port = station.modbus_port
        assert port is not None
        config = modbus_test_config(port, tmp_path / "state", on_delay_s=2.0)
        async with running_agent(config) as agent, Hmi(port) as hmi:
            async with LimitWatch(plant, "Pump1.Vibration", 4.5) as watch:
                await hmi.inject_fault(1, int(FaultKind.IMBALANCE))
                assert plant.fault_code(1) == int(FaultKind.IMBALANCE)
                beats: list[int] = []
                t_end = time.monotonic() + 2.0 + 3 * CYCLE_S
                while time.monotonic() < t_end:
                    beats.append(await hmi.heartbeat())
                    assert await hmi.alarm_word(1) == 0
                    assert await hmi.alarm_word(2) == 0
                    await asyncio.sleep(0.25)
            assert watch.first_beyond is None  # the physics stayed inside the limit
            assert plant.state.tags["Pump1.Vib1x"] > 1.5  # but the fault is there (healthy ~0.4)

            distinct = sorted(set(beats))
            assert len(distinct) >= 4, f"heartbeat values seen: {distinct}"
            changes = sum(1 for a, b in itertools.pairwise(beats) if a != b)
            assert changes >= 4
            assert await hmi.heartbeat_ok()  # the PLC's watchdog sees it alive

            word = await hmi.status_word()
            assert word == agent.view.status_word
            assert status_has(word, "running") and not status_has(word, "stopping")
            assert status_has(word, "audit_ok") and status_has(word, "models_healthy")
            assert status_has(word, "writes_enabled") and status_has(word, "auto")
            assert not status_has(word, "degraded")
            assert word >> 8 == 0  # no device lost


async def test_orderly_stop_is_shown_in_the_status_word(tmp_path: Path) -> None:
    """After an orderly stop the PLC's status word (HR 1) no longer says running.

    README "Running the agent" documents bit 7 *stopping* in the status word written to the PLC,
    and bit 0 *running*. Once ``Agent.run`` has returned, the last status word the PLC holds must
    not claim the agent is running: it must have bit 7 (stopping) set and bit 0 clear; otherwise
    the operator sees "running" until the PLC's heartbeat watchdog expires (10 s by default, or
    never notices at all if nobody watches HeartbeatOk). Scaled: plant at 10x (irrelevant here).
    """
    plant = Plant(seed=12)
    async with serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=5) as station:
        port = station.modbus_port
        assert port is not None
        config = modbus_test_config(port, tmp_path / "state")
        async with Hmi(port) as hmi:
            async with running_agent(config):
                await wait_until(
                    lambda: _status_running(hmi), timeout_s=2 * CYCLE_S, what="running bit in HR 1"
                )
            word = await hmi.status_word()
            assert status_has(word, "stopping") and not status_has(word, "running"), (
                f"after the agent stopped, HR 1 = 0b{word:016b} still says running / not stopping"
            )


async def _status_running(hmi: Hmi) -> bool:
    return status_has(await hmi.status_word(), "running")


async def _wait_state(agent: object, asset: str, code: int, state: AlarmState, timeout_s: float) -> None:
    await wait_until(
        lambda: agent.alarms.state(asset, code) is state,  # type: ignore[attr-defined]
        timeout_s=timeout_s,
        what=f"{asset} code {code} {state.name}",
    )


async def test_acknowledge_coil_and_return_to_normal(tmp_path: Path) -> None:
    """Operator acknowledge (coil 1) and the return of a non-latched alarm, as configured.

    suction_low (code 6, not latched in the demo) on pump 1 by cavitation through the register,
    cleared by writing 0 to it. Path 1: active-unacked → acknowledge (rising edge on coil 1) →
    active-acked (bit still in HR 100, no longer unacked) → fault cleared → normal (HR 100..103
    all zero). Path 2: active-unacked → fault cleared → returned-unacknowledged (the bit leaves
    HR 100 and the active count, the first-out code stays in HR 103 until acknowledged) →
    acknowledge → normal. Scaled: plant at 10x, on-delay 1 s (delays are not the point here).
    """
    plant = Plant(seed=5)
    b = bit(SUCTION_LOW)
    react = POLL_S + 2 * CYCLE_S + 1.0  # the agent sees a coil or tag change within this
    async with serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=5) as station:
        port = station.modbus_port
        assert port is not None
        config = modbus_test_config(port, tmp_path / "state", on_delay_s=1.0)
        async with running_agent(config) as agent, Hmi(port) as hmi:
            # -- path 1: acknowledge while active, then return
            await hmi.inject_fault(1, int(FaultKind.CAVITATION))
            blk = await wait_until(_raised(hmi, 1, b), timeout_s=1.0 + react + 2, what="suction_low bit")
            assert (blk.highest_severity, blk.active_count, blk.first_out_code) == (3, 1, SUCTION_LOW)
            assert agent.alarms.state("pump1", SUCTION_LOW) is AlarmState.UNACK
            assert agent.view.hmi["pump1"].unacked_word & b

            await hmi.set_acknowledge(True)
            await _wait_state(agent, "pump1", SUCTION_LOW, AlarmState.ACKED, react)
            await hmi.set_acknowledge(False)  # the operator releases the pushbutton
            # the view's HMI block is refreshed later in the cycle that changed the state
            await wait_until(lambda: not agent.view.hmi["pump1"].unacked_word & b, timeout_s=react)
            blk = await hmi.block(1)
            assert blk.alarm_word == b and blk.highest_severity == 3  # active-acknowledged: still shown

            await hmi.inject_fault(1, 0)  # cavitation cleared: suction pressure recovers
            blk = await wait_until(_block_is(hmi, 1, ZERO_BLOCK), timeout_s=react, what="HR 100.. back to 0")
            assert agent.alarms.state("pump1", SUCTION_LOW) is AlarmState.NORMAL
            assert agent.view.hmi["pump1"].unacked_word == 0

            # -- path 2: return before acknowledge
            await hmi.inject_fault(1, int(FaultKind.CAVITATION))
            await wait_until(_raised(hmi, 1, b), timeout_s=1.0 + react + 2, what="suction_low bit again")
            assert agent.alarms.state("pump1", SUCTION_LOW) is AlarmState.UNACK
            await hmi.inject_fault(1, 0)
            await _wait_state(agent, "pump1", SUCTION_LOW, AlarmState.RTN_UNACK, react)
            blk = await wait_until(_block_is(hmi, 1, HmiBlockRegs(0, 0, 0, SUCTION_LOW, 0)), timeout_s=react)
            assert agent.view.hmi["pump1"].unacked_word & b  # still waiting for the operator

            await hmi.set_acknowledge(True)
            await _wait_state(agent, "pump1", SUCTION_LOW, AlarmState.NORMAL, react)
            await hmi.set_acknowledge(False)
            await wait_until(_block_is(hmi, 1, ZERO_BLOCK), timeout_s=react, what="first-out reset")
            assert agent.view.hmi["pump1"].unacked_word == 0
            assert await hmi.block(2) == ZERO_BLOCK

            states = [a.state for a in agent.view.alarms if a.asset == "pump1" and a.code == SUCTION_LOW]
            assert states == [
                AlarmState.UNACK,
                AlarmState.ACKED,
                AlarmState.NORMAL,
                AlarmState.UNACK,
                AlarmState.RTN_UNACK,
                AlarmState.NORMAL,
            ]


async def test_latched_alarm_holds_its_bit_until_acknowledged(tmp_path: Path) -> None:
    """With ``latch: true`` (test copy only: the demo latches nothing) on suction_low, the alarm
    stays active-unacknowledged after the cavitation is cleared, its bit held in HR 100, until the
    operator acknowledges on coil 1; then it returns to normal. Scaled: plant at 10x, on-delay 1 s.
    """
    plant = Plant(seed=6)
    b = bit(SUCTION_LOW)
    react = POLL_S + 2 * CYCLE_S + 1.0
    async with serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=5) as station:
        port = station.modbus_port
        assert port is not None
        config = modbus_test_config(port, tmp_path / "state", on_delay_s=1.0, latch=["suction_low"])
        async with running_agent(config) as agent, Hmi(port) as hmi:
            await hmi.inject_fault(1, int(FaultKind.CAVITATION))
            await wait_until(_raised(hmi, 1, b), timeout_s=1.0 + react + 2, what="suction_low bit")
            async with LimitWatch(plant, "Pump1.SuctionPressure", -0.5 + 0.05, "low") as back:
                await hmi.inject_fault(1, 0)
                await wait_until(lambda: back.run_start is None, timeout_s=3, what="suction recovered")
                t_back = time.monotonic()
                # cycles after the condition cleared: still latched on the PLC
                while time.monotonic() < t_back + POLL_S + 2 * CYCLE_S:
                    blk = await hmi.block(1)
                    assert blk.alarm_word == b and blk.active_count == 1 and blk.highest_severity == 3
                    await asyncio.sleep(0.2)
            assert agent.alarms.state("pump1", SUCTION_LOW) is AlarmState.UNACK

            await hmi.set_acknowledge(True)
            await _wait_state(agent, "pump1", SUCTION_LOW, AlarmState.NORMAL, react)
            await hmi.set_acknowledge(False)
            await wait_until(_block_is(hmi, 1, ZERO_BLOCK), timeout_s=react, what="latched bit reset")
            assert await hmi.block(2) == ZERO_BLOCK


async def test_active_alarm_survives_an_agent_restart(tmp_path: Path) -> None:
    """Alarm state is kept across a restart (same state_dir): the active alarm is back in the
    HMI word on the new agent's first cycle, without waiting for the on-delay again, still
    unacknowledged, and not announced a second time.

    Between the two agents the test zeroes HR 100..103 through Modbus, so what is read after the
    restart was written by the new agent. Scaled: plant at 10x; on-delay 4 s (not 10 s), still
    clearly longer than the 1 s cycle so "no second on-delay" is observable.
    """
    plant = Plant(seed=9)
    b = bit(SUCTION_LOW)
    on_delay = 4.0
    state_dir = tmp_path / "state"
    async with serve(plant, modbus_port=0, speed=10, heartbeat_timeout_s=5) as station:
        port = station.modbus_port
        assert port is not None
        config = modbus_test_config(port, state_dir, on_delay_s=on_delay)
        async with Hmi(port) as hmi:
            async with running_agent(config) as first:
                await hmi.inject_fault(1, int(FaultKind.CAVITATION))
                await wait_until(
                    _raised(hmi, 1, b), timeout_s=on_delay + POLL_S + 2 * CYCLE_S + 3, what="suction_low bit"
                )
                assert first.alarms.state("pump1", SUCTION_LOW) is AlarmState.UNACK
            assert (state_dir / "alarms.json").is_file()

            for reg in range(100, 104):  # the display is lost while the agent is down
                await hmi.write_hr(reg, 0)
            assert await hmi.alarm_word(1) == 0

            t_start = time.monotonic()
            async with running_agent(config) as second:
                t_first_cycle = time.monotonic()
                blk = await wait_until(_raised(hmi, 1, b), timeout_s=2 * CYCLE_S, what="bit after restart")
                t_bit = time.monotonic()
                assert t_bit - t_first_cycle < on_delay / 2, "the restored alarm waited for an on-delay"
                assert (blk.highest_severity, blk.active_count, blk.first_out_code) == (3, 1, SUCTION_LOW)
                assert second.alarms.state("pump1", SUCTION_LOW) is AlarmState.UNACK
                assert second.view.hmi["pump1"].unacked_word & b
                # restored, not raised again: no new transition for it
                assert not [a for a in second.view.alarms if a.code == SUCTION_LOW]
                # and it stays up over the following cycles, now on fresh samples (a restored
                # alarm without its condition would clear here, one that was not restored would
                # be announced again after the on-delay)
                await asyncio.sleep(POLL_S + 2 * CYCLE_S)
                assert (await hmi.alarm_word(1)) == b
                assert not [a for a in second.view.alarms if a.code == SUCTION_LOW]
                assert await hmi.block(2) == ZERO_BLOCK
            assert t_bit - t_start < on_delay + CYCLE_S


def _raised(hmi: Hmi, pump: int, mask: int):  # type: ignore[no-untyped-def]
    async def check() -> HmiBlockRegs | None:
        blk = await hmi.block(pump)
        return blk if blk.alarm_word & mask else None

    return check


def _block_is(hmi: Hmi, pump: int, want: HmiBlockRegs):  # type: ignore[no-untyped-def]
    async def check() -> HmiBlockRegs | None:
        blk = await hmi.block(pump)
        return blk if blk == want else None

    return check
