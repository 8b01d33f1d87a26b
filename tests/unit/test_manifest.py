"""Manifest schema, bundle verification (sha256, session contract) and binding checks.

Real ONNX files built with the onnx helper API, real onnxruntime sessions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.errors import ModelError
from agent.modelstore.binding import ModelBinding, check_binding
from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import Manifest, load_manifest

# --------------------------------------------------------------------------- helpers


def tiny_onnx(
    n_features: int = 4,
    *,
    input_name: str = "x",
    output_name: str = "score",
    elem: int = TensorProto.FLOAT,
    batch: str | int = "batch",
) -> bytes:
    """x[batch, F] → score[batch] = sum(x * w)."""
    dtype = np.float32 if elem == TensorProto.FLOAT else np.float64
    w = numpy_helper.from_array(np.arange(1, n_features + 1, dtype=dtype), "w")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", [input_name, "w"], ["xw"]),
            helper.make_node("ReduceSum", ["xw", "axes"], [output_name], keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info(input_name, elem, [batch, n_features])],
        [helper.make_tensor_value_info(output_name, elem, [batch])],
        initializer=[w, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def manifest_dict(model: bytes, *, n_roles: int = 2, **overrides: Any) -> dict[str, Any]:
    """A manifest for a 'summary' (mean, std) model over ``n_roles`` roles."""
    roles = ["bearing_vibration", "motor_current", "flow", "pressure"][:n_roles]
    units = {"bearing_vibration": "mm/s", "motor_current": "A", "flow": "m3/h", "pressure": "bar"}
    data: dict[str, Any] = {
        "schema_version": 1,
        "name": "pca-pump",
        "version": "1",
        "task": "anomaly",
        "window": {"sample_period_s": 1.0, "length": 8, "stride": 2},
        "inputs": [
            {
                "role": r,
                "unit": units[r],
                "range": [0.0, 100.0],
                "normalisation": {"kind": "standard", "mean": 1.0, "std": 2.0},
            }
            for r in roles
        ],
        "features": {"kind": "summary", "stats": ["mean", "std"]},
        "model_input": {"name": "x", "shape": ["batch", 2 * n_roles], "dtype": "float32"},
        "outputs": [{"name": "score", "meaning": "weighted sum", "thresholds": {"alarm": 5.0}}],
        "variants": [
            {
                "file": "model.onnx",
                "precision": "fp32",
                "sha256": hashlib.sha256(model).hexdigest(),
                "size": len(model),
            }
        ],
    }
    data.update(overrides)
    return data


def write_bundle(path: Path, model: bytes, manifest: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(model)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    model = tiny_onnx(4)
    return write_bundle(tmp_path / "pca-pump", model, manifest_dict(model))


# --------------------------------------------------------------------------- manifest


def test_manifest_loads_and_roundtrips(bundle_dir: Path) -> None:
    m = load_manifest(bundle_dir)
    assert m.ident == "pca-pump v1"
    assert m.roles == ("bearing_vibration", "motor_current")
    assert m.role("motor_current").unit == "A"
    assert m.variant().file == "model.onnx"
    again = Manifest.model_validate_json(m.to_json())
    assert again == m


def test_unknown_key_is_refused_with_its_path(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["inputs"][0]["unti"] = "mm/s"
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"manifest.json: inputs\[0\]\.unti: unknown key"):
        load_manifest(bundle_dir / "manifest.json")


def test_other_schema_version_is_refused(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    for bad in (3, "2", True, 0):
        data["schema_version"] = bad
        (bundle_dir / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ModelError, match=rf"schema_version {bad!r} is not supported.*reads schema_version 1, 2"):
            load_manifest(bundle_dir)


def _schema2(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the roles' normalisation moved into the graph and an agreement gate."""
    out = json.loads(json.dumps(data))
    roles = [r.get("normalisation", {"kind": "none"}) for r in out["inputs"]]
    for r in out["inputs"]:
        r["normalisation"] = {"kind": "none"}
    out["input_normalisation"] = {"roles": roles}
    out["checks"] = [{"inputs": [[0.0] * 4], "outputs": {"score": [0.0]}}]
    out["agreement"] = [{"output": "score", "kind": "correlation", "minimum": 0.999, "measured": {"m": 1.0}}]
    return out


