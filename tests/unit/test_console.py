"""The live console: every column keeps its width whatever the value; quality shown as such."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.console import cell, fit_number, fit_text, render
from agent.pipeline.alarms import HmiBlock
from agent.runtime import AgentView
from agent.types import Quality, Sample, Score, Value

_T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_SI = {p: Decimal(10) ** (3 * k) for k, p in enumerate("kMGT", start=1)}


def _parse(text: str) -> Decimal:
    """What an operator reads back from a number cell (exactly: 1.80e308 is past a float)."""
    s = text.strip()
    if s and s[-1] in _SI:
        return Decimal(s[:-1]) * _SI[s[-1]]
    return Decimal(s)


def _sample(value: Value, quality: Quality | None = None) -> Sample:
    return Sample("t", value, quality or Quality.good(), _T0, 0.0)


widths = st.integers(min_value=1, max_value=24)
decimals = st.integers(min_value=0, max_value=4)


# ---------------------------------------------------------------------------- fit_number


@given(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True), widths, decimals)
def test_any_float_takes_exactly_its_width(value: float, width: int, places: int) -> None:
    assert len(fit_number(value, width, places)) == width


@given(st.integers(min_value=-(2**64), max_value=2**64), widths)
def test_any_int_takes_exactly_its_width(value: int, width: int) -> None:
    assert len(fit_number(value, width, 0)) == width


@given(
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True),
    st.integers(min_value=8, max_value=24),
    decimals,
)
def test_from_eight_places_every_float_reads_back_close(value: float, width: int, places: int) -> None:
    text = fit_number(value, width, places)
    assert "#" not in text
    back = _parse(text)
    exact = Decimal(value)
    assert abs(back - exact) <= max(Decimal(5) * Decimal(10) ** -(places + 1), abs(exact) / 20), text


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(min_value=12, max_value=24))
def test_numbers_that_fit_keep_their_decimals(value: float, width: int) -> None:
    text = fit_number(value, width, 2)
    assert text == f"{value:{width}.2f}" or text.strip() == f"{value:.2f}".lstrip("-")  # "-0.00" → "0.00"


@pytest.mark.parametrize(
    ("value", "width", "places", "expected"),
    [
        (4_052_695.5, 6, 1, "4.053M"),  # the T² that ran into its neighbour
        (4_052_695.5, 9, 1, "4052695.5"),
        (4_052_695.5, 8, 1, " 4052696"),  # fewer decimals before engineering notation
        (999_960.0, 5, 0, "1.00M"),  # rounding carries into the next prefix
        (-999_960.0, 5, 0, "-1.0M"),
        (30.1, 7, 2, "  30.10"),
        (-0.001, 6, 2, "  0.00"),  # no "-0.00"
        (1e45, 8, 2, "1.000e45"),  # past the SI prefixes: a compact exponent
        (-1.7976931348623157e308, 8, 2, "-1.8e308"),
        (5e-324, 6, 2, "  0.00"),
        (math.nan, 5, 2, "  NaN"),
        (math.inf, 5, 2, "  inf"),
        (-math.inf, 3, 2, "###"),  # does not fit: never a wrong number
        (-500.0, 3, 0, "###"),
        (12.34, 4, 2, "12.3"),
        (2**70, 9, 0, " 1.181e21"),
        (2.5e12, 6, 0, "2.500T"),
        (2.5e15, 6, 0, "2.5e15"),
        (True, 3, 0, "  1"),
    ],
)
def test_examples(value: float, width: int, places: int, expected: str) -> None:
    assert fit_number(value, width, places) == expected


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        fit_number(1.0, 0)
    with pytest.raises(ValueError):
        fit_number(1.0, 5, -1)
    with pytest.raises(ValueError):
        fit_text("x", 0)
    with pytest.raises(ValueError):
        cell(None, 1)


# ---------------------------------------------------------------------------- fit_text and cell


@given(st.text(), st.integers(min_value=1, max_value=40))
def test_any_text_takes_exactly_its_width(text: str, width: int) -> None:
    out = fit_text(text, width)
    assert len(out) == width and out.isprintable()
    if len(text) <= width and text.isprintable():
        assert out == text.rjust(width)
    elif len(text) > width:
        assert out.endswith("…")


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_subnormal=True),
    st.text(max_size=50),
)
_qualities = st.one_of(
    st.just(Quality.good()),
    st.builds(Quality.bad, st.text(max_size=60)),
    st.builds(Quality.uncertain, st.text(max_size=60)),
)


@given(_values, _qualities, st.integers(min_value=2, max_value=24))
def test_any_sample_takes_exactly_its_width(value: Value, quality: Quality, width: int) -> None:
    assert len(cell(_sample(value, quality), width)) == width


@given(
    st.one_of(st.floats(), st.integers(-(2**64), 2**64)),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz :", max_size=40),
    st.integers(min_value=2, max_value=60),
)
def test_bad_values_are_never_shown_as_numbers(value: float, reason: str, width: int) -> None:
    text = cell(_sample(value, Quality.bad(reason)), width)
    marker = "stale" if reason.startswith("stale") else f"BAD {reason}".rstrip()
    assert marker.startswith(text.strip().removesuffix("…"))
    assert not any(c.isdigit() for c in text)  # the reason has no digits: none come from the value


def test_quality_markers() -> None:
    assert cell(_sample(12.5, Quality.bad("stale: no update for 12.0 s (limit 3 s)")), 11) == "      stale"
    assert cell(_sample(12.5, Quality.bad("timeout after 1.0 s")), 11) == "BAD timeou…"
    assert cell(_sample(None, Quality.bad("")), 5) == "  BAD"
    assert cell(None, 4) == "   -"
    good, uncertain = cell(_sample(12.5), 9), cell(_sample(12.5, Quality.uncertain("clamped")), 9)
    assert (good, uncertain) == ("   12.50 ", "   12.50?")  # digits aligned, flag in the last place
    assert cell(_sample("RUNNING\n"), 6) == "RUNN… "


# ---------------------------------------------------------------------------- the screen


_WIDTHS = [8, 11, 11, 9, 6, 3]
_COLUMNS = [("speed rpm", "Pump{n}.Speed"), ("brg °C", "Pump{n}.BearingTemp")]


def _view(speed: Value, temp: Value, t2: float, word: int = 5, severity: int = 3) -> AgentView:
    view = AgentView()
    view.tags = {
        "Pump1.Speed": _sample(speed),
        "Pump1.BearingTemp": _sample(temp),
        "Pump2.Speed": _sample(1480.0, Quality.bad("stale: no update for 9.0 s (limit 3 s)")),
    }
    view.scores = {"pca": {"pump1": Score("pca", "1", "pump1", _T0, {"t2": t2}, 0.01)}}
    view.hmi = {"pump1": HmiBlock(word, 0, 0, 0, 0, severity, 1, 1)}
    return view


_SOURCES = {"pump1": "pca.t2", "pump2": "pca.t2"}


def test_the_anomaly_column_is_each_assets_anomaly_source() -> None:
    """The score the HMI shows (the asset's ``anomaly_source``), whichever model gives it."""
    view = _view(2950.0, 30.1, 85_928.0)
    view.scores["seq-pump"] = {
        "pump1": Score("seq-pump", "1", "pump1", _T0, {"score": 3.21, "anomaly": 1.0}, 0.01)
    }
    screen = render(
        view,
        assets=["pump1", "pump2"],
        tag_columns=_COLUMNS,
        clear=False,
        anomaly_sources={"pump1": "seq-pump.score", "pump2": "seq-pump.score"},
    )
    header, pump1, pump2 = _table(screen)
    assert header.split()[-3] == "anomaly"
    assert pump1.split()[-3] == "3.21"  # not pca's T²
    assert pump2.split()[-3] == "-"  # no score for pump 2 yet
    plain = render(view, assets=["pump1"], tag_columns=_COLUMNS, clear=False)
    assert _table(plain)[1].split()[-3] == "-"  # no anomaly source: nothing shown


def _table(screen: str) -> list[str]:
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("asset"))
    return lines[start : start + 3]


