"""Modbus read planning: the fewest read requests that cover one unit's tags in one table.

Pure and synchronous, no I/O. :func:`plan` may be called from any thread or task concurrently;
a :class:`RequestPlanner` holds state and belongs to the one task that polls its unit+table
(it is not thread-safe).

Model
-----
Each tag occupies a :class:`Span` ``[start, start + count)`` of 0-based addresses (registers
for FC3/FC4, bits for FC1/FC2). A plan is a list of :class:`ReadRequest` such that:

* every span lies wholly inside exactly one request (a tag is never split across requests);
* ``request.count <= max_count`` (:data:`MAX_READ_REGISTERS`, :data:`MAX_READ_BITS`, or a lower
  per-device limit);
* inside a request no run of unneeded addresses (a hole between spans) is longer than
  ``max_gap`` (``0``: only adjacent or overlapping spans share a request);
* requests never overlap, so no address is read twice in one cycle. Spans may overlap or be
  duplicated (a ``uint16`` and a ``bit`` of it); overlapping spans therefore share a request;
* no request contains both ``b - 1`` and ``b`` for a barrier ``b`` (a learned split).

Among the plans with the fewest requests :func:`plan` returns one reading the fewest addresses;
the remaining ties go to the plan whose last request starts latest, recursively, so requests
are front-loaded. The result depends only on the *set* of spans, never on their order.

Algorithm and proof of optimality
---------------------------------
Spans that share an address must share a request, so the spans sorted by start are first
merged into *blocks*: the connected components of the overlap relation, disjoint intervals
``[lo_i, hi_i)`` in address order. Every request of a valid plan holds whole blocks, and
consecutive ones (a block lying between two of its blocks lies inside its range, and requests
do not overlap). Shrinking a request to ``[lo_first, hi_last)`` keeps it valid and reads no
more, and its holes are then exactly the gaps ``lo_{k+1} - hi_k`` between its blocks. So the
valid plans, up to that shrinking, are exactly the partitions of the block sequence into runs
``i..j`` with ``hi_j - lo_i <= max_count`` whose every inner link ``k -> k+1`` is allowed: the
gap is at most ``max_gap`` and no barrier lies in ``[hi_k, lo_{k+1}]``. A barrier strictly
inside a block lies strictly inside one of its spans (else the block would be two blocks),
which no plan can honour, so :func:`plan` raises ``ValueError`` for it, as for a block longer
than ``max_count``; otherwise every single block is a valid run and a plan always exists.

The dynamic program minimises ``(requests, addresses read)`` lexicographically over those
partitions: ``best[j] = min over i in [L(j), j] of best[i-1] + (1, hi_j - lo_i)``. Being a run
is inherited by sub-runs, so the admissible ``i`` form a window ``[L(j), j]`` with ``L``
non-decreasing, and a monotone deque gives the window minimum: O(n log n) overall, for the
sort. Every partition is a candidate of the recurrence, so the result is optimal.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ADDRESS_SPACE",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "ReadRequest",
    "RequestPlanner",
    "ShortSplit",
    "Span",
    "plan",
]

MAX_READ_REGISTERS: Final = 125
"""Protocol limit of one read of holding or input registers (FC3/FC4)."""
MAX_READ_BITS: Final = 2000
"""Protocol limit of one read of coils or discrete inputs (FC1/FC2)."""
ADDRESS_SPACE: Final = 65536
"""Modbus addresses are 16 bit: a span must end at or before this address."""


@dataclass(frozen=True, slots=True)
class Span:
    """A tag's address span ``[start, start + count)``, 0-based; ``key`` names the tag."""

    key: str
    start: int
    count: int

    @property
    def end(self) -> int:
        """One past the last address of the span."""
        return self.start + self.count


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read of ``[start, start + count)``; ``keys`` are the covered spans' keys, by (start, key)."""

    start: int
    count: int
    keys: tuple[str, ...]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


