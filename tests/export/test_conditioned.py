"""The operating-point-conditioned anomaly model (export/conditioned.py) on short plant recordings.

A load shift as the agent's recommendation makes it (speed setpoints written through the PLC
API) on healthy pumps raises no alert with the conditioned model, while a PCA fitted on the same
recordings does alert; a sensor drift is still caught; the bundle runs through the agent's
own loader and scorer arithmetic with the numpy reference's numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import FeatureSpec, WindowSpec
from bench.loadshift import Shift, record
from bench.replay import STATION_ROLES
from export.conditioned import ConditionedModel, feature_indices
from export.pca_baseline import (
    FitResult,
    RoleSpec,
    _asset_segments,
    _Contract,
    _features,
    alarm_episodes,
    fit,
    write_bundle,
)
from simulator.faults import Fault, FaultKind, ScenarioEvent

ROLES = [  # the station's roles less the three vibration bands
    RoleSpec.parse(r)
    for r in STATION_ROLES
    if not r.startswith(("vibration_1x:", "vibration_2x:", "vibration_bearing:"))
]
ASSETS = {a: {r.role: r.column.format(asset=a) for r in ROLES} for a in ("Pump1", "Pump2")}
WINDOW = WindowSpec(sample_period_s=1.0, length=60, stride=10)
FEATURES = FeatureSpec(kind="summary", stats=("mean", "std", "last"))
OPERATING = ("speed", "flow")
ON_DELAY = 3  # frames: configs/demo.yaml's 30 s on-delay at a frame every 10 s


# the envelope the agent's rule uses: a pump unloaded to its minimum speed while the other
# carries the flow (both ways, 2300-2900 rpm), and both pumps at one speed off the PLC's choice
FIT_SHIFTS = [
    s
    for i, speeds in enumerate(
        ({1: 1500.0, 2: 2400.0}, {1: 2900.0, 2: 1500.0}, {1: 2300.0, 2: 2300.0}, {1: 1500.0, 2: 2900.0},
         {1: 2600.0, 2: 1500.0}, {1: 1900.0, 2: 1900.0})
    )
    for s in (Shift(1800.0 + i * 4500.0, speeds), Shift(1800.0 + i * 4500.0 + 2700.0, None))
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("conditioned")
    return {
        # fitting: PLC level control, and the same plant with the agent's load shifts (seeds 11-12)
        "plc": record(d / "plc.csv", seed=11, hours=6),
        "shifts": record(d / "shifts.csv", seed=12, hours=8, shifts=FIT_SHIFTS),
        # judged on other seeds: pump 1 unloaded to its minimum speed, pump 2 carries the flow
        "shift_test": record(
            d / "shift_test.csv",
            seed=13,
            hours=2,
            shifts=[Shift(1800.0, {1: 1500.0, 2: 2800.0})],
        ),
        "drift": record(
            d / "drift.csv",
            seed=14,
            hours=2,
            events=[ScenarioEvent(1800.0, fault=Fault(FaultKind.SENSOR_DRIFT, pump=1))],
        ),
    }


@pytest.fixture(scope="module")
def models(data: dict[str, Path]) -> dict[str, FitResult]:
    paths = [data["plc"], data["shifts"]]
    kw = {"false_alarm_rate": 1e-3, "calibration_fraction": 0.3}
    return {
        "pca": fit(paths, ASSETS, ROLES, WINDOW, FEATURES, **kw),  # type: ignore[arg-type]
        "conditioned": fit(paths, ASSETS, ROLES, WINDOW, FEATURES, operating=OPERATING, **kw),  # type: ignore[arg-type]
    }


def frames(result: FitResult, path: Path, asset: str) -> np.ndarray:
    segs = _asset_segments(path, ASSETS, ROLES, 1.0)[asset]
    return _features(segs, WINDOW, _Contract(result.inputs, result.features))


def first_alert_s(result: FitResult, x: np.ndarray) -> float | None:
    """Seconds from the recording's start to the first alert (on-delay ON_DELAY frames)."""
    run = 0
    for i, flag in enumerate(result.model.alarms(x)):
        run = run + 1 if flag else 0
        if run == ON_DELAY:
            return float(i * WINDOW.stride + WINDOW.length - 1)
    return None


def test_a_load_shift_on_healthy_pumps_is_not_a_fault(data: dict[str, Path], models: dict[str, FitResult]) -> None:
    pca, cond = models["pca"], models["conditioned"]
    assert isinstance(cond.model, ConditionedModel)
    for asset in ("Pump1", "Pump2"):
        x = frames(cond, data["shift_test"], asset)
        assert len(x) > 600
        # the conditioned model: no alert over the whole run, the setpoint change included
        assert alarm_episodes(cond.model.alarms(x), ON_DELAY) == 0, asset
    # the PCA on the same fitting data and features: pump 2 carrying the whole flow reads as a fault
    x2 = frames(pca, data["shift_test"], "Pump2")
    t2, _ = pca.model.scores(x2)
    after = np.arange(len(x2)) * WINDOW.stride + WINDOW.length - 1 >= 1800
    assert t2[after].max() > pca.model.t2_limit
    assert alarm_episodes(pca.model.alarms(x2), ON_DELAY) >= 1


def test_a_sensor_drift_is_still_detected(data: dict[str, Path], models: dict[str, FitResult]) -> None:
    cond = models["conditioned"]
    first = first_alert_s(cond, frames(cond, data["drift"], "Pump1"))
    assert first is not None and 1800 < first < 1800 + 3600  # after onset, within the hour
    assert first_alert_s(cond, frames(cond, data["drift"], "Pump2")) is None  # the healthy pump


def test_the_bundle_runs_in_the_agent_as_the_numpy_reference(
    tmp_path: Path, data: dict[str, Path], models: dict[str, FitResult]
) -> None:
    cond = models["conditioned"]
    manifest = write_bundle(
        tmp_path / "op", cond.model, name="op", version="1", window=WINDOW, inputs=cond.inputs, features=FEATURES
    )
    assert [r.role for r in manifest.inputs if r.operating] == list(OPERATING)
    assert manifest.provenance["method"] == "conditioned-pca"
    assert [o.name for o in manifest.outputs] == ["t2", "spe"]
    bundle = load_bundle(tmp_path / "op")
    x = frames(cond, data["drift"], "Pump1")
    out = dict(zip(("t2", "spe"), bundle.run({"x": x.astype(np.float32)}), strict=True))
    t2, spe = cond.model.scores(x)
    np.testing.assert_allclose(out["t2"], t2, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(out["spe"], spe, rtol=1e-3, atol=1e-2)


def test_feature_indices_and_errors() -> None:
    roles = ["speed", "flow", "power"]
    assert feature_indices(roles, ["mean", "std"], ["speed"]) == ((0, 3), (1, 2, 4, 5))
    with pytest.raises(ValueError, match=r"operating role\(s\) \['load'\] are not inputs"):
        feature_indices(roles, ["mean"], ["load"])
    with pytest.raises(ValueError, match="needs the 'mean' statistic"):
        feature_indices(roles, ["std"], ["speed"])
