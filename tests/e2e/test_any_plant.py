"""Models for a plant that is not the pump station, the whole way: record → train → evaluate →
sign → install → ``edge-agent run``, with a slow and a fast model in one agent.

The plants (``tests/plants/``): a jacketed reactor of our own (:mod:`tests.plants.cstr`, 17
tags sampled every 180 s) and NASA's progpy centrifugal pump (:mod:`tests.plants.progpy_source`,
10 tags every 10 s), each served over Modbus by :class:`tests.replay_server.ReplayServer` on
127.0.0.1 (port 0). Nothing in agent/ or export/ knows either.

**The scaled clock.** A 180 s model cannot be tested in real time, so both plants run on a
faster clock: the reactor 90x (a sample every 2 s), the pump 50x (every 0.2 s). Everything the
user's tools see is on that clock (served rows, recordings, historian exports, the bundles'
sample periods): the slow model's period is ten times the fast one's, as in the plant.

What happens, as an ML engineer would do it:

1. **record**: the agent reads both plants over Modbus (normal operation) and ``python -m agent
   record`` writes a recording directory;
2. **train** (``edge-export train``, the documented config of export/README.md): the slow
   reactor model from that recording plus the site's historian export (local time with an
   offset, irregular rows, gaps, duplicates, a text column) labelled by an events file, with
   thresholds calibrated on a separate normal run; the fast pump model from the recording and a
   longer pump recording. Tiny epochs: seconds;
3. **evaluate** (``edge-export evaluate``): the reactor bundle replayed through the agent's own
   alarm path on held-out days with faults, with the same agent config that later runs it;
4. **sign** (``edge-export keygen`` + ``sign``) and **install**: the bundle paths in the agent
   config, the new public key its only trusted key;
5. **run** (``python -m agent run``, a subprocess): both models scoring at their own periods in
   one agent; a fault injected in the served reactor (its thermometer drifts: the temperature
   loop holds the wrong reading, so the reactor cools and its conversion drops) raises the
   reactor's model alarm after the onset, never before;
6. **the same evaluation**: what the agent was served, replayed by ``edge-export evaluate`` with
   the same config and bundles, raises the same alarm within one sample period of the slow
   model.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import load_config
from agent.ops.audit import query_audit
from agent.ops.status import read_status
from tests.agent_process import agent_process
from tests.plants import cstr, progpy_source
from tests.plants.formats import (
    Episode,
    PlantRun,
    merge_runs,
    write_agent_recording,
    write_events,
    write_historian_wide,
)
from tests.plants.site import anomaly_model, device, export_config, roles_of, write_config
from tests.replay_server import ReplayServer

pytestmark = pytest.mark.timeout(420)

ROOT = Path(__file__).resolve().parents[2]
SCALE_REACTOR = 90.0  # 180 s → 2 s
SCALE_PUMP = 50.0  # 10 s → 0.2 s
SLOW_S = cstr.PERIOD_S / SCALE_REACTOR
FAST_S = 10.0 / SCALE_PUMP
HISTORIAN_TIME = {"column": "Time (UTC+01:00)", "format": "%d.%m.%Y %H:%M:%S %z"}


def _env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def _export(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``edge-export ARGS`` of this checkout; its output is printed for the test log."""
    proc = subprocess.run(
        [sys.executable, "-m", "export.cli", *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=timeout,
    )  # fmt: skip
    print(f"$ edge-export {' '.join(map(str, args))}\n{proc.stdout}{proc.stderr}")
    return proc


def _site_files(d: Path) -> dict[str, Path]:
    """What the site hands the ML engineer (all on the scaled clock): a historian export of
    five reactor days with faults and its maintenance log (events), a normal reactor run for
    calibration, a day and a half held out (the gateway's recording of both plants, the
    reactor's faults in its events file), four hours of the pump with its wear episodes and an
    hour of it running normally."""
    history = cstr.simulate(5.0, seed=1).scaled(SCALE_REACTOR)
    normal = cstr.simulate(2.0, seed=2, episodes="normal", start=datetime(2026, 11, 10, tzinfo=UTC))
    held_out = cstr.simulate(1.5, seed=3, start=datetime(2026, 11, 15, tzinfo=UTC)).scaled(SCALE_REACTOR)
    # what the gateway recorded over those days: both plants, every tag, on the fast grid
    hours = len(held_out) * held_out.period_s * SCALE_PUMP / 3600.0
    pump_then = progpy_source.simulate(hours, seed=3, wear="normal", start=held_out.start)
    held_out_site = merge_runs(pump_then.scaled(SCALE_PUMP), held_out)
    pump = progpy_source.simulate(4.0, seed=1).scaled(SCALE_PUMP)
    pump_normal = progpy_source.simulate(1.0, seed=2, wear="normal", start=datetime(2026, 11, 10, tzinfo=UTC))
    files = {
        "historian": d / "R1 historian export.csv",
        "events": d / "R1 maintenance log.csv",
        "normal": d / "r1-normal",
        "test": d / "r1-test",
        "test_events": d / "r1-test-events.csv",
        "pump": d / "p101-history",
        "pump_events": d / "p101-wear.csv",
        "pump_normal": d / "p101-normal",
    }
    write_historian_wide(history, files["historian"], seed=1, jitter_s=0.2 * SLOW_S)
    write_events(history, files["events"])
    write_agent_recording(normal.scaled(SCALE_REACTOR), files["normal"])
    write_agent_recording(held_out_site, files["test"], rows_per_file=5000)
    write_events(held_out, files["test_events"])
    write_agent_recording(pump, files["pump"], rows_per_file=2000)
    write_events(pump, files["pump_events"])  # the wear progpy ran until its failure thresholds
    write_agent_recording(pump_normal.scaled(SCALE_PUMP), files["pump_normal"], rows_per_file=2000)
    return files


def _agent_config(
    path: Path,
    *,
    state: Path,
    reactor_port: int,
    pump_port: int,
    reactor: PlantRun,
    pump: PlantRun,
    bundles: dict[str, Path] | None = None,
    trust: Path | None = None,
    record: Path | None = None,
) -> Path:
    """The agent's config for the two served plants (and, once trained, their models)."""
    data: dict[str, Any] = {
        "agent": {"name": "any-plant", "log_level": "warning", "state_dir": str(state), "cycle_ms": 100},
        "devices": [
            device("reactor", reactor_port, reactor, poll_ms=100),
            device("pump", pump_port, pump, poll_ms=100),
        ],
    }
    if record is not None:  # the running agent records what it reads (the PLC sees no extra client)
        data["record"] = {"dir": str(record), "period_s": FAST_S, "flush_s": 0.5}
    if bundles:
        data["models"] = [
            {"name": "r1-anomaly", "bundle": str(bundles["r1-anomaly"]), "assets": {"r1": roles_of(reactor, "R1.")}},
            {"name": "p101-anomaly", "bundle": str(bundles["p101-anomaly"]), "assets": {"p101": roles_of(pump, "P101.")}},
        ]  # fmt: skip
        data["models_trust"] = {"public_keys": [str(trust)], "allow_unsigned": False}
        data["assets"] = [
            {"name": "r1", "anomaly_source": "r1-anomaly.score"},
            {"name": "p101", "anomaly_source": "p101-anomaly.score"},
        ]
        data["alarms"] = {
            "defs": [
                {
                    "name": "reactor_anomaly",
                    "code": 1,
                    "source": "r1-anomaly.anomaly",
                    "high": {"value": 0.5, "severity": 2},
                    # two frames of the slow model; not exactly 2 periods: at an exact multiple, a
                    # live agent's cycle jitter decides whether the second frame already counts
                    "on_delay_s": 1.5 * SLOW_S,
                    "latch": True,
                    "response": "Compare TI201 with the spare thermometer; check the product analyser and the jacket.",
                },
                {
                    "name": "pump_anomaly",
                    "code": 2,
                    "kind": "alert",
                    "source": "p101-anomaly.anomaly",
                    "high": {"value": 0.5, "severity": 1},
                    "on_delay_s": 4 * FAST_S,
                },
            ]
        }
    return write_config(path, data)


def _export_configs(d: Path, files: dict[str, Path], recording: Path, out: Path) -> dict[str, Path]:
    """The training configs, in the documented format (export/README.md, "Training from your
    own files"): one per plant section, as the recording sets differ."""
    reactor = anomaly_model(
        "r1-anomaly",
        out / "r1-anomaly",
        {
            "assets": ["r1"],
            "columns": "R1.*",
            "operating": ["FIC101_SP"],
            "events": str(files["events"]),
            "window": {"sample_period_s": SLOW_S, "length": 5, "stride": 1},
            "test_fraction": 0.2,
            "min_distinct": 2,  # the targets move in steps: two levels are not a constant
        },
        "reactor R1: anomaly of its 17 measurements (autoencoder)",
    )
    pump = anomaly_model(
        "p101-anomaly",
        out / "p101-anomaly",
        {
            "assets": ["p101"],
            "columns": "P101.*",
            "operating": ["SC"],
            "events": str(files["pump_events"]),
            "window": {"sample_period_s": FAST_S, "length": 10, "stride": 1},
            "test_fraction": 0.2,
            "min_distinct": 2,
        },
        "pump P101: anomaly of its 10 measurements (autoencoder)",
    )
    return {
        "r1-anomaly": export_config(
            d / "export-reactor.yaml",
            [
                {
                    "name": "history",
                    "files": [str(files["historian"])],
                    "split": "train",
                    "timestamp": HISTORIAN_TIME,
                },
                {"name": "recorded", "files": [str(recording)], "split": "train"},
                {"name": "normal", "files": [str(files["normal"])], "split": "calibration"},
            ],
            [reactor],
        ),
        "p101-anomaly": export_config(
            d / "export-pump.yaml",
            [
                {"name": "pump-history", "files": [str(files["pump"])], "split": "train"},
                {"name": "recorded", "files": [str(recording)], "split": "train"},
                {"name": "normal", "files": [str(files["pump_normal"])], "split": "calibration"},
            ],
            [pump],
        ),
    }


def _status(state: Path) -> dict[str, Any] | None:
    try:
        return read_status([state / "status.sock"], timeout_s=2.0)
    except Exception:  # not up yet, or going down: the caller retries
        return None


async def _wait_status(state: Path, proc: asyncio.subprocess.Process, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.returncode is None, "the agent exited"
        doc = await asyncio.to_thread(_status, state)
        if doc is not None:
            return doc
        await asyncio.sleep(0.2)
    raise AssertionError(f"no status from the agent within {timeout_s} s")


def _served(run: PlantRun) -> np.ndarray:
    return run.matrix().astype(np.float64)


async def _record(config: Path, out: Path, seconds: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "record", "-c", str(config), "--out", str(out),
        "--period", str(FAST_S), "--duration", str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(), cwd=ROOT,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
    return proc.returncode or 0, stdout.decode(), stderr.decode()


def _as_polled(served: list[tuple[ReplayServer, PlantRun]], end: datetime) -> PlantRun:
    """What the agent could read, on the fast model's grid from a point of the slow model's UTC
    grid (the agent's models tick at ``k × period`` UTC): every served tag holds the row that
    was live at each grid time."""
    start = max(srv.row_times[0].timestamp() for srv, _ in served)
    t0 = np.ceil(start / SLOW_S) * SLOW_S
    grid = t0 + FAST_S * np.arange(int((end.timestamp() - t0) / FAST_S))
    values: dict[str, np.ndarray] = {}
    for srv, run in served:
        live = np.array([t.timestamp() for t in srv.row_times])
        idx = np.searchsorted(live, grid, side="right") - 1
        values.update({k: v[idx] for k, v in run.values.items()})
    tags = tuple(t for _, run in served for t in run.tags)
    return PlantRun(
        "served",
        datetime.fromtimestamp(t0, UTC),
        FAST_S,
        tags,
        values,
        np.zeros(len(grid), np.int64),
        {},
        (),
        "site",
    )


def _drift_run() -> tuple[PlantRun, int]:
    """The reactor as served in the live run: normal, then its thermometer drifts fast (a
    sensor fault its own loop hides); returns the run and the onset row."""
    onset_h = 6.0
    drift = Episode(
        "thermometer_drift", 1, onset_h * 3600, (onset_h + 1.5) * 3600, "r1", "R1.TI201", severity=5.0
    )
    full = cstr.simulate(1.0, seed=8, episodes=[drift], start=datetime(2026, 12, 1, tzinfo=UTC))
    onset = int(onset_h * 3600 / cstr.PERIOD_S)
    lead = 12  # rows before the onset: the slow model's window (5 rows) fills first
    return full.slice(onset - lead, onset + 40).scaled(SCALE_REACTOR), lead


@pytest.fixture
def short() -> Iterator[Path]:
    """A state directory whose unix socket path stays short (tmp_path's can pass 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="anyplant-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_record_train_evaluate_sign_run_a_plant_that_is_not_the_pump_station(
    tmp_path: Path, short: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    files = _site_files(tmp_path / "site")

    # 1. record both plants through the agent (normal operation)
    reactor_rec = cstr.simulate(1.0, seed=7, episodes="normal", start=datetime(2026, 11, 20, tzinfo=UTC))
    pump_rec = progpy_source.simulate(0.5, seed=7, wear="normal")
    recording = tmp_path / "recorded"
    async with (
        ReplayServer([t.name for t in reactor_rec.tags], _served(reactor_rec), period_s=cstr.PERIOD_S, scale=SCALE_REACTOR) as rs,
        ReplayServer([t.name for t in pump_rec.tags], _served(pump_rec), period_s=10.0, scale=SCALE_PUMP) as ps,
    ):  # fmt: skip
        rec_cfg = _agent_config(
            tmp_path / "record.yaml", state=short / "rec-state", reactor_port=rs.port, pump_port=ps.port,
            reactor=reactor_rec, pump=pump_rec,
        )  # fmt: skip
        rs.play()
        ps.play()
        rc, out, err = await _record(rec_cfg, recording, seconds=12.0)
    print(f"$ edge-agent record -c {rec_cfg} --out {recording} ...\n{out}{err}")
    assert rc == 0, err
    assert "Traceback" not in err
    meta = json.loads((recording / "recording.json").read_text())
    assert meta["period_s"] == pytest.approx(FAST_S)
    names = [t["name"] for t in meta["tags"]]
    assert set(names) == {t.name for t in (*reactor_rec.tags, *pump_rec.tags)}
    rows = sum(f["rows"] for f in meta["files"] if f["kind"] == "wide")
    assert rows >= 40, meta  # ~12 s at 0.2 s
    good = {t["name"]: t["counts"]["GOOD"] for t in meta["tags"]}
    assert min(good.values()) >= 0.8 * rows, good

    # 2. train both models from the recording, the historian export and the pump history
    bundles = tmp_path / "bundles"
    for name, exp_cfg in _export_configs(tmp_path, files, recording, bundles).items():
        t0 = time.monotonic()
        proc = _export("train", "--config", exp_cfg, "--no-sign")
        assert proc.returncode == 0, proc.stderr
        print(f"training {name} took {time.monotonic() - t0:.1f} s")
    manifests = {
        n: json.loads((bundles / n / "manifest.json").read_text()) for n in ("r1-anomaly", "p101-anomaly")
    }
    assert manifests["r1-anomaly"]["window"]["sample_period_s"] == pytest.approx(SLOW_S)
    assert manifests["p101-anomaly"]["window"]["sample_period_s"] == pytest.approx(FAST_S)
    r1_inputs = {i["role"]: i for i in manifests["r1-anomaly"]["inputs"]}
    assert len(r1_inputs) == 17 and r1_inputs["TI201"]["unit"] == "degC"  # from the recording's manifest
    assert r1_inputs["FIC101_SP"].get("operating") is True
    assert r1_inputs["TI201"].get("training_range") is not None

    # 3. evaluate the reactor model through the agent's alarm path, with the config that runs it
    state = short / "state"
    key = tmp_path / "keys" / "site"
    key.parent.mkdir()
    run_cfg_path = tmp_path / "agent.yaml"
    seen = tmp_path / "seen"  # what the running agent records
    drift_run, onset_row = _drift_run()
    pump_live = progpy_source.simulate(1.0, seed=9, wear="normal")

    def run_config(reactor_port: int, pump_port: int) -> Path:
        return _agent_config(
            run_cfg_path, state=state, reactor_port=reactor_port, pump_port=pump_port,
            reactor=drift_run, pump=pump_live,
            bundles={n: bundles / n for n in manifests}, trust=key.with_suffix(".pub"), record=seen,
        )  # fmt: skip

    run_config(1502, 1503)  # the ports are the live run's; evaluate reads models, assets and alarms
    proc = _export(
        "evaluate", bundles / "r1-anomaly", "--data", files["test"], "--events", files["test_events"],
        "--config", run_cfg_path, "--out", tmp_path / "evaluation",
        # the classical detectors get one alert code each, per input, and codes stop at 16:
        # with the reactor's 17 inputs evaluate refuses its own config (reported to evaluate)
        "--no-classical",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    text = json.dumps(report)
    for f in cstr.FAULTS:
        assert f.name in text  # the plant's own class names, from the events file
    assert "bearing_wear" not in text and "cavitation" not in text

    # 4. sign with the site's own key; the agent trusts only that key
    assert _export("keygen", "--out", key).returncode == 0
    proc = _export("sign", bundles / "r1-anomaly", bundles / "p101-anomaly", "--key", key.with_suffix(".pem"))
    assert proc.returncode == 0, proc.stderr
    proc = _export(
        "verify", bundles / "r1-anomaly", bundles / "p101-anomaly", "--trust", key.with_suffix(".pub")
    )
    assert proc.returncode == 0 and proc.stdout.count("signed by trusted key") == 2, proc.stdout

    # 5. run: both models in one agent, a fault injected in the served reactor
    async with (
        ReplayServer([t.name for t in drift_run.tags], _served(drift_run), period_s=SLOW_S) as rs,
        ReplayServer([t.name for t in pump_live.tags], _served(pump_live), period_s=10.0, scale=SCALE_PUMP) as ps,
    ):  # fmt: skip
        cfg = run_config(rs.port, ps.port)
        check = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "agent", "check", "-c", str(cfg)],
            capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60,
        )  # fmt: skip
        print(f"$ edge-agent check -c {cfg}\n{check.stdout}{check.stderr}")
        assert check.returncode == 0, check.stdout + check.stderr
        rs.play()
        ps.play()
        log = (tmp_path / "agent.log").open("w")
        async with agent_process(cfg, stderr=log, env={"OMP_NUM_THREADS": "1"}) as agent:
            await _wait_status(state, agent, 30.0)
            onset_wall: datetime | None = None
            first_alarm: datetime | None = None
            doc: dict[str, Any] = {}
            deadline = time.monotonic() + 2 * len(drift_run) * SLOW_S
            while time.monotonic() < deadline and first_alarm is None:
                await asyncio.sleep(0.25)
                d = await asyncio.to_thread(_status, state)
                if d is None:
                    assert agent.returncode is None, (tmp_path / "agent.log").read_text()[-3000:]
                    continue
                doc = d
                if len(rs.row_times) > onset_row:
                    onset_wall = rs.row_times[onset_row]
                active = [a for a in doc["alarms"] if a["asset"] == "r1" and a["name"] == "reactor_anomaly"]
                if active and active[0]["state"].startswith("active"):
                    first_alarm = datetime.now(UTC)
            models = {m["name"]: m for m in doc.get("models", [])}
            await asyncio.sleep(3 * SLOW_S)  # a little more served (and recorded) past the alarm
            stopped = datetime.now(UTC)
    log.close()
    print(json.dumps(doc, indent=1)[:3000])
    assert first_alarm is not None, f"no reactor alarm; status {doc}"
    # the alarm's time as the agent audited it
    audit = await asyncio.to_thread(query_audit, load_config(cfg).audit_config(), None, ["alarm"])
    raised = [
        r.utc
        for r in audit
        if r.target == "r1" and r.tag == "reactor_anomaly" and r.action == "active_unacknowledged"
    ]
    assert raised, [r.as_dict() for r in audit]
    live_alarm = raised[0]
    assert onset_wall is not None and live_alarm > onset_wall, (
        f"alarm at {live_alarm} before the fault's onset at {onset_wall} (row {onset_row})"
    )
    delay = (live_alarm - onset_wall).total_seconds()
    print(f"live: reactor alarm {delay:.1f} s after the onset ({delay / SLOW_S:.1f} samples)")
    assert delay < 20 * SLOW_S
    # both models scored, each at its own period: the fast one about ten times as often
    slow, fast = models["r1-anomaly"], models["p101-anomaly"]
    assert slow["signature"] == fast["signature"] == "signed"
    assert slow["calls"] >= 3 and fast["calls"] >= 5 * slow["calls"], (slow["calls"], fast["calls"])

    # 6. edge-export evaluate with the same config and bundles, on what the agent was served
    #    and on what the running agent recorded: the same alarm within one sample period of the
    #    slow model (plus the agent's poll and cycle: 0.2 s)
    served_r = drift_run.slice(0, len(rs.row_times)).scaled(1.0, start=rs.row_times[0])
    onset = Episode("thermometer_drift", 1, onset_row * SLOW_S, len(served_r) * SLOW_S, "r1", "R1.TI201")
    write_events(replace(served_r, episodes=(onset,)), tmp_path / "served-events.csv")
    seen_meta = json.loads((seen / "recording.json").read_text())
    assert len(seen_meta["tags"]) == 27 and seen_meta["period_s"] == pytest.approx(FAST_S)
    served = tmp_path / "served"
    write_agent_recording(
        _as_polled([(rs, drift_run), (ps, pump_live)], stopped), served, rows_per_file=10_000
    )
    for data in (served, seen):
        proc = _export(
            "evaluate", bundles / "r1-anomaly", "--data", data, "--events", tmp_path / "served-events.csv",
            "--config", cfg, "--out", tmp_path / f"replayed-{data.name}", "--no-classical",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        replayed = json.loads((tmp_path / f"replayed-{data.name}" / "evaluation.json").read_text())[
            "methods"
        ][0]
        first = [a for a in replayed["alarms"] if a["asset"] == "r1" and a["name"] == "reactor_anomaly"]
        assert first, replayed
        replay_alarm = datetime.fromisoformat(first[0]["raised"].replace("Z", "+00:00"))
        gap = abs((replay_alarm - live_alarm).total_seconds())
        print(
            f"replay of {data.name}: reactor alarm at {replay_alarm}, live at {live_alarm}: {gap:.2f} s apart"
        )
        assert gap <= SLOW_S + 0.2, (
            f"{data.name}: evaluate's alarm {replay_alarm}, the live agent's {live_alarm}: {gap:.2f} s"
        )
