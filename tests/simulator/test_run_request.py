"""The PLC's start logic: a run request obeyed only in remote, confirmed by the running feedback."""

from __future__ import annotations

from simulator import Plant


def _alive(plant: Plant, seconds: int) -> None:
    for _ in range(seconds):
        plant.plc.write("Station.AgentHeartbeat", (plant.plc.read("Station.AgentHeartbeat") + 1) % 65536)  # type: ignore[operator]
        plant.step(1.0)


def test_a_cleared_request_stops_the_pump_and_a_set_one_starts_it() -> None:
    plant = Plant(seed=1, permissive=True)
    _alive(plant, 5)
    tags = plant.state.tags
    assert tags["Station.RemoteActive"] is True and tags["Pump1.Running"] is True
    assert plant.plc.write("Pump1.RunRequest", False).accepted
    _alive(plant, 15)
    tags = plant.state.tags
    assert tags["Pump1.Running"] is False and plant.q[0] == 0.0 and tags["Pump1.MotorPower"] < 0.1
    assert tags["Pump2.Running"] is True and plant.q[1] > 0
    assert plant.plc.write("Pump1.RunRequest", True).accepted
    _alive(plant, 15)
    assert plant.state.tags["Pump1.Running"] is True and plant.q[0] > 0


def test_out_of_remote_the_request_is_ignored_and_tracks_the_local_run() -> None:
    plant = Plant(seed=1, permissive=False)
    plant.plc.write("Pump1.RunRequest", False)
    plant.run(20)
    tags = plant.state.tags
    assert tags["Station.RemoteActive"] is False and tags["Pump1.Running"] is True
    assert plant.plc.read("Pump1.RunRequest") is True  # tracks the local state: no surprise stop later
