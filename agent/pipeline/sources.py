"""What the alarm engine reads for one asset in one cycle: one function for the runtime and the replay.

:func:`asset_values` gathers an asset's alarm sources by name: the model outputs scored this
cycle (``<binding name>.<output>``; between frames a model's outputs are absent, so the
engine holds rather than re-reading an old score) and the asset's ``values`` tags (a value
that is not GOOD is ``None``: BAD input). :func:`run_detectors` then feeds each detector its
source once per new value and adds ``<name>`` and ``<name>.outlier``.

:class:`agent.runtime.Agent` calls both every cycle with the tag table; :mod:`agent.replay`
calls them with a recorded row, so a replay feeds the engine exactly what the agent would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from agent.config import AssetConfig
from agent.pipeline.detectors import Detector

__all__ = ["asset_values", "run_detectors"]


def asset_values(
    asset: AssetConfig,
    outputs: Mapping[str, Mapping[str, float]],
    tag_value: Callable[[str], float | None],
) -> dict[str, float | None]:
    """Values by source name: ``outputs`` (binding name → this asset's fresh outputs) and the
    asset's ``values`` tags read with ``tag_value`` (``None`` when the tag is not GOOD)."""
    values: dict[str, float | None] = {}
    for binding, outs in outputs.items():
        for out, v in outs.items():
            values[f"{binding}.{out}"] = v
    for name, tag in asset.values.items():
        values[name] = tag_value(tag)
    return values


def run_detectors(
    asset: AssetConfig, detectors: Mapping[tuple[str, str], Detector], values: dict[str, float | None]
) -> None:
    """Feed each of the asset's detectors its source (only when present in ``values``: a model
    output only in the cycle it was scored) and add ``<name>``/``<name>.outlier`` to ``values``."""
    for d in asset.detectors:
        if d.source not in values:
            continue  # a model output between frames: nothing new to learn from
        result = detectors[(asset.name, d.name)].update(values[d.source])
        ready = result.ready and math.isfinite(result.score)
        values[d.name] = result.score if ready else None
        values[f"{d.name}.outlier"] = (1.0 if result.outlier else 0.0) if ready else None
