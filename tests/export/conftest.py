"""Tiny plant recordings and a tiny export config shared by the export tests (CI-sized)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.replay import STATION_ROLES
from export.pca_baseline import RoleSpec
from export.pipeline import (
    DataConfig,
    FitSettings,
    ModelConfig,
    NetConfig,
    Recordings,
    RecordingSet,
    record_all,
)

ROOT = Path(__file__).resolve().parents[2]
DEV_KEY = ROOT / "export" / "keys" / "dev-ed25519.pem"
DEV_PUB = ROOT / "export" / "keys" / "dev-ed25519.pub"

torch.set_num_threads(1)

ROLES = list(STATION_ROLES)
LONG_TARGETS = {"label": "Simulation.Pump{n}.FaultCode", "rul": "Simulation.Pump{n}.TrueRUL",
                "oracle": "Simulation.OracleSpeed"}


@pytest.fixture(scope="session")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list:
    """Train: two 4 h days with every fault class (seeds 1, 2); test: seed 101 (wide) and a
    fault-free hour of seed 111 in long form. About 3 s to record."""
    rc = Recordings(
        dir=tmp_path_factory.mktemp("recordings"),
        sets=[
            RecordingSet(name="faults", seeds=[1, 2], hours=4, split="train"),
            RecordingSet(name="faults-test", seeds=[101], hours=4, split="test"),
            RecordingSet(name="normal-test", scenario="normal", seeds=[111], hours=1, split="test", format="long",
                         targets=LONG_TARGETS),
        ],
    )
    return record_all(rc, progress=False)


def pump_data(**kw: object) -> DataConfig:
    base = {"roles": ROLES, "assets": ["Pump1", "Pump2"], "label": "pump{n}_fault_code", "rul": "pump{n}_rul_h",
            "train_stride": 20}
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def tiny_model(tmp: Path, task: str, **kw: object) -> ModelConfig:
    """A CI-sized model config: a few epochs, small nets."""
    defaults: dict[str, object] = {
        "name": f"tiny-{task}", "task": task, "out": tmp / f"tiny-{task}", "data": pump_data(),
        "teachers": [NetConfig(arch="autoencoder", hidden=[32], bottleneck=8)] if task == "anomaly"
        else [NetConfig(arch="mlp", hidden=[64, 64])],
        "student": NetConfig(arch="autoencoder", hidden=[16], bottleneck=8) if task == "anomaly"
        else NetConfig(hidden=[32, 16]),
        "fit": FitSettings(epochs=4, finetune_epochs=2, batch=128),
        "detection_gate": False,
    }
    defaults.update(kw)
    return ModelConfig(**defaults)  # type: ignore[arg-type]


def roles() -> list[RoleSpec]:
    return [RoleSpec.parse(r) for r in ROLES]
