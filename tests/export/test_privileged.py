"""Privileged information (``privileged``): roles only the teachers see. A ``data.ewma``
reference enters a teacher as its tag minus it; the students and the bundle never see it, so
the agent runs the student on the roles it had without the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.modelstore.bundle import load_bundle
from export.data import Recording, Windows, reference_gaps, reference_pairs
from export.dataconfig import data_spec
from export.pipeline import FitSettings, export_model

from .conftest import ROLES, pump_data, tiny_model

REF_ROLES = [*ROLES, "vibration_ref:mm/s:0:25:{asset}.Vibration"]


def test_a_reference_pairs_with_the_role_bound_to_its_column_and_becomes_its_gap(
    recordings: list[Recording],
) -> None:
    spec = data_spec(pump_data(roles=REF_ROLES, ewma={"vibration_ref": 60.0}), recordings)
    names = [r.role for r in spec.roles]
    assert reference_pairs(spec, ["vibration_ref"]) == [
        (names.index("vibration_ref"), names.index("vibration"))
    ]
    assert reference_pairs(spec, ["speed"]) == []  # no other role reads the speed's column
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    g = reference_gaps(x, [(3, 1)])
    np.testing.assert_array_equal(g[..., 3], x[..., 1] - x[..., 3])
    np.testing.assert_array_equal(g[..., :3], x[..., :3])
    assert x[0, 0, 3] == 3  # a copy: the windows themselves are unchanged


def test_with_roles_keeps_the_windows_and_their_targets() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    w = Windows(
        x, np.array([0, 5]), np.zeros(2), np.zeros(2), np.array([0, 1]), np.array([1, 0]), np.array([9, 19])
    )
    v = w.with_roles([2, 0])
    np.testing.assert_array_equal(v.x, x[:, :, [2, 0]])
    assert v.label.tolist() == [0, 5] and v.end.tolist() == [9, 19] and v.asset.tolist() == [1, 0]


@pytest.fixture(scope="module")
def bundle(recordings: list[Recording], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_model(
        tmp_path_factory.mktemp("privileged"), "classifier",
        data=pump_data(roles=REF_ROLES, ewma={"vibration_ref": 120.0}), privileged=["vibration_ref"],
        fit=FitSettings(epochs=2, finetune_epochs=1, batch=128), seeds=3,
    )  # fmt: skip
    export_model(cfg, recordings, progress=False)
    return cfg.out


def test_the_students_and_the_bundle_leave_the_privileged_role_out(bundle: Path) -> None:
    m = load_bundle(bundle, allow_unsigned=True).manifest
    assert [r.role for r in m.inputs] == [r.split(":")[0] for r in ROLES]
    assert all(r.aggregation == "instant" for r in m.inputs)
    rep = json.loads((bundle / "report.json").read_text())
    assert rep["data"]["privileged"] == ["vibration_ref"]
    assert [i["role"] for i in rep["data"]["inputs"]] == [r.role for r in m.inputs]
    assert "privileged ['vibration_ref']" in rep["models"][0]["arch"]
    # the graph takes the student's features of those roles only (5 statistics each)
    assert m.model_input.shape[-1] == 5 * len(ROLES)


def test_an_unknown_or_every_role_privileged_is_one_clear_error(
    recordings: list[Recording], tmp_path: Path
) -> None:
    for privileged, what in (
        (["nope"], "['nope']"),
        ([r.split(":")[0] for r in ROLES], "must be some, not all"),
    ):
        cfg = tiny_model(tmp_path, "classifier", privileged=privileged)
        with pytest.raises(ValueError, match="privileged") as e:
            export_model(cfg, recordings, progress=False)
        assert what in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_recipe_hides_only_references_of_the_students_tags() -> None:
    """configs/export-teachers-privileged.yaml (fault-mlp v3): every privileged role is an ewma
    reference of a tag the student reads, and no seed is both trained on and tested on."""
    from export.pipeline import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "export-teachers-privileged.yaml")
    (m,) = cfg.models
    assert str(m.out) == "models/fault-mlp" and m.seeds >= 8 and m.distillation_min_t == 2.0
    assert isinstance(m.data.roles, list)  # ROLE:UNIT:LOW:HIGH:COLUMN
    column = {r.split(":")[0]: r.rsplit(":", 1)[1] for r in m.data.roles}
    students = [r for r in column if r not in m.privileged]
    assert len(students) == 14 and set(m.privileged) == set(m.data.ewma)
    assert all(column[p] in {column[s] for s in students} for p in m.privileged)
    train = {s for st in cfg.recordings.sets if st.split == "train" for s in st.seeds}
    transfer = {s for st in cfg.recordings.sets if st.split == "transfer" for s in st.seeds}
    test = {s for st in cfg.recordings.sets if st.split == "test" for s in st.seeds}
    assert transfer and not (train & transfer) and not (test & (train | transfer))
    assert not (train | transfer | test) & set(range(201, 207))  # the holdout (bench/teachers.py)
