"""agent/replay.py: a recording through the agent's windows, scorer, detectors and alarm engine."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.config import AssetConfig, DetectorBinding
from agent.modelstore.binding import ModelBinding
from agent.pipeline.alarms import AlarmDef, AlarmsConfig
from agent.pipeline.detectors import Sigma3Config
from agent.replay import Recording, ReplaySetup, replay
from agent.types import AlarmState
from tests.replay_fixtures import T0, make_bundle, step_series


def _rec(level: np.ndarray, temp: np.ndarray, period_s: float = 1.0) -> Recording:
    t = T0.timestamp() + period_s * np.arange(len(level))
    return Recording(t, ("P1.Level", "P1.Temp"), np.stack([level, temp], axis=1))


def _alert(on: float, off: float, **kw: object) -> AlarmDef:
    return AlarmDef.model_validate(
        {"name": "score_high", "code": 1, "kind": "alert", "source": "tiny.score",
         "high": {"value": 3.0, "severity": 1}, "on_delay_s": on, "off_delay_s": off, **kw}
    )


def _setup(tmp_path: Path, defs: list[AlarmDef], stride: int = 1, **asset: object) -> ReplaySetup:
    bundle = make_bundle(tmp_path / "tiny", stride=stride)
    binding = ModelBinding(name="tiny", bundle=Path("."), assets={"p1": {"level": "P1.Level", "temp": "P1.Temp"}})
    return ReplaySetup([(binding, bundle)], [AssetConfig(name="p1", **asset)], AlarmsConfig(defs=tuple(defs)))  # type: ignore[arg-type]


def test_alarm_times_follow_window_and_delays(tmp_path: Path) -> None:
    # level steps to 5 on rows [40, 80): the 4-sample window mean passes 3 with the third
    # stepped sample (row 42, 3.75) and drops to 2.5 with the second normal one (row 81)
    level = step_series(120, [(40, 80, 5.0)])
    res = replay(_rec(level, np.zeros(120)), _setup(tmp_path, [_alert(3.0, 5.0)]))
    assert [(e.asset, e.code) for e in res.episodes] == [("p1", 1)]
    ep = res.episodes[0]
    assert ep.raised == T0 + timedelta(seconds=42 + 3)  # condition from row 42, on-delay 3 s
    assert ep.cleared == T0 + timedelta(seconds=81 + 5)  # gone from row 81, off-delay 5 s
    assert [a.state for a in res.transitions] == [AlarmState.UNACK, AlarmState.NORMAL]  # an alert
    (scores,) = res.scores
    assert scores.rows[0] == 3 and len(scores.rows) == 117  # a frame per row once the window is full
    np.testing.assert_allclose(scores.outputs["score"], [level[k - 3 : k + 1].mean() for k in scores.rows], atol=1e-5)


def test_stride_bad_samples_and_latch(tmp_path: Path) -> None:
    # frames every 2 rows (rows 3, 5, 7, ...): the condition is seen first on frame row 43
    level = step_series(120, [(40, 100, 5.0)])
    temp = np.zeros(120)
    level[60] = np.nan  # one BAD sample: skip policy leaves the asset out of 4 rows of frames
    setup = _setup(tmp_path, [_alert(4.0, 0.0, kind="alarm", response="check", latch=True)], stride=2)
    res = replay(_rec(level, temp), setup)
    (ep,) = res.episodes
    assert ep.raised == T0 + timedelta(seconds=43 + 4) and ep.cleared is None  # latched: never acked
    (scores,) = res.scores
    assert not set(range(60, 64)) & set(scores.rows.tolist())  # the BAD sample's windows


def test_values_detectors_and_bad_input_cancel_the_delay(tmp_path: Path) -> None:
    temp = step_series(200, [(100, 200, 30.0)], noise=0.2, seed=3)
    temp[103] = np.nan  # BAD: the pending on-delay restarts at the next good sample (row 104)
    level = np.zeros(200)
    temp_alarm = AlarmDef.model_validate(
        {"name": "temp_high", "code": 2, "kind": "alarm", "response": "cool", "source": "temp",
         "high": {"value": 10.0, "severity": 2}, "on_delay_s": 5.0}
    )
    sigma = AlarmDef.model_validate(
        {"name": "temp_sigma", "code": 3, "kind": "alert", "source": "temp3s.outlier", "high": {"value": 0.5, "severity": 1}}
    )
    det = DetectorBinding(name="temp3s", source="temp", detector=Sigma3Config(window=20))
    res = replay(_rec(level, temp), _setup(tmp_path, [temp_alarm, sigma], values={"temp": "P1.Temp"}, detectors=[det]))
    raised = {e.code: e.raised for e in res.episodes}
    assert raised[2] == T0 + timedelta(seconds=104 + 5)
    assert raised[3] == T0 + timedelta(seconds=100)  # the step is a 3-sigma outlier at once
    assert 1 not in raised  # level stayed at 0: the model alert never rose


def test_unbound_tag_and_period_mismatch_are_refused(tmp_path: Path) -> None:
    rec = Recording(T0.timestamp() + np.arange(10.0), ("P1.Level",), np.zeros((10, 1)))
    with pytest.raises(ValueError, match=r"no tag 'P1\.Temp'"):
        replay(rec, _setup(tmp_path, [_alert(0, 0)]))
    rec2 = Recording(T0.timestamp() + 0.4 * np.arange(10.0), ("P1.Level", "P1.Temp"), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="whole number of rows"):
        replay(rec2, _setup(tmp_path, [_alert(0, 0)]))


@pytest.mark.parametrize(("policy", "stride"), [("skip", 1), ("hold", 3)])
def test_whole_array_framing_is_the_feature_windows_tick_path(tmp_path: Path, policy: str, stride: int) -> None:
    rng = np.random.default_rng(11)
    n = 400
    level = step_series(n, [(100, 160, 5.0), (250, 300, 4.0)], noise=0.5, seed=4)
    temp = rng.normal(20, 1, n)
    level[rng.choice(n, 25, replace=False)] = np.nan  # dropouts: BAD
    temp[rng.choice(n, 10, replace=False)] = 500.0  # outside the plausible range: BAD
    good = np.ones((n, 2), dtype=bool)
    good[rng.choice(n, 10, replace=False), 1] = False  # UNCERTAIN in the recording: not GOOD
    rec = Recording(T0.timestamp() + np.arange(n, dtype=float), ("P1.Level", "P1.Temp"),
                    np.stack([level, temp], axis=1), good)
    bundle = make_bundle(tmp_path / "tiny", stride=stride)
    extra = {"hold_cycles": 2} if policy == "hold" else {}
    binding = ModelBinding(name="tiny", bundle=Path("."), bad_input=policy,  # type: ignore[arg-type]
                           assets={"p1": {"level": "P1.Level", "temp": "P1.Temp"}}, **extra)  # type: ignore[arg-type]
    setup = ReplaySetup([(binding, bundle)], [AssetConfig(name="p1")], AlarmsConfig(defs=(_alert(2.0, 3.0),)))
    fast, ticked = replay(rec, setup), replay(rec, setup, ticks=True)
    (a,), (b,) = fast.scores, ticked.scores
    assert 0 < len(a.rows) < (n - 3) // stride  # some frames left the asset out
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.outputs["score"], b.outputs["score"], rtol=1e-6)
    assert [(t.code, t.state, t.at) for t in fast.transitions] == [(t.code, t.state, t.at) for t in ticked.transitions]
    assert fast.episodes


def test_a_slow_model_ticks_on_its_utc_grid_with_period_means(tmp_path: Path) -> None:
    # rows every second from T0 + 2 s; the model samples every 4 s (ticks at UTC multiples of
    # 4 s: rows 2, 6, 10, ...), its level role the mean of the period's rows
    n = 80
    level = np.arange(n, dtype=float) % 7
    level[30] = np.nan  # one BAD row: that period's mean is of the other three
    rec = Recording(T0.timestamp() + 2.0 + np.arange(n, dtype=float), ("P1.Level", "P1.Temp"),
                    np.stack([level, np.zeros(n)], axis=1))
    bundle = make_bundle(tmp_path / "slow", period_s=4.0, length=3, mean_roles=("level",))
    binding = ModelBinding(name="tiny", bundle=Path("."), assets={"p1": {"level": "P1.Level", "temp": "P1.Temp"}})
    setup = ReplaySetup([(binding, bundle)], [AssetConfig(name="p1")], AlarmsConfig(defs=(_alert(0.0, 0.0),)))
    (fast,), (ticked,) = replay(rec, setup).scores, replay(rec, setup, ticks=True).scores
    np.testing.assert_array_equal(fast.rows, ticked.rows)
    np.testing.assert_allclose(fast.outputs["score"], ticked.outputs["score"], rtol=1e-6)
    assert fast.rows[0] == 10 and np.all(np.diff(fast.rows) == 4)  # third tick: the window is full

    def period_mean(tick: int) -> float:
        rows = level[max(tick - 3, 0) : tick + 1]
        return float(np.nanmean(rows))

    expected = [np.mean([period_mean(k - 8), period_mean(k - 4), period_mean(k)]) for k in fast.rows]
    np.testing.assert_allclose(fast.outputs["score"], expected, rtol=1e-5)
