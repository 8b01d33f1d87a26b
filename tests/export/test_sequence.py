"""export/sequence.py: the temporal anomaly model, trained (real torch), exported (real ONNX),
calibrated and judged through the agent's own replay (agent/replay.py), on a small synthetic
plant: an operating variable moved in steps, three measurements that follow it with a lag."""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import InputRole, WindowSpec
from export.evaluate import Episode, Labels, derived_setup, evaluate_method, load_recording
from export.onnx_tools import run_onnx
from export.pca_baseline import RoleSpec
from export.sequence import (
    SequenceConfig,
    SequenceEnsemble,
    SequenceNet,
    SequenceScore,
    Validation,
    distil,
    fit_bundle,
    prune_net,
    teacher_targets,
)

ROOT = Path(__file__).resolve().parents[2]
ROLES = ["load:%:0:100:load", "a:bar:-50:50:a", "b:kW:-50:150:b", "c:degC:-50:50:c"]
WINDOW = WindowSpec(sample_period_s=1.0, length=30, stride=5)
T0 = 1_700_000_000.0


def _plant(
    path: Path, seed: int, hours: float, *, stuck_at: float | None = None, dropout_at: float | None = None
) -> Path:
    """Steps of the operating variable every 10 min; ``a`` and ``b`` follow it with a lag
    (``b`` quadratically), ``c`` is slow; ``b`` freezes from ``stuck_at`` s on, or delivers
    nothing (empty cells) from ``dropout_at`` s on; ``fault``: 0, or 1 while ``b`` is frozen."""
    rng = np.random.default_rng(seed)
    n = round(hours * 3600)
    sp = np.repeat(rng.uniform(30, 90, n // 600 + 1), 600)[:n]
    load = np.empty(n)
    x = sp[0]
    for k in range(n):
        x += (sp[k] - x) * 0.2
        load[k] = x
    a = 0.3 * load + rng.normal(0, 0.2, n)
    b = 0.01 * load**2 + rng.normal(0, 0.3, n)
    c = 5 * np.sin(np.arange(n) / 3000.0 + seed) + rng.normal(0, 0.1, n)
    if stuck_at is not None:
        b[int(stuck_at) :] = b[int(stuck_at)]
    if dropout_at is not None:
        b[int(dropout_at) :] = np.nan
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "load", "a", "b", "c", "fault"])
        for k in range(n):
            bk = "" if np.isnan(b[k]) else f"{b[k]:.3f}"
            fault = int(stuck_at is not None and k >= stuck_at)
            w.writerow([f"{T0 + k:.0f}", f"{load[k]:.3f}", f"{a[k]:.3f}", bk, f"{c[k]:.3f}", fault])
    return path


def _columns() -> dict[str, dict[str, str]]:
    return {"unit": {RoleSpec.parse(r).role: RoleSpec.parse(r).column for r in ROLES}}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("seq")
    train = [_plant(d / f"train{s}.csv", s, 2.0) for s in (1, 2)]
    cal = [_plant(d / "cal.csv", 3, 2.0)]
    cfg = SequenceConfig(channels=8, latent=1, epochs=6, max_windows=4000)
    res = fit_bundle(
        train, cal, _columns(), ROLES, ["load"], WINDOW, d / "seq", name="seq-test",
        cfg=cfg, train_stride=5, false_alerts_per_day=2.0,
    )  # fmt: skip
    assert res.report["false_alerts_calibration"] == 0 or float(str(res.report["calibration_asset_days"])) > 0
    return d / "seq"


def _replay(bundle_dir: Path, path: Path, labels: Labels, hold_cycles: int | None = None) -> object:
    b = load_bundle(bundle_dir)
    rec = load_recording([path], ["load", "a", "b", "c"], 1.0)
    setup = derived_setup(b, _columns(), on_delay_s=5.0, hold_cycles=hold_cycles)
    return evaluate_method("seq", rec, setup, labels)[0]


