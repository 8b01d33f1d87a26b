"""Every bundle shipped in models/ loads in the agent (every variant), is signed with the
development key, and binds to the tags the plant offers per pump."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.modelstore.binding import ModelBinding, check_binding
from agent.modelstore.bundle import load_bundle
from agent.modelstore.signing import verify_bundle_signature
from simulator.register_map import build_register_map

from .conftest import DEV_PUB, ROOT

BUNDLES = sorted(p.parent for p in (ROOT / "models").glob("*/manifest.json"))


def test_the_students_are_shipped() -> None:
    assert {"pca-pump", "fault-mlp", "ae-pump"} <= {p.name for p in BUNDLES}


@pytest.mark.parametrize("bundle", BUNDLES, ids=[p.name for p in BUNDLES])
def test_shipped_bundle_loads_is_signed_and_binds_to_the_plant(bundle: Path) -> None:
    b = load_bundle(bundle)
    for v in b.manifest.variants:
        load_bundle(bundle, variant=v.file)
    assert verify_bundle_signature(bundle, [DEV_PUB])
    columns = json.loads(b.manifest.provenance["columns"])
    assets = {a: {role: col for role, col in roles.items() if not role.startswith("__")}
              for a, roles in columns.items()}
    units = {e.name: e.unit for e in build_register_map(2)}
    binding = ModelBinding(name=b.manifest.name, bundle=bundle, assets=assets)
    check_binding(b.manifest, binding, units, dict.fromkeys(units, 1.0), source="simulator register map")
