"""Model runners: each model's windows and scorer, ticking at the model's own sample period.

::

    poll sink ──samples──▶ Models.observe ──▶ MeanAccumulator (only tags bound to a mean role)
    TagTable (latest) ─────────────┐                  │
                                   ▼                  ▼
    Models.run (one task): at each model's tick ─▶ FeatureWindows ─Frame─▶ Scorer (off the loop)
                                                      │ (slow models)             │
                                                      ▼                           ▼
                                      state_dir/windows/<model>.json     latest score per asset
                                                                           ─▶ the cycle (alarms,
                                                                              HMI, Guard health)

Every model ticks every ``window.sample_period_s`` of its manifest (sub-second to a day), on
the agent's monotonic clock, phased once on the UTC grid (an hourly model ticks at the top of
the hour; tick ``k`` is UTC ``k × period``). ``agent.cycle_ms`` is the rate of alarms, HMI and
write-back only; the cycle takes each model's newest score (:meth:`Models.take_fresh`).

A row of the window is, per role (``InputRole.aggregation``): ``instant``, the tag's latest
sample at the tick (from the TagTable, staleness applied); ``mean``, the mean of the GOOD
samples polled in the period that ends at the tick (a period without one is a bad row).

Scoring runs in a task of its own per frame, so a slow inference never delays another model's
tick; a frame arriving while its model is busy is skipped and counted (the Scorer's contract).
A model whose newest score is older than :data:`STALE_INTERVALS` score intervals
(``stride × period``) is *stale*: unhealthy for the Guard and the status word, and the alarm
engine gets nothing from it.

Windows of models whose period is at least :data:`PERSIST_MIN_PERIOD_S` (or whose binding sets
``persist_window``) are written after every tick to ``state_dir/windows/<model>.json``
(atomically: temporary file, fsync, rename) and restored at start: rows placed by their UTC tick,
ticks missed while down become bad rows, a window older than its length is discarded, and a file
written for other inputs (roles, units, ranges, aggregation, period, length, binding) is ignored
with a log line. A new bundle whose inputs are the same keeps its window.

Bundle reload (SIGHUP, :meth:`Models.reload_bundles`): every bundle is loaded again; one whose
:attr:`~agent.modelstore.bundle.Bundle.fingerprint` did not change keeps its runner (and window);
a bundle that fails any check is refused and the running model keeps serving.

Not thread-safe: everything here runs on the event loop (inference and file writes in threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import math
import operator
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import structlog

from agent.config import ModelsTrust
from agent.errors import ModelError
from agent.modelstore.binding import ModelBinding, check_binding
from agent.pipeline.features import FeatureWindows
from agent.tagtable import TagTable
from agent.types import Frame, Quality, Sample, Score, utcnow

if TYPE_CHECKING:  # onnxruntime only when a model is configured
    from agent.modelstore.bundle import Bundle
    from agent.modelstore.manifest import Manifest
    from agent.modelstore.store import Store
    from agent.pipeline.scorer import Scorer

__all__ = [
    "PERSIST_MIN_PERIOD_S",
    "STALE_INTERVALS",
    "Aggregate",
    "EventSink",
    "LoadContext",
    "ModelRunner",
    "Models",
    "window_key",
    "window_meaning",
]

log = structlog.get_logger("agent.inference")

PERSIST_MIN_PERIOD_S = 5.0
"""Windows of models sampled at least this slowly are persisted by default (a faster model
refills its window within minutes; writing it every tick would wear the storage for nothing)."""

STALE_INTERVALS = 2.5
"""A score older than this many score intervals (``stride × sample_period_s``) is stale."""

_WINDOW_FORMAT = 1
_EPSILON_S = 1e-6  # a tick is due this close to its time (float sums of periods)
_IDLE_WAKE_S = 1.0  # the run loop beats at least this often (watchdog), whatever the periods


def _getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, Sample]], tuple[Sample, ...]]:
    """``lambda m: tuple(m[k] for k in keys)`` in C (``itemgetter`` of one key gives no tuple)."""
    if len(keys) == 1:
        (key,) = keys
        return lambda m: (m[key],)
    return operator.itemgetter(*keys)


@dataclass(slots=True)
class _Acc:
    total: float = 0.0
    count: int = 0
    first_mono: float = math.nan
    last_mono: float = math.nan


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What a ``mean`` row was made of: the mean of ``count`` GOOD samples received between
    ``first_mono`` and ``last_mono`` (None when there was none)."""

    tag: str
    mean: float | None
    count: int
    first_mono: float
    last_mono: float


