"""`edge-agent record` as a real process against the embedded plant's real Modbus server.

The plant (``simulator.serve``) is served in this process; the command polls it with the
agent's own drivers and RunningSource. The files are read back with export/data.py's readers.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent import cli
from agent.record import MANIFEST_FILE
from export.data import load_columns, read_long_csv
from simulator import Plant, serve
from tests.e2e.plant_fixtures import demo_config_data

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TAGS = ["Pump1.Flow", "Pump1.Vibration", "Pump1.BearingTemp", "Station.TankLevel"]


def plant_config(tmp_path: Path, port: int, **record: Any) -> Path:
    """The demo config on ``port``, polled every 200 ms, bundles and keys by absolute path; a
    ``record`` section with ``record`` (the manifest rewritten every 0.5 s, for the test to
    watch)."""
    record.setdefault("manifest_s", 0.5)
    data = demo_config_data()
    data["agent"]["state_dir"] = str(tmp_path / "state")
    (dev,) = data["devices"]
    dev.update(port=port, poll_interval_ms=200, timeout_ms=200)
    dev["breaker"] = {"failures": 1, "backoff_ms": 100, "backoff_max_ms": 300}
    for m in data["models"]:
        m["bundle"] = str(ROOT / "models" / Path(m["bundle"]).name)
    data["models_trust"]["public_keys"] = [str(ROOT / "export" / "keys" / "dev-ed25519.pub")]
    data["record"] = record
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def start(*args: str, stdout: int = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "record", *args,
        stdout=stdout, stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip


async def record(*args: str) -> tuple[int, str, str]:
    proc = await start(*args)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_for(d: Path, what: str, predicate: Any, timeout_s: float = 30) -> dict[str, Any]:
    """The manifest in ``d`` once ``predicate(manifest)`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            doc = json.loads((d / MANIFEST_FILE).read_text())
            if predicate(doc):
                return doc
        except (FileNotFoundError, ValueError):
            pass
        assert time.monotonic() < deadline, f"no {what} in {d} in time"
        await asyncio.sleep(0.05)


def wide_rows(doc: dict[str, Any]) -> int:
    return sum(f["rows"] for f in doc["files"] if f["kind"] == "wide")


async def wait_for_rows(d: Path, rows: int) -> dict[str, Any]:
    return await wait_for(d, f"{rows} rows", lambda doc: wide_rows(doc) >= rows)


def long_rows(d: Path, doc: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for f in doc["files"]:
        if f["kind"] == "long":
            with gzip.open(d / f["name"], "rt", newline="") as fh:
                rows += list(csv.reader(fh))[1:]
    return rows


async def test_record_the_plant_with_a_gap_while_its_server_is_stopped(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    async with serve(Plant(seed=1), modbus_port=0, opcua_port=None) as station:
        assert station.modbus is not None and station.modbus_port is not None
        cfg = plant_config(tmp_path, station.modbus_port)
        args = ["-c", str(cfg), "--out", str(out), "--period", "0.2"]
        proc = await start(*args, *(a for t in TAGS for a in ("--tag", t)))
        await wait_for_rows(out, 5)
        await station.modbus.stop()  # the PLC goes away for 1.5 s ...
        await asyncio.sleep(1.5)
        await station.modbus.start()  # ... and comes back on the same port
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGTERM)  # ends cleanly, with a complete manifest
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert "Traceback" not in stderr.decode()
    summary = stdout.decode().splitlines()
    assert summary[0].startswith("wide-") and ", GOOD " in summary[0]
    assert summary[-1].startswith("recorded ") and f"of 4 tags every 0.2 s into {out}: 2 files" in summary[-1]

    doc = json.loads((out / MANIFEST_FILE).read_text())
    assert doc["complete"] is True and doc["stopped"] is None and doc["period_s"] == 0.2
    assert [t["name"] for t in doc["tags"]] == TAGS
    assert [t["unit"] for t in doc["tags"]] == ["m3/h", "mm/s", "°C", "m"]
    (gap,) = [g for g in doc["gaps"] if g["reason"] == "no GOOD sample"]
    length = np.datetime64(gap["end_utc"][:-1]) - np.datetime64(gap["start_utc"][:-1])
    assert 0.8 <= length / np.timedelta64(1, "s") <= 5.0, gap
    # what the long file says, row by row, is what the manifest counts
    rows = long_rows(out, doc)
    for t in doc["tags"]:
        mine = [r for r in rows if r[1] == t["name"]]
        got = {q: sum(1 for r in mine if r[3] == q) for q in ("GOOD", "UNCERTAIN", "BAD")}
        assert got == t["counts"], t["name"]
    bad = [r for r in rows if r[3] == "BAD"]
    assert bad and all(r[4] for r in bad)  # a BAD sample says why
    assert all(r[0] >= gap["start_utc"] and r[0] < gap["end_utc"] for r in bad if r[1] == "Pump1.Flow")
    wide_name = doc["files"][0]["name"]
    with (out / wide_name).open() as fh:
        wide = list(csv.reader(fh))
    assert wide[0] == ["timestamp", *TAGS]
    in_gap = [r for r in wide[1:] if gap["start_utc"] <= r[0] < gap["end_utc"]]
    assert in_gap and all(c == "" for r in in_gap for c in r[1:])

    # the readers training uses load both forms
    series = read_long_csv(out / doc["files"][1]["name"], TAGS)
    t, v = series["Pump1.Flow"]
    assert len(t) == len(wide) - 1 and np.isnan(v).sum() == len([r for r in bad if r[1] == "Pump1.Flow"])
    assert np.all(np.diff(t) == pytest.approx(0.2, abs=1e-3)) or np.median(np.diff(t)) == pytest.approx(0.2)
    segments = load_columns(out / wide_name, TAGS, 0.2)
    # the grid starts at the first row where every column has a value (the first row may be
    # taken before every tag's first poll returned)
    first = next(i for i, r in enumerate(wide[1:]) if all(c != "" for c in r[1:]))
    assert first <= 1 and sum(len(s) for s in segments) == len(wide) - 1 - first
    assert np.isfinite(segments[0][:3]).all()


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cli.main`` in this process leaves the process's logging alone (not on capsys's stream)."""
    monkeypatch.setattr(cli, "setup_logging", lambda *a, **k: None)


async def test_rotation_and_quota_then_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    async with serve(Plant(seed=2), modbus_port=0, opcua_port=None) as station:
        assert station.modbus_port is not None
        cfg = plant_config(tmp_path, station.modbus_port)
        # the pca model's tags (from its binding), a row every 0.1 s, pairs of ~2 kB, 6 kB in all;
        # Ctrl-C once the quota has removed two pairs
        proc = await start(
            "-c", str(cfg), "--out", str(out), "--model", "pca-pump", "--period", "0.1",
            "--rotate-mb", str(2000 / 2**20), "--quota-mb", str(6000 / 2**20),
        )  # fmt: skip
        await wait_for(out, "files removed", lambda doc: doc["removed"]["files"] >= 4)
        proc.send_signal(signal.SIGINT)
        stdout_b, stderr_b = await proc.communicate()
        assert proc.returncode == 0, stderr_b.decode()
        doc = json.loads((out / MANIFEST_FILE).read_text())
        assert doc["complete"] is True
        lines = stdout_b.decode().splitlines()
        assert len(lines) >= 4 and all(line.startswith("wide-") for line in lines[:-1])
        on_disk = {p.name: p.stat().st_size for p in out.iterdir() if p.name != MANIFEST_FILE}
        assert on_disk == {f["name"]: f["bytes"] for f in doc["files"]}
        assert sum(on_disk.values()) <= 6000
        assert len(doc["tags"]) == 27 and doc["tags"][0]["name"] == "Pump1.Speed"


async def test_a_kill_leaves_loadable_files_and_the_recording_is_continued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], quiet_cli: None
) -> None:
    async with serve(Plant(seed=5), modbus_port=0, opcua_port=None) as station:
        assert station.modbus_port is not None
        cfg = plant_config(tmp_path, station.modbus_port)
        # killed: the files hold complete rows and whole gzip members; the manifest parses
        killed = tmp_path / "killed"
        proc = await start("-c", str(cfg), "--out", str(killed), "--model", "pca-pump", "--period", "0.1")
        await wait_for_rows(killed, 10)
        proc.kill()
        await proc.communicate()
        doc = json.loads((killed / MANIFEST_FILE).read_text())
        assert doc["complete"] is False
        for f in doc["files"]:
            if f["kind"] == "wide":
                with (killed / f["name"]).open() as fh:
                    assert {len(r) for r in csv.reader(fh)} == {28}
            else:
                with gzip.open(killed / f["name"], "rt") as fh:
                    assert fh.read().endswith("\n")
        # the same command continues the recording, after a gap "not recorded"
        restarted = datetime.now(UTC)
        proc = await start("-c", str(cfg), "--out", str(killed), "--model", "pca-pump", "--period", "0.1")
        await wait_for(
            killed, "a second pair", lambda doc: len(doc["files"]) == 4 and doc["files"][3]["rows"]
        )
        proc.send_signal(signal.SIGTERM)
        _, stderr_b = await proc.communicate()
        assert proc.returncode == 0, stderr_b.decode()
        doc = json.loads((killed / MANIFEST_FILE).read_text())
        assert doc["complete"] is True and len(doc["files"]) == 4
        # one gap spans the restart; a tick missed on a loaded machine is "not recorded" too
        assert {g["reason"] for g in doc["gaps"]} == {"not recorded"}
        # (a gap starts one period after the last row: the killed run's last row was before the
        # restart)
        period = timedelta(seconds=0.1)
        spans = [g for g in doc["gaps"] if _utc(g["start_utc"]) - period <= restarted <= _utc(g["end_utc"])]
        assert len(spans) == 1, (restarted, doc["gaps"])
        # the rows the killed run wrote after its last manifest are counted again
        rows = long_rows(killed, doc)
        assert sum(f["rows"] for f in doc["files"] if f["kind"] == "wide") * 27 == len(rows)
        for t in doc["tags"]:
            assert sum(t["counts"].values()) == sum(1 for r in rows if r[1] == t["name"])
    # another tag list is refused: one line, exit 2
    assert cli.main(["record", "-c", str(cfg), "--out", str(killed), "--tag", "Pump1.Flow"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a recording of other tags or another period" in err


async def test_into_head_and_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], quiet_cli: None
) -> None:
    async with serve(Plant(seed=3), modbus_port=0, opcua_port=None) as station:
        assert station.modbus_port is not None
        cfg = plant_config(tmp_path, station.modbus_port)
        out = tmp_path / "rec"
        script = (
            f"set -o pipefail; {sys.executable} -m agent record -c {cfg} --out {out} --tag Pump1.Flow "
            f"--period 0.2 --rotate-mb {300 / 2**20} --quota-mb 1 | head -1"
        )
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert stderr.decode() == "" and proc.returncode == 141
    assert stdout.decode().count("\n") == 1 and stdout.decode().startswith("wide-")
    doc = json.loads((out / MANIFEST_FILE).read_text())
    assert doc["complete"] is True  # head went away: the recording ended cleanly

    for args, message in (
        (["--tag", "Nope"], "error: unknown tag(s): Nope\n"),
        (["--model", "nope"], "error: unknown model binding 'nope' (the config has: pca-pump, fault-mlp, "),
        (["--tag", "Pump1.Flow", "--rotate-mb", "8", "--quota-mb", "10"], "error: rotate_mb 8 must be"),
        (["--tag", "Pump1.Flow", "--out", str(cfg)], "error: "),
    ):
        assert cli.main(["record", "-c", str(cfg), "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
