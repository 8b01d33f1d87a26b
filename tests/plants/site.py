"""A test plant as a site: its tags on a Modbus server's registers and the agent config for them.

The register layout is the one :class:`tests.replay_server.ReplayServer` serves: each tag a
float32 (ABCD) in two input registers of unit 1, tag ``i`` at address ``2·i``. The tag entries
carry the plant's own units and sensor ranges, as a commissioning engineer would type them from
the instrument list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.plants.formats import PlantRun, TagInfo

__all__ = ["anomaly_model", "device", "export_config", "role_name", "roles_of", "tag_entries", "write_config"]


def tag_entries(tags: Sequence[TagInfo]) -> list[dict[str, Any]]:
    """The agent's tag entries for ``tags`` as served (float32 ABCD input registers 2·i)."""
    return [
        {
            "name": t.name,
            "table": "input",
            "address": 2 * i,
            "type": "float32",
            "word_order": "ABCD",
            "engineering_unit": t.unit,
            "range": [t.low, t.high],
            "description": t.description,
        }
        for i, t in enumerate(tags)
    ]


def device(name: str, port: int, run: PlantRun, *, poll_ms: int, timeout_ms: int = 300) -> dict[str, Any]:
    """A ``modbus_tcp`` device on 127.0.0.1 serving ``run``'s tags."""
    return {
        "name": name,
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "units": [1],
        "timeout_ms": timeout_ms,
        "poll_interval_ms": poll_ms,
        "breaker": {"failures": 3, "backoff_ms": 200, "backoff_max_ms": 1000},
        "tags": tag_entries(run.tags),
    }


def role_name(tag: str, prefix: str) -> str:
    """A role from a tag name, as a bulk column mapping names it (``R1.FIC101.SP`` → ``FIC101_SP``)."""
    return tag.removeprefix(prefix).replace(".", "_")


def roles_of(run: PlantRun, prefix: str, roles: Sequence[str] | None = None) -> dict[str, str]:
    """Role → tag for a model binding: every tag of ``run`` (or those of ``roles``)."""
    out = {role_name(t.name, prefix): t.name for t in run.tags}
    return out if roles is None else {r: out[r] for r in roles}


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    """The agent config as YAML (what an engineer keeps in /etc/edge-agent/agent.yaml)."""
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return path


def anomaly_model(name: str, out: Path, data: Mapping[str, Any], description: str = "") -> dict[str, Any]:
    """A small anomaly autoencoder for ``edge-export train`` (tiny epochs: seconds to train)."""
    return {
        "name": name,
        "task": "anomaly",
        "description": description,
        "out": str(out),
        "data": dict(data),
        "teachers": [{"arch": "autoencoder", "hidden": [32], "bottleneck": 6}],
        "student": {"arch": "autoencoder", "hidden": [16], "bottleneck": 6},
        "stats": ["mean", "std"],
        "prune": 0.5,
        "fit": {"epochs": 4, "finetune_epochs": 1, "patience": 2, "batch": 128},
        "false_alarm_rate": 0.002,
        "detection_gate": False,
        "int8": {"mode": "off"},
    }


def export_config(path: Path, sets: Sequence[Mapping[str, Any]], models: Sequence[Mapping[str, Any]]) -> Path:
    """An ``edge-export`` config (the documented format of export/README.md) as YAML."""
    data = {
        "seed": 0,
        "threads": 1,
        "progress": False,
        "recordings": {"sets": list(sets)},
        "models": list(models),
    }
    return write_config(path, data)
