"""What the alarm engine reads for one asset in one cycle: one function for the runtime and the replay.

:func:`asset_values` gathers an asset's alarm sources by name: the model outputs scored this
cycle (``<binding name>.<output>``; between frames a model's outputs are absent, so the
engine holds rather than re-reading an old score) and the asset's ``values`` tags (a value
that is not GOOD is ``None``: BAD input). :func:`run_detectors` then feeds each detector its
source once per new value and adds ``<name>`` and ``<name>.outlier``. :func:`input_quality`
gives the bad-PV alarms (``kind: bad_pv``) their inputs: per watched source (a ``values`` name,
or a model binding: every tag the model reads for the asset, :func:`watched_inputs`) 1 while a
tag of it is not GOOD, with the tag and the quality reason as text.

:class:`agent.runtime.Agent` calls both every cycle with the tag table; :mod:`agent.replay`
calls them with a recorded row, so a replay feeds the engine exactly what the agent would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from agent.config import AssetConfig
from agent.modelstore.binding import ModelBinding
from agent.pipeline.alarms import AlarmsConfig, bad_key
from agent.pipeline.detectors import Detector
from agent.types import Quality

__all__ = ["asset_values", "input_quality", "run_detectors", "watched_inputs"]


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


def watched_inputs(
    alarms: AlarmsConfig, asset: AssetConfig, models: Sequence[ModelBinding]
) -> dict[str, tuple[str, ...]]:
    """The tags each bad-PV alarm of ``asset`` watches, by its source: a ``values`` name gives
    that tag, a model binding's name every tag the model reads for the asset (in role order,
    each once). Sources that name neither for this asset are left out (another asset's)."""
    out: dict[str, tuple[str, ...]] = {}
    bindings = {m.name: m for m in models}
    for d in alarms.defs:
        if d.kind != "bad_pv" or d.source in out:
            continue
        if d.source in asset.values:
            out[d.source] = (asset.values[d.source],)
        elif (m := bindings.get(d.source)) is not None and asset.name in m.assets:
            out[d.source] = tuple(dict.fromkeys(m.assets[asset.name].values()))
    return out


def input_quality(
    watched: Mapping[str, Sequence[str]], tag_quality: Callable[[str], Quality]
) -> tuple[dict[str, float | None], dict[str, str]]:
    """For each watched source: ``bad_key(source)`` → 1.0 when a tag of it is not GOOD, else
    0.0; and the reason text of a bad one (``"Pump1.Flow BAD (timeout)"``, the first bad tag in
    order, and how many more are)."""
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for source, tags in watched.items():
        bad = [(tag, q) for tag in tags if not (q := tag_quality(tag)).is_good]
        values[bad_key(source)] = 1.0 if bad else 0.0
        if bad:
            tag, q = bad[0]
            more = f" (and {len(bad) - 1} more of {len(tags)} inputs)" if len(bad) > 1 else ""
            reasons[source] = f"{tag} {q}{more}"
    return values, reasons
