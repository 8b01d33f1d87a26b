"""Labelled recordings (wide and historian long format), determinism, and the command line."""

from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from simulator.cli import build_parser, main
from simulator.faults import Fault, FaultKind, ScenarioEvent
from simulator.recorder import record, recorded_tags

REPO = Path(__file__).resolve().parents[2]
EVENTS = [
    ScenarioEvent(at_s=600, fault=Fault(FaultKind.BEARING_WEAR, 1, time_to_failure_s=7200)),
    ScenarioEvent(at_s=1200, fault=Fault(FaultKind.SENSOR_DROPOUT, 2, tag="MotorCurrent", duration_s=300)),
    ScenarioEvent(at_s=1800, fault=Fault(FaultKind.SENSOR_SPIKE, 2, tag="Flow", severity=3.0)),
]


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_wide_recording_has_every_tag_and_exact_labels(tmp_path: Path) -> None:
    out = tmp_path / "wide.csv"
    summary = record(out, hours=0.75, seed=3, scenario=EVENTS)
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert summary.rows == len(rows) == 2701 and summary.sim_hours == pytest.approx(0.75)
    header = list(rows[0])
    assert header[0] == "timestamp"
    assert [e.name for e in recorded_tags(2)] == header[1 : 1 + len(recorded_tags(2))]
    for col in (
        "pump1_fault_code",
        "pump1_fault_label",
        "pump1_rul_h",
        "pump2_fault_mask",
        "oracle_speed_rpm",
    ):
        assert col in header
    assert rows[0]["timestamp"] == "2024-01-01T06:00:00Z"
    assert (_ts(rows[1]["timestamp"]) - _ts(rows[0]["timestamp"])).total_seconds() == 1.0
    for r in rows:
        t = (_ts(r["timestamp"]) - _ts(rows[0]["timestamp"])).total_seconds()
        if t <= 600:
            assert r["pump1_fault_code"] == "0" and float(r["pump1_rul_h"]) == 10000.0
        else:
            assert r["pump1_fault_label"] == "bearing_wear"
            assert float(r["pump1_rul_h"]) == pytest.approx((600 + 7200 - t) / 3600, abs=1e-6)
        dropout = 1200 < t < 1500  # active from the step after onset until onset + duration
        assert (r["Pump2.MotorCurrent"] == "") == dropout
        assert r["pump2_fault_label"] == (
            "sensor_dropout" if dropout else "sensor_spike" if t > 1800 else "normal"
        )
        assert 1500 <= float(r["oracle_speed_rpm"]) <= 2950
    # analog values are quantised to the register resolution
    assert all(len(r["Pump1.MotorCurrent"].split(".")[1]) == 1 for r in rows[:10])


def test_long_recording_is_exception_based_with_quality(tmp_path: Path) -> None:
    out = tmp_path / "long.csv"
    record(out, hours=0.75, seed=3, scenario=EVENTS, fmt="long")
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["timestamp", "tag", "value", "quality"]
    by_tag: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_tag[r["tag"]].append(r)
    assert len(rows) < 2701 * len(by_tag) / 5  # far fewer rows than samples x tags
    # irregular: the gaps between archived values of a tag vary
    for tag in ("Station.TankLevel", "Pump1.BearingTemp"):
        times = [_ts(r["timestamp"]) for r in by_tag[tag]]
        gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
        assert len(gaps) > 3 and min(gaps) >= 1.0
    # constant tags are archived once, then every 15 min at most
    assert [r["timestamp"][11:16] for r in by_tag["Station.LevelSetpoint"]] == [
        "06:00",
        "06:15",
        "06:30",
        "06:45",
    ]
    current = by_tag["Pump2.MotorCurrent"]
    bad = [r for r in current if r["quality"] == "BAD"]
    assert bad and all(r["value"] == "" for r in bad)
    assert _ts(bad[0]["timestamp"]) == _ts(rows[0]["timestamp"]).replace(minute=20, second=1)
    assert current[current.index(bad[-1]) + 1]["quality"] == "GOOD"  # recovered after 5 min
    assert any(r["quality"] == "UNCERTAIN" for r in by_tag["Pump2.Flow"])  # spikes beyond the EU range
    assert {"Simulation.Pump1.FaultCode", "Simulation.Pump1.TrueRUL", "Simulation.OracleSpeed"} <= set(by_tag)
    codes = [(r["timestamp"], r["value"]) for r in by_tag["Simulation.Pump1.FaultCode"]]
    assert codes[0][1] == "0" and codes[1] == ("2024-01-01T06:10:01Z", "1")


def test_recordings_are_deterministic_under_a_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    record(a, hours=0.2, seed=11, scenario=EVENTS)
    record(b, hours=0.2, seed=11, scenario=EVENTS)
    record(c, hours=0.2, seed=12, scenario=EVENTS)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_cli_records_with_a_scenario_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "demo.csv"
    rc = main(
        [
            "--record",
            str(out),
            "--hours",
            "0.05",
            "--scenario",
            str(REPO / "configs/scenarios/demo.yaml"),
            "--fault",
            "2:imbalance@30s",
            "--pumps",
            "3",
            "--format",
            "wide",
        ]
    )
    assert rc == 0
    assert "wrote 181 rows (wide)" in capsys.readouterr().out
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert "Pump3.Speed" in rows[0] and rows[-1]["pump1_fault_label"] == "bearing_wear"
    assert rows[-1]["pump2_fault_label"] == "imbalance" and rows[-1]["pump3_fault_label"] == "normal"


def test_cli_reports_scenario_errors_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("events:\n  - at: 10s\n    pump: 1\n    fault: imbalance\n    colour: red\n")
    assert main(["--record", str(tmp_path / "x.csv"), "--scenario", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5: colour: unknown field" in err
    assert main(["--record", str(tmp_path / "x.csv"), "--fault", "7:imbalance"]) == 2
    assert "pump 7" in capsys.readouterr().err


def test_cli_serves_for_a_duration_on_free_ports(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--modbus-port", "0", "--no-opcua", "--speed", "20", "--duration", "0.5", "--seed", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "unit id 1" in out and "HR 120-121" in out and "stopped at t=" in out
    t = float(out.split("stopped at t=")[1].split(" ")[0])
    assert 3.0 < t < 15.0  # about 0.5 s x 20


def test_parser_defaults_and_module_entry_point() -> None:
    args = build_parser().parse_args([])
    assert (args.modbus_port, args.opcua_port, args.speed, args.format, args.host) == (
        5020,
        4840,
        1.0,
        "wide",
        "127.0.0.1",
    )
    out = subprocess.run(
        [sys.executable, "-m", "simulator", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--heartbeat-timeout" in out.stdout and "--record" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "simulator", "--print-register-map"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "`Pump1.ExternalSpeedSetpoint`" in out.stdout
