"""INT8 that passes its gate or says why (export/quantize.py): the settings search, the
normalisation moved into the graph (manifest schema 2), the bundle's checks and the agreement
gate the install self-test re-runs on this CPU. Tiny real models, real onnxruntime."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import MANIFEST_FILE, FeatureSpec, InputRole, Manifest, Normalisation
from agent.modelstore.selftest import run_selftest
from agent.pipeline.features import window_to_input
from export import gates
from export import onnx_tools as ot
from export.nets import MLP
from export.onnx_tools import ClassifierGraph, quantize_int8, to_onnx
from export.pipeline import package
from export.quantize import candidate_settings, feature_affine, normalise_inputs, search_int8

ROLES = [  # three roles on very different scales, as a pump's speed, pressure and current
    {"role": "speed", "unit": "rpm", "range": [0.0, 3000.0],
     "normalisation": {"kind": "standard", "mean": 2000.0, "std": 100.0}},
    {"role": "pressure", "unit": "bar", "range": [0.0, 10.0],
     "normalisation": {"kind": "minmax", "min": 1.0, "max": 3.0}},
    {"role": "current", "unit": "A", "range": [0.0, 60.0],
     "normalisation": {"kind": "standard", "mean": 18.0, "std": 1.5}},
]
LENGTH = 5
STATS = ("mean", "std", "min", "max", "last", "slope")


class _Contract:
    def __init__(self, roles: list[dict[str, Any]], features: FeatureSpec) -> None:
        self.inputs = [InputRole.model_validate(r) for r in roles]
        self.features = features


def raw_windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = np.array([2000.0, 2.0, 18.0])
    spread = np.array([100.0, 0.5, 1.5])
    level = centre + spread * rng.normal(size=(n, 1, 3)) * 2
    return level + spread * 0.3 * rng.normal(size=(n, LENGTH, 3))


@pytest.mark.parametrize(
    "features",
    [
        FeatureSpec(kind="summary", stats=STATS),
        FeatureSpec(kind="summary", stats=(*STATS, "recent_mean", "recent_std", "recent_min",
                                           "recent_max", "recent_slope"), recent=3),
        FeatureSpec(kind="flatten"),
        FeatureSpec(kind="sequence"),
    ],
)
def test_feature_affine_turns_raw_features_into_the_trained_ones(features: FeatureSpec) -> None:
    raw = raw_windows(50)
    norm = window_to_input(raw, _Contract(ROLES, features))
    none = [{**r, "normalisation": {"kind": "none"}} for r in ROLES]
    plain = window_to_input(raw, _Contract(none, features)).astype(np.float64)
    off, sc = feature_affine([Normalisation.model_validate(r["normalisation"]) for r in ROLES], features, LENGTH)
    np.testing.assert_allclose((plain - off) / sc, norm, rtol=1e-4, atol=1e-4)


@functools.cache
def trained_classifier(n_in: int = 18) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """A 3-layer classifier trained for a second on the normalised summary features of raw
    windows; returns (graph, normalised features, raw windows)."""
    raw = raw_windows(1200)
    x = window_to_input(raw, _Contract(ROLES, FeatureSpec(kind="summary", stats=STATS)))
    y = np.argmax(x[:, :3] @ np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 1.0]]), axis=1)
    torch.manual_seed(0)
    net = MLP(n_in, [24, 16], 3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return ClassifierGraph(net, 0), x, raw


def manifest_fields() -> dict[str, Any]:
    return {
        "name": "int8-test", "version": "1", "task": "classifier",
        "window": {"sample_period_s": 1.0, "length": LENGTH, "stride": 1},
        "inputs": ROLES,
        "features": {"kind": "summary", "stats": list(STATS)},
        "model_input": {"name": "x", "shape": ["batch", 18]},
        "outputs": [{"name": "probs", "meaning": "p", "shape": ["batch", 3], "labels": ["normal", "a", "b"]},
                    {"name": "fault_score", "meaning": "1 - p(normal)"}],
    }


def test_graph_normalisation_takes_raw_features_before_the_first_quantized_op() -> None:
    graph, x, _ = trained_classifier()
    fp32 = to_onnx(graph, torch.from_numpy(x[:2]), "x", ["probs", "fault_score"])
    moved, fields, (raw,) = normalise_inputs(fp32, manifest_fields(), [x])
    np.testing.assert_allclose(ot.run_onnx(moved, raw)[0], ot.run_onnx(fp32, x)[0], atol=1e-5)
    m = onnx.load_from_string(moved)
    assert [n.op_type for n in m.graph.node[:2]] == ["Sub", "Div"]
    # the raw input feeds the normalisation only: every layer sees normalised values
    assert [n.op_type for n in m.graph.node if "x" in n.input] == ["Sub"]
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert inits["input_offset"][0] == 2000.0 and inits["input_scale"][0] == 100.0  # speed's mean
    assert inits["input_offset"][3] == 0.0  # std features move with the scale only
    assert all(r.normalisation.kind == "none" for r in fields["inputs"])
    assert fields["input_normalisation"].roles[1].kind == "minmax"
    with pytest.raises(ValueError, match="already normalised in the graph"):
        ot.normalise_in_graph(moved, np.zeros(18), np.ones(18))
    with pytest.raises(ValueError, match="positive finite scales"):
        ot.normalise_in_graph(fp32, np.zeros(18), np.zeros(18))


def test_reduce_range_only_without_an_int8_dot_product(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not ot.has_int8_dot(("avx2", "fma", "avx512f"))
    assert ot.has_int8_dot(("avx2", "avx512_vnni")) and ot.has_int8_dot(("asimd", "asimddp"))
    graph, x, _ = trained_classifier()
    fp32 = to_onnx(graph, torch.from_numpy(x[:2]), "x", ["probs", "fault_score"])
    for dot in (True, False):
        monkeypatch.setattr(ot, "has_int8_dot", lambda features=None, dot=dot: dot)
        _, settings = quantize_int8(fp32, x[:256], per_channel=True)
        assert settings["reduce_range"] == str(not dot).lower()
    assert settings["weight_symmetric"] == "true"
    for act, ir, opset in (("uint8", 8, 17), ("uint16", 10, 21)):  # the IR version the opset needs
        m = onnx.load_from_string(quantize_int8(fp32, x[:256], per_channel=True, activation=act)[0])
        assert (m.ir_version, [(o.domain, o.version) for o in m.opset_import]) == (ir, [("", opset)])
    rows = candidate_settings(3, reduce_range=False)
    assert rows[0].reduce_range and not rows[0].per_channel  # the former default, for reference
    assert all(s.per_channel and not s.reduce_range for s in rows[1:])
    assert {s.method for s in rows} == {"minmax", "percentile", "entropy"}
    assert {s.activation for s in rows} == {"uint8", "uint16"}
    assert {s.fp32_layers for s in rows} == {(), ("first",), ("last",), ("first", "last")}


def test_search_reports_every_setting_and_ships_the_best_passing() -> None:
    graph, x, _ = trained_classifier()
    fp32 = to_onnx(graph, torch.from_numpy(x[:2]), "x", ["probs", "fault_score"])
    search = search_int8(fp32, x[:600], x[600:], kind="top1", reduce_range=False)
    assert len(search.trials) == 25 and not any(t.error for t in search.trials)
    assert search.chosen is not None and search.chosen.passed
    passing = [t for t in search.trials if t.passed]
    # 8-bit activations first, then per-channel weights (the reference row only when nothing
    # else passes), then the smallest file
    assert search.chosen.setting.activation_bits == min(t.setting.activation_bits for t in passing)
    assert search.chosen.setting.per_channel
    assert search.chosen.size == min(t.size for t in passing if t.setting.activation_bits == 8
                                     and t.setting.per_channel)
    for t in search.trials:
        got = ot.run_onnx(t.model, x[600:])[0]
        assert t.agreement == pytest.approx(np.mean(np.argmax(got, 1) == np.argmax(ot.run_onnx(fp32, x[600:])[0], 1)))
        assert t.size == len(t.model) and t.latency_fp32_us > 0 and t.latency_int8_us > 0 and t.noise_us >= 0
        # a layer left in FP32 keeps its float weights: no DequantizeLinear feeds its Gemm's B
        m = onnx.load_from_string(t.model)
        gemms = [n for n in m.graph.node if n.op_type == "Gemm"]
        dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        quantized = [g.input[1] in dq for g in gemms]
        assert quantized == [
            not (i == 0 and "first" in t.setting.fp32_layers) and not (i == 2 and "last" in t.setting.fp32_layers)
            for i in range(3)
        ]
    rep = search.report()
    assert len(rep["trials"]) == 25 and rep["chosen"] == search.chosen.setting.label()
    assert {"activation", "method", "per_channel", "fp32_layers", "top1_agreement", "size", "latency_fp32_us",
            "latency_int8_us"} <= set(rep["trials"][0])
    assert "ships" in rep["reason"] and "**ships**" in rep["table_md"]


def broken_quantizer(model: bytes, calibration: np.ndarray, **kw: Any) -> tuple[bytes, dict[str, str]]:
    """Calibrated on inputs 1000x too small: every activation saturates."""
    return quantize_int8(model, calibration * 1e-3, **kw)


def test_no_setting_passes_says_why_in_numbers() -> None:
    graph, x, _ = trained_classifier()
    fp32 = to_onnx(graph, torch.from_numpy(x[:2]), "x", ["probs", "fault_score"])
    search = search_int8(fp32, x[:600], x[600:], kind="top1", quantizer=broken_quantizer)
    assert search.chosen is None
    best = max(t.agreement for t in search.trials)
    assert best < gates.INT8_TOP1
    assert f"at best {best:.4f}" in search.reason
    assert "needs >= 0.995): no setting of 25 passed on 600 windows" in search.reason
    assert "; best with 8-bit activations 0." in search.reason and "cost" in search.reason


def export(tmp_path: Path, **kw: Any) -> tuple[Manifest, np.ndarray, np.ndarray, torch.nn.Module]:
    graph, x, raw = trained_classifier()
    man = package(graph, manifest=manifest_fields(), x_check=x[600:], x_calibration=x[:600],
                  out=tmp_path / "b", int8_kind="top1", **kw)
    return man, x, raw, graph


def test_bundle_is_schema_2_the_agent_feeds_raw_windows_and_the_self_test_passes(tmp_path: Path) -> None:
    man, x, raw, graph = export(tmp_path)
    assert man.schema_version == 2 and man.input_normalisation is not None
    assert sorted(v.precision for v in man.variants) == ["fp32", "int8"]
    (check,) = man.checks
    assert len(check.inputs) == 200 and set(check.outputs) == {"probs", "fault_score"}
    assert 1e-4 <= check.tolerance < 1e-2  # float32 round-off as this model amplifies it, not a blank cheque
    (gate,) = man.agreement
    assert (gate.output, gate.kind, gate.minimum) == ("probs", "top1", 0.995)
    assert gate.measured["model.int8.onnx"] >= 0.995
    # the agent's own path: raw windows through the one feature function, then the model
    with torch.no_grad():
        want = graph(torch.from_numpy(x[:50]))[0].numpy()
    for v in man.variants:
        b = load_bundle(tmp_path / "b", variant=v.file)
        got = b.run({"x": window_to_input(raw[:50], b.manifest)})[0]
        if v.precision == "fp32":
            np.testing.assert_allclose(got, want, atol=1e-4)
        else:
            assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.96
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert len(rep["int8"]["trials"]) == 25 and "## INT8 settings tried" in (tmp_path / "b" / "report.md").read_text()
    report = run_selftest(tmp_path / "b", trusted_keys=None, allow_unsigned=True)
    assert all(r.ok for r in report.variants), report.summary()
    assert report.chosen in {"model.onnx", "model.int8.onnx"}


def test_self_test_refuses_an_int8_that_fails_agreement_on_this_cpu_and_keeps_fp32(tmp_path: Path) -> None:
    man, *_ = export(tmp_path)
    b = tmp_path / "b"
    # what a CPU that computes the INT8 differently gives: the same graph, other INT8 numbers
    fp32 = (b / "model.onnx").read_bytes()
    raw_cal = np.asarray(man.checks[0].inputs, np.float32)
    bad, _ = broken_quantizer(fp32, raw_cal, per_channel=True)
    (b / "model.int8.onnx").write_bytes(bad)
    import hashlib

    variants = tuple(
        v.model_copy(update={"sha256": hashlib.sha256(bad).hexdigest(), "size": len(bad)})
        if v.precision == "int8" else v
        for v in man.variants
    )
    (b / MANIFEST_FILE).write_text(man.model_copy(update={"variants": variants}).to_json())
    report = run_selftest(b, trusted_keys=None, allow_unsigned=True)
    assert report.chosen == "model.onnx"
    (int8,) = [r for r in report.variants if r.precision == "int8"]
    assert not int8.ok
    assert "INT8 agreement gate fails on this CPU: top-1 agreement of probs with the expected FP32 outputs" in int8.error
    assert "< 0.995 on 200 check inputs" in int8.error


def test_int8_off_keeps_the_agent_side_normalisation_and_schema_1(tmp_path: Path) -> None:
    from export.pipeline import Int8Settings

    man, *_ = export(tmp_path, int8=Int8Settings(mode="off"))
    assert man.schema_version == 1 and man.input_normalisation is None and man.agreement == ()
    assert man.inputs[0].normalisation.kind == "standard" and len(man.checks) == 1


def test_squashed_inputs_let_8_bit_activations_hold_fault_features() -> None:
    # fault windows drive a statistic to hundreds of sigmas (a stuck or spiking sensor): an MLP
    # over them spans orders of magnitude per layer; squashed inputs (sign(x) log(1 + |x|)) keep
    # every layer in range
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 3000)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    x[y == 1, 0] += rng.uniform(2.0, 400.0, int(np.sum(y == 1))).astype(np.float32)
    x[y == 2, 1] -= rng.uniform(2.0, 400.0, int(np.sum(y == 2))).astype(np.float32)
    agreement = {}
    for squash in (False, True):
        torch.manual_seed(0)
        net = MLP(8, [32, 16], 3, squash=squash)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        xt, yt = torch.from_numpy(x[:2000]), torch.from_numpy(y[:2000])
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt), yt).backward()
            opt.step()
        fp32 = to_onnx(ClassifierGraph(net.eval(), 0), torch.from_numpy(x[:2]), "x", ["probs", "fault_score"])
        if squash:
            assert "Log" in [n.op_type for n in onnx.load_from_string(fp32).graph.node]
            with torch.no_grad():
                want = torch.softmax(net(torch.from_numpy(x[2000:])), 1).numpy()
            np.testing.assert_allclose(ot.run_onnx(fp32, x[2000:])[0], want, atol=1e-5)
        q, _ = quantize_int8(fp32, x[:1000], per_channel=True, method="minmax", activation="uint8")
        agreement[squash] = float(np.mean(
            np.argmax(ot.run_onnx(q, x[2000:])[0], 1) == np.argmax(ot.run_onnx(fp32, x[2000:])[0], 1)))
    assert agreement[True] >= gates.INT8_TOP1 > agreement[False], agreement