def test_bundle_is_one_onnx_file_the_agent_loads(bundle: Path) -> None:
    b = load_bundle(bundle)
    m = b.manifest
    assert m.features.kind == "sequence"
    assert [r.operating for r in m.inputs] == [True, False, False, False]
    assert m.model_input.shape[1:] == (WINDOW.length, 4)
    (out,) = m.outputs
    assert out.name == "score" and out.thresholds["alarm"] > 0
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx", "report.json", "report.md"]


def test_setpoint_steps_are_no_fault_and_a_frozen_sensor_is(bundle: Path, tmp_path: Path) -> None:
    healthy = _replay(bundle, _plant(tmp_path / "healthy.csv", 7, 2.0), Labels())
    assert healthy.per_asset["unit"]["false_alerts"] == 0  # type: ignore[attr-defined]
    stuck_at = 3600.0
    path = _plant(tmp_path / "stuck.csv", 8, 2.0, stuck_at=stuck_at)
    ep = Episode(T0 + stuck_at, T0 + 7200.0, "unit", "stuck")
    res = _replay(bundle, path, Labels((ep,)))
    (e,) = res.episodes  # type: ignore[attr-defined]
    assert e["detected"], res.alarms  # type: ignore[attr-defined]
    assert e["delay_s"] < 300.0


def test_a_dropout_held_by_the_binding_reads_as_frozen(bundle: Path, tmp_path: Path) -> None:
    """The agent never scores a window holding a BAD sample: with ``bad_input: skip`` a sensor
    that stops delivering is invisible to the model; held for longer than the window, its last
    value is a frozen reading, which the roughness term alarms."""
    at = 3600.0
    path = _plant(tmp_path / "dropout.csv", 9, 2.0, dropout_at=at)
    labels = Labels((Episode(T0 + at, T0 + 7200.0, "unit", "dropout"),))
    skip = _replay(bundle, path, labels)
    assert not skip.episodes[0]["detected"]  # type: ignore[attr-defined]
    held = _replay(bundle, path, labels, hold_cycles=3600)
    (e,) = held.episodes  # type: ignore[attr-defined]
    assert e["detected"] and e["delay_s"] < 300.0, held.alarms  # type: ignore[attr-defined]


