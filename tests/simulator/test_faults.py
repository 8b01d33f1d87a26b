"""Each fault shows in its signature tags and not in the others'; scenarios and fault flags."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from simulator.faults import (
    Fault,
    FaultKind,
    ScenarioError,
    ScenarioEvent,
    load_scenario,
    parse_duration,
    parse_fault_flag,
    parse_scenario,
)
from simulator.physics import Plant

REPO = Path(__file__).resolve().parents[2]
ONSET = 600.0
WINDOW = 600.0  # compare the last 10 minutes of a 1 h run


def _run(fault: Fault | None, seed: int = 5, duration: float = 3600.0, tags: tuple[str, ...] = ()) -> dict:
    events = [ScenarioEvent(at_s=ONSET, fault=fault)] if fault is not None else []
    plant = Plant(seed=seed, scenario=events)
    cols: dict[str, list[float]] = {t: [] for t in tags}
    while plant.t < duration - 1e-9:
        plant.step(1.0)
        if plant.t > duration - WINDOW:
            s = plant.state
            for t in tags:
                cols[t].append(float(s[t]))
    return {t: np.array(v) for t, v in cols.items()}


SIG_TAGS = (
    "Pump1.Flow",
    "Pump1.SuctionPressure",
    "Pump1.DischargePressure",
    "Station.HeaderPressure",
    "Pump1.MotorCurrent",
    "Pump1.MotorPower",
    "Pump1.WindingTemp",
    "Pump1.BearingTemp",
    "Pump1.Vib1x",
    "Pump1.VibBearing",
    "Pump1.VibHF",
)


def _indicators(run: dict, base: dict) -> dict[str, float]:
    """One indicator per process fault, each in units where 1.0 is the detection threshold."""

    def mean(key: str, d: dict) -> float:
        return float(np.mean(d[key]))

    d_current = mean("Pump1.MotorCurrent", run) / mean("Pump1.MotorCurrent", base) - 1
    d_power = mean("Pump1.MotorPower", run) / mean("Pump1.MotorPower", base) - 1
    valve_dp = mean("Pump1.DischargePressure", run) - mean("Station.HeaderPressure", run)
    valve_dp_base = mean("Pump1.DischargePressure", base) - mean("Station.HeaderPressure", base)
    # sample-to-sample flow noise (differences remove the slow process variation)
    flow_cv = float(np.std(np.diff(run["Pump1.Flow"])) / np.mean(run["Pump1.Flow"]))
    flow_cv_base = float(np.std(np.diff(base["Pump1.Flow"])) / np.mean(base["Pump1.Flow"]))
    return {
        "bearing_wear": (mean("Pump1.VibBearing", run) - mean("Pump1.VibBearing", base)) / 1.0,
        "bearing_temp": (mean("Pump1.BearingTemp", run) - mean("Pump1.BearingTemp", base)) / 2.5,
        "cavitation": -(mean("Pump1.SuctionPressure", run) - mean("Pump1.SuctionPressure", base)) / 0.3,
        "cavitation_hf": (mean("Pump1.VibHF", run) - mean("Pump1.VibHF", base)) / 1.0,
        "cavitation_flow_noise": (flow_cv / flow_cv_base) / 3.0,
        "imbalance": (mean("Pump1.Vib1x", run) - mean("Pump1.Vib1x", base)) / 1.0,
        "motor_electrical": (d_current - d_power) / 0.08,
        "motor_winding": (mean("Pump1.WindingTemp", run) - mean("Pump1.WindingTemp", base)) / 8.0,
        "valve_blockage": (valve_dp - valve_dp_base) / 0.2,
    }


OWN = {
    FaultKind.BEARING_WEAR: ("bearing_wear", "bearing_temp"),
    FaultKind.CAVITATION: ("cavitation", "cavitation_hf", "cavitation_flow_noise"),
    FaultKind.IMBALANCE: ("imbalance",),
    FaultKind.MOTOR_ELECTRICAL: ("motor_electrical", "motor_winding"),
    FaultKind.VALVE_BLOCKAGE: ("valve_blockage",),
}


@pytest.fixture(scope="module")
def baseline() -> dict:
    return _run(None, tags=SIG_TAGS)


@pytest.mark.parametrize("kind", list(OWN), ids=lambda k: k.label)
def test_process_fault_shows_its_signature_and_not_the_others(kind: FaultKind, baseline: dict) -> None:
    ttf = 5400.0 if kind == FaultKind.BEARING_WEAR else None
    run = _run(Fault(kind, pump=1, time_to_failure_s=ttf), tags=SIG_TAGS)
    ind = _indicators(run, baseline)
    for name in OWN[kind]:
        assert ind[name] > 1.0, f"{kind.label}: own indicator {name} = {ind[name]:.2f} too weak ({ind})"
    for other, names in OWN.items():
        if other == kind:
            continue
        for name in names:
            assert ind[name] < 0.5, f"{kind.label} leaks into {name} = {ind[name]:.2f} ({ind})"


def test_no_fault_means_no_indicator(baseline: dict) -> None:
    other_seed = _run(None, seed=6, tags=SIG_TAGS)
    ind = _indicators(other_seed, baseline)
    assert all(v < 0.5 for v in ind.values()), ind


ALL_TAGS = (
    "Pump1.BearingTemp",
    "Pump1.Flow",
    "Pump1.Vibration",
    "Pump1.DischargePressure",
    "Pump2.BearingTemp",
    "Station.TankLevel",
)


@pytest.mark.parametrize(
    "kind",
    [FaultKind.SENSOR_STUCK, FaultKind.SENSOR_DRIFT, FaultKind.SENSOR_SPIKE, FaultKind.SENSOR_DROPOUT],
    ids=lambda k: k.label,
)
def test_sensor_fault_changes_only_its_tag(kind: FaultKind) -> None:
    base = _run(None, tags=ALL_TAGS, duration=2400.0)
    run = _run(Fault(kind, pump=1, tag="BearingTemp"), tags=ALL_TAGS, duration=2400.0)
    # the physics and every other measurement are bit-identical: same random stream
    for tag in ALL_TAGS:
        if tag != "Pump1.BearingTemp":
            assert np.array_equal(run[tag], base[tag]), tag
    x, ref = run["Pump1.BearingTemp"], base["Pump1.BearingTemp"]
    diff = x - ref
    if kind == FaultKind.SENSOR_STUCK:
        assert np.all(x == x[0]) and np.std(ref) > 0.05
    elif kind == FaultKind.SENSOR_DRIFT:
        # 5 % of a 150 K span per hour: 7.5 K/h, linear in time
        expected = 7.5 * (np.arange(len(x)) + (2400.0 - WINDOW + 1) - ONSET) / 3600.0
        assert np.allclose(diff, expected, atol=1e-6)
    elif kind == FaultKind.SENSOR_SPIKE:
        spikes = np.abs(diff) > 1.0
        assert 5 <= spikes.sum() <= 80  # 0.05 per second over 600 s: about 30
        assert np.allclose(np.abs(diff[spikes]), 37.5)  # 25 % of the span
        assert np.all(diff[~spikes] == 0)
    else:
        assert np.all(np.isnan(x))


def test_dropout_sets_the_signal_fault_bit_and_bad_tags() -> None:
    plant = Plant(seed=1)
    plant.inject(Fault(FaultKind.SENSOR_DROPOUT, pump=2, tag="Flow"))
    plant.step(1.0)
    s = plant.state
    assert math.isnan(s["Pump2.Flow"]) and s.bad_tags == {"Pump2.Flow"}
    assert s["Pump2.Status"] & 0x80 and not s["Pump1.Status"] & 0x80
    assert s.fault_codes == (0, 9) and s.fault_labels == ("normal", "sensor_dropout")
    assert s.fault_masks == (0, 1 << 9)


def test_fault_code_is_the_lowest_active_and_mask_lists_all() -> None:
    plant = Plant(seed=1)
    plant.inject(Fault(FaultKind.VALVE_BLOCKAGE, pump=1))
    plant.inject(Fault(FaultKind.IMBALANCE, pump=1))
    plant.step(1.0)
    assert plant.state.fault_codes[0] == 3
    assert plant.state.fault_masks[0] == (1 << 3) | (1 << 5)
    plant.clear(1, FaultKind.IMBALANCE)
    plant.step(1.0)
    assert plant.state.fault_codes[0] == 5
    plant.inject(Fault(FaultKind.SENSOR_STUCK, pump=1, tag="Flow"))
    plant.inject(Fault(FaultKind.SENSOR_STUCK, pump=1, tag="Speed"))
    plant.clear(Fault(FaultKind.SENSOR_STUCK, pump=1, tag="Flow"))
    assert [f.tag for f in plant.active_faults(1)] == [None, "Speed"]
    plant.clear(1)
    plant.step(1.0)
    assert plant.state.fault_codes[0] == 0 and plant.state.fault_masks[0] == 0


def test_duration_clears_a_fault_automatically() -> None:
    plant = Plant(
        seed=1, scenario=[ScenarioEvent(at_s=10, fault=Fault(FaultKind.IMBALANCE, 2, duration_s=20))]
    )
    codes = []
    for _ in range(40):
        plant.step(1.0)
        codes.append(plant.state.fault_codes[1])
    assert codes[:10] == [0] * 10
    assert set(codes[11:29]) == {3}
    assert codes[-5:] == [0] * 5


def test_fault_inject_register_goes_through_the_plc() -> None:
    plant = Plant(seed=1)
    res = plant.plc.write("Simulation.Pump2.FaultInject", 2, protocol="modbus")
    assert res.accepted and plant.fault_code(2) == 2
    assert plant.plc.read("Simulation.Pump2.FaultInject") == 2
    bad = plant.plc.write("Simulation.Pump2.FaultInject", 42)
    assert not bad.accepted and bad.error == "illegal_value" and "unknown fault code" in bad.reason
    assert plant.plc.write("Simulation.Pump2.FaultInject", 0).accepted
    assert plant.fault_code(2) == 0
    assert [e.tag for e in plant.plc.write_log] == ["Simulation.Pump2.FaultInject"] * 3


# -- scenario files and flags -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo", "normal", "all_faults"])
def test_example_scenarios_load_and_run(name: str) -> None:
    sc = load_scenario(REPO / "configs" / "scenarios" / f"{name}.yaml")
    assert sc.name == name and sc.pumps == 2
    plant = Plant(seed=sc.seed or 0, scenario=sc)
    plant.run(120, 1.0)
    if name == "demo":
        assert plant.state.fault_labels[0] == "bearing_wear" and plant.plc.permissive
        assert plant.state.rul_h[0] == pytest.approx((60 + 300 - 120) / 3600)  # 5 min to failure
    if name == "all_faults":
        kinds = {ev.fault.kind for ev in sc.events if ev.fault}
        assert kinds == set(FaultKind) - {FaultKind.NORMAL}


def test_scenario_list_form_and_times() -> None:
    sc = parse_scenario(
        "- at: 60s\n  pump: 1\n  fault: bearing_wear\n  severity: 1.0\n  time_to_failure: 6h\n"
        "- at: 1.5min\n  pump: 2\n  clear: all\n"
    )
    assert [e.at_s for e in sc.events] == [60.0, 90.0]
    assert sc.events[0].fault == Fault(FaultKind.BEARING_WEAR, 1, 1.0, time_to_failure_s=21600.0)
    assert sc.events[1].clear == (2, None)
    assert parse_duration("2h30min") == 9000 and parse_duration("10m") == 600 and parse_duration(5) == 5


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "events:\n  - at: 60s\n    pump: 1\n    fault: bearing_wear\n    sevrity: 2\n",
            ":5: sevrity: unknown field",
        ),
        ("events:\n  - at: 60s\n    pump: 1\n    fault: bearing_waer\n", ":4: fault: unknown fault"),
        ("events:\n  - at: soon\n    pump: 1\n    fault: imbalance\n", ":2: at: not a duration"),
        ("events:\n  - at: 1s\n    pump: 0\n    fault: imbalance\n", ":3: pump:"),
        ("events:\n  - at: 1s\n    pump: 1\n    fault: imbalance\n    severity: 9\n", ":5: severity:"),
        ("events:\n  - at: 1s\n    pump: 1\n    fault: imbalance\n    tag: Flow\n", ":5: tag:"),
        ("speed: 3\n", ":1: speed: unknown field"),
        ("pumps: 2\nevents:\n  - at: 1s\n    pump: 3\n    fault: imbalance\n", ":3: pump: pump 3"),
    ],
)
def test_scenario_errors_name_file_line_and_field(text: str, where: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, source="bad.yaml")
    assert str(err.value).startswith("bad.yaml") and where in str(err.value)


def test_fault_flag() -> None:
    ev = parse_fault_flag("2:sensor_drift@10min,tag=BearingTemp,severity=0.5")
    assert ev.at_s == 600 and ev.fault == Fault(FaultKind.SENSOR_DRIFT, 2, 0.5, tag="BearingTemp")
    assert parse_fault_flag("1:cavitation").at_s == 0
    assert parse_fault_flag("1:bearing_wear@60s,ttf=2h").fault.time_to_failure_s == 7200  # type: ignore[union-attr]
    for bad in ("x:imbalance", "1:nothing", "1:imbalance@later", "1:imbalance,colour=red"):
        with pytest.raises(ScenarioError):
            parse_fault_flag(bad)
    with pytest.raises(ValueError, match="pump 3"):
        Plant(seed=0, scenario=[parse_fault_flag("3:imbalance")])