@dataclass(frozen=True, slots=True)
class ShortSplit:
    """What a short reply to a request taught (see :meth:`RequestPlanner.report_short`)."""

    answered: tuple[str, ...]
    """Keys whose span lies wholly inside the part of the reply that came: decode them from it."""
    past_end: tuple[str, ...]
    """Keys whose span holds the first address that did not come: now illegal."""
    retry: list[ReadRequest]
    """Requests for the spans after that address, to try now, in the same cycle."""


@dataclass(frozen=True, slots=True)
class _Block:
    """A connected component of overlapping spans: they can only be read together."""

    lo: int
    hi: int
    spans: tuple[Span, ...]  # sorted by (start, key)


def _check_limits(max_count: int, max_gap: int) -> None:
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")


def _ordered(spans: Iterable[Span], max_count: int) -> list[Span]:
    """Validate the spans and sort them by (start, key)."""
    out: list[Span] = []
    seen: set[str] = set()
    for span in spans:
        if span.count < 1:
            raise ValueError(f"span {span.key!r}: count must be >= 1, got {span.count}")
        if span.start < 0:
            raise ValueError(f"span {span.key!r}: start must be >= 0, got {span.start}")
        if span.end > ADDRESS_SPACE:
            raise ValueError(
                f"span {span.key!r}: [{span.start}, {span.end}) ends past address {ADDRESS_SPACE - 1}"
            )
        if span.count > max_count:
            raise ValueError(
                f"span {span.key!r} at {span.start}: {span.count} addresses exceed max_count {max_count}"
            )
        if span.key in seen:
            raise ValueError(f"duplicate span key {span.key!r}")
        seen.add(span.key)
        out.append(span)
    out.sort(key=lambda s: (s.start, s.key))
    return out


def _blocks(ordered: Sequence[Span]) -> list[_Block]:
    """Merge spans sorted by start into blocks (maximal runs of spans sharing addresses)."""
    blocks: list[_Block] = []
    members: list[Span] = []
    lo = hi = 0
    for span in ordered:
        if members and span.start < hi:
            members.append(span)
            hi = max(hi, span.end)
            continue
        if members:
            blocks.append(_Block(lo, hi, tuple(members)))
        members, lo, hi = [span], span.start, span.end
    if members:
        blocks.append(_Block(lo, hi, tuple(members)))
    return blocks


def _barrier_inside(sorted_barriers: Sequence[int], lo: int, hi: int) -> int | None:
    """The smallest barrier ``b`` with ``lo < b < hi``, or None."""
    i = bisect.bisect_right(sorted_barriers, lo)
    if i < len(sorted_barriers) and sorted_barriers[i] < hi:
        return sorted_barriers[i]
    return None


def _barrier_between(sorted_barriers: Sequence[int], lo: int, hi: int) -> bool:
    """Whether some barrier ``b`` has ``lo <= b <= hi``."""
    i = bisect.bisect_left(sorted_barriers, lo)
    return i < len(sorted_barriers) and sorted_barriers[i] <= hi


def _plan_blocks(
    blocks: Sequence[_Block], max_count: int, max_gap: int, sorted_barriers: Sequence[int]
) -> list[ReadRequest]:
    """The optimal partition of valid blocks into runs (see the module docstring)."""
    n = len(blocks)
    cost: list[tuple[int, int]] = [(0, 0)] * n  # best (requests, addresses) for blocks[0..j]
    first: list[int] = [0] * n  # first block of the last run in that best plan
    cand: list[tuple[int, int]] = [(0, 0)] * n  # cost[i-1] + (1, -lo_i): run i.. still open
    window: deque[int] = deque()  # run starts, keys strictly increasing from the front
    left = 0  # L(j): the earliest admissible run start for the current j
    for j, block in enumerate(blocks):
        if j > 0:
            prev = blocks[j - 1]
            if block.lo - prev.hi > max_gap or _barrier_between(sorted_barriers, prev.hi, block.lo):
                left = j
        while block.hi - blocks[left].lo > max_count:
            left += 1
        before = cost[j - 1] if j > 0 else (0, 0)
        cand[j] = (before[0] + 1, before[1] - block.lo)
        # Popping equal keys keeps the latest start: the documented tie-break.
        while window and cand[window[-1]] >= cand[j]:
            window.pop()
        window.append(j)
        while window[0] < left:
            window.popleft()
        i = window[0]
        cost[j] = (cand[i][0], cand[i][1] + block.hi)
        first[j] = i

    runs: list[tuple[int, int]] = []
    j = n - 1
    while j >= 0:
        runs.append((first[j], j))
        j = first[j] - 1
    runs.reverse()
    return [_run_request(blocks[i : j + 1]) for i, j in runs]


