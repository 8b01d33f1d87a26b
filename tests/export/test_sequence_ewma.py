"""The sequence model with a history role (``--ewma``): export's training series and the agent's
windows agree on the same recording, and the agent loads and replays the bundle either way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import LATEST_SCHEMA_VERSION
from agent.pipeline.features import FeatureWindows
from agent.replay import alarm_inputs
from agent.types import Quality, Sample
from export.evaluate import derived_setup, load_recording
from export.pca_baseline import RoleSpec, _asset_segments
from export.sequence import SequenceConfig, fit_bundle, smoothed_segments
from tests.export.test_sequence import T0, WINDOW, _plant

ROOT = Path(__file__).resolve().parents[2]
ROLES = ["load:%:0:100:load", "history:%:0:100:load", "a:bar:-50:50:a", "b:kW:-50:150:b", "c:degC:-50:50:c"]
TAU = 600.0


def _columns() -> dict[str, dict[str, str]]:
    return {"unit": {RoleSpec.parse(r).role: RoleSpec.parse(r).column for r in ROLES}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("seq-ewma")
    train = [_plant(d / "train.csv", 1, 1.5)]
    cal = [_plant(d / "cal.csv", 3, 1.0)]
    cfg = SequenceConfig(channels=8, latent=1, epochs=2, max_windows=2000)
    fit_bundle(
        train, cal, _columns(), ROLES, ["load", "history"], WINDOW, d / "seq", name="seq-ewma",
        cfg=cfg, train_stride=5, false_alerts_per_day=2.0, ewma={"history": TAU},
    )  # fmt: skip
    return d / "seq", _plant(d / "test.csv", 5, 1.0, stuck_at=1800.0)


def test_the_manifest_declares_the_history_and_the_agent_loads_it(data: tuple[Path, Path]) -> None:
    m = load_bundle(data[0]).manifest
    assert m.schema_version == LATEST_SCHEMA_VERSION
    hist = m.role("history")
    assert (hist.aggregation, hist.time_constant_s, hist.operating) == ("ewma", TAU, True)
    assert m.role("load").aggregation == "instant"
    # normalised by the smoothed column's own spread: narrower than the raw load's
    assert hist.normalisation.std is not None and m.role("load").normalisation.std is not None
    assert hist.normalisation.std < m.role("load").normalisation.std


def test_export_series_equal_the_agent_windows_on_the_same_recording(data: tuple[Path, Path]) -> None:
    bundle, path = data
    m = load_bundle(bundle).manifest
    specs = [RoleSpec.parse(r) for r in ROLES]
    (seg,) = _asset_segments(path, _columns(), specs, 1.0)["unit"]
    series = smoothed_segments([seg], m.inputs, 1.0)[0]  # what export trains and calibrates on
    assert not np.array_equal(series[:, 1], series[:, 0])
    binding = derived_setup(load_bundle(bundle), _columns()).models[0][0]
    w = FeatureWindows(m, binding)
    rec = load_recording([path], ["load", "a", "b", "c"], 1.0)
    checked = 0
    for k in range(len(rec.t)):
        samples = {
            role: Sample(tag, float(rec.values[k, rec.column(tag)]), Quality.good(), None, float(k))  # type: ignore[arg-type]
            for role, tag in binding.assets["unit"].items()
        }
        w.push("unit", samples, float(k))
        frame = w.frame(now_mono=float(k))
        if frame is not None:
            np.testing.assert_array_equal(frame.values[0], series[k - WINDOW.length + 1 : k + 1])
            checked += 1
    assert checked > 500


def test_replay_arrays_and_ticks_give_the_same_scores(data: tuple[Path, Path]) -> None:
    bundle, path = data
    setup = derived_setup(load_bundle(bundle), _columns(), on_delay_s=5.0)
    rec = load_recording([path], ["load", "a", "b", "c"], 1.0)
    fast = alarm_inputs(rec, setup)[1][0]
    slow = alarm_inputs(rec, setup, ticks=True)[1][0]
    assert fast.rows.tolist() == slow.rows.tolist() and len(fast.rows) > 500
    np.testing.assert_allclose(fast.outputs["score"], slow.outputs["score"], rtol=1e-5)
    assert rec.t[0] == T0


def test_cli_refuses_a_history_without_a_time_constant(tmp_path: Path) -> None:
    csv_path = _plant(tmp_path / "x.csv", 1, 0.2)
    out = subprocess.run(
        [sys.executable, "-m", "export.cli", "sequence", "--csv", str(csv_path), "--calibrate", str(csv_path),
         *[a for r in ROLES for a in ("--role", r)], "--operating", "load", "--operating", "history",
         "--ewma", "history=soon", "--out", str(tmp_path / "b"), "--name", "x"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "error: --ewma history=soon: the time constant must be a positive number of seconds"
    )