def test_onnx_matches_torch() -> None:
    torch.manual_seed(0)
    cfg = SequenceConfig(channels=4, latent=1)
    net = SequenceNet(3, [0], [1e-4, 1e-4], cfg)
    graph = SequenceScore(net, np.ones(2), np.zeros(2), np.ones(2), np.array([1.0, 0.0]), np.ones(2))
    graph.eval()
    from export.sequence import _onnx

    data = _onnx(graph, WindowSpec(sample_period_s=1.0, length=20, stride=5), 3)
    x = np.random.default_rng(0).normal(size=(16, 20, 3)).astype(np.float32)
    (got,) = run_onnx(data, x)
    with torch.no_grad():
        want = graph(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_cli_refuses_an_operating_role_that_is_not_a_role(tmp_path: Path) -> None:
    p = _plant(tmp_path / "n.csv", 1, 0.2)
    proc = subprocess.run(
        [sys.executable, "-m", "export.cli", "sequence", "--csv", str(p), "--calibrate", str(p),
         *[a for r in ROLES for a in ("--role", r)], "--operating", "speed", "--out", str(tmp_path / "o"),
         "--name", "x"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: operating role(s) ['speed'] are not roles (['load', 'a', 'b', 'c'])"
    ), proc.stderr
    assert not (tmp_path / "o").exists()


def test_pruning_keeps_whole_channels_and_all_of_them_changes_nothing() -> None:
    torch.manual_seed(0)
    cfg = SequenceConfig(channels=8, latent=2)
    net = SequenceNet(4, [0], [1e-4] * 3, cfg).eval()
    x = np.random.default_rng(1).normal(size=(64, 20, 4)).astype(np.float32)
    same = prune_net(net, 1.0, x, cfg)
    half = prune_net(net, 0.5, x, cfg)
    with torch.no_grad():
        for a, b in zip(net(torch.from_numpy(x)), same(torch.from_numpy(x)), strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert (same.channels, half.channels) == (8, 4)
    n_params = [sum(p.numel() for p in m.parameters()) for m in (net, half)]
    assert n_params[1] < 0.4 * n_params[0], n_params


def test_distilled_pruned_students_are_gated_against_scratch_over_seeds(tmp_path: Path) -> None:
    """The teacher, three distilled and pruned students, three from scratch, the gate on a
    labelled fault recording the chain never trained on; the bundle keeps the scratch
    model's interface."""
    train = [_plant(tmp_path / f"train{s}.csv", s, 1.0) for s in (1, 2)]
    cal = [_plant(tmp_path / "cal.csv", 3, 1.0)]
    faults = _plant(tmp_path / "faults.csv", 4, 1.0, stuck_at=1800.0)
    cfg = SequenceConfig(channels=6, latent=1, epochs=2, max_windows=1000, teacher_channels=8,
                         teacher_epochs=3, prune=0.5, finetune_epochs=1, seeds=3)  # fmt: skip
    res = fit_bundle(
        train, cal, _columns(), ROLES, ["load"], WINDOW, tmp_path / "kd", name="seq-test", cfg=cfg,
        train_stride=5, false_alerts_per_day=2.0, validation_paths=[faults], labels={"unit": "fault"},
    )  # fmt: skip
    kd = res.report["distillation"]
    assert isinstance(kd, dict)
    assert len(kd["distilled"]) == len(kd["scratch"]) == 3
    assert all(0.0 <= v <= 1.0 for v in kd["distilled"] + kd["scratch"])
    assert kd["validation"]["fault_kinds"] == 1 and kd["validation"]["fault_windows"] > 300
    measured = kd["gate"]["measured"]
    assert measured["seeds"] == 3 and np.isfinite(measured["t"])
    family = "distilled" if kd["gate"]["result"].startswith("pass") else "scratch"
    assert kd["ships"].startswith(family)
    m = load_bundle(tmp_path / "kd").manifest
    assert "3 channels" in m.provenance["architecture"]  # the pruned size, whichever family ships
    assert "t = " in m.provenance["distillation"]
    assert "## Distillation" in (tmp_path / "kd" / "report.md").read_text(encoding="utf-8")
    (out,) = m.outputs
    assert [r.operating for r in m.inputs] == [True, False, False, False]
    assert (out.name, list(out.thresholds)) == ("score", ["alarm"])


def test_an_ensemble_teacher_hands_its_members_averaged_targets() -> None:
    """The students' targets are the members' standardised errors and roughness residuals
    averaged, and the ensemble is scored as one net is (its outputs from those averages)."""
    torch.manual_seed(0)
    cfg = SequenceConfig(channels=4, latent=1)
    a, b = (SequenceNet(3, [0], [1e-4, 1e-4], cfg).eval() for _ in range(2))
    x = np.random.default_rng(0).normal(size=(16, 20, 3)).astype(np.float32)
    ens = SequenceEnsemble([a, b]).eval()
    got = teacher_targets(ens, x)
    ta, tb = teacher_targets(a, x), teacher_targets(b, x)
    for g, u, v in zip(got, ta, tb, strict=True):
        np.testing.assert_allclose(g.astype(np.float64), (u.astype(np.float64) + v) / 2, rtol=2e-3, atol=2e-3)
        assert not np.allclose(g.astype(np.float64), u.astype(np.float64), atol=1e-2)  # not one member's
    with torch.no_grad():
        rec, _, res, level = ens(torch.from_numpy(x))
    err = got[0].astype(np.float64)
    np.testing.assert_allclose(rec.numpy(), (err * err).mean(axis=2), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(level.numpy(), err.mean(axis=2), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(res.numpy(), got[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least one member"):
        SequenceEnsemble([])


def load_windows() -> tuple[np.ndarray, list[InputRole], np.ndarray]:
    """360 windows of 20 samples: an operating ``load`` (a random walk) and two roles that follow
    it with noise; and 100 of them with ``b`` frozen at its first value (the faults)."""
    rng = np.random.default_rng(0)
    load = np.cumsum(rng.normal(0, 0.1, size=(360, 20, 1)), axis=1)
    x = np.concatenate([load, 0.5 * load + rng.normal(0, 0.1, size=(360, 20, 2))], axis=2).astype(np.float32)
    stuck = x[:100].copy()
    stuck[:, :, 2] = stuck[:, :1, 2]
    inputs = [
        InputRole(role=r, unit="", range=(-10.0, 10.0), operating=r == "load") for r in ("load", "a", "b")
    ]
    return x, inputs, stuck


def test_distil_trains_an_ensemble_of_teachers_and_gates_over_seeds() -> None:
    """``teacher_ensemble`` teachers with different seeds, each one's recall and the ensemble's
    in the report; the students and the gate are the single teacher's."""
    x, inputs, stuck = load_windows()
    cfg = SequenceConfig(channels=4, latent=1, epochs=1, teacher_channels=6, teacher_epochs=1,
                         teacher_ensemble=2, prune=0.5, finetune_epochs=1, seeds=3)  # fmt: skip
    _, _, rep = distil(x[:240], x[240:], inputs, cfg, Validation({1.0: stuck}, x[240:]))
    t = rep["teacher"]
    assert isinstance(t, dict)
    assert t["members"] == 2 and len(t["member_recall"]) == 2
    assert all(0.0 <= v <= 1.0 for v in [*t["member_recall"], t["recall"]])
    one = SequenceNet(3, [0], [1e-4, 1e-4], SequenceConfig(channels=6, latent=1))
    assert t["parameters"] == 2 * sum(p.numel() for p in one.parameters())
    assert rep["gate"]["measured"]["seeds"] == 3  # type: ignore[index]
    with pytest.raises(ValueError, match="teacher_ensemble must be at least 1, not 0"):
        distil(x[:240], x[240:], inputs, replace(cfg, teacher_ensemble=0), Validation({1.0: stuck}, x[240:]))


def test_the_gate_needs_a_label_column_for_every_asset(tmp_path: Path) -> None:
    p = _plant(tmp_path / "n.csv", 1, 0.5)
    cfg = SequenceConfig(channels=4, latent=1, epochs=1, teacher_channels=4)
    with pytest.raises(ValueError, match=r"a --label column for every asset \(missing: \['unit'\]\)"):
        fit_bundle([p], [p], _columns(), ROLES, ["load"], WINDOW, tmp_path / "o", name="x", cfg=cfg,
                   validation_paths=[p])  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_keep_units_is_the_one_selection_of_structured_pruning() -> None:
    """export.train.keep_units: the MLP students' neurons and the sequence model's channels."""
    from export.train import keep_units

    imp = torch.tensor([0.1, 3.0, 0.5, 2.0, 0.0, 1.0])
    assert keep_units(imp, 0.5, 2).tolist() == [1, 3, 5]  # the top half, in their order
    assert keep_units(imp, 0.1, 2).tolist() == [1, 3]  # at least min_units
    assert keep_units(imp, 1.0, 2).tolist() == [0, 1, 2, 3, 4, 5]


def test_cli_teacher_without_a_label_column_is_a_one_line_error(tmp_path: Path) -> None:
    p = _plant(tmp_path / "n.csv", 1, 0.5)
    proc = subprocess.run(
        [sys.executable, "-m", "export.cli", "sequence", "--csv", str(p), "--calibrate", str(p),
         *[a for r in ROLES for a in ("--role", r)], "--operating", "load", "--window", "30",
         "--stride", "5", "--epochs", "1", "--channels", "4", "--latent", "1", "--teacher-channels", "4",
         "--teacher-ensemble", "2",
         "--validate", str(p), "--out", str(tmp_path / "o"), "--name", "x"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: the distillation gate needs --validate recordings and a --label column for every asset "
        "(missing: ['x'])"
    ), proc.stderr
    assert not (tmp_path / "o").exists()