def test_schema_2_fields_load_and_need_schema_2(bundle_dir: Path) -> None:
    data = _schema2(json.loads((bundle_dir / "manifest.json").read_text()))
    data["schema_version"] = 2
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    m = load_manifest(bundle_dir)
    assert m.schema_version == 2 and m.input_normalisation is not None
    assert m.input_normalisation.offset == "input_offset" and len(m.input_normalisation.roles) == len(m.inputs)
    assert m.agreement[0].kind == "correlation" and m.agreement[0].minimum == 0.999
    assert all(r.normalisation.kind == "none" for r in m.inputs)
    # the same fields under schema 1: refused, naming the fields (an old agent would misread them)
    data["schema_version"] = 1
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"input_normalisation, agreement need schema_version 2 \(this manifest says 1\)"):
        load_manifest(bundle_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["inputs"][0].update(normalisation={"kind": "standard", "mean": 1.0, "std": 2.0}),
         r"normalisation of bearing_vibration must be none \(the agent would normalise twice\)"),
        (lambda d: d["input_normalisation"]["roles"].pop(), r"input_normalisation.roles has 1 entries for 2 inputs"),
        (lambda d: d["agreement"][0].update(output="nope"), r"agreement\[0\]: unknown output 'nope'"),
        (lambda d: d["agreement"][0].update(kind="top1"), r"agreement\[0\]: top1 needs an output of shape"),
        (lambda d: d.update(checks=[]), r"agreement\[0\]: an agreement gate needs checks"),
        (lambda d: d["agreement"][0].update(minimum=1.5), r"agreement\[0\]\.minimum"),
    ],
)
def test_schema_2_fields_are_checked(bundle_dir: Path, change: Any, message: str) -> None:
    data = _schema2(json.loads((bundle_dir / "manifest.json").read_text()))
    data["schema_version"] = 2
    change(data)
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        load_manifest(bundle_dir)


def test_every_shipped_bundle_loads_and_schema_1_ones_unchanged() -> None:
    shipped = sorted(p.parent for p in (Path(__file__).resolve().parents[2] / "models").glob("*/manifest.json"))
    assert len(shipped) >= 5
    versions = {}
    for b in shipped:
        m = load_manifest(b)
        versions[b.name] = m.schema_version
        if m.schema_version == 1:  # read as written: the agent normalises, no agreement gate
            raw = json.loads((b / "manifest.json").read_text())
            assert m.input_normalisation is None and m.agreement == ()
            assert [r.normalisation.model_dump(exclude_none=True) for r in m.inputs] == [
                r.get("normalisation", {"kind": "none"}) for r in raw["inputs"]
            ]
        for v in m.variants:
            load_bundle(b, variant=v.file, allow_unsigned=True)
    assert versions["pca-pump"] == 1  # the PCA baselines stay schema 1 (nothing in them needs 2)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    p = tmp_path / "manifest.json"
    p.write_text('{\n  "name": "x",\n  oops\n}')
    with pytest.raises(ModelError, match=r"manifest.json:3:3: not valid JSON"):
        load_manifest(p)


def test_input_shape_must_fit_the_features(bundle_dir: Path) -> None:
    model = tiny_onnx(4)
    data = manifest_dict(model, model_input={"name": "x", "shape": ["batch", 5], "dtype": "float32"})
    with pytest.raises(ValueError, match=r"window 8 × 2 roles with features summary give \['batch', 4\]"):
        Manifest.model_validate(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"normalisation": {"kind": "standard", "mean": 1.0}}, "normalisation standard takes mean, std"),
        ({"normalisation": {"kind": "standard", "mean": 1.0, "std": 0.0}}, "std must be > 0"),
        ({"normalisation": {"kind": "minmax", "min": 3.0, "max": 3.0}}, "min < max"),
        ({"range": [5.0, 1.0]}, "low < high"),
    ],
)
def test_input_role_validation(change: dict[str, Any], message: str) -> None:
    model = tiny_onnx(4)
    data = manifest_dict(model)
    data["inputs"][0].update(change)
    with pytest.raises(ValueError, match=message):
        Manifest.model_validate(data)


def test_variant_file_must_be_a_plain_name() -> None:
    model = tiny_onnx(4)
    data = manifest_dict(model)
    data["variants"][0]["file"] = "../model.onnx"
    with pytest.raises(ValueError, match=r"file\n.*'\.\./model\.onnx' is not a plain file name inside the bundle"):
        Manifest.model_validate(data)


def test_classifier_labels_must_fit_the_shape() -> None:
    model = tiny_onnx(4)
    data = manifest_dict(model, task="classifier")
    data["outputs"] = [
        {"name": "p", "meaning": "fault class", "shape": ["batch", 3], "labels": ["ok", "wear"]}
    ]
    with pytest.raises(ValueError, match=r"2 labels need shape \[batch, 2\]"):
        Manifest.model_validate(data)


# --------------------------------------------------------------------------- bundle


