"""An ``aggregation: ewma`` input role: the recent history of a tag as a window column, the same
in the agent's ring buffers (per tick), in the replay's arrays and in export's training series."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from agent.errors import ModelError
from agent.modelstore.binding import ModelBinding
from agent.modelstore.manifest import Manifest, parse_manifest
from agent.pipeline.features import FeatureWindows, ewma_alpha, ewma_rows
from agent.replay import held_series
from tests.unit.test_features import bad, good

TAU = 20.0


def manifest(
    *, schema: int = 2, tau: float | None = TAU, aggregation: str = "ewma", length: int = 3
) -> dict[str, Any]:
    hist: dict[str, Any] = {"role": "load", "unit": "rpm", "range": [0.0, 3000.0], "aggregation": aggregation}
    if tau is not None:
        hist["time_constant_s"] = tau
    return {
        "schema_version": schema, "name": "m", "version": "1", "task": "anomaly",
        "window": {"sample_period_s": 2.0, "length": length, "stride": 1},
        "inputs": [{"role": "speed", "unit": "rpm", "range": [0.0, 3000.0]}, hist],
        "features": {"kind": "sequence"},
        "model_input": {"name": "x", "shape": ["batch", length, 2]},
        "outputs": [{"name": "y", "meaning": "score"}],
        "variants": [{"file": "model.onnx", "sha256": "0" * 64, "size": 1}],
    }  # fmt: skip


def windows(hold: int = 0, length: int = 3) -> FeatureWindows:
    m = Manifest.model_validate(manifest(length=length))
    data: dict[str, Any] = {"name": "m", "bundle": "b", "assets": {"p1": {"speed": "p1.n", "load": "p1.n"}}}
    if hold:
        data |= {"bad_input": "hold", "hold_cycles": hold}
    return FeatureWindows(m, ModelBinding.model_validate(data))


def feed(w: FeatureWindows, speeds: list[float | None], start: int = 0) -> list[np.ndarray]:
    """Push one speed per tick (None: a BAD sample) to both roles; every frame's window."""
    frames = []
    for k, v in enumerate(speeds, start):
        s = good(v) if v is not None else bad()
        w.push("p1", {"speed": s, "load": s}, 2.0 * k)
        f = w.frame(now_mono=2.0 * k)
        if f is not None:
            frames.append(f.values[0])
    return frames


def test_manifest_ewma_needs_its_time_constant_and_schema_2() -> None:
    assert Manifest.model_validate(manifest()).role("load").time_constant_s == TAU
    for bad_manifest, words in (
        (manifest(tau=None), "time_constant_s is required for aggregation ewma"),
        (manifest(aggregation="instant"), "time_constant_s is required for aggregation ewma"),
        (manifest(schema=1), "aggregation ewma (load) need schema_version 2"),
        (manifest(tau=-1.0), "greater than 0"),
    ):
        with pytest.raises(ModelError, match=r"m\.json: .*" + words.replace("(", r"\(").replace(")", r"\)")):
            parse_manifest(json.dumps(bad_manifest).encode(), "m.json")


def test_ewma_rows_is_the_mean_that_starts_at_the_first_value_and_skips_gaps() -> None:
    m = Manifest.model_validate(manifest())
    a = ewma_alpha(TAU, 2.0)
    assert a == pytest.approx(1 - math.exp(-0.1))
    x = np.array([[1.0, 100.0], [2.0, np.nan], [3.0, 200.0]])
    out = ewma_rows(x, m.inputs, 2.0)
    assert out[:, 0].tolist() == [1.0, 2.0, 3.0]  # other roles as they are
    assert out[0, 1] == 100.0 and math.isnan(out[1, 1])
    assert out[2, 1] == pytest.approx(100.0 + a * 100.0)  # the gap keeps the mean
    assert x[2, 1] == 200.0  # a copy


def test_feature_windows_hold_what_ewma_rows_gives_for_the_same_series() -> None:
    rng = np.random.default_rng(3)
    speeds: list[float | None] = [float(v) for v in rng.uniform(1500.0, 2900.0, 40)]
    speeds[7] = speeds[8] = None  # bad: held one tick, then the window is not ready
    speeds[20] = 5000.0  # implausible: bad
    w = windows(hold=1)
    frames = feed(w, speeds)
    m = w.manifest
    raw = np.array([[math.nan if v is None else v] * 2 for v in speeds])
    held = held_series(raw, np.isfinite(raw), m, 1)  # the replay's arrays
    expected = ewma_rows(held, m.inputs, m.window.sample_period_s)
    ready = [k for k in range(2, len(speeds)) if np.isfinite(expected[k - 2 : k + 1]).all()]
    assert len(frames) == len(ready) > 20
    for f, k in zip(frames, ready, strict=True):
        assert f.tolist() == expected[k - 2 : k + 1].tolist()  # exactly: one update rule
    assert frames[-1][-1, 1] != frames[-1][-1, 0]  # a mean, not the speed


def test_snapshot_carries_the_mean_across_a_restart_and_an_old_snapshot_restarts_it() -> None:
    speeds = [1500.0 + 50.0 * k for k in range(12)]
    whole = feed(windows(), speeds)
    first = windows()
    feed(first, speeds[:6])
    saved = json.loads(json.dumps(first.snapshot()))
    again = windows()
    again.restore(saved, missed=0)
    resumed = feed(again, speeds[6:], start=6)
    assert [f.tolist() for f in resumed] == [f.tolist() for f in whole[-len(resumed) :]]
    del saved["assets"]["p1"]["ewma"]  # written before ewma roles existed
    old = windows()
    old.restore(saved, missed=0)
    restarted = feed(old, speeds[6:], start=6)
    assert restarted[0][-1, 1] == speeds[6]  # the mean restarts at the first value


def test_a_windows_meaning_includes_an_ewma_roles_time_constant() -> None:
    """Two models whose windows differ only in an ewma role's time constant hold other rows: a
    saved window, a reload's carry-over and a shared window (agent.inference) must tell them
    apart; a role that is not ewma means what it meant before the time constant existed."""
    from agent.inference import window_key, window_meaning

    assets = {"p1": {"speed": "p1.n", "load": "p1.n"}}
    keys = {
        tau: window_key(window_meaning(Manifest.model_validate(manifest(tau=tau)), assets))
        for tau in (20.0, 60.0)
    }
    assert keys[20.0] != keys[60.0]
    instant = Manifest.model_validate(manifest(schema=1, tau=None, aggregation="instant"))
    former = {  # the meaning as it was written before ewma roles: saved windows stay valid
        "roles": [[r.role, r.unit, list(r.range), r.aggregation] for r in instant.inputs],
        "period_s": 2.0,
        "length": 3,
        "assets": assets,
    }
    assert window_meaning(instant, assets) == former
