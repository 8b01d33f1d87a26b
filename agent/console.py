"""The live console view of a running agent (used by `edge-agent demo` and `run --console`).

Pure formatting of :class:`agent.runtime.AgentView`; the caller decides when to print.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent.runtime import STATUS_BITS, AgentView
from agent.types import Sample

__all__ = ["render"]

_CLEAR = "\x1b[H\x1b[2J"


def _value(s: Sample | None, fmt: str = "{:.2f}") -> str:
    if s is None:
        return "-"
    if not s.quality.is_good:
        return f"BAD({s.quality.reason[:24]})"
    v = s.value
    if isinstance(v, float):
        return fmt.format(v)
    return str(v)


def _status_names(word: int) -> str:
    names = [name for name, bit in STATUS_BITS.items() if word & (1 << bit)]
    return ",".join(names) or "-"


def render(
    view: AgentView,
    *,
    assets: Sequence[str],
    tag_columns: Sequence[tuple[str, str]],
    header: Iterable[str] = (),
    clear: bool = True,
) -> str:
    """The screen: header lines, per-asset tags/scores/HMI, recommendations, decisions, alarms.

    ``tag_columns`` are (label, tag pattern with ``{n}`` for the asset number).
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
        f"{'asset':8}"
        + "".join(f"{label:>12}" for label, _ in tag_columns)
        + f"{'T2':>9}{'alarms':>8}{'sev':>5}"
    )
    for n, asset in enumerate(assets, start=1):
        cols = "".join(f"{_value(view.tags.get(pattern.format(n=n))):>12}" for _, pattern in tag_columns)
        score = next((s.get(asset) for s in view.scores.values() if asset in s), None)
        t2 = f"{score.outputs.get('t2', float('nan')):9.1f}" if score is not None else f"{'-':>9}"
        block = view.hmi.get(asset)
        word = f"0x{block.alarm_word:04X}" if block else "-"
        sev = str(block.highest_severity) if block else "-"
        out.append(f"{asset:8}{cols}{t2}{word:>8}{sev:>5}")
    out.append("")
    for tag, rec in sorted(view.recommendations.items()):
        d = view.decisions.get(tag)
        action = f"{d.action}" if d else "-"
        applied = f"{d.applied_value:.0f}" if d and d.applied_value is not None else "-"
        why = "; ".join(d.reasons)[:70] if d and d.reasons else ""
        out.append(f"{tag:30} recommend {rec.value:7.0f} rpm  → {action:6} {applied:>6}  {why}")
    if view.recommendations:
        first = next(iter(view.recommendations.values()))
        out.append(f"  why: {first.reason[:110]}")
    out.append("")
    out.append("recent alarm transitions:")
    for a in view.alarms[-6:]:
        kind = "alert" if a.is_alert else "alarm"
        out.append(f"  {a.at:%H:%M:%S} {a.asset:6} {kind} {a.name:18} {a.state!s:24} sev {a.severity}")
    return "\n".join(out)
