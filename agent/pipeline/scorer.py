"""The scorer: one model's ONNX session, all assets in one call, never holding up the loop.

Contract of :meth:`Scorer.score`:

* Called from the event loop. The features (:class:`~agent.pipeline.features.FeatureFunction`)
  and the session call run in an executor thread (the default one, i.e. what
  :func:`asyncio.to_thread` uses, unless one is given), unless the model is measured *small*:
  of its last :data:`INLINE_WINDOW` calls (at least :data:`INLINE_WARMUP`, the first ones
  always in a thread) the median took at most ``inline_budget_s`` (default
  :data:`INLINE_BUDGET_S`) and none more than :data:`INLINE_CAP` times that. A small model runs
  inline on the loop: for a model that takes tens of microseconds the hop to a thread and back
  costs more than the inference. The median, not the slowest call, decides because a call
  after the loop was idle runs on cold caches, several times its usual cost (bench/cycle.py:
  200-1,200 us for a call of 80-120 us warm): judged by its slowest call, a small model would
  keep going to the thread, where its calls are colder still and each hop costs CPU as well.
  What a call took is the CPU time of the thread that ran it when the session has one
  intra-op thread (the default): in the executor its wall time would also count the wait for
  the GIL the busy loop holds, and inline the time the OS gave other processes, so a loaded
  machine would keep a small model in the thread for good; a session with more threads is
  judged by wall time (its workers' CPU is not the caller's). One inline call over the cap
  sends the next calls to the thread again, until it has left the window; so the loop is held
  up by at most one call longer than ``INLINE_CAP * inline_budget_s``, by about the model's
  latency. ``inline_budget_s=0`` always uses the thread.
* Every asset in the frame goes into ONE batched session call (the batch dimension).
* One call per model at a time: a frame arriving while the previous call is still running is
  skipped (``[]`` is returned) and counted in :attr:`Scorer.skipped`. Calls never stack.
* Cancelling ``score`` does not cancel the thread (onnxruntime cannot be interrupted); the
  model stays busy until the thread is done, so a cancelled call can never overlap the next.
  :meth:`Scorer.drain` waits for it (shutdown: "drain scorer").
* Outputs are mapped to named values per the manifest; an output with an ``"alarm"``
  threshold adds ``<name>_alarm`` (0/1), and ``anomaly`` is 1 when any of them is; a positive
  threshold also ``<name>_ratio``, the output over it (1.0 at the threshold: an alert can then
  take a second, shorter-delayed limit far above the threshold without naming the bundle's
  calibrated value, configs/demo.yaml's ``anomaly``).
* Failures (onnxruntime errors, wrong output shapes, non-finite outputs) raise ModelError and
  are counted; the first failure and the recovery are logged once each.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
import numpy.typing as npt
import structlog

from agent.errors import ModelError
from agent.modelstore.bundle import Bundle
from agent.modelstore.manifest import Manifest
from agent.pipeline.features import FeatureFunction
from agent.stats import LatencyStats
from agent.types import Frame, Score

__all__ = [
    "INLINE_BUDGET_S",
    "INLINE_CAP",
    "INLINE_WARMUP",
    "INLINE_WINDOW",
    "LatencyStats",
    "Scorer",
    "map_outputs",
]

INLINE_BUDGET_S = 0.001
"""A model whose recent calls took at most this long at the median runs inline on the event loop
(and none more than :data:`INLINE_CAP` times it)."""
INLINE_WARMUP = 3
"""The first calls of a model always run in the executor (its latency is not known yet)."""
INLINE_WINDOW = 8
"""How many recent latencies decide: their median within the budget to run inline."""
INLINE_CAP = 4.0
"""No recent call may have taken more than this many budgets to run inline."""

log = structlog.get_logger("agent.scorer")

def map_outputs(
    manifest: Manifest, n_assets: int, arrays: Sequence[npt.NDArray[np.generic]]
) -> list[tuple[dict[str, float], str | None]]:
    """Per asset: named outputs (and the class label, for outputs with labels).

    A labelled output ``probs`` gives ``probs.<label>`` per class and ``probs.class``, the index
    of the most likely class (the class code written to HMI tags).

    ``arrays`` are the session outputs in manifest order, batch first. Raises ModelError when a
    shape does not fit or a value is not finite (a NaN score must never read as "normal").
    """
    who = f"model {manifest.ident}"
    if len(arrays) != len(manifest.outputs):
        raise ModelError(
            f"{who}: session returned {len(arrays)} outputs, manifest declares {len(manifest.outputs)}"
        )
    results: list[tuple[dict[str, float], str | None]] = [({}, None) for _ in range(n_assets)]
    for spec, raw in zip(manifest.outputs, arrays, strict=True):
        arr = np.asarray(raw, dtype=np.float64)
        expected_rank = len(spec.shape)
        if arr.ndim != expected_rank or arr.shape[0] != n_assets:
            raise ModelError(
                f"{who} output {spec.name}: expected shape [{n_assets}{', C' if expected_rank == 2 else ''}] "
                f"for {n_assets} assets, session returned {list(arr.shape)}"
            )
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"{who} output {spec.name}: session returned values that are not finite")
        alarm = spec.thresholds.get("alarm")
        values = arr.tolist()  # Python floats: one conversion, not one per element
        for i in range(n_assets):
            outputs, label = results[i]
            if arr.ndim == 1:
                value = values[i]
                outputs[spec.name] = value
                if alarm is not None:
                    flag = 1.0 if value > alarm else 0.0
                    outputs[f"{spec.name}_alarm"] = flag
                    outputs["anomaly"] = max(outputs.get("anomaly", 0.0), flag)
                    if alarm > 0:
                        outputs[f"{spec.name}_ratio"] = value / alarm
            else:
                row = values[i]
                if spec.labels is not None:
                    outputs.update(zip([f"{spec.name}.{name}" for name in spec.labels], row, strict=True))
                    best = row.index(max(row))  # np.argmax: the first of the largest
                    outputs[f"{spec.name}.class"] = float(best)  # the class code, for HMI tags
                    if label is None:
                        label = spec.labels[best]
                else:
                    for j, v in enumerate(row):
                        outputs[f"{spec.name}[{j}]"] = v
            results[i] = (outputs, label)
    return results


class Scorer:
    """Scores frames of one model with its bundle's session (see the module docstring)."""

    def __init__(
        self, bundle: Bundle, *, executor: Executor | None = None, inline_budget_s: float = INLINE_BUDGET_S
    ) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self._executor = executor
        self._inflight: asyncio.Future[tuple[list[npt.NDArray[np.generic]], float, float]] | None = None
        self._roles = self.manifest.roles  # a property that builds the tuple each time
        self._dtype = np.float32 if self.manifest.model_input.dtype == "float32" else np.float64
        self.calls = 0
        self.skipped = 0
        self.errors = 0
        self.healthy = True
        self.latency = LatencyStats()
        self.inline_budget_s = inline_budget_s
        self.inline_calls = 0
        """Calls run inline on the loop (the rest of :attr:`calls` ran in the executor)."""
        self._recent: deque[float] = deque(maxlen=INLINE_WINDOW)
        self._cpu_cost = bundle.threads == 1  # see the module docstring
        self._features = FeatureFunction(self.manifest)

    @property
    def inline(self) -> bool:
        """True when the next call runs inline on the loop (see the module docstring)."""
        recent = self._recent
        if len(recent) < INLINE_WARMUP or max(recent) > INLINE_CAP * self.inline_budget_s:
            return False
        ordered = sorted(recent)
        return ordered[(len(ordered) - 1) // 2] <= self.inline_budget_s  # the median (the lower one)

    @property
    def busy(self) -> bool:
        """True while a session call is running (even if its ``score`` was cancelled)."""
        return self._inflight is not None

    def _infer(self, values: npt.NDArray[np.float64]) -> tuple[list[npt.NDArray[np.generic]], float, float]:
        # Runs in the executor thread (or inline): features, then one batched session call.
        # Returns the outputs, the wall time and the cost the inline decision is made on.
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            x = self._features(values).astype(self._dtype, copy=False)
        except ValueError as exc:
            raise ModelError(f"model {self.manifest.ident}: {exc}") from None
        outputs = self.bundle.run({self.manifest.model_input.name: x})
        wall = time.perf_counter() - start
        return outputs, wall, time.thread_time() - cpu if self._cpu_cost else wall

    def _done(self, fut: asyncio.Future[tuple[list[npt.NDArray[np.generic]], float, float]]) -> None:
        self._inflight = None
        if not fut.cancelled():
            fut.exception()  # retrieved here so a cancelled caller leaves no "never retrieved" warning

    def _check(self, frame: Frame) -> npt.NDArray[np.float64]:
        who = f"model {self.manifest.ident}"
        if frame.model != self.manifest.name:
            raise ModelError(f"{who} was given a frame of model {frame.model}")
        if tuple(frame.roles) != self._roles:
            raise ModelError(f"{who} expects roles {list(self._roles)}, frame has {list(frame.roles)}")
        values = np.asarray(frame.values, dtype=np.float64)
        t, r = self.manifest.window.length, len(self._roles)
        if values.shape != (len(frame.assets), t, r):
            raise ModelError(
                f"{who} expects frame values [{len(frame.assets)}, {t}, {r}], frame has {list(values.shape)}"
            )
        return values

    async def score(self, frame: Frame) -> list[Score]:
        """Score every asset of the frame in one session call; ``[]`` if busy (skipped) or empty."""
        if self._inflight is not None:
            self.skipped += 1
            return []
        if not frame.assets:
            return []
        values = self._check(frame)
        self.calls += 1
        try:
            if self.inline:
                self.inline_calls += 1
                try:
                    arrays, latency, cost = self._infer(values)
                except ModelError:
                    self._recent.clear()  # a failing model earns no trust: warm up again
                    raise
            else:
                loop = asyncio.get_running_loop()
                fut = loop.run_in_executor(self._executor, self._infer, values)
                self._inflight = fut
                fut.add_done_callback(self._done)
                arrays, latency, cost = await asyncio.shield(fut)
            self._recent.append(cost)
            results = map_outputs(self.manifest, len(frame.assets), arrays)
        except ModelError as exc:
            self.errors += 1
            if self.healthy:
                log.warning("inference failed", model=self.manifest.ident, error=str(exc))
            self.healthy = False
            raise
        self.latency.record(latency)
        if not self.healthy:
            log.info("inference recovered", model=self.manifest.ident, errors=self.errors)
        self.healthy = True
        return [
            Score(
                model=self.manifest.name,
                version=self.manifest.version,
                asset=asset,
                frame_end=frame.end,
                outputs=outputs,
                latency_s=latency,
                label=label,
            )
            for asset, (outputs, label) in zip(frame.assets, results, strict=True)
        ]

    async def drain(self) -> None:
        """Wait until no session call is running (for shutdown; the caller sets the deadline)."""
        fut = self._inflight
        if fut is not None:
            await asyncio.wait([fut])