def test_t2_no_longer_runs_into_the_temperature() -> None:
    screen = render(
        _view(2950.0, 30.1, 4_052_695.5),
        assets=["pump1", "pump2"],
        tag_columns=_COLUMNS,
        clear=False,
        anomaly_sources=_SOURCES,
    )
    header, pump1, pump2 = _table(screen)
    assert pump1.split() == ["pump1", "2950.00", "30.10", "4052695.5", "0x0005", "3"]
    assert pump2.split() == ["pump2", "stale", "-", "-", "-", "-"]
    assert len(header) == len(pump1) == len(pump2)


@given(
    speed=st.one_of(st.floats(), st.integers(-(2**64), 2**64)),
    temp=st.floats(allow_subnormal=True),
    t2=st.floats(),
    word=st.integers(0, 65535),
    severity=st.integers(0, 10**6),
)
def test_columns_keep_their_place_whatever_the_values(
    speed: float, temp: float, t2: float, word: int, severity: int
) -> None:
    screen = render(
        _view(speed, temp, t2, word, severity),
        assets=["pump1", "pump2"],
        tag_columns=_COLUMNS,
        anomaly_sources=_SOURCES,
    )
    header, pump1, pump2 = _table(screen)
    assert len(header) == len(pump1) == len(pump2)
    # The layout: asset, two tag columns, T2, alarm word, severity, one space between columns.
    seps = [sum(_WIDTHS[: k + 1]) + k for k in range(len(_WIDTHS) - 1)]
    assert len(header) == sum(_WIDTHS) + len(seps)
    for line in (header, pump1, pump2):
        assert all(line[i] == " " for i in seps), line
    assert len(pump1.split()) == 6


def test_the_recommender_line_shows_codes_and_saving() -> None:
    view = _view(2950.0, 30.1, 1.0)
    assert "recommender:" not in render(view, assets=["pump1"], tag_columns=_COLUMNS, clear=False)
    view.recommender = "pump1 9 stopped for energy, pump2 1 energy optimum; 0.0824 kWh/m³ expected"
    screen = render(view, assets=["pump1"], tag_columns=_COLUMNS, clear=False)
    assert f"  recommender: {view.recommender}" in screen.splitlines()
