"""The PCA (T^2/SPE) baseline: numpy reference, ONNX parity, thresholds, bundle, CSV and CLI."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import FeatureSpec, InputRole, Normalisation, WindowSpec
from agent.pipeline.features import window_to_input
from agent.pipeline.scorer import Scorer
from agent.types import Frame
from export.pca_baseline import (
    PcaModel,
    RoleSpec,
    alarm_episodes,
    fit_pca,
    load_series,
    main,
    read_csv,
    to_onnx,
    write_bundle,
)

ROOT = Path(__file__).resolve().parents[2]


def normal_data(n: int, seed: int, f: int = 8, k: int = 3) -> np.ndarray:
    """Correlated 'normal operation': k latent factors mixed into f signals plus noise."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(1234).normal(size=(k, f))  # same plant for every seed
    offset = np.linspace(10.0, 80.0, f)
    return offset + rng.normal(size=(n, k)) @ mix * 3.0 + rng.normal(scale=0.3, size=(n, f))


@pytest.fixture(scope="module")
def model() -> PcaModel:
    return fit_pca(normal_data(20_000, seed=1), variance=0.9, false_alarm_rate=0.02,
                   calibration=normal_data(20_000, seed=2))


def reference_scores(x_fit: np.ndarray, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Textbook T^2/SPE via the SVD of the standardised fitting data (independent code path)."""
    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0, ddof=1)
    z_fit = (x_fit - mean) / std
    _, s, vt = np.linalg.svd(z_fit, full_matrices=False)
    p = vt[:k].T
    lam = s[:k] ** 2 / (len(x_fit) - 1)
    z = (x - mean) / std
    t = z @ p
    t2 = np.sum(t**2 / lam, axis=1)
    spe = np.sum((z - t @ p.T) ** 2, axis=1)
    return t2, spe


def test_scores_match_a_textbook_reference() -> None:
    x_fit = normal_data(5000, seed=3)
    m = fit_pca(x_fit, n_components=3)
    x = normal_data(500, seed=4) + np.random.default_rng(5).normal(scale=2.0, size=(500, 8))
    t2, spe = m.scores(x)
    rt2, rspe = reference_scores(x_fit, 3, x)
    np.testing.assert_allclose(t2, rt2, rtol=1e-8)
    np.testing.assert_allclose(spe, rspe, rtol=1e-8)


def test_component_selection() -> None:
    x = normal_data(5000, seed=3)
    assert fit_pca(x, variance=0.9).n_components == 3  # three latent factors
    m = fit_pca(x, variance=0.5)
    assert 1 <= m.n_components < 3 and m.explained_variance >= 0.5
    assert fit_pca(x, n_components=50).n_components == 7  # capped at F-1: SPE needs a residual space
    with pytest.raises(ValueError, match="not finite"):
        fit_pca(np.full((10, 3), np.nan))


def test_onnx_matches_numpy(model: PcaModel) -> None:
    sess = ort.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([normal_data(1000, seed=7), normal_data(50, seed=8) * 1.3])
    t2, spe = sess.run(["t2", "spe"], {"x": x.astype(np.float32)})
    rt2, rspe = model.scores(x.astype(np.float32))
    assert t2.shape == spe.shape == (1050,)
    assert np.max(np.abs(t2 - rt2) / np.maximum(np.abs(rt2), 1.0)) <= 1e-4
    assert np.max(np.abs(spe - rspe) / np.maximum(np.abs(rspe), 1.0)) <= 1e-4
    # the batch dimension is dynamic
    (one,) = sess.run(["t2"], {"x": x[:1].astype(np.float32)})
    assert one.shape == (1,)


def test_thresholds_give_about_the_chosen_false_alarm_rate_on_fresh_data(model: PcaModel) -> None:
    fresh = normal_data(50_000, seed=9)
    t2, spe = model.scores(fresh)
    assert 0.006 < np.mean(t2 > model.t2_limit) < 0.014  # each statistic at alpha/2 = 0.01
    assert 0.006 < np.mean(spe > model.spe_limit) < 0.014
    assert 0.012 < np.mean(model.alarms(fresh)) < 0.028  # combined ~ alpha = 0.02


def test_broken_correlation_is_detected(model: PcaModel) -> None:
    fresh = normal_data(2000, seed=10)
    fresh[:, 2] = np.random.default_rng(11).permutation(fresh[:, 2])  # same values, relation broken
    assert np.mean(model.alarms(fresh)) > 0.5


# --------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class Contract:
    inputs: tuple[InputRole, ...]
    features: FeatureSpec


def pump_inputs() -> tuple[InputRole, ...]:
    return (
        InputRole(role="vibration", unit="mm/s", range=(0, 50),
                  normalisation=Normalisation(kind="standard", mean=2.0, std=0.5)),
        InputRole(role="current", unit="A", range=(0, 100),
                  normalisation=Normalisation(kind="standard", mean=40.0, std=5.0)),
    )


async def test_written_bundle_loads_and_scores_assets_in_one_call(tmp_path: Path) -> None:
    inputs = pump_inputs()
    window = WindowSpec(sample_period_s=1.0, length=10, stride=5)
    features = FeatureSpec(kind="summary", stats=("mean", "std"))
    rng = np.random.default_rng(0)

    def windows(n: int) -> np.ndarray:
        load = rng.normal(size=(n, 1, 1))
        vib = 2.0 + 0.4 * load + rng.normal(scale=0.1, size=(n, 10, 1))
        cur = 40.0 + 4.0 * load + rng.normal(scale=0.5, size=(n, 10, 1))
        return np.concatenate([vib, cur], axis=2)

    contract = Contract(inputs, features)  # what export has before the manifest exists
    m = fit_pca(window_to_input(windows(4000), contract), n_components=1,
                false_alarm_rate=0.01, calibration=window_to_input(windows(4000), contract))
    manifest = write_bundle(tmp_path / "pca-pump", m, name="pca-pump", version="1", window=window,
                            inputs=inputs, features=features)
    assert {p.name for p in (tmp_path / "pca-pump").iterdir()} == {"model.onnx", "manifest.json"}
    assert manifest.outputs[0].thresholds == {"alarm": m.t2_limit}
    assert manifest.outputs[1].thresholds == {"alarm": m.spe_limit}
    bundle = load_bundle(tmp_path / "pca-pump")
    runs: list[int] = []
    inner = bundle.session

    class Counting:
        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            runs.append(len(feeds["x"]))
            out: list[np.ndarray] = inner.run(names, feeds)
            return out

    scorer = Scorer(replace(bundle, session=Counting()))
    values = windows(2)
    values[1, :, 0] += 3.0  # pump 2 vibrates without drawing more current: off the model plane
    f = Frame("pca-pump", datetime(2024, 1, 1, tzinfo=UTC), 1.0, ("p1", "p2"), ("vibration", "current"),
              values, np.ones_like(values, dtype=bool))
    s1, s2 = await scorer.score(f)
    assert runs == [2]
    t2, spe = m.scores(window_to_input(values, manifest))
    for s, a, b in ((s1, t2[0], spe[0]), (s2, t2[1], spe[1])):
        assert s.outputs["t2"] == pytest.approx(a, rel=1e-4, abs=1e-4)
        assert s.outputs["spe"] == pytest.approx(b, rel=1e-4, abs=1e-4)
    assert s2.outputs["anomaly"] == 1.0 and s2.outputs["spe_alarm"] == 1.0


# --------------------------------------------------------------------------- CSV and CLI


def write_recording(path: Path, seconds: int, seed: int, *, iso: bool = False, dt: float = 0.5) -> None:
    """Two pumps sharing a plant: flow, current and pressure follow each pump's speed."""
    rng = np.random.default_rng(seed)
    n = int(seconds / dt)
    cols: dict[str, np.ndarray] = {}
    for pump in ("p1", "p2"):
        speed = 1450 + np.cumsum(rng.normal(scale=2.0, size=n))
        speed = 1450 + (speed - speed.mean()) * 0.5
        cols[f"{pump}_flow"] = 0.05 * speed + rng.normal(scale=0.5, size=n)
        cols[f"{pump}_current"] = 0.02 * speed + rng.normal(scale=0.3, size=n)
        cols[f"{pump}_vibration"] = 2.0 + rng.normal(scale=0.2, size=n)
        cols[f"{pump}_fault"] = np.zeros(n)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with path.open("w") as fh:
        fh.write("timestamp," + ",".join(cols) + ",label\n")
        for i in range(n):
            ts = (start + timedelta(seconds=i * dt)).isoformat() if iso else f"{1_700_000_000 + i * dt:.3f}"
            fh.write(ts + "," + ",".join(f"{cols[c][i]:.5f}" for c in cols) + ",normal\n")


def test_read_csv_and_decimation(tmp_path: Path) -> None:
    p = tmp_path / "rec.csv"
    write_recording(p, 20, seed=1, iso=True)
    stamps, cols = read_csv(p)
    assert len(stamps) == 40 and stamps[1] - stamps[0] == pytest.approx(0.5)
    assert np.all(np.isnan(cols["label"]))
    (seg,) = load_series(p, ["p1_flow", "p2_flow"], 1.0)
    assert seg.shape == (20, 2)
    np.testing.assert_array_equal(seg[:, 0], cols["p1_flow"][::2])
    with pytest.raises(ValueError, match="cannot be decimated"):
        load_series(p, ["p1_flow"], 0.75)
    with pytest.raises(ValueError, match=r"no column\(s\) \['p3_flow'\]"):
        load_series(p, ["p3_flow"], 1.0)


def test_role_spec_parse() -> None:
    expected = RoleSpec("flow", "m3/h", 0.0, 200.0, "{asset}_flow")
    assert RoleSpec.parse("flow:m3/h:0:200:{asset}_flow") == expected
    assert RoleSpec.parse("t:deg:C:-20:150:t1").unit == "deg:C"
    with pytest.raises(ValueError, match="ROLE:UNIT:LOW:HIGH:COLUMN"):
        RoleSpec.parse("flow=p1_flow")


def test_alarm_episodes_with_on_delay() -> None:
    flags = [1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1]
    assert alarm_episodes(flags, 1) == 3
    assert alarm_episodes(flags, 3) == 2
    assert alarm_episodes(flags, 5) == 0


def test_cli_fits_two_pumps_from_csv_and_writes_a_loadable_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recs = []
    for seed in (1, 2):
        recs.append(tmp_path / f"normal-{seed}.csv")
        write_recording(recs[-1], 3000, seed)
    fresh = tmp_path / "fresh.csv"
    write_recording(fresh, 3000, 3)
    out = tmp_path / "pca-pump"
    argv = [
        "--out", str(out), "--name", "pca-pump", "--version", "2",
        *[a for r in recs for a in ("--csv", str(r))], "--check", str(fresh),
        "--role", "flow:m3/h:0:200:{asset}_flow",
        "--role", "motor_current:A:0:100:{asset}_current",
        "--role", "bearing_vibration:mm/s:0:50:{asset}_vibration",
        "--asset", "p1", "--asset", "p2",
        "--period", "1", "--window", "30", "--stride", "10", "--stats", "mean,std",
        "--variance", "0.9", "--false-alarm-rate", "0.01", "--on-delay", "2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "check:" in printed
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.ident == "pca-pump v2"
    assert m.roles == ("flow", "motor_current", "bearing_vibration")
    assert [r.unit for r in m.inputs] == ["m3/h", "A", "mm/s"]
    assert m.model_input.shape == ("batch", 6)
    assert m.window == WindowSpec(sample_period_s=1.0, length=30, stride=10)
    assert m.role("flow").normalisation.mean == pytest.approx(72.5, abs=1.0)
    assert m.provenance["assets"] == "p1 p2" and "exceedance" in m.provenance["check"]
    assert [o.name for o in m.outputs] == ["t2", "spe"]


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "rec.csv"
    write_recording(p, 100, 1)
    code = main(["--out", str(tmp_path / "b"), "--name", "x", "--csv", str(p),
                 "--role", "flow:m3/h:0:200:{asset}_nope", "--asset", "p1"])
    assert code == 2
    assert "no column(s) ['p1_nope']" in capsys.readouterr().err


def test_agent_never_imports_torch_or_export() -> None:
    code = (
        "import sys, agent.pipeline.features, agent.pipeline.scorer, agent.modelstore.bundle, "
        "agent.modelstore.binding; bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'export')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


async def test_shipped_pca_pump_bundle_loads_and_scores_two_pumps_in_one_call() -> None:
    bundle = load_bundle(ROOT / "models" / "pca-pump")
    m = bundle.manifest
    assert m.ident == "pca-pump v1" and m.task == "anomaly"
    assert m.model_input.shape == ("batch", 2 * len(m.inputs))
    assert {o.name for o in m.outputs} == {"t2", "spe"}
    assert all("alarm" in o.thresholds for o in m.outputs)
    assert m.role("vibration").unit == "mm/s" and m.role("bearing_temperature").unit == "°C"
    rng = np.random.default_rng(0)
    mean = np.array([r.normalisation.offset for r in m.inputs])
    std = np.array([r.normalisation.scale for r in m.inputs])
    values = mean + 0.05 * std * rng.normal(size=(2, m.window.length, len(m.inputs)))
    runs: list[int] = []
    inner = bundle.session

    class Counting:
        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            runs.append(len(feeds["x"]))
            out: list[np.ndarray] = inner.run(names, feeds)
            return out

    scorer = Scorer(replace(bundle, session=Counting()))
    f = Frame("pca-pump", datetime(2024, 1, 1, tzinfo=UTC), 1.0, ("Pump1", "Pump2"), m.roles,
              values, np.ones_like(values, dtype=bool))
    scores = await scorer.score(f)
    assert runs == [2]
    for s in scores:
        assert set(s.outputs) == {"t2", "spe", "t2_alarm", "spe_alarm", "t2_ratio", "spe_ratio", "anomaly"}
        assert np.isfinite(s.outputs["t2"]) and np.isfinite(s.outputs["spe"])
