"""The live console view of a running agent (used by `edge-agent demo` and `run --console`).

Pure formatting of :class:`agent.runtime.AgentView`; the caller decides when to print.

Every table column keeps its width whatever its value: :func:`fit_number` falls back from
fixed decimals to engineering notation (``4.053M``) and then to a compact exponent
(``1.2e45``), :func:`fit_text` cuts with ``…``, and columns are joined by a space so a full
column never runs into its neighbour. :func:`cell` shows a tag's quality as such: BAD values
read ``BAD <reason>``, stale ones ``stale``, never a number; an UNCERTAIN value carries a
``?`` in the column's last place (blank for GOOD, so the digits of both stay aligned).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from agent.runtime import STATUS_BITS, AgentView
from agent.types import QualityCode, Sample

__all__ = ["cell", "fit_number", "fit_text", "render"]

_CLEAR = "\x1b[H\x1b[2J"

# SI prefixes by power of a thousand (engineering notation past a column's width). Only the
# ones everyone reads: "E" (exa) would pass for an exponent; past tera, "1.2e15" is clearer.
_PREFIXES = {1: "k", 2: "M", 3: "G", 4: "T"}
_MAX_DIGITS = 4  # significant digits past the width: "4.053M", not "4.052696M"


def fit_text(text: str, width: int, align: Literal["<", ">"] = ">") -> str:
    """``text`` in exactly ``width`` characters: padded, or cut with ``…``.

    Characters that would move the cursor (newlines, escapes) show as ``?``.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, not {width}")
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return f"{text:{align}{width}}"


def fit_number(value: float, width: int, decimals: int = 2) -> str:
    """``value`` right-aligned in exactly ``width`` characters, as precise as the width allows.

    Fixed with ``decimals`` places (fewer if that is what fits; ints as they are), then
    engineering notation with an SI prefix (``4.053M``), then a compact exponent (``1.2e45``,
    ``-1.8e308``); ``NaN``, ``inf`` and ``-inf`` as such. A value that fits in no form (a
    width too small for its sign and digits) shows as ``#`` repeated, never as something else.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, not {width}")
    if decimals < 0:
        raise ValueError(f"decimals must be at least 0, not {decimals}")
    text = _number(value, width, decimals)
    return f"{text:>{width}}" if text is not None else "#" * width


def _number(value: float, width: int, decimals: int) -> str | None:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        if len(s := str(value)) <= width:
            return s
        value = float(value)  # too long: engineering notation like any large number
    if math.isnan(value):
        return "NaN" if width >= 3 else None
    if math.isinf(value):
        s = "inf" if value > 0 else "-inf"
        return s if len(s) <= width else None
    for d in range(decimals, -1, -1):
        s = f"{value:.{d}f}"
        if s.startswith("-") and s.strip("-0.") == "":
            s = s[1:]  # a tiny negative rounds to zero: no "-0.00"
        if len(s) <= width:
            return s
    return _engineering(value, width) or _exponent(value, width)


def _engineering(value: float, width: int) -> str | None:
    """``4.053M``: a mantissa in [1, 1000) and an SI prefix, for |value| ≥ 1000."""
    if abs(value) < 1000:
        return None
    for digits in range(_MAX_DIGITS, 0, -1):
        # Round to significant digits first: 999,960 is "1.00M" in five places, not "999.96k".
        exp = int(f"{value:.{digits - 1}e}".split("e")[1])
        group = exp // 3
        if group not in _PREFIXES:
            return None
        mantissa = float(f"{value:.{digits - 1}e}") / 10.0 ** (3 * group)
        s = f"{mantissa:.{max(0, digits - 1 - (exp - 3 * group))}f}{_PREFIXES[group]}"
        if len(s) <= width:
            return s
    return None


def _exponent(value: float, width: int) -> str | None:
    """``1.2e45``, ``-3e-12``: the shortest exponent form, with as many digits as fit."""
    for d in range(_MAX_DIGITS - 1, -1, -1):
        mantissa, exp = f"{value:.{d}e}".split("e")
        s = f"{mantissa}e{int(exp)}"
        if len(s) <= width:
            return s
    return None


def cell(sample: Sample | None, width: int, decimals: int = 2) -> str:
    """One tag's value in exactly ``width`` characters, its quality shown as such.

    ``-`` when the tag has no sample; ``stale`` for a value that stopped arriving and
    ``BAD <reason>`` for any other BAD value (the value itself is not shown: it is not one);
    a number or text otherwise, right-aligned in ``width - 1`` characters, then ``?`` when the
    value is UNCERTAIN and a blank when it is GOOD.
    """
    if width < 2:
        raise ValueError(f"width must be at least 2 (value and quality), not {width}")
    if sample is None:
        return fit_text("-", width)
    q = sample.quality
    if q.code is QualityCode.BAD:
        marker = "stale" if q.reason.startswith("stale") else f"BAD {q.reason}".rstrip()
        return fit_text(marker, width)
    flag = "?" if q.code is QualityCode.UNCERTAIN else " "
    v = sample.value
    if v is None:
        return fit_text("-", width - 1) + flag
    if isinstance(v, str):
        return fit_text(v, width - 1) + flag
    return fit_number(v, width - 1, decimals) + flag


def _status_names(word: int) -> str:
    names = [name for name, bit in STATUS_BITS.items() if word & (1 << bit)]
    return ",".join(names) or "-"


_ASSET_W, _TAG_W, _SCORE_W, _WORD_W, _SEV_W = 8, 11, 9, 6, 3


def _anomaly_score(view: AgentView, asset: str, source: str | None) -> float | None:
    """The asset's latest ``<model>.<output>`` (its ``anomaly_source``); None when unknown."""
    if source is None:
        return None
    for model, by_asset in view.scores.items():
        if source.startswith(model + ".") and (score := by_asset.get(asset)) is not None:
            return score.outputs.get(source[len(model) + 1 :])
    return None


