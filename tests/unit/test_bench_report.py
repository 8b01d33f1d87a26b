"""bench/report.py: the one benchmark report (machine, load, every table, failures named)."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest

from bench.report import BENCHMARKS, Outcome, benchmarks, cpu_info, issue16_targets, render


def test_every_benchmark_script_is_run_in_the_documented_order() -> None:
    names = benchmarks()
    listed = [n for n in BENCHMARKS if n in names]
    assert names[: len(listed)] == listed
    assert {"acquisition", "cycle", "scoring", "export"} <= set(names)
    assert not {"rss", "opcua_server", "replay", "report", "seqdistill", "seqcalib"} & set(names)


def test_the_report_names_the_machine_and_a_failed_benchmark() -> None:
    machine = cpu_info()
    assert machine["cores"].isdigit() and machine["cpu"]
    ok = Outcome("cycle", ["py", "bench/cycle.py"], 0, 12.0, "| row | result |\n| cycle vs floor | 1.2x |\n")
    bad = Outcome("export", ["py", "bench/export.py"], 3, 4.0, "x\n" * 100 + "Traceback: boom\n")
    text = render([ok, bad], machine, "0.10 0.20 0.30", "1.50 0.90 0.40", dt.datetime(2026, 12, 7, 4, 0, tzinfo=dt.UTC), False)
    assert f"| CPU | {machine['cpu']}" in text
    assert "| load average before (1, 5, 15 min) | 0.10 0.20 0.30 |" in text
    assert "| load average after | 1.50 0.90 0.40 |" in text
    assert "| [cycle](#cycle) | ok | 12 |" in text and "| cycle vs floor | 1.2x |" in text
    assert "| [export](#export) | FAILED (exit 3) | 4 |" in text
    assert "Traceback: boom" in text and text.count("x\n") < 100  # the end of a failure's output


def test_the_targets_of_issue_16_come_from_this_runs_results(tmp_path: Path) -> None:
    (tmp_path / "acquisition.json").write_text(
        json.dumps({"ratio_vs_bare_planned": 0.83, "cpu_us_per_tag_above_floor": 1.2})
    )
    summary = {
        "cycle_vs_floor": {"ratio": 1.5, "interval": [1.41, 1.62], "target": 1.3, "ok": False},
        "rss_modbus": {"rss_mb": 99.5, "target_mb": 90.0, "torch": False, "ok": False},
        "rss_modbus_opcua": {"rss_mb": 115.0, "target_mb": 120.0, "torch": False, "ok": True},
    }
    (tmp_path / "cycle.json").write_text(json.dumps({"summary": summary}))
    ran = [Outcome(n, ["py"], 0, 1.0, "") for n in ("acquisition", "cycle")]
    rows = "\n".join(issue16_targets(ran, tmp_path))
    assert "| 0.83x | >= 0.8x | OK |" in rows and "| 1.20 us | <= 1 us | MISSED |" in rows
    assert "| 1.50x (1.41-1.62x) | <= 1.3x | MISSED |" in rows
    assert "| RSS, Modbus only | 99.5 MB | <= 90 MB | MISSED |" in rows
    assert "| RSS with OPC UA | 115.0 MB | <= 120 MB | OK |" in rows
    failed = [Outcome("acquisition", ["py"], 1, 1.0, ""), Outcome("cycle", ["py"], 0, 1.0, "")]
    assert "0.83x" not in "\n".join(issue16_targets(failed, tmp_path))  # a failed run's old JSON: nothing
    assert issue16_targets([], tmp_path) == []


def test_the_cycle_ratios_interval_comes_from_its_blocks() -> None:
    from bench.cycle import block_interval

    assert block_interval([(1.2, 1.0)] * 10) == pytest.approx((1.2, 1.2))
    blocks = [(1.0 + 0.1 * (i % 5), 1.0) for i in range(40)]  # ratios 1.0-1.4, mean 1.2
    lo, hi = block_interval(blocks)
    assert 1.1 < lo < 1.2 < hi < 1.3
    assert all(math.isnan(x) for x in block_interval([(1.0, 1.0)]))  # one block says nothing
