"""Teachers worth distilling: the seeds gate, the transfer set (unlabelled windows the teacher
labels), the teacher choice (TCN, ensembles). Real torch, real recordings, real ONNX; seconds."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agent.modelstore.manifest import WindowSpec
from bench.teachers import judge
from export import gates
from export.data import Recording, Windows
from export.nets import TCN, Ensemble, build_net
from export.pipeline import (
    FitSettings,
    NetConfig,
    Recordings,
    RecordingSet,
    _unlabelled,
    export_model,
    record_all,
)
from export.train import FitConfig, fit, predict

from .conftest import tiny_model


def test_seeds_gate_needs_a_win_beyond_the_spread() -> None:
    # a clear win: the distilled students beat every scratch one
    m = gates.gate_distillation_seeds([0.90, 0.91, 0.92], [0.80, 0.82, 0.81], metric="balanced accuracy")
    assert m["distilled_mean"] == pytest.approx(0.91) and m["scratch_sd"] == pytest.approx(0.01)
    assert m["difference"] == pytest.approx(0.10) and m["t"] > 10
    # the same mean win, but one lucky seed carries it: noise, not a win
    with pytest.raises(gates.GateError, match=r"within the noise of the seeds: t = 0\.\d+ < 2") as exc:
        gates.gate_distillation_seeds([0.78, 0.79, 1.0], [0.80, 0.82, 0.81], metric="balanced accuracy")
    assert exc.value.measured["distilled_sd"] > 0.1
    # losing on the mean, and too few seeds, fail with their numbers
    with pytest.raises(gates.GateError, match=r"do not beat the scratch ones: distilled balanced accuracy 0\.7000"):
        gates.gate_distillation_seeds([0.70, 0.70, 0.70], [0.80, 0.82, 0.81], metric="balanced accuracy")
    with pytest.raises(gates.GateError, match="at least 3 training seeds per student, got 2 distilled"):
        gates.gate_distillation_seeds([0.9, 0.9], [0.1, 0.1, 0.1], metric="m")
    assert gates.seed_stats([1.0])["sd"] == 0.0


def test_unlabelled_rows_train_only_through_the_teacher() -> None:
    # class 1 exists only in unlabelled rows (-1): only the teacher's soft targets teach it
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = np.where(x[:, 0] > 0, 1, 0)
    teacher = np.stack([-4 * x[:, 0], 4 * x[:, 0]], axis=1).astype(np.float32)  # knows the rule
    hidden = np.where(y == 1, -1, 0)  # every class-1 label withheld
    cfg = FitConfig(epochs=12, batch=100, lr=2e-2, progress=False, alpha=0.5)
    net = build_net("mlp", n_in=4, n_out=2, length=1, n_roles=4, hidden=[8])
    net, _ = fit(net, "classifier", x, hidden, x, hidden, cfg, teacher=teacher, teacher_val=teacher)
    assert np.mean(predict(net, x).argmax(1) == y) > 0.95
    alone = build_net("mlp", n_in=4, n_out=2, length=1, n_roles=4, hidden=[8])
    alone, _ = fit(alone, "classifier", x, hidden, x, hidden, cfg)  # no teacher: class 1 never seen
    assert np.mean(predict(alone, x).argmax(1) == 1) < 0.05
    # a regression target NaN (unlabelled) is left out of the hard term, not propagated
    r = build_net("mlp", n_in=4, n_out=1, length=1, n_roles=4, hidden=[8])
    yr = np.where(y == 1, np.nan, x[:, 1]).astype(np.float32)
    r, hist = fit(r, "regression", x, yr, x, yr, cfg, teacher=x[:, 1:2].copy(), teacher_val=x[:, 1:2].copy())
    assert np.isfinite(hist[-1]["val_loss"]) and np.corrcoef(predict(r, x)[:, 0], x[:, 1])[0, 1] > 0.95


def test_tcn_sees_a_frozen_sensor_and_an_ensemble_averages() -> None:
    torch.manual_seed(0)
    net = TCN(3, 2, channels=8)
    assert net(torch.zeros(5, 60, 3)).shape == (5, 2)
    ens = Ensemble([build_net("tcn", n_in=180, n_out=2, length=60, n_roles=3, channels=8) for _ in range(2)])
    x = torch.randn(4, 60, 3)
    with torch.no_grad():
        assert torch.allclose(ens(x), (ens.members[0](x) + ens.members[1](x)) / 2)
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


@pytest.fixture(scope="module")
def with_transfer(recordings: list[Recording], tmp_path_factory: pytest.TempPathFactory) -> list[Recording]:
    """The shared tiny recordings plus one unlabelled faulty hour (``split: transfer``)."""
    rc = Recordings(
        dir=tmp_path_factory.mktemp("transfer"),
        sets=[RecordingSet(name="transfer", seeds=[31], hours=2, split="transfer")],
    )
    return [*recordings, *record_all(rc, progress=False)]


def test_chain_distils_on_the_transfer_set_over_seeds(with_transfer: list[Recording], tmp_path: Path) -> None:
    cfg = tiny_model(
        tmp_path,
        "classifier",
        teachers=[NetConfig(arch="mlp", hidden=[32]), NetConfig(arch="tcn", features="sequence", channels=8,
                                                                 ensemble=2, epochs=1)],
        fit=FitSettings(epochs=2, finetune_epochs=1, batch=256),
        int8={"mode": "off"},
        seeds=3,
    )
    man = export_model(cfg, with_transfer, progress=False)
    rep = json.loads((cfg.out / "report.json").read_text())
    tw = rep["data"]["transfer_windows"]
    assert tw["unlabelled"] > 0 and tw["labelled"] == rep["data"]["train_windows"]
    assert [len(rep["students"][f]["test"]) for f in ("distilled", "scratch")] == [3, 3]
    (g,) = [g for g in rep["gates"] if g["gate"] == "distillation"]
    assert {"distilled_mean", "distilled_sd", "scratch_mean", "scratch_sd", "t"} <= set(g["measured"])
    assert g["measured"]["distilled_mean"] == pytest.approx(np.mean(rep["students"]["distilled"]["test"]))
    shipped = "distilled" if g["result"].startswith("pass") else "scratch"
    assert shipped in man.provenance["method"]
    teachers = [m for m in rep["models"] if m["role"].startswith("teacher")]
    assert teachers[1]["arch"] == "tcn (sequence) x2 ensemble"
    best = max(teachers, key=lambda m: m["val"])
    assert f"teacher: {best['arch'].split()[0]} over" in " ".join(rep["notes"])
    md = (cfg.out / "report.md").read_text()
    assert "± " in md  # the students' spread over seeds is in the report
    # bench/teachers.py runs the bundle as the agent does (manifest, window_to_input, onnxruntime)
    test_file = next(r.path for r in with_transfer if r.split == "test" and r.path.name.endswith(".wide.csv"))
    judged = judge(cfg.out, [test_file], label="pump{n}_fault_code", rul="pump{n}_rul_h", cap=2.0)
    assert judged["windows"] > 100 and 0.0 < judged["balanced_accuracy"] <= 1.0
    assert set(judged["recall"]) <= set(man.outputs[0].labels or ()) and "normal" in judged["recall"]
    # labelled only: no unlabelled windows; an autoencoder never distils on them either
    w = Windows(np.zeros((10, 60, 14), np.float32), *(np.zeros(10, t) for t in (np.int64, float, float,
                                                                             np.int64, np.int64, np.int64)))
    ds = SimpleNamespace(transfer=w, spec=SimpleNamespace(window=WindowSpec(sample_period_s=1.0, length=60, stride=10), roles=[0] * 14))
    assert len(_unlabelled(cfg, SimpleNamespace(name="classifier"), ds)) == 5  # thinned to train_stride 20
    assert len(_unlabelled(cfg.model_copy(update={"transfer": "labelled"}), SimpleNamespace(name="classifier"), ds)) == 0
    assert len(_unlabelled(cfg, SimpleNamespace(name="anomaly"), ds)) == 0


def test_the_teachers_config_loads_and_distils_over_seeds() -> None:
    from export.pipeline import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "export-teachers.yaml")
    assert {m.name for m in cfg.models} == {"fault-mlp", "rul-bearing"}
    assert all(m.seeds >= 3 and m.student.log_std for m in cfg.models)
    train = {s for st in cfg.recordings.sets if st.split == "train" for s in st.seeds}
    transfer = {s for st in cfg.recordings.sets if st.split == "transfer" for s in st.seeds}
    test = {s for st in cfg.recordings.sets if st.split == "test" for s in st.seeds}
    assert transfer and not (train & transfer) and not (test & (train | transfer))