def test_bundle_loads_with_cpu_session_and_configured_threads(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir, threads=2)
    assert b.session.get_providers() == ["CPUExecutionProvider"]
    opts = b.session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.inter_op_num_threads == 1
    assert b.signature.state == "unchecked"  # no trust settings given: says so
    assert b.hashes["model.onnx"] == b.variant.sha256
    (out,) = b.run({"x": np.ones((3, 4), dtype=np.float32)})
    np.testing.assert_allclose(out, [10.0, 10.0, 10.0])


def test_default_threads_is_one(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.threads == 1
    assert b.session.get_session_options().intra_op_num_threads == 1


def test_tampered_file_is_refused_naming_file_and_both_hashes(bundle_dir: Path) -> None:
    good = (bundle_dir / "model.onnx").read_bytes()
    expected = hashlib.sha256(good).hexdigest()
    tampered = tiny_onnx(4).replace(b"tiny", b"tinz")
    assert len(tampered) == len(good)
    (bundle_dir / "model.onnx").write_bytes(tampered)
    with pytest.raises(ModelError) as err:
        load_bundle(bundle_dir)
    msg = str(err.value)
    assert "model.onnx" in msg
    assert expected in msg
    assert hashlib.sha256(tampered).hexdigest() in msg


def test_tampered_extra_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "README.txt").write_text("notes\n")
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["files"] = {"README.txt": {"sha256": hashlib.sha256(b"notes\n").hexdigest(), "size": 6}}
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    load_bundle(bundle_dir)
    (bundle_dir / "README.txt").write_text("NOTES\n")
    with pytest.raises(ModelError, match=r"README.txt was modified"):
        load_bundle(bundle_dir)


def test_missing_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"cannot read .*model.onnx"):
        load_bundle(bundle_dir)


def test_not_onnx_is_translated(tmp_path: Path) -> None:
    junk = b"this is not a protobuf"
    d = write_bundle(tmp_path / "b", junk, manifest_dict(junk))
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        load_bundle(d)


def _mismatch(tmp_path: Path, model: bytes, **overrides: Any) -> str:
    d = write_bundle(tmp_path / "b", model, manifest_dict(model, **overrides))
    with pytest.raises(ModelError) as err:
        load_bundle(d)
    return str(err.value)


def test_session_input_name_mismatch_names_both_sides(tmp_path: Path) -> None:
    msg = _mismatch(tmp_path, tiny_onnx(4, input_name="features"))
    assert "model pca-pump v1 manifest declares input 'x'" in msg
    assert "has inputs ['features']" in msg


def test_session_input_shape_mismatch_names_both_sides(tmp_path: Path) -> None:
    msg = _mismatch(tmp_path, tiny_onnx(6))
    assert "input x: manifest says shape [batch, 4]" in msg
    assert "has shape [batch, 6]" in msg


def test_session_fixed_batch_is_refused(tmp_path: Path) -> None:
    msg = _mismatch(tmp_path, tiny_onnx(4, batch=1))
    assert "manifest says shape [batch, 4]" in msg and "has shape [1, 4]" in msg


def test_session_dtype_mismatch_names_both_sides(tmp_path: Path) -> None:
    msg = _mismatch(tmp_path, tiny_onnx(4, elem=TensorProto.DOUBLE))
    assert "input x: manifest says float32" in msg and "has float64" in msg
    assert "output score: manifest says float32" in msg


def test_session_output_mismatch_names_both_sides(tmp_path: Path) -> None:
    msg = _mismatch(tmp_path, tiny_onnx(4, output_name="anomaly_score"))
    assert "manifest declares outputs ['score']" in msg
    assert "has outputs ['anomaly_score']" in msg


def test_unknown_variant_is_refused(bundle_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"has no variant 'model-int8.onnx' .*model.onnx"):
        load_bundle(bundle_dir, variant="model-int8.onnx")


# --------------------------------------------------------------------------- binding


UNITS = {"p1_vibration": "mm/s", "p1_current": "A", "p2_vibration": "mm/s", "p2_current": "A"}
PERIODS = dict.fromkeys(UNITS, 1.0)


def binding(**overrides: Any) -> ModelBinding:
    data: dict[str, Any] = {
        "name": "pca-pump",
        "bundle": "models/pca-pump",
        "assets": {
            "p1": {"bearing_vibration": "p1_vibration", "motor_current": "p1_current"},
            "p2": {"bearing_vibration": "p2_vibration", "motor_current": "p2_current"},
        },
    }
    data.update(overrides)
    return ModelBinding.model_validate(data)


