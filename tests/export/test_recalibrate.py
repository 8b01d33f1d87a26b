"""``edge-export recalibrate`` (export/sequence.py: recalibrate): a sequence bundle's alert threshold
calibrated anew through the agent's own replay, on a small synthetic plant (tests/export/test_sequence.py's):
the same model.onnx (real ONNX), a new version, threshold and signature; bad inputs refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.modelstore.bundle import load_bundle
from agent.replay import alarm_inputs
from export.evaluate import CalibrationData, calibrate, derived_setup, load_recording
from export.sequence import SequenceConfig, fit_bundle, recalibrate
from tests.export.test_sequence import ROLES, WINDOW, _columns, _plant

ROOT = Path(__file__).resolve().parents[2]
KEY = ROOT / "export" / "keys" / "dev-ed25519.pem"
PUB = ROOT / "export" / "keys" / "dev-ed25519.pub"
ON_DELAY = 10.0


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A tiny signed sequence bundle (version 1, calibrated on one day) and two other normal days."""
    d = tmp_path_factory.mktemp("recal")
    train = [_plant(d / "train.csv", 1, 1.0)]
    cfg = SequenceConfig(channels=4, latent=1, epochs=2, max_windows=1000)
    fit_bundle(
        train, [_plant(d / "cal.csv", 2, 1.0)], _columns(), ROLES, ["load"], WINDOW, d / "seq",
        name="seq-test", cfg=cfg, train_stride=5, false_alerts_per_day=2.0, on_delay_s=ON_DELAY, key=KEY,
    )  # fmt: skip
    days = [_plant(d / f"day{s}.csv", s, 1.0) for s in (3, 4)]
    return d / "seq", days


def _calibrated(bundle: Path, days: list[Path], target: float) -> float:
    """The threshold calibrating ``bundle`` itself gives (its own replay, the test's own code)."""
    setup = derived_setup(load_bundle(bundle), _columns(), on_delay_s=ON_DELAY)
    recs = [load_recording([p], ["load", "a", "b", "c"], 1.0) for p in days]
    cal = [CalibrationData(alarm_inputs(r, setup)[0], r.period_s) for r in recs]
    high = calibrate(setup.alarms, cal, target).defs[0].high
    assert high is not None
    return high.value


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recalibrated_bundle_is_the_same_graph_with_the_threshold_calibration_gives(
    plant: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    src, days = plant
    res = recalibrate(src, days, tmp_path / "v2", version="2", false_alerts_per_day=50.0, key=KEY)
    b = load_bundle(tmp_path / "v2", trusted_keys=[PUB])  # signed, hashes verified: what the agent loads
    m, old = b.manifest, load_bundle(src).manifest
    assert _sha(tmp_path / "v2" / "model.onnx") == _sha(src / "model.onnx")
    assert m.version == "2" and m.name == old.name and m.inputs == old.inputs and m.window == old.window
    (out,) = m.outputs
    assert out.thresholds["alarm"] == _calibrated(src, days, 50.0) == res.report["threshold"]
    assert out.thresholds["alarm"] != old.outputs[0].thresholds["alarm"]
    prov = m.provenance
    assert prov["calibration"] == "day3.csv day4.csv"
    assert prov["columns"] == old.provenance["columns"] and prov["recordings"] == old.provenance["recordings"]
    assert prov["thresholds"].startswith(
        "calibrated through the agent's replay (alert on-delay 10 s) for 50 "
    )
    assert prov["recalibrated"].startswith(
        f"from version 1 (threshold {old.outputs[0].thresholds['alarm']:.6g}, 2 false alerts per asset-day on cal.csv)"
    )
    rep = json.loads((tmp_path / "v2" / "report.json").read_text())
    was = json.loads((src / "report.json").read_text())
    assert {k: rep[k] for k in ("train_windows", "parameters", "train_loss")} == {
        k: was[k] for k in ("train_windows", "parameters", "train_loss")
    }
    assert rep["false_alerts_per_day_target"] == 50.0 and rep["on_delay_s"] == ON_DELAY
    assert rep["recalibrated_from"].startswith("version 1, threshold ")
    assert "- recalibrated_from: version 1" in (tmp_path / "v2" / "report.md").read_text()


def test_a_higher_false_alert_target_gives_a_threshold_no_higher(
    plant: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    src, days = plant
    low = recalibrate(src, days, tmp_path / "a", version="2", false_alerts_per_day=1.0).report["threshold"]
    high = recalibrate(src, days, tmp_path / "b", version="2", false_alerts_per_day=200.0).report["threshold"]
    assert float(str(high)) <= float(str(low))


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export.cli", "recalibrate", *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip


def test_cli_recalibrates_in_place(plant: tuple[Path, list[Path]], tmp_path: Path) -> None:
    src = tmp_path / "seq"
    shutil.copytree(plant[0], src)
    day = str(plant[1][0])
    proc = _cli(src, "--calibrate", day, "--false-alerts-per-day", "20", "--version", "7", "--out", src)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {src} (seq-test v7, from version 1 "), proc.stdout
    m = load_bundle(src, allow_unsigned=True, trusted_keys=[PUB]).manifest
    assert m.version == "7" and not (src / "signature.json").exists()  # no --key: unsigned


def test_cli_refuses_bad_inputs_in_one_line(plant: tuple[Path, list[Path]], tmp_path: Path) -> None:
    src, day = plant[0], str(plant[1][0])
    no_cols = tmp_path / "no-cols"
    shutil.copytree(src, no_cols)
    (no_cols / "signature.json").unlink()
    man = json.loads((no_cols / "manifest.json").read_text())
    del man["provenance"]["columns"]
    (no_cols / "manifest.json").write_text(json.dumps(man))
    tampered = tmp_path / "tampered"
    shutil.copytree(src, tampered)
    (tampered / "report.json").write_text("{}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    out = tmp_path / "out"
    target = ("--false-alerts-per-day", "1")
    common = (*target, "--version", "2")
    cases = {
        "not a sequence bundle": (ROOT / "models" / "fault-mlp", "--calibrate", day, *common, "--out", out),
        "no valid 'columns'": (no_cols, "--calibrate", day, *common, "--out", out),
        "the manifest says": (tampered, "--calibrate", day, *common, "--out", out),
        "not found: nope.csv": (src, "--calibrate", day, "nope.csv", *common, "--out", out),
        "not a bundle of seq-test": (src, "--calibrate", day, *common, "--out", other),
        "own version": (src, "--calibrate", day, *target, "--version", "1", "--out", out),
        "not a bundle (no manifest.json)": (other, "--calibrate", day, *common, "--out", out),
    }
    for what, args in cases.items():
        proc = _cli(*args)
        assert proc.returncode == 2, (what, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and what in lines[0], (what, proc.stderr)
    assert not out.exists() and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
