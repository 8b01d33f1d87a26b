"""Tests of the Modbus read planner against independent exact solvers.

Every oracle here works on the spans sorted by (start, key) and cuts that list into consecutive
groups, one request per group, read tight from the group's first start to its last end. That
covers every valid plan up to tightening: requests do not overlap, so all spans of an earlier
request start before every span of a later one (equal starts share an address, hence a
request), and shrinking a request to its spans keeps it valid and reads no more. The oracles
never merge spans into blocks and never use a sliding window, unlike the planner.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.drivers.modbus_plan import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    ReadRequest,
    RequestPlanner,
    ShortSplit,
    Span,
    plan,
)

Cost = tuple[int, int]  # (requests, addresses read)


# --------------------------------------------------------------------------- the validator


def violations(
    requests: Sequence[ReadRequest],
    spans: Iterable[Span],
    *,
    max_count: int,
    max_gap: int,
    barriers: Iterable[int] = (),
) -> list[str]:
    """Every way ``requests`` breaks the rules for ``spans``; ``[]`` when the plan is valid."""
    spans = list(spans)
    by_key = {s.key: s for s in spans}
    problems: list[str] = []
    owner: dict[str, int] = {}
    for n, r in enumerate(requests):
        if not 1 <= r.count <= max_count:
            problems.append(f"request {n} reads {r.count} addresses (max {max_count})")
        if n and requests[n - 1].start + requests[n - 1].count > r.start:
            problems.append(f"request {n} overlaps request {n - 1} (an address read twice)")
        for b in barriers:
            if r.start < b < r.start + r.count:
                problems.append(f"request {n} [{r.start}, {r.start + r.count}) crosses barrier {b}")
        covered: set[int] = set()
        for key in r.keys:
            if key not in by_key:
                problems.append(f"request {n} holds unknown key {key!r}")
                continue
            if key in owner:
                problems.append(f"key {key!r} in requests {owner[key]} and {n}")
            owner[key] = n
            s = by_key[key]
            if not (r.start <= s.start and s.start + s.count <= r.start + r.count):
                problems.append(f"span {key!r} not inside request {n}")
            covered.update(range(s.start, s.start + s.count))
        if list(r.keys) != sorted(r.keys, key=lambda k: (by_key[k].start, k) if k in by_key else (-1, k)):
            problems.append(f"request {n} keys not sorted by (start, key)")
        run = 0
        for address in range(r.start, r.start + r.count):
            run = 0 if address in covered else run + 1
            if run > max_gap:
                problems.append(f"request {n} has a hole longer than {max_gap} ending at {address}")
                break
    for s in spans:
        if s.key not in owner:
            problems.append(f"span {s.key!r} not covered")
    return problems


def cost(requests: Sequence[ReadRequest]) -> Cost:
    return len(requests), sum(r.count for r in requests)


def tight(group: Sequence[Span]) -> ReadRequest:
    start = min(s.start for s in group)
    end = max(s.start + s.count for s in group)
    keys = tuple(s.key for s in sorted(group, key=lambda s: (s.start, s.key)))
    return ReadRequest(start, end - start, keys)


def ordered(spans: Iterable[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: (s.start, s.key))


# --------------------------------------------------------------------------- oracles


def brute_force_all_cuts(
    spans: Sequence[Span], *, max_count: int, max_gap: int, barriers: frozenset[int]
) -> Cost | None:
    """Enumerate every subset of cut points of the sorted spans; validate each candidate fully."""
    seq = ordered(spans)
    if not seq:
        return (0, 0)
    best: Cost | None = None
    for mask in range(1 << (len(seq) - 1)):
        groups: list[list[Span]] = [[seq[0]]]
        for i, s in enumerate(seq[1:]):
            if mask >> i & 1:
                groups.append([])
            groups[-1].append(s)
        candidate = [tight(g) for g in groups]
        if violations(candidate, seq, max_count=max_count, max_gap=max_gap, barriers=barriers):
            continue
        if best is None or cost(candidate) < best:
            best = cost(candidate)
    return best


def brute_force_search(
    spans: Sequence[Span], *, max_count: int, max_gap: int, barriers: frozenset[int]
) -> Cost | None:
    """Exhaustive depth-first search over the cut points, pruned only by admissible bounds.

    A prefix is dropped when one of its groups is invalid on its own (no completion can repair
    it) or when even reading just the needed addresses of the rest, ``max_count`` at a time,
    cannot beat the best complete plan. Each complete candidate is validated in full.
    """
    seq = ordered(spans)
    n = len(seq)
    needed = [0] * (n + 1)  # needed[i]: distinct addresses of seq[i:]
    for i in range(n):
        needed[i] = len({a for s in seq[i:] for a in range(s.start, s.start + s.count)})
    best: list[Cost | None] = [None]

    def bound(i: int, so_far: Cost) -> Cost:
        return (so_far[0] + math.ceil(needed[i] / max_count), so_far[1] + needed[i])

    def search(i: int, chosen: list[ReadRequest], so_far: Cost) -> None:
        if i == n:
            assert violations(chosen, seq, max_count=max_count, max_gap=max_gap, barriers=barriers) == []
            if best[0] is None or so_far < best[0]:
                best[0] = so_far
            return
        options: list[ReadRequest] = []
        end = 0
        for j in range(i, n):
            end = max(end, seq[j].start + seq[j].count)
            if end - seq[i].start > max_count:
                break
            if j + 1 < n and seq[j + 1].start < end:
                continue  # the next span shares an address with this group: cannot cut here
            request = tight(seq[i : j + 1])
            if violations([request], seq[i : j + 1], max_count=max_count, max_gap=max_gap, barriers=barriers):
                continue
            options.append(request)
        for request in reversed(options):  # longest first: a good bound early
            j = i + len(request.keys)
            after = (so_far[0] + 1, so_far[1] + request.count)
            if best[0] is not None and bound(j, after) >= best[0]:
                continue
            search(j, [*chosen, request], after)

    search(0, [], (0, 0))
    return best[0]


def _group_scan(
    seq: Sequence[Span], q: int, *, max_count: int, max_gap: int, barriers: Sequence[int]
) -> Iterable[tuple[int, int]]:
    """From cut position ``q`` yield ``(p, length)`` for every valid group ``seq[q:p]`` ending at a cut."""
    start = seq[q].start
    end = start
    for p in range(q, len(seq)):
        s = seq[p]
        if s.start > end and s.start - end > max_gap and p > q:
            return
        end = max(end, s.start + s.count)
        if end - start > max_count:
            return
        i = bisect.bisect_right(barriers, start)
        if i < len(barriers) and barriers[i] < end:
            return
        if p + 1 == len(seq) or seq[p + 1].start >= end:
            yield p + 1, end - start


def dp_by_cut_positions(
    spans: Sequence[Span], *, max_count: int, max_gap: int, barriers: frozenset[int]
) -> Cost | None:
    """A forward (push) dynamic program over cut positions of the sorted span list."""
    seq = ordered(spans)
    bars = sorted(barriers)
    best: list[Cost | None] = [None] * (len(seq) + 1)
    best[0] = (0, 0)
    for q in range(len(seq)):
        here = best[q]
        if here is None:
            continue
        for p, length in _group_scan(seq, q, max_count=max_count, max_gap=max_gap, barriers=bars):
            candidate = (here[0] + 1, here[1] + length)
            there = best[p]
            if there is None or candidate < there:
                best[p] = candidate
    return best[len(seq)]


def greedy_count(spans: Sequence[Span], *, max_count: int, max_gap: int, barriers: frozenset[int]) -> int:
    """Fewest requests by taking the longest valid group every time.

    Optimal because validity is inherited by sub-groups between cut points: by induction the
    greedy i-th cut is never left of the i-th cut of any valid plan.
    """
    seq = ordered(spans)
    bars = sorted(barriers)
    q = count = 0
    while q < len(seq):
        reach = [p for p, _ in _group_scan(seq, q, max_count=max_count, max_gap=max_gap, barriers=bars)]
        assert reach, "no valid group"
        q = reach[-1]
        count += 1
    return count


# --------------------------------------------------------------------------- random maps


def random_map(
    rng: random.Random, max_tags: int, min_tags: int = 0
) -> tuple[list[Span], int, int, frozenset[int]]:
    """Spans with overlaps, duplicates, 1/2/4-address tags; a small max_count; random barriers."""
    n = rng.randint(min_tags, max_tags)
    space = rng.randint(max(n, 1), 4 * n + 10)
    spans: list[Span] = []
    for k in range(n):
        r = rng.random()
        if spans and r < 0.12:
            other = rng.choice(spans)
            start, count = other.start, other.count  # a duplicate: two tags on one register
        elif spans and r < 0.25:
            other = rng.choice(spans)
            start, count = other.start + rng.randrange(other.count), rng.choice([1, 2, 4])  # overlap
        else:
            start, count = rng.randrange(space), rng.choice([1, 1, 2, 2, 4])
        spans.append(Span(f"t{k:02d}", start, count))
    # Mostly barriers no span crosses (span edges, holes); sometimes anywhere (maybe infeasible).
    crossed = {a for s in spans for a in range(s.start + 1, s.start + s.count)}
    places = [a for a in range(space + 5) if a not in crossed]
    barriers = {rng.choice(places) for _ in range(rng.randint(0, 3))}
    if rng.random() < 0.1:
        barriers.add(rng.randrange(space + 5))
    return spans, rng.randint(8, 20), rng.randint(0, 10), frozenset(barriers)


def planned_cost(spans: list[Span], max_count: int, max_gap: int, barriers: frozenset[int]) -> Cost | None:
    """Plan, validate the result, and return its cost; None when the planner says it is infeasible."""
    try:
        result = plan(spans, max_count=max_count, max_gap=max_gap, barriers=barriers)
    except ValueError:
        return None
    assert violations(result, spans, max_count=max_count, max_gap=max_gap, barriers=barriers) == []
    assert [r.start for r in result] == sorted(r.start for r in result)
    return cost(result)


@st.composite
def small_maps(draw: st.DrawFn) -> tuple[list[Span], int, int, frozenset[int]]:
    seed = draw(st.integers(0, 2**32 - 1))
    return random_map(random.Random(seed), 11)


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(small_maps())
def test_matches_brute_force_over_all_cut_subsets(case: tuple[list[Span], int, int, frozenset[int]]) -> None:
    spans, max_count, max_gap, barriers = case
    expected = brute_force_all_cuts(spans, max_count=max_count, max_gap=max_gap, barriers=barriers)
    assert planned_cost(spans, max_count, max_gap, barriers) == expected


def test_matches_exhaustive_search_on_maps_of_up_to_30_tags() -> None:
    rng = random.Random(20240611)
    feasible = binding = 0
    for _ in range(300):
        spans, max_count, max_gap, barriers = random_map(rng, 30, min_tags=10)
        expected = brute_force_search(spans, max_count=max_count, max_gap=max_gap, barriers=barriers)
        got = planned_cost(spans, max_count, max_gap, barriers)
        assert got == expected, (spans, max_count, max_gap, barriers)
        if got is not None:
            feasible += 1
            binding += any(
                r.count > max_count - 4
                for r in plan(spans, max_count=max_count, max_gap=max_gap, barriers=barriers)
            )
    assert feasible >= 240  # the comparison is not vacuous
    assert binding >= 50  # and the length limit really binds in many maps


def test_the_two_brute_forces_agree() -> None:
    rng = random.Random(3)
    for _ in range(100):
        spans, max_count, max_gap, barriers = random_map(rng, 10)
        kwargs = {"max_count": max_count, "max_gap": max_gap, "barriers": barriers}
        assert brute_force_search(spans, **kwargs) == brute_force_all_cuts(spans, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("space", "seed"), [(20000, 1), (20000, 2), (3000, 3), (1500, 4)])
def test_thousand_tags_are_valid_and_optimal(space: int, seed: int) -> None:
    rng = random.Random(seed)
    spans: list[Span] = []
    for k in range(1000):
        if spans and rng.random() < 0.05:
            other = rng.choice(spans)
            spans.append(Span(f"tag{k:04d}", other.start, 1))  # a bit of another tag's register
        else:
            spans.append(Span(f"tag{k:04d}", rng.randrange(space), rng.choice([1, 2, 4])))
    crossed = {a for s in spans for a in range(s.start + 1, s.start + s.count)}
    barriers = frozenset(rng.sample(sorted({s.start for s in spans} - crossed), 20))
    for bars in (frozenset(), barriers):
        result = plan(spans, max_count=MAX_READ_REGISTERS, max_gap=10, barriers=bars)
        assert violations(result, spans, max_count=MAX_READ_REGISTERS, max_gap=10, barriers=bars) == []
        assert len(result) == greedy_count(spans, max_count=MAX_READ_REGISTERS, max_gap=10, barriers=bars)
        assert cost(result) == dp_by_cut_positions(
            spans, max_count=MAX_READ_REGISTERS, max_gap=10, barriers=bars
        )
        assert len(result) < len(spans)


def test_hundred_random_mid_size_maps_agree_with_the_cut_position_dp() -> None:
    rng = random.Random(7)
    for _ in range(100):
        spans, max_count, max_gap, barriers = random_map(rng, 120)
        expected = dp_by_cut_positions(spans, max_count=max_count, max_gap=max_gap, barriers=barriers)
        assert planned_cost(spans, max_count, max_gap, barriers) == expected


# --------------------------------------------------------------------------- bits


def test_bits_split_at_the_2000_bit_limit() -> None:
    coils = [Span(f"c{i}", i, 1) for i in range(2500)]
    assert plan(coils, max_count=MAX_READ_BITS, max_gap=0) == [
        ReadRequest(0, 2000, tuple(s.key for s in ordered(coils[:2000]))),
        ReadRequest(2000, 500, tuple(s.key for s in ordered(coils[2000:]))),
    ]


def test_sparse_bits_are_optimal_and_within_the_limit() -> None:
    rng = random.Random(11)
    coils = [Span(f"c{i:04d}", a, 1) for i, a in enumerate(rng.sample(range(12000), 3000))]
    result = plan(coils, max_count=MAX_READ_BITS, max_gap=16)
    assert violations(result, coils, max_count=MAX_READ_BITS, max_gap=16) == []
    assert all(r.count <= MAX_READ_BITS for r in result)
    assert cost(result) == dp_by_cut_positions(
        coils, max_count=MAX_READ_BITS, max_gap=16, barriers=frozenset()
    )


# --------------------------------------------------------------------------- worked examples


def test_empty_map_needs_no_request() -> None:
    assert plan([], max_count=125, max_gap=10) == []


def test_gap_zero_merges_only_adjacent_or_overlapping_spans() -> None:
    spans = [Span("a", 0, 2), Span("b", 2, 1), Span("c", 4, 1), Span("d", 4, 1), Span("e", 5, 2)]
    assert plan(spans, max_count=125, max_gap=0) == [
        ReadRequest(0, 3, ("a", "b")),
        ReadRequest(4, 3, ("c", "d", "e")),
    ]
    assert plan(spans, max_count=125, max_gap=1) == [ReadRequest(0, 7, ("a", "b", "c", "d", "e"))]


def test_holes_are_measured_from_the_furthest_end_of_nested_spans() -> None:
    # b ends before a does: the hole to c is 12 - 10 = 2, not 12 - 3 = 9.
    spans = [Span("a", 0, 10), Span("b", 2, 1), Span("c", 12, 1)]
    assert plan(spans, max_count=125, max_gap=2) == [ReadRequest(0, 13, ("a", "b", "c"))]
    assert len(plan(spans, max_count=125, max_gap=1)) == 2


def test_overlapping_spans_always_share_a_request() -> None:
    # A greedy cut at the limit would split x from y; they must move together.
    spans = [Span("w", 0, 4), Span("x", 6, 4), Span("y", 8, 4)]
    assert plan(spans, max_count=10, max_gap=5) == [
        ReadRequest(0, 4, ("w",)),
        ReadRequest(6, 6, ("x", "y")),
    ]


def test_limit_binds_and_fewest_registers_break_ties() -> None:
    # Whole [0, 10) exceeds 8. Two requests suffice three ways: a|bcd reads 1 + 8, abc|d reads
    # 8 + 1, ab|cd reads 3 + 3: the last one wins.
    spans = [Span("a", 0, 1), Span("b", 2, 1), Span("c", 7, 1), Span("d", 9, 1)]
    result = plan(spans, max_count=8, max_gap=4)
    assert result == [ReadRequest(0, 3, ("a", "b")), ReadRequest(7, 3, ("c", "d"))]
    assert cost(result) == (2, 6)


def test_equal_plans_tie_break_is_front_loaded() -> None:
    spans = [Span("a", 0, 1), Span("b", 1, 1), Span("c", 2, 1)]
    assert plan(spans, max_count=2, max_gap=0) == [ReadRequest(0, 2, ("a", "b")), ReadRequest(2, 1, ("c",))]


def test_barriers_split_only_inside_a_request() -> None:
    spans = [Span("a", 0, 2), Span("b", 2, 2), Span("c", 6, 2)]
    assert plan(spans, max_count=125, max_gap=5, barriers=frozenset({2})) == [
        ReadRequest(0, 2, ("a",)),
        ReadRequest(2, 6, ("b", "c")),
    ]
    # b = 0 or b = end of the last span never separate anything.
    assert len(plan(spans, max_count=125, max_gap=5, barriers=frozenset({0, 8, 100}))) == 1
    # a barrier in a hole splits there
    assert len(plan(spans, max_count=125, max_gap=5, barriers=frozenset({5}))) == 2


def test_plan_ignores_input_order() -> None:
    rng = random.Random(5)
    for _ in range(50):
        spans, max_count, max_gap, barriers = random_map(rng, 30)
        try:
            reference = plan(spans, max_count=max_count, max_gap=max_gap, barriers=barriers)
        except ValueError:
            continue
        shuffled = spans[:]
        rng.shuffle(shuffled)
        assert plan(iter(shuffled), max_count=max_count, max_gap=max_gap, barriers=barriers) == reference


@pytest.mark.parametrize(
    ("spans", "kwargs", "message"),
    [
        ([Span("a", 0, 126)], {"max_count": 125, "max_gap": 0}, "exceed max_count"),
        ([Span("a", 0, 0)], {"max_count": 125, "max_gap": 0}, "count must be >= 1"),
        ([Span("a", -1, 1)], {"max_count": 125, "max_gap": 0}, "start must be >= 0"),
        ([Span("a", 65535, 2)], {"max_count": 125, "max_gap": 0}, "ends past address 65535"),
        ([Span("a", 0, 1)], {"max_count": 0, "max_gap": 0}, "max_count must be >= 1"),
        ([Span("a", 0, 1)], {"max_count": 125, "max_gap": -1}, "max_gap must be >= 0"),
        ([Span("a", 0, 1), Span("a", 5, 1)], {"max_count": 125, "max_gap": 0}, "duplicate span key"),
        ([Span("a", 0, 4), Span("b", 3, 4)], {"max_count": 6, "max_gap": 0}, "overlapping spans 'a', 'b'"),
        (
            [Span("a", 0, 4)],
            {"max_count": 125, "max_gap": 0, "barriers": frozenset({2})},
            "span 'a' crosses barrier 2",
        ),
    ],
)
def test_invalid_input_raises(spans: list[Span], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(spans, **kwargs)  # type: ignore[arg-type]
    if "barriers" not in kwargs:
        with pytest.raises(ValueError, match=message):
            RequestPlanner(spans, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- RequestPlanner


def test_report_illegal_bisects_merged_requests_and_never_remerges() -> None:
    a, b, c = Span("a", 0, 2), Span("b", 5, 2), Span("c", 20, 2)
    planner = RequestPlanner([c, a, b], max_count=125, max_gap=20)
    merged = planner.requests()
    assert merged == [ReadRequest(0, 22, ("a", "b", "c"))]

    # The widest hole (7..19) is split first; the barrier sits at the start of its right side.
    replacements = planner.report_illegal(merged[0])
    assert replacements == [ReadRequest(0, 7, ("a", "b")), ReadRequest(20, 2, ("c",))]
    assert planner.barriers == frozenset({20})
    assert planner.requests() == replacements
    assert planner.illegal_keys == frozenset()

    assert planner.report_illegal(replacements[0]) == [ReadRequest(0, 2, ("a",)), ReadRequest(5, 2, ("b",))]
    singles = [ReadRequest(0, 2, ("a",)), ReadRequest(5, 2, ("b",)), ReadRequest(20, 2, ("c",))]
    assert planner.requests() == singles

    # A single span refused on its own is illegal and leaves the plan.
    assert planner.report_illegal(ReadRequest(5, 2, ("b",))) == []
    assert planner.illegal_keys == frozenset({"b"})
    assert planner.requests() == [ReadRequest(0, 2, ("a",)), ReadRequest(20, 2, ("c",))]
    assert planner.report_illegal(ReadRequest(5, 2, ("b",))) == []  # a repeated report is harmless

    planner.retry_illegal()
    assert planner.illegal_keys == frozenset()
    assert planner.requests() == singles  # the learned splits stay


def test_learned_barrier_survives_replanning_with_room_to_merge() -> None:
    spans = [Span(f"r{i}", 10 * i, 2) for i in range(6)]  # holes of 8
    planner = RequestPlanner(spans, max_count=125, max_gap=8)
    [whole] = planner.requests()
    first = planner.report_illegal(whole)
    assert len(first) == 2  # equal holes: the most even split, 3 + 3
    assert [len(r.keys) for r in first] == [3, 3]
    for request in planner.requests():
        assert not (request.start < 30 < request.start + request.count)
    assert violations(planner.requests(), spans, max_count=125, max_gap=8, barriers=planner.barriers) == []


def test_the_widest_hole_is_split_before_the_middle() -> None:
    spans = [Span("a", 0, 1), Span("b", 2, 1), Span("c", 4, 1), Span("d", 30, 1)]
    planner = RequestPlanner(spans, max_count=125, max_gap=30)
    [whole] = planner.requests()
    assert planner.report_illegal(whole) == [ReadRequest(0, 5, ("a", "b", "c")), ReadRequest(30, 1, ("d",))]
    assert planner.barriers == frozenset({30})


def test_adjacent_spans_bisect_by_span_count() -> None:
    spans = [Span("a", 0, 1), Span("bad", 1, 1), Span("c", 2, 1)]
    planner = RequestPlanner(spans, max_count=125, max_gap=3)
    [whole] = planner.requests()
    # no hole is wider than another: the most even split, then the leftmost
    assert planner.report_illegal(whole) == [ReadRequest(0, 1, ("a",)), ReadRequest(1, 2, ("bad", "c"))]
    assert planner.report_illegal(ReadRequest(1, 2, ("bad", "c"))) == [
        ReadRequest(1, 1, ("bad",)),
        ReadRequest(2, 1, ("c",)),
    ]
    assert planner.report_illegal(ReadRequest(1, 1, ("bad",))) == []
    assert planner.requests() == [ReadRequest(0, 1, ("a",)), ReadRequest(2, 1, ("c",))]
    assert planner.barriers == frozenset({1, 2})


def test_duplicate_keys_on_one_register_become_illegal_together() -> None:
    planner = RequestPlanner([Span("word", 7, 1), Span("bit3", 7, 1)], max_count=125, max_gap=0)
    [request] = planner.requests()
    assert request == ReadRequest(7, 1, ("bit3", "word"))
    assert planner.report_illegal(request) == []
    assert planner.illegal_keys == frozenset({"bit3", "word"})
    assert planner.requests() == []


def test_nested_spans_the_outer_span_is_refused_and_the_inner_retried() -> None:
    planner = RequestPlanner([Span("u32", 10, 2), Span("hi_word", 10, 1)], max_count=125, max_gap=0)
    [request] = planner.requests()
    assert request == ReadRequest(10, 2, ("hi_word", "u32"))
    assert planner.report_illegal(request) == [ReadRequest(10, 1, ("hi_word",))]
    assert planner.illegal_keys == frozenset({"u32"})
    assert planner.requests() == [ReadRequest(10, 1, ("hi_word",))]
    planner.retry_illegal()
    assert planner.requests() == [request]


def test_chained_overlap_that_cannot_be_isolated_is_illegal_as_a_whole() -> None:
    planner = RequestPlanner([Span("x", 0, 2), Span("y", 1, 2), Span("z", 9, 1)], max_count=125, max_gap=0)
    chain = planner.requests()[0]
    assert chain == ReadRequest(0, 3, ("x", "y"))
    assert planner.report_illegal(chain) == []
    assert planner.illegal_keys == frozenset({"x", "y"})
    assert planner.requests() == [ReadRequest(9, 1, ("z",))]


def test_a_refused_read_is_never_handed_back() -> None:
    # The inner bits alone would plan back into [10, 14), the read just refused.
    spans = [Span("u64", 10, 4), Span("b0", 10, 1), Span("b3", 13, 1)]
    planner = RequestPlanner(spans, max_count=125, max_gap=2)
    [request] = planner.requests()
    assert request == ReadRequest(10, 4, ("b0", "u64", "b3"))
    assert planner.report_illegal(request) == [ReadRequest(10, 1, ("b0",)), ReadRequest(13, 1, ("b3",))]
    assert planner.illegal_keys == frozenset({"u64"})
    assert planner.barriers == frozenset({13})


def test_barrier_inside_a_retried_span_is_ignored_while_it_is_planned() -> None:
    spans = [Span("outer", 0, 4), Span("lo", 0, 1), Span("mid", 2, 1)]
    planner = RequestPlanner(spans, max_count=125, max_gap=1)
    [whole] = planner.requests()
    inner = planner.report_illegal(whole)
    assert inner == [ReadRequest(0, 3, ("lo", "mid"))]
    assert planner.report_illegal(inner[0]) == [ReadRequest(0, 1, ("lo",)), ReadRequest(2, 1, ("mid",))]
    assert planner.barriers == frozenset({2})  # strictly inside `outer`
    planner.retry_illegal()
    assert planner.requests() == [whole]
    # A late report of the old inner read: its only hole is split already, so the blocks are
    # read one by one this cycle instead of repeating the refused read.
    assert planner.report_illegal(inner[0]) == [ReadRequest(0, 1, ("lo",)), ReadRequest(2, 1, ("mid",))]
    assert planner.barriers == frozenset({2})


def test_stale_report_learns_nothing() -> None:
    planner = RequestPlanner([Span("a", 0, 1), Span("b", 10, 1), Span("c", 30, 1)], max_count=125, max_gap=30)
    [old] = planner.requests()
    now = planner.report_illegal(old)
    assert planner.barriers == frozenset({30})
    assert planner.report_illegal(old) == now  # reported twice: no second split
    assert planner.barriers == frozenset({30})
    assert planner.report_illegal(ReadRequest(0, 50, ("a",))) == [ReadRequest(0, 1, ("a",))]
    assert planner.illegal_keys == frozenset()


def test_unknown_key_is_refused() -> None:
    planner = RequestPlanner([Span("a", 0, 1)], max_count=125, max_gap=0)
    with pytest.raises(ValueError, match="unknown keys"):
        planner.report_illegal(ReadRequest(0, 1, ("zz",)))


def test_requests_returns_a_copy() -> None:
    planner = RequestPlanner([Span("a", 0, 1)], max_count=125, max_gap=0)
    planner.requests().clear()
    assert planner.requests() == [ReadRequest(0, 1, ("a",))]


def _device_map(rng: random.Random) -> tuple[list[Span], set[int]]:
    """Disjoint tags plus duplicates and nested bits, and a few unmapped addresses."""
    spans: list[Span] = []
    address = 0
    for k in range(rng.randint(5, 60)):
        address += rng.randint(0, 6)
        count = rng.choice([1, 2, 4])
        spans.append(Span(f"t{k:02d}", address, count))
        if rng.random() < 0.2:
            spans.append(Span(f"t{k:02d}.bit", address + rng.randrange(count), 1))
        address += count
    unmapped = {rng.randrange(address + 5) for _ in range(rng.randint(0, 5))}
    return spans, unmapped


def run_cycle(planner: RequestPlanner, unmapped: set[int]) -> tuple[int, set[str]]:
    """One poll cycle against a device refusing any read that touches an unmapped address."""
    refused = 0
    read: set[str] = set()
    seen: list[tuple[int, int]] = []
    queue = planner.requests()
    while queue:
        request = queue.pop(0)
        span = range(request.start, request.start + request.count)
        if any(a in unmapped for a in span):
            refused += 1
            replacements = planner.report_illegal(request)
            for r in replacements:
                assert request.start <= r.start and r.start + r.count <= request.start + request.count
            for left, right in itertools.pairwise(replacements):
                assert left.start + left.count <= right.start
            queue[:0] = replacements
            continue
        for start, end in seen:  # no address is read twice in one cycle
            assert end <= request.start or request.start + request.count <= start
        seen.append((request.start, request.start + request.count))
        read.update(request.keys)
    return refused, read


def test_planner_converges_against_a_device_with_unmapped_addresses() -> None:
    rng = random.Random(99)
    for _ in range(100):
        spans, unmapped = _device_map(rng)
        max_count, max_gap = rng.randint(8, 40), rng.randint(0, 10)
        planner = RequestPlanner(spans, max_count=max_count, max_gap=max_gap)
        bad = {s.key for s in spans if any(a in unmapped for a in range(s.start, s.start + s.count))}
        good = {s.key for s in spans} - bad
        refusals = []
        for _cycle in range(6):
            refused, read = run_cycle(planner, unmapped)
            refusals.append(refused)
            assert read == good  # every good tag is read every cycle, even in the learning one
        assert refusals[-2:] == [0, 0], refusals
        assert planner.illegal_keys == bad
        assert (
            violations(
                planner.requests(),
                [s for s in spans if s.key in good],
                max_count=max_count,
                max_gap=max_gap,
                barriers=planner.barriers,
            )
            == []
        )


def test_planner_is_deterministic() -> None:
    def history(seed: int) -> list[object]:
        rng = random.Random(seed)
        spans, unmapped = _device_map(rng)
        rng2 = random.Random(seed)
        shuffled = spans[:]
        rng2.shuffle(shuffled)
        planner = RequestPlanner(shuffled, max_count=20, max_gap=5)
        out: list[object] = []
        for _ in range(3):
            out.append(planner.requests())
            out.append(run_cycle(planner, unmapped))
        out.append(sorted(planner.barriers))
        return out

    for seed in range(10):
        assert history(seed) == history(seed)


# --------------------------------------------------------------------------- short replies


def test_short_reply_answers_what_came_makes_the_span_at_the_end_illegal_and_retries_the_rest() -> None:
    spans = [Span("a", 0, 1), Span("b", 1, 2), Span("c", 3, 1), Span("d", 10, 2)]
    planner = RequestPlanner(spans, max_count=125, max_gap=10)
    [merged] = planner.requests()
    assert merged == ReadRequest(0, 12, ("a", "b", "c", "d"))
    split = planner.report_short(merged, 2)  # the reply held registers 0 and 1 only
    assert split == ShortSplit(("a",), ("b",), [ReadRequest(3, 9, ("c", "d"))])
    assert planner.illegal_keys == {"b"}
    assert planner.barriers == {2}
    # remembered: "a" is never merged with what lies past the end again
    assert planner.requests() == [ReadRequest(0, 1, ("a",)), ReadRequest(3, 9, ("c", "d"))]


def test_a_short_reply_with_nothing_in_it_makes_the_first_spans_illegal_and_learns_no_barrier() -> None:
    spans = [Span("x", 5, 2), Span("x.bit", 5, 1), Span("y", 8, 1)]
    planner = RequestPlanner(spans, max_count=125, max_gap=4)
    [merged] = planner.requests()
    split = planner.report_short(merged, 0)
    assert split == ShortSplit((), ("x", "x.bit"), [ReadRequest(8, 1, ("y",))])
    assert planner.barriers == frozenset()
    # the retry never repeats the read that came back short
    assert planner.report_short(split.retry[0], 0) == ShortSplit((), ("y",), [])
    assert planner.requests() == []
    planner.retry_illegal()
    assert planner.requests() == [merged]


def test_a_short_reply_ending_inside_nested_spans_keeps_the_inner_one_that_came() -> None:
    spans = [Span("u16", 20, 1), Span("f32", 20, 2)]
    planner = RequestPlanner(spans, max_count=125, max_gap=0)
    [req] = planner.requests()
    assert planner.report_short(req, 1) == ShortSplit(("u16",), ("f32",), [])
    assert planner.requests() == [ReadRequest(20, 1, ("u16",))]


@pytest.mark.parametrize("received", [-1, 3, 4])
def test_a_short_reply_must_be_short(received: int) -> None:
    planner = RequestPlanner([Span("a", 0, 3)], max_count=125, max_gap=0)
    with pytest.raises(ValueError, match="short reply"):
        planner.report_short(ReadRequest(0, 3, ("a",)), received)
    with pytest.raises(ValueError, match="unknown keys"):
        planner.report_short(ReadRequest(0, 3, ("zz",)), 1)


def run_cycle_against_table_end(
    planner: RequestPlanner, unmapped: set[int], end: int
) -> tuple[int, set[str]]:
    """One cycle against a device whose table ends at ``end`` (a read past it is answered
    short, with the registers it has) and that refuses a read touching an unmapped address
    below the end (exception 02). Returns (refused or short replies, keys read)."""
    faults = 0
    read: set[str] = set()
    seen: list[tuple[int, int]] = []
    queue = planner.requests()
    while queue:
        request = queue.pop(0)
        have_end = min(request.end, end)
        if any(a in unmapped for a in range(request.start, have_end)):
            faults += 1
            queue[:0] = planner.report_illegal(request)
            continue
        answered = have_end - request.start if have_end > request.start else 0
        for start, stop in seen:  # no address is read twice in one cycle
            assert stop <= request.start or request.start + answered <= start
        seen.append((request.start, request.start + answered))
        if answered == request.count:
            read.update(request.keys)
            continue
        faults += 1
        split = planner.report_short(request, answered)
        for r in split.retry:
            assert r.start > request.start + answered and r.end <= request.end
        read.update(split.answered)
        queue[:0] = split.retry
    return faults, read


def test_planner_converges_against_a_device_that_answers_short_past_its_table_end() -> None:
    rng = random.Random(7)
    for _ in range(100):
        spans, unmapped = _device_map(rng)
        end = rng.randint(0, max(s.end for s in spans) + 3)
        max_count, max_gap = rng.randint(8, 40), rng.randint(0, 10)
        planner = RequestPlanner(spans, max_count=max_count, max_gap=max_gap)
        good = {
            s.key for s in spans if s.end <= end and not any(a in unmapped for a in range(s.start, s.end))
        }
        history = []
        for _cycle in range(6):
            faults, read = run_cycle_against_table_end(planner, unmapped, end)
            history.append(faults)
            assert read == good  # the valid neighbours are read every cycle, the learning one too
        assert history[-2:] == [0, 0], history
        assert planner.illegal_keys == {s.key for s in spans} - good
