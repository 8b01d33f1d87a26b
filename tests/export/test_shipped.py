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
    assert {"pca-pump", "op-pump", "seq-pump", "fault-mlp", "rul-bearing"} <= {p.name for p in BUNDLES}
    assert "ae-pump" not in {p.name for p in BUNDLES}  # retired: seq-pump supersedes it


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


@pytest.mark.parametrize("bundle", BUNDLES, ids=[p.name for p in BUNDLES])
def test_shipped_bundle_binds_to_the_demo_config(bundle: Path) -> None:
    """Every shipped bundle binds to configs/demo.yaml: the demo's own binding where the demo
    runs it, else the demo's pump tags under the same roles; trusted with the demo's keys."""
    from agent.config import load_config

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    keys = [(ROOT / "configs" / k).resolve() for k in cfg.models_trust.public_keys]
    b = load_bundle(bundle, trusted_keys=keys, allow_unsigned=cfg.models_trust.allow_unsigned)
    assert b.signature.state == "signed"
    binding = next((m for m in cfg.models if m.name == b.manifest.name), None)
    if binding is None:
        template = cfg.models[0]
        binding = template.model_copy(update={"name": b.manifest.name, "bundle": bundle})
    units = {t.name: t.engineering_unit for _, t in cfg.iter_tags()}
    periods = {t.name: d.poll_interval_ms / 1000 for d, t in cfg.iter_tags()}
    check_binding(b.manifest, binding, units, periods, source="configs/demo.yaml")
