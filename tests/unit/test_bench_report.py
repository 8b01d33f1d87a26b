"""bench/report.py: the one benchmark report (machine, load, every table, failures named)."""

from __future__ import annotations

import datetime as dt

from bench.report import BENCHMARKS, Outcome, benchmarks, cpu_info, render


def test_every_benchmark_script_is_run_in_the_documented_order() -> None:
    names = benchmarks()
    listed = [n for n in BENCHMARKS if n in names]
    assert names[: len(listed)] == listed
    assert {"acquisition", "cycle", "scoring", "export"} <= set(names)
    assert not {"rss", "opcua_server", "replay", "report"} & set(names)


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
