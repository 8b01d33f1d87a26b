"""The teachers chain with a reference role (``data.ewma``): a second role bound to a tag as its
exponentially weighted mean. The chain's windows equal what the agent holds from the stream, the
manifest declares the role (schema 2), and ``bench/teachers.py`` feeds the bundle the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import LATEST_SCHEMA_VERSION
from agent.pipeline.features import FeatureWindows
from agent.types import Quality, Sample
from bench.teachers import _windows
from export.data import Recording, build_dataset, features
from export.dataconfig import data_spec
from export.evaluate import derived_setup, load_recording
from export.pipeline import FitSettings, export_model
from export.tables import DataError

from .conftest import ROLES, pump_data, tiny_model

TAU = 120.0
REF_ROLES = [*ROLES, "vibration_ref:mm/s:0:25:{asset}.Vibration"]


@pytest.fixture(scope="module")
def bundle(recordings: list[Recording], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("teachers-ewma")
    cfg = tiny_model(
        tmp, "classifier", data=pump_data(roles=REF_ROLES, ewma={"vibration_ref": TAU}),
        fit=FitSettings(epochs=2, finetune_epochs=1, batch=128),
    )  # fmt: skip
    export_model(cfg, recordings, progress=False)
    return cfg.out


def test_the_manifest_declares_the_reference_role(bundle: Path) -> None:
    m = load_bundle(bundle, allow_unsigned=True).manifest
    assert m.schema_version == LATEST_SCHEMA_VERSION
    ref, raw = m.role("vibration_ref"), m.role("vibration")
    assert (ref.aggregation, ref.time_constant_s) == ("ewma", TAU)
    assert (raw.aggregation, raw.time_constant_s) == ("instant", None)
    assert ref.training_range is not None and raw.training_range is not None


def test_chain_windows_equal_the_agent_windows_and_the_bench_inputs(
    bundle: Path, recordings: list[Recording]
) -> None:
    b = load_bundle(bundle, allow_unsigned=True)
    m = b.manifest
    spec = data_spec(pump_data(roles=REF_ROLES, ewma={"vibration_ref": TAU}), recordings)
    ds = build_dataset(spec, recordings)
    test = next(
        i for i, r in enumerate(recordings) if r.split == "test" and r.path.name.endswith(".wide.csv")
    )
    w = ds.test.take((ds.test.rec == test) & (ds.test.asset == 0))
    i_ref, i_raw = (
        [r.role for r in m.inputs].index("vibration_ref"),
        [r.role for r in m.inputs].index("vibration"),
    )
    assert len(w) > 500 and not np.allclose(w.x[:, :, i_ref], w.x[:, :, i_raw])
    # the agent, tick by tick from the same file (FeatureWindows: the ewma's state per tick)
    setup = derived_setup(b)
    binding = setup.models[0][0]
    tags = sorted({t for roles in binding.assets.values() for t in roles.values()})
    rec = load_recording([recordings[test].path], tags, 1.0)
    fw = FeatureWindows(m, binding)
    by_end = {int(e): k for k, e in enumerate(w.end)}
    checked = 0
    for k in range(len(rec.t)):
        for asset, roles in binding.assets.items():
            fw.push(
                asset,
                {r: Sample(t, float(rec.values[k, rec.column(t)]), Quality.good(), None, float(k))  # type: ignore[arg-type]
                 for r, t in roles.items()},
                float(k),
            )  # fmt: skip
        frame = fw.frame(now_mono=float(k))
        if frame is not None and "Pump1" in frame.assets and k in by_end:
            np.testing.assert_allclose(frame.values[frame.assets.index("Pump1")], w.x[by_end[k]], rtol=1e-6)  # type: ignore[index]
            checked += 1
    assert checked > 500
    # bench/teachers.py (the holdout judge) gives the bundle exactly the chain's inputs
    x, _ = _windows(bundle, [recordings[test].path], "pump{n}_fault_code")
    np.testing.assert_allclose(x[: len(w)], features(w.x, m), rtol=1e-5, atol=1e-4)  # float32 windows


def test_an_ewma_role_must_be_a_role(recordings: list[Recording]) -> None:
    with pytest.raises(DataError, match=r"data.ewma: no role\(s\) \['nope'\] among the roles"):
        data_spec(pump_data(ewma={"nope": 60.0}), recordings)
    with pytest.raises(ValueError, match="greater than 0"):
        pump_data(ewma={"vibration": 0.0})


def test_the_reference_config_binds_each_reference_to_its_tag() -> None:
    from export.pipeline import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "export-teachers-ref.yaml")
    (m,) = cfg.models
    spec = data_spec(m.data)
    cols = spec.columns("Pump1")
    assert set(spec.ewma) == {r for r in cols if r.endswith("_ref")} and len(spec.ewma) == 5
    assert all(cols[r] == cols[r.removesuffix("_ref")] and spec.ewma[r] == 600.0 for r in spec.ewma)
    assert not str(m.out).startswith("models")  # never built over the shipped bundle