def window_meaning(manifest: Manifest, assets: Mapping[str, Any]) -> dict[str, Any]:
    """What a window row of ``manifest`` bound to ``assets`` means: every role's unit, range and
    aggregation (an ``ewma`` role's time constant too: its rows are another mean with another
    one), the sample period, the length and the tags bound per asset."""
    roles: list[list[Any]] = []
    for r in manifest.inputs:
        role: list[Any] = [r.role, r.unit, list(r.range), r.aggregation]
        if r.aggregation == "ewma":  # after the others: every other role's meaning is unchanged
            role.append(r.time_constant_s)
        roles.append(role)
    return {
        "roles": roles,
        "period_s": manifest.window.sample_period_s,
        "length": manifest.window.length,
        "assets": assets,
    }


def window_key(runner_inputs: Mapping[str, Any]) -> str:
    """The sha256 of what a window's rows mean (see :meth:`ModelRunner.window_inputs`)."""
    text = json.dumps(runner_inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ModelRunner:
    """One model binding at its own sample period: windows, scorer, newest scores, persistence.

    The scheduling core is synchronous and clock-injected (:meth:`schedule`, :meth:`due`,
    :meth:`tick`); :meth:`score` awaits the scorer. :class:`Models` drives them.
    """

    def __init__(
        self,
        binding: ModelBinding,
        bundle: Bundle,
        scorer: Scorer,
        *,
        state_dir: Path | None = None,
    ) -> None:
        self.binding = binding
        self.bundle = bundle
        self.scorer = scorer
        manifest = bundle.manifest
        self.windows = FeatureWindows(manifest, binding)
        self.period_s = manifest.window.sample_period_s
        self.interval_s = self.period_s * manifest.window.stride
        """How often the model scores once its window is full."""
        self.latest: dict[str, Score] = {}
        """The newest score per asset (for display)."""
        self.scored_mono: float | None = None
        """The tick time of the newest frame that gave scores."""
        self.next_tick: float | None = None
        self.last_tick_utc: datetime | None = None
        self.aggregates: dict[str, Aggregate] = {}
        """The last tick's ``mean`` rows, by tag."""
        self._fresh: dict[str, Score] = {}
        self._k = 0  # UTC grid index of the next tick
        self._mean_roles = {r.role for r in manifest.inputs if r.aggregation == "mean"}
        self.instant_tags = frozenset(
            tag
            for roles in binding.assets.values()
            for role, tag in roles.items()
            if role not in self._mean_roles
        )
        """Tags read from the tag table at each tick (bound to a role that is not ``mean``)."""
        # per asset: its roles, and their samples out of a snapshot in one C call (every tick)
        self._instant_rows = [
            (asset, tuple(roles), _getter(tuple(roles.values()))) for asset, roles in binding.assets.items()
        ]
        self._acc: dict[str, _Acc] = {
            tag: _Acc()
            for roles in binding.assets.values()
            for role, tag in roles.items()
            if role in self._mean_roles
        }
        persist = binding.persist_window
        self.persist_path: Path | None = None
        if state_dir is not None and (persist or (persist is None and self.period_s >= PERSIST_MIN_PERIOD_S)):
            self.persist_path = state_dir / "windows" / f"{binding.name}.json"
        self.saves = 0
        self.save_errors = 0
        self._saving = False

    # ------------------------------------------------------------------ what it is

    @property
    def name(self) -> str:
        return self.binding.name

    @property
    def mean_tags(self) -> frozenset[str]:
        """Tags whose poll samples this runner accumulates (bound to a ``mean`` role)."""
        return frozenset(self._acc)

    def window_inputs(self) -> dict[str, Any]:
        """What a window row means: roles (unit, range, aggregation), period, length and the
        tags bound per asset. A saved window is used only by a runner with the same (a new
        bundle version or another ``hold_cycles`` keeps it)."""
        return window_meaning(self.bundle.manifest, self.binding.assets)

    # ------------------------------------------------------------------ feeding

    def observe(self, sample: Sample) -> None:
        """A polled sample of a ``mean`` tag: counted when GOOD and a finite number."""
        acc = self._acc.get(sample.tag)
        if acc is None or not sample.quality.is_good:
            return
        v = sample.as_float()
        if not math.isfinite(v):
            return
        if acc.count == 0:
            acc.first_mono = sample.mono
        acc.total += v
        acc.count += 1
        acc.last_mono = sample.mono

    def _take_means(self, now: float, now_utc: datetime) -> dict[str, Sample]:
        out: dict[str, Sample] = {}
        aggregates: dict[str, Aggregate] = {}
        for tag, acc in self._acc.items():
            if acc.count:
                mean = acc.total / acc.count
                out[tag] = Sample(tag, mean, Quality.good(), now_utc, now)
            else:
                mean = None
                out[tag] = Sample(
                    tag, None, Quality.bad(f"no GOOD sample in the {self.period_s:g} s period"), now_utc, now
                )
            aggregates[tag] = Aggregate(tag, mean, acc.count, acc.first_mono, acc.last_mono)
            self._acc[tag] = _Acc()
        self.aggregates = aggregates
        return out

    # ------------------------------------------------------------------ scheduling

    def schedule(self, now: float, now_utc: datetime) -> None:
        """Place the first tick on the next point of the UTC grid (``k × period``), and restore
        a persisted window for it. The samples accumulated so far count for that first tick."""
        ts = now_utc.timestamp()
        self._k = math.floor(ts / self.period_s) + 1
        self.next_tick = now + (self._k * self.period_s - ts)
        if self.persist_path is not None:
            self._restore(self._k)

    def due(self, now: float) -> bool:
        """Whether a tick is due at ``now`` (always, before :meth:`schedule`)."""
        return self.next_tick is None or now >= self.next_tick - _EPSILON_S

    def tick(
        self,
        table: TagTable,
        now: float,
        now_utc: datetime | None = None,
        *,
        samples: Mapping[str, Sample] | None = None,
    ) -> Frame | None:
        """Run the due tick: one row per asset (instant roles from ``table`` at ``now``, mean
        roles from the samples observed since the last tick), then the frame, if one is due.
        ``samples``: ``table.snapshot(tags, now)`` already taken of at least
        :attr:`instant_tags` (:class:`Models` reads each tag once for all the runners due).

        Ticks missed (the loop was late by whole periods) become bad rows. Call it only when
        :meth:`due`; before :meth:`schedule` it schedules and returns None.
        """
        if self.next_tick is None:
            self.schedule(now, now_utc or utcnow())
            return None
        tick_mono, k, stamp = self._grid(now, self.next_tick)
        means = self._take_means(tick_mono, stamp) if self._acc else {}
        got = table.snapshot(self.instant_tags, now) if samples is None else samples
        mean_roles = self._mean_roles
        if mean_roles:
            for asset, roles in self.binding.assets.items():
                row = {role: means[tag] if role in mean_roles else got[tag] for role, tag in roles.items()}
                self.windows.push(asset, row, tick_mono)
        else:
            for asset, role_names, samples_of in self._instant_rows:
                self.windows.push(asset, dict(zip(role_names, samples_of(got), strict=True)), tick_mono)
        frame = self.windows.frame(stamp, tick_mono)
        self._closed(tick_mono, k, stamp)
        return frame

    def follow(self, now: float, now_utc: datetime | None, frame: Frame | None) -> Frame | None:
        """The due tick of a runner whose windows another runner has just ticked in this pass
        (:class:`Models` shares one FeatureWindows between runners whose rows mean the same,
        see :meth:`Models.share_key`): the schedule advances as :meth:`tick` advances it, and
        ``frame``, that tick's frame, is this model's (renamed for it)."""
        if self.next_tick is None:
            self.schedule(now, now_utc or utcnow())
            return None
        self._closed(*self._grid(now, self.next_tick))
        return self.own_frame(frame)

    def own_frame(self, frame: Frame | None) -> Frame | None:
        """``frame`` under this runner's model name (a shared window names whichever model
        last installed a bundle on it)."""
        name = self.bundle.manifest.name
        if frame is None or frame.model == name:
            return frame
        return replace(frame, model=name)

    def _grid(self, now: float, next_tick: float) -> tuple[float, int, datetime]:
        """The due tick's time, UTC grid index and stamp (ticks missed by whole periods are
        skipped over: :meth:`tick` makes them bad rows)."""
        skipped = int(max(0.0, now - next_tick) // self.period_s)
        k = self._k + skipped
        return next_tick + skipped * self.period_s, k, datetime.fromtimestamp(k * self.period_s, UTC)

    def _closed(self, tick_mono: float, k: int, stamp: datetime) -> None:
        self._k = k + 1
        self.next_tick = tick_mono + self.period_s
        self.last_tick_utc = stamp

    # ------------------------------------------------------------------ scoring

    async def score(self, frame: Frame) -> list[Score]:
        """Score a frame; the scores become the newest. A failure is logged and counted by the
        scorer (its health), never raised: one model's failure stops nothing else."""
        try:
            scores = await self.scorer.score(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("model failed", model=self.name, error=str(exc))
            return []
        for s in scores:
            self.latest[s.asset] = s
            self._fresh[s.asset] = s
        if scores:
            self.scored_mono = frame.end_mono
        return scores

    def stale(self, now: float) -> bool:
        """The model scored before, and its newest score is older than the limit."""
        return self.scored_mono is not None and now - self.scored_mono > STALE_INTERVALS * self.interval_s

    def healthy(self, now: float) -> bool:
        """Inference works and the newest score is not stale."""
        return self.scorer.healthy and not self.stale(now)

    def carry_over(self, old: ModelRunner) -> None:
        """Continue where ``old`` (the previous bundle of this binding) was, when its window
        rows mean the same (:meth:`window_inputs`): its window, tick schedule and newest
        scores, so a new version scores at the next tick instead of refilling its window."""
        if old.window_inputs() != self.window_inputs():
            return
        self.windows = old.windows
        self.windows.manifest = self.bundle.manifest
        self.next_tick, self._k, self.last_tick_utc = old.next_tick, old._k, old.last_tick_utc
        self.scored_mono, self.latest, self._acc = old.scored_mono, old.latest, old._acc

    def take_fresh(self, now: float) -> dict[str, Score]:
        """The scores made since the last call (newest per asset); nothing when stale."""
        fresh, self._fresh = self._fresh, {}
        return {} if self.stale(now) else fresh

    # ------------------------------------------------------------------ persistence

    def window_document(self) -> dict[str, Any]:
        """The window as written to :attr:`persist_path` (after a tick)."""
        return {
            "format": _WINDOW_FORMAT,
            "model": self.name,
            "bundle": self.bundle.ident,
            "fingerprint": self.bundle.fingerprint,
            "key": window_key(self.window_inputs()),
            "period_s": self.period_s,
            "tick": self._k - 1,
            "tick_utc": self.last_tick_utc.isoformat() if self.last_tick_utc else None,
            "window": self.windows.snapshot(),
        }

    def save_window(self, document: Mapping[str, Any]) -> None:
        """Write the window atomically (temporary file, fsync, rename, fsync of the directory).
        Blocking: run it in a thread."""
        path = self.persist_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(document, separators=(",", ":")).encode()
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def save(self) -> None:
        """Persist the window now (off the loop); skipped while the previous write runs."""
        if self.persist_path is None or self._saving:
            return
        self._saving = True
        try:
            await asyncio.to_thread(self.save_window, self.window_document())
            self.saves += 1
        except OSError as exc:
            self.save_errors += 1
            if self.save_errors == 1:
                log.warning(
                    "model window not saved", model=self.name, file=str(self.persist_path), error=str(exc)
                )
        finally:
            self._saving = False

    def _restore(self, first_tick: int) -> None:
        path = self.persist_path
        assert path is not None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("model window not restored", model=self.name, file=str(path), error=str(exc))
            return
        why = self._refuse(doc, first_tick)
        if why is not None:
            log.warning("model window not restored", model=self.name, file=str(path), reason=why)
            return
        missed = first_tick - int(doc["tick"]) - 1
        try:
            self.windows.restore(doc["window"], missed)
        except ValueError as exc:
            log.warning("model window not restored", model=self.name, file=str(path), reason=str(exc))
            return
        log.info(
            "model window restored",
            model=self.name,
            file=str(path),
            saved_by=doc.get("bundle"),
            tick_utc=doc.get("tick_utc"),
            missed_ticks=missed,
        )

    def _refuse(self, doc: Any, first_tick: int) -> str | None:
        if not isinstance(doc, dict) or doc.get("format") != _WINDOW_FORMAT:
            return "not a window file of this agent"
        if doc.get("key") != window_key(self.window_inputs()):
            return (
                f"written for other inputs (by {doc.get('bundle')}): roles, units, ranges, "
                "aggregation, period, length or binding differ"
            )
        tick = doc.get("tick")
        if not isinstance(tick, int) or not isinstance(doc.get("window"), dict):
            return "no tick or window in the file"
        if tick >= first_tick:
            return f"its last tick ({doc.get('tick_utc')}) is not in the past"
        if first_tick - tick - 1 >= self.windows.length:
            return f"older than the window ({doc.get('tick_utc')}): discarded"
        return None


@dataclass(frozen=True)
class LoadContext:
    """What loading a model needs from the agent's config: paths resolved against the config
    file, the trust settings, each tag's unit and poll interval, and the state directory."""

    resolve: Callable[[Path], Path]
    trust: ModelsTrust
    tag_units: Mapping[str, str]
    tag_periods_s: Mapping[str, float]
    source: str
    state_dir: Path | None = None
    store: Store | None = None
    """The model store, for bindings that name a store model (``store: NAME``)."""


EventSink = Callable[[str, str], Awaitable[None]]
"""``(action, message)``: how :meth:`Models.reload_bundles` reports installs and refusals
(the agent audits them)."""


class Models(Sequence[ModelRunner]):
    """Every model runner of the agent: loading, the poll hook, the scheduler, health, reload."""

    def __init__(self, context: LoadContext, runners: Iterable[ModelRunner] = ()) -> None:
        self.context = context
        self.runners: list[ModelRunner] = list(runners)
        self._mean_routes: dict[str, list[ModelRunner]] = {}
        self._wake: asyncio.Event | None = None
        self._tags_of: dict[tuple[ModelRunner, ...], frozenset[str]] = {}  # due runners → their tags
        self._followers: frozenset[ModelRunner] = frozenset()
        self._route()

    # ------------------------------------------------------------------ the collection

    @overload
    def __getitem__(self, i: int) -> ModelRunner: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[ModelRunner]: ...
    def __getitem__(self, i: int | slice) -> ModelRunner | Sequence[ModelRunner]:
        return self.runners[i]

    def __len__(self) -> int:
        return len(self.runners)

    def __iter__(self) -> Iterator[ModelRunner]:
        return iter(self.runners)

    def replace(self, runners: Iterable[ModelRunner]) -> None:
        """Run these runners from now on (a reload); the scheduler picks them up at once."""
        self.runners = list(runners)
        self._tags_of.clear()
        self._route()
        if self._wake is not None:
            self._wake.set()

    def _route(self) -> None:
        routes: dict[str, list[ModelRunner]] = {}
        for r in self.runners:
            for tag in r.mean_tags:
                routes.setdefault(tag, []).append(r)
        self._mean_routes = routes
        self._share()

    @staticmethod
    def share_key(r: ModelRunner) -> tuple[str, int, int] | None:
        """What a runner's windows hold, row by row and frame by frame: the meaning of a row
        (:func:`window_key` of :meth:`ModelRunner.window_inputs`: roles, units, ranges,
        aggregation, period, length, binding), the stride and how long a bad value is held.
        Runners with the same key tick the same rows into windows of the same content, so
        they may share one (None: never shared: a ``mean`` role has its own accumulators, a
        persisted window its own file)."""
        if r.mean_tags or r.persist_path is not None:
            return None
        w = r.windows
        return window_key(r.window_inputs()), w.stride, w.hold_limit

    def _share(self) -> None:
        """Runners with the same :meth:`share_key` tick one FeatureWindows (the first one's)
        instead of one each (the shipped models all read the same 14 roles of both pumps):
        only runners in lockstep share, i.e. a runner already sharing it, or both not yet
        ticked (so a window never holds rows one of them did not see)."""
        leaders: dict[tuple[str, int, int], ModelRunner] = {}
        followers: list[ModelRunner] = []
        ticked_by: dict[FeatureWindows, ModelRunner] = {}
        for r in self.runners:
            key = self.share_key(r)
            lead = r if key is None else leaders.setdefault(key, r)
            if lead is not r:
                same = r.windows is lead.windows and (r.next_tick, r._k) == (lead.next_tick, lead._k)
                fresh = all(x.next_tick is None and x.windows.counters.ticks == 0 for x in (r, lead))
                if same or fresh:
                    r.windows = lead.windows
                    followers.append(r)
                    continue
            if r.windows in ticked_by:
                # a window it shared (carried over by a reload) that another runner ticks and
                # it may no longer follow (e.g. now persisted): its own copy, as it is now
                r.windows = copy.deepcopy(r.windows)
            ticked_by[r.windows] = r
        self._followers = frozenset(followers)

    # ------------------------------------------------------------------ loading

    def load(self, binding: ModelBinding) -> ModelRunner:
        """Load, verify and check a bundle against its binding (blocking: hashes, signature,
        session). Raises ModelError naming what is wrong."""
        from agent.modelstore.bundle import load_bundle
        from agent.pipeline.scorer import Scorer

        ctx = self.context
        keys = [ctx.resolve(k) for k in ctx.trust.public_keys]
        if binding.store is not None:
            if ctx.store is None:
                raise ModelError(f"model {binding.name}: store model {binding.store}, but no model store")
            bundle = ctx.store.load(
                binding.store, threads=binding.threads, variant=binding.variant,
                trusted_keys=keys, allow_unsigned=ctx.trust.allow_unsigned,
            )  # fmt: skip
        else:
            assert binding.bundle is not None  # a binding has a bundle or a store model
            bundle = load_bundle(
                ctx.resolve(binding.bundle),
                threads=binding.threads,
                variant=binding.variant,
                trusted_keys=keys,
                allow_unsigned=ctx.trust.allow_unsigned,
            )
        log.info("model loaded", model=bundle.manifest.ident, signature=bundle.signature.detail)
        check_binding(bundle.manifest, binding, ctx.tag_units, ctx.tag_periods_s, source=ctx.source)
        return ModelRunner(binding, bundle, Scorer(bundle), state_dir=ctx.state_dir)

    # ------------------------------------------------------------------ the poll hook

    def observe(self, samples: Iterable[Sample]) -> None:
        """Hand polled samples to the runners that average them (a dict lookup per sample;
        nothing at all when no model has a ``mean`` role)."""
        routes = self._mean_routes
        if not routes:
            return
        for s in samples:
            runners = routes.get(s.tag)
            if runners is not None:
                for r in runners:
                    r.observe(s)

    # ------------------------------------------------------------------ scheduling

    def _due(self, table: TagTable, now: float, now_utc: datetime) -> list[tuple[ModelRunner, Frame | None]]:
        """Tick every runner due at ``now``: (runner, its frame or None) for each that ticked."""
        ticked: list[tuple[ModelRunner, Frame | None]] = []
        due = [r for r in self.runners if r.due(now)]
        if not due:
            return ticked
        # Every tag the due runners read, read once (models of one plant share most inputs)
        key = tuple(due)
        tags = self._tags_of.get(key)
        if tags is None:
            if len(self._tags_of) > 64:  # many periods: combinations of due runners
                self._tags_of.clear()
            tags = self._tags_of[key] = frozenset().union(*(r.instant_tags for r in due))
        samples = table.snapshot(tags, now)
        made: dict[FeatureWindows, Frame | None] = {}  # windows ticked in this pass → frame
        followers = self._followers
        for r in due:
            scheduled = r.next_tick is not None
            if r in followers and r.windows in made:
                frame = r.follow(now, now_utc, made[r.windows])
            else:
                frame = made[r.windows] = r.tick(table, now, now_utc, samples=samples)
                frame = r.own_frame(frame)
            if scheduled:
                ticked.append((r, frame))
        return ticked

    def next_tick(self) -> float | None:
        """The earliest scheduled tick of any runner (None when none is scheduled)."""
        ticks = [r.next_tick for r in self.runners if r.next_tick is not None]
        return min(ticks) if ticks else None

    async def advance(self, table: TagTable, now: float, now_utc: datetime | None = None) -> int:
        """Run every tick due at ``now`` and await the scoring of their frames (and the window
        saves): for driving the models by hand on a virtual clock. Returns the frames scored."""
        ticked = self._due(table, now, now_utc or utcnow())
        scored = [(r, f) for r, f in ticked if f is not None]
        # A model scored inline never suspends: awaited in turn, without a task each (this
        # runs every cycle); the rest (executor calls, window saves) together.
        jobs: list[Awaitable[Any]] = []
        for r, f in scored:
            if r.scorer.inline and not r.scorer.busy:
                await r.score(f)
            else:
                jobs.append(r.score(f))
        jobs.extend(r.save() for r, _ in ticked if r.persist_path is not None)
        if jobs:
            await asyncio.gather(*jobs)
        return len(scored)

    async def run(self, table: TagTable, clock: Callable[[], float], beat: Callable[[], None]) -> None:
        """The scheduler (until cancelled): each model ticks on its own period; frames are
        scored, and slow windows saved, in tasks of their own so no model waits for another."""
        self._wake = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    now = clock()
                    for r, frame in self._due(table, now, utcnow()):
                        if frame is not None:
                            tg.create_task(r.score(frame), name=f"score {r.name}")
                        if r.persist_path is not None:
                            tg.create_task(r.save(), name=f"save window {r.name}")
                    beat()
                    nxt = self.next_tick()
                    delay = _IDLE_WAKE_S if nxt is None else min(_IDLE_WAKE_S, nxt - clock())
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(delay):
                                await self._wake.wait()
                    self._wake.clear()
        finally:
            self._wake = None

    # ------------------------------------------------------------------ what the cycle reads

    def take_fresh(self, now: float) -> dict[str, dict[str, Score]]:
        """Per model, the scores made since the last call (nothing from a stale model)."""
        return {r.name: fresh for r in self.runners if (fresh := r.take_fresh(now))}

    def latest(self) -> dict[str, dict[str, Score]]:
        """Per model, the newest score per asset (for display)."""
        return {r.name: dict(r.latest) for r in self.runners if r.latest}

    def healthy(self, now: float) -> bool:
        """Every model's inference works and none is stale."""
        return all(r.healthy(now) for r in self.runners)

    async def drain(self) -> None:
        """Wait until no session call is running (the caller sets the deadline)."""
        for r in self.runners:
            await r.scorer.drain()

    # ------------------------------------------------------------------ reload

    async def reload_bundles(self, skip: Sequence[ModelRunner], event: EventSink) -> list[str]:
        """Load every bundle again from disk (see the module docstring); ``skip``: runners just
        loaded for a new binding. Returns one line per model."""
        lines: list[str] = []
        for i, old in enumerate(list(self.runners)):
            name = old.name
            if any(old is m for m in skip):
                lines.append(f"{name}: installed {old.bundle.ident} (new binding)")
                continue
            try:
                new = await asyncio.to_thread(self.load, old.binding)
            except ModelError as exc:
                log.error(
                    "model reload refused; the running model stays", model=old.bundle.ident, error=str(exc)
                )
                await event("model_refused", f"{name}: {exc}; {old.bundle.ident} stays")
                lines.append(f"{name}: refused, {old.bundle.ident} stays: {exc}")
                continue
            if new.bundle.fingerprint == old.bundle.fingerprint:
                lines.append(f"{name}: unchanged ({old.bundle.ident})")
                continue
            await old.scorer.drain()
            new.carry_over(old)
            runners = list(self.runners)
            runners[i] = new
            self.replace(runners)
            log.warning("model installed", model=new.bundle.ident, replaces=old.bundle.ident)
            await event("model_installed", f"{name}: {new.bundle.ident} replaces {old.bundle.ident}")
            lines.append(f"{name}: installed {new.bundle.ident} (was {old.bundle.ident})")
        return lines
