"""The PLC's rules, on the simulated clock: permissive, clamp, heartbeat fallback, write log."""

from __future__ import annotations

import itertools
import math

from simulator.physics import Plant, StationParams

TIMEOUT = 10.0


def _beat(plant: Plant, k: int) -> None:
    plant.plc.write("Station.AgentHeartbeat", k)


def test_setpoint_refused_while_permissive_off_and_register_tracks() -> None:
    plant = Plant(seed=1)
    _beat(plant, 1)
    res = plant.plc.write("Pump1.ExternalSpeedSetpoint", 2500.0, protocol="modbus", address="HR 120-121")
    assert not res.accepted and res.reason == "permissive off" and res.error is None
    plant.step(1.0)
    s = plant.state
    assert s["Pump1.ExternalSpeedSetpoint"] == s["Pump1.SpeedSetpoint"] != 2500.0
    assert not s.external_active and s["Station.Status"] & 0b111 == 0b010  # heartbeat ok only
    entry = plant.plc.write_log[-1]
    assert (entry.protocol, entry.address, entry.tag, entry.value, entry.accepted, entry.applied) == (
        "modbus",
        "HR 120-121",
        "Pump1.ExternalSpeedSetpoint",
        2500.0,
        False,
        None,
    )
    assert entry.reason == "permissive off" and entry.wall_time.tzinfo is not None


def test_setpoint_needs_a_heartbeat_and_is_clamped_to_the_plc_limits() -> None:
    plant = Plant(seed=1)
    plant.plc.write("Station.Permissive", True)
    assert plant.plc.write("Pump1.ExternalSpeedSetpoint", 2500.0).reason == "no heartbeat yet"
    _beat(plant, 1)
    ok = plant.plc.write("Pump1.ExternalSpeedSetpoint", 2500.0)
    assert ok.accepted and ok.applied == 2500.0 and ok.reason == "applied"
    high = plant.plc.write("Pump2.ExternalSpeedSetpoint", 3500.0)
    assert high.accepted and high.applied == 2950.0 and high.reason == "clamped to 2950"
    low = plant.plc.write("Pump2.ExternalSpeedSetpoint", 100.0)
    assert low.applied == 1500.0 and low.reason == "clamped to 1500"
    nan = plant.plc.write("Pump1.ExternalSpeedSetpoint", math.nan)
    assert not nan.accepted and nan.error == "illegal_value"
    plant.run(10.0, 0.1)  # ramp 300 rpm/s: 10 s is enough
    s = plant.state
    assert s.external_active and s["Station.RemoteActive"] and s["Pump1.Status"] & 2
    assert s["Pump1.SpeedSetpoint"] == 2500.0 and s["Pump2.SpeedSetpoint"] == 1500.0
    assert abs(s["Pump1.Speed"] - 2500.0) < 10 and s["Pump2.Status"] & 4  # at min speed


def test_heartbeat_must_change_and_its_loss_falls_back_bumplessly() -> None:
    plant = Plant(seed=1)
    plant.plc.write("Station.Permissive", True)
    _beat(plant, 7)
    plant.plc.write("Pump1.ExternalSpeedSetpoint", 2400.0)
    plant.plc.write("Pump2.ExternalSpeedSetpoint", 2400.0)
    for _ in range(int(TIMEOUT - 2)):
        plant.step(1.0)
        same = plant.plc.write("Station.AgentHeartbeat", 7)  # the same value does not count
        assert same.accepted and "unchanged" in same.reason
    assert plant.state.external_active
    plant.run(3.0, 1.0)
    assert plant.state.t_s == 11.0 and plant.state.external_active  # the scan at t = 10 s: age 10 s
    plant.step(1.0)
    assert not plant.state.external_active  # > 10 s without a change
    assert not plant.state["Station.HeartbeatOk"] and plant.state["Station.HeartbeatAge"] > TIMEOUT
    assert [e.message for e in plant.plc.events][-1] == "falling back to local PI control (heartbeat stale)"
    # bumpless: the PI starts from the setpoint in use, no jump
    sp = [plant.state["Pump1.SpeedSetpoint"]]
    for _ in range(5):
        plant.step(0.1)
        sp.append(plant.state["Pump1.SpeedSetpoint"])
    assert max(abs(b - a) for a, b in itertools.pairwise(sp)) < 30.0
    assert abs(sp[0] - 2400.0) < 30.0
    refused = plant.plc.write("Pump1.ExternalSpeedSetpoint", 2000.0)
    assert refused.reason == "heartbeat stale"
    _beat(plant, 8)  # heartbeat back: external control resumes from the tracked setpoint
    plant.step(0.1)
    assert plant.state.external_active
    assert abs(plant.state["Pump1.SpeedSetpoint"] - sp[-1]) < 30.0


def test_permissive_off_returns_control_to_the_pi() -> None:
    plant = Plant(seed=2)
    plant.plc.write("Station.Permissive", True)
    _beat(plant, 1)
    plant.plc.write("Pump1.ExternalSpeedSetpoint", 2900.0)
    plant.plc.write("Pump2.ExternalSpeedSetpoint", 2900.0)
    plant.run(20.0, 0.1)
    assert plant.state["Pump1.Speed"] > 2850
    plant.plc.write("Station.OperatorCommand", 0)  # the register mirror switches it off too
    assert not plant.plc.permissive
    plant.run(600.0, 1.0)
    s = plant.state
    assert not s.external_active and s["Station.Status"] & 1 == 0
    assert s["Pump1.SpeedSetpoint"] < 2700  # the PI brings the level back down
    assert s["Pump1.ExternalSpeedSetpoint"] == s["Pump1.SpeedSetpoint"]


def test_acknowledge_is_a_pulse() -> None:
    plant = Plant(StationParams(ack_pulse_s=5.0), seed=1)
    plant.plc.write("Station.Acknowledge", True)
    plant.step(1.0)
    assert plant.state["Station.Acknowledge"] and plant.state["Station.Status"] & 32
    assert plant.state["Station.OperatorCommand"] == 2
    plant.run(5.0, 1.0)
    assert not plant.state["Station.Acknowledge"]


def test_hmi_tags_are_stored_and_bad_writes_refused() -> None:
    plant = Plant(seed=1)
    assert plant.plc.write("Pump1.AnomalyScore", 0.75).accepted
    assert plant.plc.write("Pump1.AlarmWord", 0b1010).accepted
    assert plant.plc.write("Pump1.RUL", 123.5).accepted
    s = plant.state
    assert (s["Pump1.AnomalyScore"], s["Pump1.AlarmWord"], s["Pump1.RUL"]) == (0.75, 10, 123.5)
    assert plant.plc.write("Pump1.AlarmWord", 70000).error == "illegal_value"
    assert plant.plc.write("Pump1.AlarmWord", 1.5).error == "illegal_value"
    assert plant.plc.write("Pump1.Flow", 1.0).error == "read_only"
    assert plant.plc.write("Pump9.Flow", 1.0).error == "illegal_address"
    assert len(plant.plc.write_log) == 7
    assert [e.accepted for e in plant.plc.write_log] == [True, True, True, False, False, False, False]
