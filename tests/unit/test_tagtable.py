"""TagTable: the latest sample per tag, staleness applied when read."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.tagtable import TagTable
from agent.types import Quality, Sample

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sample(tag: str, value: float, mono: float) -> Sample:
    return Sample(tag, value, Quality.good(), T0, mono)


def test_latest_wins_and_staleness_is_applied_when_read() -> None:
    table = TagTable({"a": 2.0, "b": 2.0})
    table.update(sample("a", v, m) for v, m in ((1.0, 10.0), (2.0, 11.0)))  # any iterable
    table.update([sample("c", 3.0, 11.0)])  # a tag without a limit
    assert table.updates == 3
    assert table.get("a", 12.0).value == 2.0 and table.get("a", 13.0).quality.is_good
    stale = table.get("a", 13.5)
    assert (stale.value, stale.quality.reason) == (2.0, "stale: no update for 2.5 s (limit 2 s)")
    assert stale.mono == 11.0 and stale.received_at == T0
    assert table.get("a", math.nan).quality.reason.startswith("stale")  # a NaN time fails closed
    assert table.get("c", 1e9).quality.is_good  # no limit: never stale
    never = table.get("b", 12.0)
    assert (never.value, never.quality) == (None, Quality.bad("no value yet"))


def test_snapshot_covers_every_tag_with_a_limit_or_a_sample_even_new_ones() -> None:
    table = TagTable({"a": 1.0, "b": 1.0}, clock=lambda: 5.0)
    table.update([sample("a", 1.0, 4.5)])
    assert set(table.snapshot()) == {"a", "b"}
    table.update([sample("x", 2.0, 4.9)])
    snap = table.snapshot()
    assert set(snap) == {"a", "b", "x"} and snap["x"].value == 2.0
    assert not snap["b"].quality.is_good and snap["a"].quality.is_good
    assert (
        set(table.snapshot(["a"], now=9.0)) == {"a"}
        and not table.snapshot(["a"], now=9.0)["a"].quality.is_good
    )


def test_snapshot_is_get_of_each_tag() -> None:
    # fresh, stale, NaN time, no limit, never seen: the snapshot's fast path and get() agree
    table = TagTable({"fresh": 2.0, "stale": 2.0, "nan": 2.0, "never": 2.0})
    table.update([sample("fresh", 1.0, 9.0), sample("stale", 2.0, 5.0), sample("free", 3.0, 0.0)])
    table.update([Sample("nan", 4.0, Quality.good(), T0, math.nan)])
    tags = ["fresh", "stale", "nan", "free", "never", "unknown"]
    snap = table.snapshot(tags, now=10.0)
    assert list(snap) == tags
    assert snap == {t: table.get(t, 10.0) for t in tags}
    assert [t for t, s in snap.items() if s.quality.is_good] == ["fresh", "free"]


TAGS = ["a", "b", "c", "d", "e"]


@given(
    limits=st.dictionaries(st.sampled_from(TAGS), st.floats(0.1, 5.0), max_size=5),
    updates=st.lists(
        st.tuples(
            st.sampled_from(TAGS),
            st.floats(allow_nan=True, allow_infinity=False, width=32),
            st.one_of(st.floats(0.0, 20.0), st.just(math.nan)),
        ),
        max_size=12,
    ),
    now=st.one_of(st.floats(0.0, 30.0), st.just(math.nan)),
)
def test_at_is_the_snapshot_of_every_tag(
    limits: dict[str, float], updates: list[tuple[str, float, float]], now: float
) -> None:
    table = TagTable(limits)
    table.update(sample(t, v, m) for t, v, m in updates)
    view, snap = table.at(now), table.snapshot(now=now)
    table.update([sample(t, 99.0, 0.0) for t in TAGS])  # later updates do not reach the view
    assert list(view) == list(snap) and len(view) == len(snap)
    for tag, s in snap.items():
        got = view[tag]
        assert (got.tag, got.quality, got.mono, got.received_at) == (s.tag, s.quality, s.mono, s.received_at)
        assert got.value == s.value or (got.value != got.value and s.value != s.value)  # NaN
    assert "unknown" not in view and view.get("unknown") is None
    with pytest.raises(KeyError):
        view["unknown"]
