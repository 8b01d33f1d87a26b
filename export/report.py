"""The per-bundle report: ``report.json`` (everything measured) and ``report.md`` with SVG plots.

Plots are written as small self-contained SVG files (no plotting library, deterministic
bytes): a confusion matrix, ROC curves, RUL error over time, and size and latency of every
variant. :func:`render_markdown` rebuilds ``report.md`` from ``report.json`` alone
(``edge-export report BUNDLE``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bar_chart", "confusion_svg", "line_chart", "render_markdown", "write_report"]

_W, _H, _M = 480, 320, 48
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def _svg(body: list[str], w: int = _W, h: int = _H, title: str = "") -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'font-family="sans-serif" font-size="11">'
    )
    t = f'<text x="{w / 2:.0f}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>'
    return "\n".join([head, '<rect width="100%" height="100%" fill="white"/>', t, *body, "</svg>"]) + "\n"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = False,
) -> str:
    pts = [p for s in series.values() for p in s if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not pts:
        return _svg(['<text x="50%" y="50%" text-anchor="middle">no data</text>'], title=title)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def sx(v: float) -> float:
        return _M + (v - x0) / (x1 - x0) * (_W - 2 * _M)

    def sy(v: float) -> float:
        return _H - _M - (v - y0) / (y1 - y0) * (_H - 2 * _M)

    body = [
        f'<line x1="{_M}" y1="{_H - _M}" x2="{_W - _M}" y2="{_H - _M}" stroke="black"/>',
        f'<line x1="{_M}" y1="{_M}" x2="{_M}" y2="{_H - _M}" stroke="black"/>',
        f'<text x="{_W / 2:.0f}" y="{_H - 12}" text-anchor="middle">{html.escape(xlabel)}</text>',
        f'<text x="14" y="{_H / 2:.0f}" text-anchor="middle" transform="rotate(-90 14 {_H / 2:.0f})">'
        f"{html.escape(ylabel)}</text>",
    ]
    for v, anchor in ((x0, "start"), (x1, "end")):
        body.append(f'<text x="{sx(v):.1f}" y="{_H - _M + 14}" text-anchor="{anchor}">{v:.4g}</text>')
    for v in (y0, y1):
        body.append(f'<text x="{_M - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.4g}</text>')
    if diagonal:
        body.append(
            f'<line x1="{sx(x0):.1f}" y1="{sy(y0):.1f}" x2="{sx(x1):.1f}" y2="{sy(y1):.1f}" '
            'stroke="#aaa" stroke-dasharray="4 3"/>'
        )
    for i, (name, s) in enumerate(series.items()):
        c = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in s if math.isfinite(a) and math.isfinite(b))
        body.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{path}"/>')
        body.append(
            f'<text x="{_W - _M - 4}" y="{_M + 14 * i}" text-anchor="end" '
            f'fill="{c}">{html.escape(name)}</text>'
        )
    return _svg(body, title=title)


def bar_chart(values: Mapping[str, float], *, title: str, unit: str) -> str:
    n = max(len(values), 1)
    top = max([v for v in values.values() if math.isfinite(v)] + [1e-12])
    h = 40 + 26 * n
    body = []
    for i, (name, v) in enumerate(values.items()):
        y = 30 + 26 * i
        w = 0 if not math.isfinite(v) else (v / top) * (_W - 230)
        body.append(f'<text x="150" y="{y + 14}" text-anchor="end">{html.escape(name)}</text>')
        body.append(
            f'<rect x="156" y="{y}" width="{w:.1f}" height="18" fill="{_COLOURS[i % len(_COLOURS)]}"/>'
        )
        body.append(f'<text x="{160 + w:.1f}" y="{y + 14}">{v:.4g} {html.escape(unit)}</text>')
    return _svg(body, h=h, title=title)


def confusion_svg(matrix: Sequence[Sequence[int]], labels: Sequence[str], *, title: str) -> str:
    n = len(labels)
    cell = max(18, min(36, 300 // max(n, 1)))
    left, top = 130, 40
    w, h = left + cell * n + 20, top + cell * n + 110
    body = []
    for i in range(n):
        row_total = max(sum(matrix[i]), 1)
        body.append(
            f'<text x="{left - 4}" y="{top + cell * i + cell / 2 + 4:.0f}" text-anchor="end">'
            f"{html.escape(labels[i])}</text>"
        )
        tx, ty = left + cell * i + cell / 2, top + cell * n + 6
        body.append(
            f'<text x="{tx:.0f}" y="{ty:.0f}" transform="rotate(60 {tx:.0f} {ty:.0f})">'
            f"{html.escape(labels[i])}</text>"
        )
        for j in range(n):
            frac = matrix[i][j] / row_total
            shade = int(255 - 200 * frac)
            body.append(
                f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell}" height="{cell}" '
                f'fill="rgb({shade},{shade},255)" stroke="#ddd"/>'
            )
            if matrix[i][j]:
                body.append(
                    f'<text x="{left + cell * j + cell / 2:.0f}" y="{top + cell * i + cell / 2 + 4:.0f}" '
                    f'text-anchor="middle" font-size="9">{matrix[i][j]}</text>'
                )
    body.append(f'<text x="8" y="{top - 6}">true \u2193 / predicted \u2192 (row-normalised shading)</text>')
    return _svg(body, w=w, h=h, title=title)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` from the report dictionary (what ``report.json`` holds)."""
    lines = [
        f"# {report.get('name', '?')} v{report.get('version', '?')} ({report.get('task', '?')})",
        "",
        report.get("summary", ""),
        "",
    ]
    lines += [
        "## Variants",
        "",
        "| file | precision | size (bytes) | latency batch 1 (us) | latency batch "
        f"{report.get('latency_batch', 2)} (us) | status |",
        "|---|---|---|---|---|---|",
    ]
    for v in report.get("variants", []):
        lines.append(
            f"| {v['file']} | {v['precision']} | {v['size']} | {_fmt(v.get('latency_us_b1', ''))} | "
            f"{_fmt(v.get('latency_us_bn', ''))} | {v.get('status', 'shipped')} |"
        )
    lines += [
        "",
        f"Measured on CPU features: {', '.join(report.get('cpu_features', []))}. The agent "
        "benchmarks every shipped variant on the gateway at install and runs the faster one.",
        "",
    ]
    lines += ["## Gates", "", "| gate | result | measured |", "|---|---|---|"]
    for g in report.get("gates", []):
        measured = ", ".join(f"{k}={_fmt(v)}" for k, v in g.get("measured", {}).items())
        lines.append(f"| {g['gate']} | {g['result']} | {measured} {html.escape(g.get('note', ''))} |")
    if report.get("int8", {}).get("table_md"):
        q = report["int8"]
        lines += [
            "",
            "## INT8 settings tried (export/quantize.py)",
            "",
            "Latencies: batch 1, FP32 and INT8 measured side by side (interleaved blocks); noise is "
            "the median absolute deviation of the per-block difference.",
            "",
            q["table_md"],
            "",
            html.escape(q.get("reason", "")),
        ]
    lines += [
        "",
        "## Models",
        "",
        "| model | architecture | parameters | validation | test |",
        "|---|---|---|---|---|",
    ]
    for m in report.get("models", []):
        test = _fmt(m.get("test", ""))
        if "test_sd" in m:
            test = f"{test} ± {_fmt(m['test_sd'])} ({m.get('seeds', '?')} seeds)"
        lines.append(
            f"| {m['role']} | {m['arch']} | {m.get('params', '')} | {_fmt(m.get('val', ''))} | {test} |"
        )
    lines += [
        "",
        f"Metric: {report.get('metric', '')}"
        + (
            " (mean ± sd over training seeds)."
            if any("test_sd" in m for m in report.get("models", []))
            else "."
        ),
        "",
    ]
    students = report.get("students")
    if students:
        lines += [
            "## Students over training seeds",
            "",
            "| student | validation per seed | test per seed |",
            "|---|---|---|",
        ]
        for fam in ("distilled", "scratch"):
            if fam in students:
                val = ", ".join(_fmt(v) for v in students[fam]["val"])
                test = ", ".join(_fmt(v) for v in students[fam]["test"])
                lines.append(f"| {fam} | {val} | {test} |")
        lines.append("")
    reg = report.get("regression")
    if reg:
        lines += ["## Regression error on the test set", ""]
        lines += [f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in reg.items()]
        lines.append("")
    data = report.get("data", {})
    if data.get("inputs"):
        lines += [
            "## Inputs",
            "",
            "The sensor range is where a value is plausible (outside: BAD); the training range is "
            "what the data covered (outside: an anomaly signal, still scored).",
            "",
            "| role | unit | sensor range | training range |",
            "|---|---|---|---|",
        ]
        for r in data["inputs"]:
            lo, hi = r["range"]
            tlo, thi = r["training_range"]
            lines.append(
                f"| {r['role']} | {r['unit']} | {_fmt(lo)} .. {_fmt(hi)} | {_fmt(tlo)} .. {_fmt(thi)} |"
            )
        lines.append("")
    if data.get("classes"):
        lines += ["Classes (from the data): " + ", ".join(f"{k} {v}" for k, v in data["classes"].items()), ""]
    if report.get("detection", {}).get("table_md"):
        det = report["detection"]
        lines += [
            "## Detection on test recordings (the agent's replay)",
            "",
            f"Alert thresholds calibrated for {det['false_alerts_per_day_budget']:g} false alerts per day "
            "on the validation data through the agent's alarm engine "
            f"(on/off delay {det['on_delay_s']:g} s); "
            "delays are over detected episodes.",
            "",
            det["table_md"],
            "",
        ]
    elif report.get("detection"):
        lines += [
            "## Detection delay on the test set",
            "",
            f"Thresholds at a per-frame false-alarm rate of {report['detection']['false_alarm_rate']:g}, "
            f"on-delay {report['detection']['on_delay']} frames; a missed event counts its duration.",
            "",
            "| detector | events | detected | mean delay (s) | false-alarm rate on test normal |",
            "|---|---|---|---|---|",
        ]
        for name, d in report["detection"]["detectors"].items():
            lines.append(
                f"| {name} | {d['events']:.0f} | {d['detected']:.0f} | {d['mean_delay_s']:.0f} | "
                f"{d.get('test_far', float('nan')):.2e} |"
            )
        per = report["detection"].get("per_class", {})
        if per:
            names = list(report["detection"]["detectors"])
            lines += [
                "",
                "| fault | " + " | ".join(f"{n} delay (s)" for n in names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for label, row in per.items():
                lines.append(f"| {label} | " + " | ".join(_fmt(row.get(n, "")) for n in names) + " |")
        lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""]
        for title, file in report["plots"].items():
            lines += [f"![{title}]({file})", ""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def write_report(out: Path, report: dict[str, Any], plots: Mapping[str, str]) -> list[str]:
    """Write the SVG plots, ``report.json`` and ``report.md``; return the file names written."""
    names = []
    report = dict(report)
    report["plots"] = {}
    for file, svg in plots.items():
        (out / file).write_text(svg, encoding="utf-8")
        report["plots"][file.removesuffix(".svg").replace("_", " ")] = file
        names.append(file)
    (out / "report.json").write_text(
        json.dumps(_json_safe(report), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
    )
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return [*names, "report.json", "report.md"]


def _json_safe(obj: Any) -> Any:
    """The report as strict JSON: a number that was not measured (NaN: no episode to detect, no
    frame above a threshold) or is infinite becomes null, never the non-standard ``NaN``."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, float, np.integer, np.floating)):
        v = float(obj)
        if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
            return int(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return float(obj)