@pytest.fixture
def manifest() -> Manifest:
    return Manifest.model_validate(manifest_dict(tiny_onnx(4)))


def test_binding_defaults() -> None:
    b = binding()
    assert b.threads == 1
    assert b.bad_input == "skip"
    assert b.hold_limit == 0
    assert binding(bad_input="hold", hold_cycles=5).hold_limit == 5


def test_binding_hold_cycles_only_with_hold() -> None:
    with pytest.raises(ValueError, match="hold_cycles applies only to bad_input: hold"):
        binding(hold_cycles=2)


def test_binding_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        binding(thread=2)


def test_binding_matches(manifest: Manifest) -> None:
    check_binding(manifest, binding(), UNITS, PERIODS, source="configs/demo.yaml")


def test_unit_mismatch_names_both_sides(manifest: Manifest) -> None:
    units = {**UNITS, "p1_vibration": "in/s"}
    with pytest.raises(ModelError) as err:
        check_binding(manifest, binding(), units, PERIODS, source="configs/demo.yaml")
    assert str(err.value) == (
        "model pca-pump v1 role bearing_vibration expects unit mm/s, tag p1_vibration "
        "(configs/demo.yaml) has unit in/s"
    )


def test_missing_unit_is_a_mismatch(manifest: Manifest) -> None:
    units = {**UNITS, "p2_current": ""}
    with pytest.raises(ModelError, match=r"role motor_current expects unit A, tag p2_current .* has no unit"):
        check_binding(manifest, binding(), units, PERIODS)


def test_slow_tag_is_a_period_mismatch(manifest: Manifest) -> None:
    periods = {**PERIODS, "p2_current": 5.0}
    with pytest.raises(ModelError) as err:
        check_binding(manifest, binding(), UNITS, periods, source="configs/demo.yaml")
    assert str(err.value) == (
        "model pca-pump v1 role motor_current expects a sample every 1 s, tag p2_current "
        "(configs/demo.yaml) is polled every 5 s: poll it at least as often as the model samples"
    )


def test_faster_tag_is_fine(manifest: Manifest) -> None:
    check_binding(manifest, binding(), UNITS, dict.fromkeys(UNITS, 0.25))


def test_unbound_and_unknown_roles_and_tags(manifest: Manifest) -> None:
    b = binding(assets={"p1": {"bearing_vibration": "p1_vibration", "flow": "p1_flow"}})
    with pytest.raises(ModelError) as err:
        check_binding(manifest, b, UNITS, PERIODS, source="plant.yaml")
    msg = str(err.value)
    assert "model pca-pump v1 needs role motor_current, asset p1 (plant.yaml) does not bind it" in msg
    assert "has no role flow (roles: bearing_vibration, motor_current), asset p1 (plant.yaml) binds it" in msg


def test_tag_not_configured(manifest: Manifest) -> None:
    b = binding(assets={"p9": {"bearing_vibration": "p9_vibration", "motor_current": "p1_current"}})
    with pytest.raises(ModelError, match=r"tag p9_vibration .* is not a configured tag"):
        check_binding(manifest, b, UNITS, PERIODS)


def test_binding_for_another_model(manifest: Manifest) -> None:
    with pytest.raises(ModelError, match=r"binding 'other' .* whose manifest names model pca-pump v1"):
        check_binding(manifest, binding(name="other"), UNITS, PERIODS)


def test_aggregation_is_optional_instant_by_default_and_checked(tmp_path: Path) -> None:
    model = tiny_onnx(4)
    data = manifest_dict(model)
    assert [r.aggregation for r in load_manifest(write_bundle(tmp_path / "a", model, data)).inputs] == [
        "instant",
        "instant",
    ]
    data["inputs"][1]["aggregation"] = "mean"
    assert load_manifest(write_bundle(tmp_path / "b", model, data)).role("motor_current").aggregation == "mean"
    data["inputs"][1]["aggregation"] = "median"
    with pytest.raises(ModelError, match=r"inputs\[1\]\.aggregation: Input should be 'instant', 'mean' or 'ewma'"):
        load_manifest(write_bundle(tmp_path / "c", model, data))


def test_every_shipped_bundle_still_loads_and_verifies() -> None:
    root = Path(__file__).resolve().parents[2]
    pub = root / "export" / "keys" / "dev-ed25519.pub"
    for bundle in sorted(p.parent for p in (root / "models").glob("*/manifest.json")):
        loaded = load_bundle(bundle, trusted_keys=[pub])
        assert loaded.signature.state == "signed"
        assert {r.aggregation for r in loaded.manifest.inputs} <= {"instant", "ewma"}  # ewma: of instant samples
