"""Identification of a perturbed plant from its recordings, and the signed recommender bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.errors import ModelError
from agent.modelstore.station import load_station_bundle
from agent.pipeline.policy import PumpEnergyRule
from export.cli import main
from export.identify import identify
from simulator.physics import PlantVariant
from simulator.recorder import record

ROOT = Path(__file__).resolve().parents[2]
DEV_KEY = ROOT / "export" / "keys" / "dev-ed25519.pem"
DEV_PUB = ROOT / "export" / "keys" / "dev-ed25519.pub"
CONFIG = ROOT / "configs" / "demo.yaml"
VARIANT = 5


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("rec")
    out = []
    for seed in (201, 202):
        p = d / f"variant{VARIANT}-seed{seed}.csv"
        record(p, hours=8, seed=seed, variant_seed=VARIANT, sample_s=10, dt_s=1.0, include_truth=False)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def bundle(recordings: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("station") / "station"
    identify(recordings, CONFIG, out, key=DEV_KEY)
    return out


def _within(value: float, se: float, truth: float, k: float = 3.0) -> bool:
    return abs(value - truth) <= k * se


def test_identification_recovers_the_perturbed_parameters_within_their_uncertainty(bundle: Path) -> None:
    st = load_station_bundle(bundle, [DEV_PUB])
    v = PlantVariant.draw(VARIANT)
    s = st.system
    # the datasheet (the prior) says 15 m and 30 m²: the data moved both to the variant's
    assert _within(s.static_head_m.value, max(s.static_head_m.se, 0.02), v.static_head_m)
    assert abs(s.static_head_m.value - v.static_head_m) < abs(15.0 - v.static_head_m)
    assert _within(s.tank_area_m2.value, s.tank_area_m2.se, v.tank_area_m2)
    for fit, true in zip(st.pumps, v.pumps, strict=True):
        a, _, c = fit.head
        assert _within(a.value, a.se, true.shutoff_head_m), (a, true.shutoff_head_m)
        assert _within(c.value, c.se, true.head_coeff), (c, true.head_coeff)
        assert fit.residual_head_m < 0.3 and fit.residual_power_kw < 0.2
    # the trimmed impeller shows: its shut-off head is the lower one, as in the plant
    trimmed = v.trimmed_pump - 1
    other = 1 - trimmed
    assert (st.pumps[trimmed].head[0].value < st.pumps[other].head[0].value) == (
        v.pumps[trimmed].shutoff_head_m < v.pumps[other].shutoff_head_m
    )
    report = json.loads((bundle / "report.json").read_text())
    assert [p["samples"] for p in report["pumps"]] == [p["samples"] for p in report["pumps"]] and all(
        p["samples"] > 2000 for p in report["pumps"]
    )
    assert "Station identification" in (bundle / "report.md").read_text()


def test_a_tampered_or_untrusted_station_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    for name, edit in (
        ("station.json", lambda t: t.replace('"rated_speed_rpm": 2900.0', '"rated_speed_rpm": 2901.0')),
        ("report.md", lambda t: t + "\nedited\n"),
    ):
        copy = tmp_path / name
        shutil.copytree(bundle, copy)
        f = copy / name
        f.write_text(edit(f.read_text()))
        with pytest.raises(ModelError, match=r"tampered|modified"):
            load_station_bundle(copy, [DEV_PUB])
    with pytest.raises(ModelError, match="no public key is trusted"):
        load_station_bundle(bundle, [])
    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle, unsigned)
    (unsigned / "signature.json").unlink()
    with pytest.raises(ModelError, match="unsigned"):
        load_station_bundle(unsigned, [DEV_PUB])
    assert load_station_bundle(unsigned, [], allow_unsigned=True).name


def test_the_rule_plans_on_the_identified_pumps(bundle: Path) -> None:
    from agent.config import load_config

    rc = load_config(CONFIG).recommender
    assert rc is not None
    rule = PumpEnergyRule(rc, load_station_bundle(bundle, [DEV_PUB]))
    speeds, flows, why = rule.plan(3.0, 120, [])
    assert "identified" in why and speeds["pump1"] != pytest.approx(speeds["pump2"], abs=1)
    for a in ("pump1", "pump2"):  # never below the minimum flow of the identified curve
        assert flows[a] >= rule.min_flow_m3h(a, speeds[a]) * (1 + rc.min_flow_margin) - 1e-6


def test_cli_refits_into_a_new_signed_bundle_and_names_bad_input(
    recordings: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "refit"
    assert (
        main(
            [
                "identify",
                "--data",
                str(recordings[0]),
                "--config",
                str(CONFIG),
                "--out",
                str(out),
                "--key",
                str(DEV_KEY),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "pump1: H = " in text and f"wrote {out} (signed)" in text
    assert load_station_bundle(out, [DEV_PUB]).data["sources"] == [str(recordings[0])]
    bad = tmp_path / "prior.yaml"
    bad.write_text("uncertainty: {head_coef: 0.1}\n")
    assert (
        main(
            [
                "identify",
                "--data",
                str(recordings[0]),
                "--config",
                str(CONFIG),
                "--out",
                str(out),
                "--prior",
                str(bad),
            ]
        )
        == 2
    )
    assert "uncertainty.head_coef: unknown" in capsys.readouterr().err