def _run_request(run: Sequence[_Block]) -> ReadRequest:
    """The tight request reading consecutive blocks."""
    return ReadRequest(
        start=run[0].lo,
        count=run[-1].hi - run[0].lo,
        keys=tuple(span.key for block in run for span in block.spans),
    )


def _block_request(block: _Block) -> ReadRequest:
    return _run_request((block,))


def _checked_blocks(ordered: Sequence[Span], max_count: int, sorted_barriers: Sequence[int]) -> list[_Block]:
    blocks = _blocks(ordered)
    for block in blocks:
        keys = ", ".join(repr(s.key) for s in block.spans)
        if block.hi - block.lo > max_count:
            raise ValueError(
                f"overlapping spans {keys} cover [{block.lo}, {block.hi}): "
                f"{block.hi - block.lo} addresses exceed max_count {max_count} "
                "and cannot be split without reading an address twice"
            )
        barrier = _barrier_inside(sorted_barriers, block.lo, block.hi)
        if barrier is not None:
            crossing = next(s.key for s in block.spans if s.start < barrier < s.end)
            raise ValueError(f"span {crossing!r} crosses barrier {barrier}")
    return blocks


def plan(
    spans: Iterable[Span],
    *,
    max_count: int,
    max_gap: int,
    barriers: frozenset[int] = frozenset(),
) -> list[ReadRequest]:
    """Return the fewest read requests covering ``spans``, sorted by start (see module docstring).

    ``barriers`` are addresses ``b`` such that no request contains both ``b - 1`` and ``b``.

    Raises ``ValueError`` for ``max_count < 1``, ``max_gap < 0``, a span with ``count < 1``, a
    negative start, an end past :data:`ADDRESS_SPACE`, more than ``max_count`` addresses or a
    duplicate key, and when no valid plan exists: overlapping spans covering more than
    ``max_count`` addresses together, or a span containing both ``b - 1`` and ``b``.
    """
    _check_limits(max_count, max_gap)
    ordered = _ordered(spans, max_count)
    sorted_barriers = sorted(barriers)
    blocks = _checked_blocks(ordered, max_count, sorted_barriers)
    return _plan_blocks(blocks, max_count, max_gap, sorted_barriers)