def render(
    view: AgentView,
    *,
    assets: Sequence[str],
    tag_columns: Sequence[tuple[str, str]],
    header: Iterable[str] = (),
    clear: bool = True,
    anomaly_sources: Mapping[str, str | None] | None = None,
) -> str:
    """The screen: header lines, per-asset tags/scores/HMI, recommendations, decisions, alarms.

    ``tag_columns`` are (label, tag pattern with ``{n}`` for the asset number). The ``anomaly``
    column is each asset's ``anomaly_source`` (``anomaly_sources``: asset → ``<model>.<output>``,
    the score the HMI shows). Every column of the asset table has a fixed width whatever its
    values, one space apart.
    """
    out: list[str] = [_CLEAR] if clear else []
    out.extend(header)
    out.append(
        f"cycle {view.cycles}  last {view.last_cycle_s * 1000:.0f} ms  status word 0x{view.status_word:04X} "
        f"[{_status_names(view.status_word)}]  writes {view.writes}  verify failures {view.verify_failures}"
        + (f"  LOST: {', '.join(view.devices_lost)}" if view.devices_lost else "")
    )
    out.append("")
    out.append(
        " ".join(
            [
                fit_text("asset", _ASSET_W, "<"),
                *(fit_text(label, _TAG_W) for label, _ in tag_columns),
                fit_text("anomaly", _SCORE_W),
                fit_text("alarms", _WORD_W),
                fit_text("sev", _SEV_W),
            ]
        )
    )
    for n, asset in enumerate(assets, start=1):
        score = _anomaly_score(view, asset, (anomaly_sources or {}).get(asset))
        block = view.hmi.get(asset)
        out.append(
            " ".join(
                [
                    fit_text(asset, _ASSET_W, "<"),
                    *(cell(view.tags.get(pattern.format(n=n)), _TAG_W) for _, pattern in tag_columns),
                    fit_number(score, _SCORE_W, 2) if score is not None else fit_text("-", _SCORE_W),
                    fit_text(f"0x{block.alarm_word:04X}" if block else "-", _WORD_W),
                    fit_number(block.highest_severity, _SEV_W, 0) if block else fit_text("-", _SEV_W),
                ]
            )
        )
    out.append("")
    for tag, rec in sorted(view.recommendations.items()):
        d = view.decisions.get(tag)
        action = fit_text(str(d.action) if d else "-", 6, "<")
        applied = fit_number(d.applied_value, 6, 0) if d and d.applied_value is not None else fit_text("-", 6)
        why = "; ".join(d.reasons)[:70] if d and d.reasons else ""
        value = fit_number(rec.value, 7, 0)
        out.append(f"{fit_text(tag, 30, '<')} recommend {value} rpm  → {action} {applied}  {why}")
    if view.recommendations:
        first = next(iter(view.recommendations.values()))
        out.append(f"  why: {first.reason[:110]}")
    if view.recommender:
        out.append(f"  recommender: {view.recommender[:140]}")
    if view.plan is not None:
        p = view.plan
        out.append(
            f"  tariff plan: {p.first_flow_m3h:.0f} m³/h now; next 24 h {p.energy_kwh:.0f} kWh "
            f"({p.specific_energy_kwh_m3:.3f} kWh/m³), {p.cost:.2f} {p.currency}; "
            f"forecast {p.forecast_source}"
        )
    out.append("")
    out.append("recent alarm transitions:")
    for a in view.alarms[-6:]:
        kind = "alert" if a.is_alert else "alarm"
        out.append(
            f"  {a.at:%H:%M:%S} {fit_text(a.asset, 6, '<')} {kind} {fit_text(a.name, 18, '<')} "
            f"{fit_text(str(a.state), 24, '<')} sev {a.severity}"
        )
    return "\n".join(out)
