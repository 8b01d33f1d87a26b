"""The scorer: one batched session call per frame, off the loop, one call at a time."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.errors import ModelError
from agent.modelstore.bundle import Bundle, load_bundle
from agent.pipeline.features import window_to_input
from agent.pipeline.scorer import INLINE_CAP, INLINE_WARMUP, INLINE_WINDOW, LatencyStats, Scorer, map_outputs
from agent.types import Frame

T0 = datetime(2024, 1, 1, tzinfo=UTC)
W = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
LABELS = ["normal", "wear", "cavitation"]


def build_model(nan: bool = False) -> bytes:
    """x[batch, 4] → score = x·W (or NaN), probs = softmax(x @ M) over 3 classes."""
    m = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32)
    inits = [
        numpy_helper.from_array(W, "w"),
        numpy_helper.from_array(m, "m"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(np.nan if nan else 0.0, dtype=np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["xw"]),
        helper.make_node("ReduceSum", ["xw", "axes"], ["s"], keepdims=0),
        helper.make_node("Add", ["s", "bias"], ["score"]),
        helper.make_node("MatMul", ["x", "m"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def make_bundle(path: Path, *, nan: bool = False) -> Bundle:
    model = build_model(nan)
    manifest = {
        "schema_version": 1, "name": "pump", "version": "3", "task": "classifier",
        "window": {"sample_period_s": 1.0, "length": 5, "stride": 1},
        "inputs": [
            {"role": "vibration", "unit": "mm/s", "range": [0, 50],
             "normalisation": {"kind": "standard", "mean": 2.0, "std": 0.5}},
            {"role": "current", "unit": "A", "range": [0, 20],
             "normalisation": {"kind": "minmax", "min": 0.0, "max": 20.0}},
        ],
        "features": {"kind": "summary", "stats": ["mean", "std"]},
        "model_input": {"name": "x", "shape": ["batch", 4]},
        "outputs": [
            {"name": "score", "meaning": "weighted sum", "thresholds": {"alarm": 5.0}},
            {"name": "probs", "meaning": "fault class", "shape": ["batch", 3], "labels": LABELS},
        ],
        "variants": [{"file": "model.onnx", "sha256": hashlib.sha256(model).hexdigest(), "size": len(model)}],
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(model)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(path)


class CountingSession:
    """Wraps the real session at our seam (Bundle.session) and records every run."""

    def __init__(self, inner: Any, gate: threading.Event | None = None) -> None:
        self.inner = inner
        self.gate = gate
        self.delay_s = 0.0  # a slow model, for the inline budget
        self.wait_s = 0.0  # a call that waits (a GIL held by the loop, the OS running others)
        self.started = threading.Event()
        self.runs: list[tuple[int, ...]] = []
        self.threads: list[int] = []

    def run(self, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.runs.append(tuple(feeds["x"].shape))
        self.threads.append(threading.get_ident())
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.wait_s:
            time.sleep(self.wait_s)
        if self.delay_s:  # a slow model burns CPU (waiting is not what makes a model slow)
            end = time.thread_time() + self.delay_s
            while time.thread_time() < end:
                pass
        result: list[np.ndarray] = self.inner.run(names, feeds)
        return result


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return make_bundle(tmp_path / "pump")


def frame(assets: tuple[str, ...] = ("p1", "p2"), seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    values = np.zeros((len(assets), 5, 2))
    values[..., 0] = rng.uniform(1, 4, (len(assets), 5))
    values[..., 1] = rng.uniform(0, 20, (len(assets), 5))
    return Frame("pump", T0, 10.0, assets, ("vibration", "current"), values, np.ones_like(values, dtype=bool))


async def test_two_assets_scored_by_one_session_in_one_call(bundle: Bundle) -> None:
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session))
    f = frame(("p1", "p2"))
    scores = await scorer.score(f)
    assert session.runs == [(2, 4)]  # ONE call, batch of two assets
    assert session.threads[0] != threading.get_ident()  # off the event loop thread
    assert [s.asset for s in scores] == ["p1", "p2"]
    x = window_to_input(np.asarray(f.values), bundle.manifest)
    for i, s in enumerate(scores):
        assert s.model == "pump" and s.version == "3" and s.frame_end == T0
        assert s.outputs["score"] == pytest.approx(float(x[i] @ W), rel=1e-5)
        assert s.outputs["score_alarm"] == (1.0 if x[i] @ W > 5.0 else 0.0)
        assert s.outputs["anomaly"] == s.outputs["score_alarm"]
        assert s.outputs["score_ratio"] == pytest.approx(float(x[i] @ W) / 5.0, rel=1e-5)
        probs = [s.outputs[f"probs.{label}"] for label in LABELS]
        assert sum(probs) == pytest.approx(1.0, rel=1e-5)
        assert s.label == LABELS[int(np.argmax(probs))]
    assert scorer.calls == 1 and scorer.skipped == 0


async def test_busy_model_skips_and_counts(bundle: Bundle) -> None:
    gate = threading.Event()
    session = CountingSession(bundle.session, gate)
    scorer = Scorer(replace(bundle, session=session))
    first = asyncio.create_task(scorer.score(frame()))
    try:
        assert await asyncio.to_thread(session.started.wait, 5)
        assert scorer.busy
        assert await scorer.score(frame(seed=1)) == []
        assert await scorer.score(frame(seed=2)) == []
        assert scorer.skipped == 2
    finally:
        gate.set()
    assert len(await first) == 2
    assert not scorer.busy
    assert len(session.runs) == 1
    assert len(await scorer.score(frame(seed=3))) == 2
    assert scorer.calls == 2 and scorer.skipped == 2


async def test_cancelled_call_keeps_the_model_busy_until_the_thread_ends(bundle: Bundle) -> None:
    gate = threading.Event()
    session = CountingSession(bundle.session, gate)
    scorer = Scorer(replace(bundle, session=session))
    task = asyncio.create_task(scorer.score(frame()))
    try:
        assert await asyncio.to_thread(session.started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert scorer.busy  # the session call is still running in its thread
        assert await scorer.score(frame()) == []
        assert scorer.skipped == 1
    finally:
        gate.set()
    await asyncio.wait_for(scorer.drain(), 5)
    assert not scorer.busy
    assert len(await scorer.score(frame())) == 2


async def test_dedicated_executor(bundle: Bundle) -> None:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-pump") as pool:
        session = CountingSession(bundle.session)
        scorer = Scorer(replace(bundle, session=session), executor=pool)
        assert len(await scorer.score(frame())) == 2
        assert session.runs == [(2, 4)]


async def test_latency_is_recorded(bundle: Bundle) -> None:
    scorer = Scorer(bundle)
    for i in range(5):
        scores = await scorer.score(frame(seed=i))
    assert scorer.latency.count == 5
    assert scorer.latency.last_s > 0
    assert scores[0].latency_s == scorer.latency.last_s
    assert 0 < scorer.latency.p50_s <= scorer.latency.p99_s
    assert sum(scorer.latency.histogram) == 5


async def test_a_small_model_runs_inline_after_its_warm_up(bundle: Bundle) -> None:
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session), inline_budget_s=1.0)
    loop_thread = threading.get_ident()
    for i in range(INLINE_WARMUP + 3):
        assert len(await scorer.score(frame(seed=i))) == 2
    assert all(t != loop_thread for t in session.threads[:INLINE_WARMUP])  # latency unknown: a thread
    assert session.threads[INLINE_WARMUP:] == [loop_thread] * 3  # measured small: inline
    assert scorer.inline_calls == 3 and scorer.calls == INLINE_WARMUP + 3
    x = window_to_input(np.asarray(frame(seed=INLINE_WARMUP + 2).values), bundle.manifest)
    last = await scorer.score(frame(seed=INLINE_WARMUP + 2))
    assert last[0].outputs["score"] == pytest.approx(float(x[0] @ W), rel=1e-5)  # same results inline


async def test_one_call_over_the_cap_sends_the_model_back_to_the_thread(bundle: Bundle) -> None:
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session), inline_budget_s=0.02)
    loop_thread = threading.get_ident()
    for i in range(INLINE_WARMUP):
        await scorer.score(frame(seed=i))
    assert scorer.inline
    session.delay_s = 1.5 * INLINE_CAP * 0.02  # the model became slow: this inline call goes over the cap
    await scorer.score(frame())
    assert session.threads[-1] == loop_thread and not scorer.inline
    session.delay_s = 0.0
    for i in range(INLINE_WINDOW):  # fast again, in the thread, until the slow call leaves the window
        await scorer.score(frame(seed=i))
        assert session.threads[-1] != loop_thread
    assert scorer.inline
    await scorer.score(frame())
    assert session.threads[-1] == loop_thread


async def test_calls_over_the_budget_but_not_the_cap_keep_a_small_model_inline(bundle: Bundle) -> None:
    # A call on cold caches costs several times the usual: the median decides, not the slowest
    # call, as long as none goes over the cap.
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session), inline_budget_s=0.02)
    loop_thread = threading.get_ident()
    for i in range(INLINE_WARMUP + 1):
        await scorer.score(frame(seed=i))
    session.delay_s = 0.5 * INLINE_CAP * 0.02  # twice the budget, half the cap
    for i in range(2):  # two slow calls among the last 8: still inline
        await scorer.score(frame(seed=i))
        assert session.threads[-1] == loop_thread
    assert scorer.inline
    # slow at the median: the model is not small any more, and goes to the thread
    for _ in range(INLINE_WINDOW):
        await scorer.score(frame())
    assert not scorer.inline and session.threads[-1] != loop_thread
    calls = scorer.inline_calls
    await scorer.score(frame())
    assert scorer.inline_calls == calls


async def test_a_call_that_only_waited_keeps_a_small_model_inline(bundle: Bundle) -> None:
    # On a loaded machine a call's wall time also counts the wait for the GIL (in the thread)
    # or for a core: with one intra-op thread the model is judged by its thread's CPU time.
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session), inline_budget_s=0.05)
    session.wait_s = 0.1
    loop_thread = threading.get_ident()
    for i in range(INLINE_WARMUP + 2):
        await scorer.score(frame(seed=i))
    assert session.threads[INLINE_WARMUP:] == [loop_thread] * 2
    assert scorer.latency.last_s >= 0.1  # the latency reported is still the wall time
    # a session with worker threads: its caller's CPU is not its cost, the wall time is
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session, threads=2), inline_budget_s=0.05)
    session.wait_s = 0.1
    for i in range(INLINE_WARMUP + 2):
        await scorer.score(frame(seed=i))
    assert loop_thread not in session.threads and not scorer.inline


async def test_a_zero_budget_always_uses_the_thread(bundle: Bundle) -> None:
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session), inline_budget_s=0.0)
    for i in range(INLINE_WINDOW + 2):
        await scorer.score(frame(seed=i))
    assert threading.get_ident() not in session.threads and scorer.inline_calls == 0


def test_latency_stats_window_and_histogram() -> None:
    stats = LatencyStats(window=3)
    for s in (0.5, 0.001, 0.002, 0.003):
        stats.record(s)
    assert stats.count == 4 and stats.last_s == 0.003
    assert stats.p50_s == pytest.approx(0.002)  # 0.5 has left the window
    assert stats.histogram[stats.buckets_s.index(1e-3)] == 1
    assert stats.histogram[stats.buckets_s.index(2.5e-3)] == 1
    assert stats.histogram[stats.buckets_s.index(1e-2)] == 1
    assert np.isnan(LatencyStats().p99_s)


async def test_single_asset_and_empty_frames(bundle: Bundle) -> None:
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session))
    assert len(await scorer.score(frame(("p7",)))) == 1
    assert await scorer.score(frame(())) == []
    assert session.runs == [(1, 4)]


async def test_non_finite_output_is_an_error_not_a_normal_score(tmp_path: Path) -> None:
    scorer = Scorer(make_bundle(tmp_path / "nan", nan=True))
    with pytest.raises(ModelError, match="output score: session returned values that are not finite"):
        await scorer.score(frame())
    assert scorer.errors == 1 and not scorer.healthy and not scorer.busy


async def test_frame_for_another_model_or_roles_is_refused(bundle: Bundle) -> None:
    scorer = Scorer(bundle)
    f = frame()
    with pytest.raises(ModelError, match="was given a frame of model other"):
        await scorer.score(replace(f, model="other"))
    with pytest.raises(ModelError, match=r"expects roles \['vibration', 'current'\]"):
        await scorer.score(replace(f, roles=("current", "vibration")))
    with pytest.raises(ModelError, match=r"expects frame values \[2, 5, 2\]"):
        await scorer.score(replace(f, values=np.ones((2, 4, 2))))
    assert not scorer.busy


async def test_nan_in_frame_never_reaches_the_session(bundle: Bundle) -> None:
    session = CountingSession(bundle.session)
    scorer = Scorer(replace(bundle, session=session))
    f = frame()
    values = np.asarray(f.values).copy()
    values[0, 2, 1] = np.nan
    with pytest.raises(ModelError, match="not finite"):
        await scorer.score(replace(f, values=values))
    assert session.runs == []
    assert not scorer.busy


def test_map_outputs_checks_batch(bundle: Bundle) -> None:
    msg = r"output score: expected shape \[2\] for 2 assets, session returned \[3\]"
    with pytest.raises(ModelError, match=msg):
        map_outputs(bundle.manifest, 2, [np.zeros(3), np.zeros((2, 3))])
