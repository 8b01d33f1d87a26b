"""Manifest.checks: the check vectors of the on-box self-test, validated at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ModelError
from agent.modelstore.manifest import load_manifest, parse_manifest
from tests.store.kit import ROOT, make_bundle


def with_checks(tmp_path: Path, checks: object) -> bytes:
    b = make_bundle(tmp_path / "b", "1")
    m = json.loads((b / "manifest.json").read_text())
    m["checks"] = checks
    return json.dumps(m).encode()


def test_checks_load_and_old_bundles_still_load(tmp_path: Path) -> None:
    m = load_manifest(make_bundle(tmp_path / "b", "1"))
    assert len(m.checks) == 1 and set(m.checks[0].outputs) == {"score"}
    assert load_manifest(ROOT / "models" / "pca-pump").checks == ()


@pytest.mark.parametrize(
    ("checks", "why"),
    [
        ([{"inputs": [[1.0, 2.0]], "outputs": {"nope": [1.0]}}], "checks[0]: unknown outputs nope"),
        (
            [{"inputs": [[1.0], [1.0, 2.0]], "outputs": {"score": [1.0]}}],
            "checks[0].inputs: must be a rectangular",
        ),
        ([{"inputs": [[1.0, "x"]], "outputs": {"score": [1.0]}}], "checks[0].inputs: must be a rectangular"),
        ([{"inputs": [], "outputs": {"score": [1.0]}}], "checks[0].inputs: must be a non-empty"),
        ([{"inputs": [[1.0, 2.0]], "outputs": {"score": [1.0]}, "tolerance": 0}], "checks[0].tolerance"),
    ],
)
def test_bad_checks_refused_naming_the_field(tmp_path: Path, checks: object, why: str) -> None:
    with pytest.raises(ModelError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_manifest(with_checks(tmp_path, checks), tmp_path / "manifest.json")
