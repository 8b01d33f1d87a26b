"""export/sequence.py's score ensemble (``--score-ensemble``): members trained with different
seeds, each one's score in units of its normal tail, combined inside ONE ONNX graph that the
agent loads and runs as it runs a single model (real torch, real ONNX, the agent's replay)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.modelstore.bundle import load_bundle
from export.evaluate import Episode, Labels
from export.onnx_tools import run_onnx
from export.sequence import ScoreVote, SequenceConfig, SequenceNet, SequenceScore, _onnx, fit_bundle
from tests.export.test_sequence import ROLES, T0, WINDOW, _columns, _plant, _replay

ROOT = Path(__file__).resolve().parents[2]


def _member(seed: int) -> SequenceScore:
    torch.manual_seed(seed)
    net = SequenceNet(4, [0], [1e-4] * 3, SequenceConfig(channels=4, latent=1))
    rng = np.random.default_rng(seed)
    graph = SequenceScore(
        net,
        rng.uniform(0.5, 2, 3),
        np.zeros(3),
        np.ones(3),
        np.array([1.0, 0.5, 0.0]),
        rng.uniform(0.5, 2, 3),
    )
    graph.eval()
    return graph


@pytest.mark.parametrize("vote", ["mean", "median", "min"])
@pytest.mark.parametrize("n", [3, 4])
def test_the_graph_is_the_vote_over_its_members_scores(vote: str, n: int) -> None:
    members = [_member(s) for s in range(n)]
    x = np.random.default_rng(1).normal(size=(64, WINDOW.length, 4)).astype(np.float32)
    # every member exported and run alone, then combined here
    raw = np.stack([run_onnx(_onnx(m, WINDOW, 4), x)[0] for m in members], axis=1)
    scales = [float(v) for v in np.median(raw, axis=0)]
    alone = raw / np.array(scales)
    want = {"mean": alone.mean(axis=1), "median": np.median(alone, axis=1), "min": alone.min(axis=1)}[vote]
    (got,) = run_onnx(_onnx(ScoreVote(members, scales, vote), WINDOW, 4), x)
    assert got.shape == (64,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert len(set(np.argmax(alone, axis=1))) > 1  # the members disagree: the vote is not trivial


def test_a_vote_needs_a_positive_scale_per_member() -> None:
    with pytest.raises(ValueError, match="scales"):
        ScoreVote([_member(0), _member(1)], [1.0], "mean")
    with pytest.raises(ValueError, match="vote"):
        ScoreVote([_member(0)], [1.0], "max")


def test_an_ensemble_bundle_loads_in_the_agent_and_alarms_a_frozen_sensor(tmp_path: Path) -> None:
    train = [_plant(tmp_path / f"train{s}.csv", s, 1.0) for s in (1, 2)]
    cal = [_plant(tmp_path / "cal.csv", 3, 1.0)]
    cfg = SequenceConfig(channels=6, latent=1, epochs=4, max_windows=2000, score_ensemble=3)
    res = fit_bundle(
        train, cal, _columns(), ROLES, ["load"], WINDOW, tmp_path / "seq", name="seq-vote",
        cfg=cfg, train_stride=5, false_alerts_per_day=2.0,
    )  # fmt: skip
    m = load_bundle(tmp_path / "seq").manifest
    assert [o.name for o in m.outputs] == ["score"] and m.outputs[0].thresholds["alarm"] > 0
    assert "mean over seed-trained members" in m.description
    assert m.provenance["training"].startswith("4 epochs per member, seeds 0, 10, 20")
    assert res.report["score_ensemble"] == 3
    stuck_at = 2400.0
    path = _plant(tmp_path / "stuck.csv", 8, 1.0, stuck_at=stuck_at)
    ep = Episode(T0 + stuck_at, T0 + 3600.0, "unit", "stuck")
    out = _replay(tmp_path / "seq", path, Labels((ep,)))
    (e,) = out.episodes  # type: ignore[attr-defined]
    assert e["detected"], out.alarms  # type: ignore[attr-defined]


def test_cli_refuses_an_ensemble_with_a_teacher_in_one_line(tmp_path: Path) -> None:
    p = _plant(tmp_path / "n.csv", 1, 0.2)
    proc = subprocess.run(
        [sys.executable, "-m", "export.cli", "sequence", "--csv", str(p), "--calibrate", str(p),
         *[a for r in ROLES for a in ("--role", r)], "--operating", "load", "--score-ensemble", "3",
         "--teacher-channels", "8", "--out", str(tmp_path / "o"), "--name", "x"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: a score ensemble (--score-ensemble) and distillation (--teacher-channels) exclude each other"
    ), proc.stderr
    assert not (tmp_path / "o").exists()


def test_the_fused_net_is_the_ensemble_and_refuses_members_it_cannot_stack() -> None:
    ens = ScoreVote([_member(s) for s in range(3)], [1.0, 2.0, 0.5], "median")
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(32, WINDOW.length, 4)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(ens.fused()(x), ens(x), rtol=1e-5, atol=1e-6)
    torch.manual_seed(9)
    wider = SequenceScore(
        SequenceNet(4, [0], [1e-4] * 3, SequenceConfig(channels=6, latent=1)),
        *(np.ones(3) for _ in range(5)),
    )
    with pytest.raises(ValueError, match="same width"):
        ScoreVote([_member(0), wider], [1.0, 1.0]).fused()