class RequestPlanner:
    """Stateful planner for one unit+table: holds the spans, the learned barriers, and the illegal spans.

    Lifecycle: build it once per unit+table from the configured tags (it plans immediately, so a
    map that cannot be planned raises ``ValueError`` at load), read :meth:`requests` every
    cycle, and tell it about exception 02 replies with :meth:`report_illegal` and about
    short replies (fewer addresses than asked) with :meth:`report_short`. It is not
    thread-safe: the task polling the unit owns it.

    What it learns lives in memory only:

    * barriers: a merged request was refused, or answered short, so it is split and never
      merged that way again;
    * illegal spans: a request for one span alone was refused, or a short reply ended inside
      the span; the span's keys are left out of the plan (the driver reports them BAD with
      the reason) until :meth:`retry_illegal`.

    A learned barrier that a planned span would cross (possible after :meth:`retry_illegal`
    brings back a span that a split was learned around) is ignored while that span is planned.
    """

    def __init__(self, spans: Iterable[Span], *, max_count: int, max_gap: int) -> None:
        """Validate like :func:`plan` and keep the spans; raises ``ValueError`` as it does."""
        _check_limits(max_count, max_gap)
        self._spans: tuple[Span, ...] = tuple(_ordered(spans, max_count))
        self._by_key: dict[str, Span] = {span.key: span for span in self._spans}
        self._max_count = max_count
        self._max_gap = max_gap
        self._learned: set[int] = set()
        self._illegal: set[str] = set()
        self._cache: tuple[ReadRequest, ...] | None = None
        self.requests()

    @property
    def illegal_keys(self) -> frozenset[str]:
        """Keys whose own span was refused with exception 02; they are left out of :meth:`requests`."""
        return frozenset(self._illegal)

    @property
    def barriers(self) -> frozenset[int]:
        """The learned split addresses: no request contains both ``b - 1`` and ``b``."""
        return frozenset(self._learned)

    def requests(self) -> list[ReadRequest]:
        """The current plan of the legal spans (cached until something is learned or retried)."""
        if self._cache is None:
            self._cache = tuple(self._plan(self._active()))
        return list(self._cache)

    def report_illegal(self, request: ReadRequest) -> list[ReadRequest]:
        """Learn from an exception 02 (illegal data address) reply to ``request``.

        Returns the requests to try instead now, in the same cycle: they lie inside ``request``,
        never overlap each other, and never repeat the refused read.

        * The request held spans that do not share addresses: a barrier goes at the start of the
          right side of its widest hole (ties: the most even split by span count, then the
          leftmost), and the request's spans are re-planned with it, typically into two
          requests. Reports on those continue the bisection down to single spans.
        * The request held one span (possibly under several keys): those keys become illegal
          and ``[]`` is returned.
        * The request held overlapping spans only (one block, which cannot be split without
          reading an address twice): the spans whose own range equals the request were refused,
          so they become illegal and the rest are re-planned; if no span equals the request,
          the spans cannot be told apart and all of them become illegal.

        Keys already illegal are ignored (a repeated report returns ``[]``). A request this
        planner would not make now (its range is not that of its remaining legal spans, or it
        crosses a learned barrier: a late or repeated report about an older plan) teaches
        nothing: its spans are re-planned as things stand. Raises ``ValueError`` for a
        key this planner does not hold.
        """
        unknown = sorted(key for key in request.keys if key not in self._by_key)
        if unknown:
            raise ValueError(f"request [{request.start}, {request.end}) holds unknown keys {unknown}")
        return self._refused(request)

    def report_short(self, request: ReadRequest, received: int) -> ShortSplit:
        """Learn from a reply to ``request`` that held only its first ``received`` addresses.

        Some servers answer a read past the end of their table with the addresses they have
        instead of exception 02. With ``cut = request.start + received``, the first address
        that did not come:

        * spans ending at or before ``cut`` were answered (:attr:`ShortSplit.answered`);
        * spans holding ``cut`` are past the end of the device's table: they become illegal,
          as a span refused with exception 02 on its own does (:attr:`ShortSplit.past_end`);
        * spans starting after ``cut`` were not asked: they are re-planned, to be read now
          (:attr:`ShortSplit.retry`, never repeating ``request``: each starts after ``cut``).

        A barrier at ``cut`` is learned, so the answered spans are never merged again with
        what lies past it. Keys already illegal are ignored. Raises ``ValueError`` for a key
        this planner does not hold, or unless ``0 <= received < request.count``.
        """
        unknown = sorted(key for key in request.keys if key not in self._by_key)
        if unknown:
            raise ValueError(f"request [{request.start}, {request.end}) holds unknown keys {unknown}")
        if not 0 <= received < request.count:
            raise ValueError(
                f"a short reply to [{request.start}, {request.end}) holds 0..{request.count - 1} "
                f"addresses, not {received}"
            )
        cut = request.start + received
        spans = sorted(
            {self._by_key[key] for key in request.keys if key not in self._illegal},
            key=lambda s: (s.start, s.key),
        )
        answered = tuple(s.key for s in spans if s.end <= cut)
        past_end = tuple(s.key for s in spans if s.start <= cut < s.end)
        rest = [s for s in spans if s.start > cut]
        if past_end:
            self._illegal.update(past_end)
            self._cache = None
        if received and cut not in self._learned:
            self._learned.add(cut)
            self._cache = None
        return ShortSplit(answered, past_end, self._plan(rest) if rest else [])

    def retry_illegal(self) -> None:
        """Forget the illegal spans (an operator-triggered re-probe); learned barriers stay."""
        if self._illegal:
            self._illegal.clear()
            self._cache = None

    def _active(self) -> list[Span]:
        return [span for span in self._spans if span.key not in self._illegal]

    def _refused(self, request: ReadRequest) -> list[ReadRequest]:
        spans = sorted(
            {self._by_key[key] for key in request.keys if key not in self._illegal},
            key=lambda s: (s.start, s.key),
        )
        if not spans:
            return []
        blocks = _blocks(spans)
        usable = self._usable_barriers()
        if (blocks[0].lo, blocks[-1].hi) != (request.start, request.end) or _barrier_inside(
            usable, request.start, request.end
        ) is not None:
            # Not a request this planner would make now (a late or repeated report): what it
            # teaches is known already, so re-plan its spans as things stand.
            return self._plan(spans)
        if len(blocks) > 1:
            if self._learn_split(blocks):
                self._cache = None
                return self._plan(spans)  # the new barrier lies inside `request`: no repeat
            # Every hole is split already, by barriers that a planned span crosses: read the
            # blocks one by one this cycle rather than repeat the refused read.
            return [_block_request(block) for block in blocks]
        refused = [s for s in spans if (s.start, s.end) == (request.start, request.end)]
        self._illegal.update(s.key for s in (refused or spans))
        self._cache = None
        if not refused or len(refused) == len(spans):
            return []
        # The nested spans left may plan back into the very read just refused: refuse it again.
        out: list[ReadRequest] = []
        for replacement in self._plan([s for s in spans if s.key not in self._illegal]):
            if (replacement.start, replacement.end) == (request.start, request.end):
                out.extend(self._refused(replacement))
            else:
                out.append(replacement)
        return out

    def _learn_split(self, blocks: Sequence[_Block]) -> bool:
        """Add a barrier in the widest hole of a refused request not split there yet; False if none."""
        learned = sorted(self._learned)
        total = sum(len(block.spans) for block in blocks)
        best: tuple[int, int, int] | None = None  # (-width, imbalance, k)
        left_count = 0
        for k in range(len(blocks) - 1):
            left_count += len(blocks[k].spans)
            if _barrier_between(learned, blocks[k].hi, blocks[k + 1].lo):
                continue  # split there already, yet still merged: a barrier a planned span crosses
            key = (-(blocks[k + 1].lo - blocks[k].hi), abs(total - 2 * left_count), k)
            if best is None or key < best:
                best = key
        if best is None:
            return False
        self._learned.add(blocks[best[2] + 1].lo)
        return True

    def _usable_barriers(self) -> list[int]:
        """The learned barriers, sorted, without those a legal span crosses."""
        active_blocks = _blocks(self._active())
        los = [block.lo for block in active_blocks]
        usable: list[int] = []
        for barrier in sorted(self._learned):
            i = bisect.bisect_left(los, barrier) - 1
            if i >= 0 and active_blocks[i].lo < barrier < active_blocks[i].hi:
                continue
            usable.append(barrier)
        return usable

    def _plan(self, spans: Sequence[Span]) -> list[ReadRequest]:
        """Plan ``spans`` (sorted, legal) under the usable learned barriers."""
        usable = self._usable_barriers()
        blocks = _checked_blocks(spans, self._max_count, usable)
        return _plan_blocks(blocks, self._max_count, self._max_gap, usable)
