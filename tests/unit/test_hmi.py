"""The HMI writer against a fake sink at its seam (the drivers' ``write_many``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.config import AssetHmi, Config, ModbusTag, parse_config
from agent.errors import CodecError, DeviceUnreachable, DriverError, WriteRefused
from agent.hmi import (
    DETAIL_FIELDS,
    FIELD_ORDER,
    WORD_FIELDS,
    HmiPurpose,
    HmiWriter,
    block_values,
    recommender_code,
    with_sources,
)
from agent.pipeline.alarms import HmiBlock
from agent.pipeline.guard import Reason
from agent.pipeline.policy import ReasonCode
from agent.types import Action, Decision, Value

# Once tags declare their purpose (issue 10), a writable tag must say it; before, the key is unknown.
_PURPOSE = "purpose" in ModbusTag.model_fields


def _tag(name: str, address: int, purpose: str, type_: str = "uint16") -> str:
    extra = f", purpose: {purpose}" if _PURPOSE else ""
    return (
        f"      - {{name: {name}, table: holding, address: {address}, type: {type_}, access: write{extra}}}\n"
    )


def _config(tmp_path: Path, *, words_first_in_yaml: bool = True, refresh_s: float = 30.0) -> Config:
    words = [
        ("alarm_word", "P1.AlarmWord"),
        ("unacked_word", "P1.Unacked"),
        ("shelved_word", "P1.Shelved"),
        ("alert_word", "P1.AlertWord"),
    ]
    details = [
        ("highest_severity", "P1.Severity"),
        ("active_count", "P1.Count"),
        ("first_out_code", "P1.FirstOut"),
        ("fault_class", "P1.FaultClass"),
        ("anomaly_score", "P1.Anomaly"),
        ("rul", "P1.RUL"),
        ("recommender_reason", "P1.Reason"),
    ]
    fields = words + details if words_first_in_yaml else details + words
    hmi_tags = "".join(
        _tag(tag, 100 + 2 * i, "display", "float32" if f in ("anomaly_score", "rul") else "uint16")
        for i, (f, tag) in enumerate(fields)
    )
    return parse_config(
        f"""
agent: {{state_dir: {tmp_path}}}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 1502
    tags:
{_tag("Agent.Heartbeat", 0, "heartbeat")}{_tag("Agent.Status", 1, "status")}\
      - {{name: P1.Vib, table: holding, address: 10, type: float32}}
  - name: hmi
    protocol: modbus_tcp
    host: 127.0.0.2
    port: 1502
    tags:
{hmi_tags}
assets:
  - name: pump1
    anomaly_source: t2
    fault_class_source: klass
    rul_source: hours
    values: {{vib: P1.Vib, t2: P1.Vib, klass: P1.Vib, hours: P1.Vib}}
    hmi:
"""
        + "".join(f"      {f}: {tag}\n" for f, tag in fields)
        + f"""
hmi:
  heartbeat_tag: Agent.Heartbeat
  status_tag: Agent.Status
  refresh_s: {refresh_s}
"""
    )


class FakeSink:
    """Records every call; fails the tags in ``fail`` with their error, raises ``raises`` for
    the whole call when set."""

    def __init__(self, name: str, calls: list[tuple[str, HmiPurpose, list[tuple[str, Value]]]]) -> None:
        self.name = name
        self.calls = calls
        self.fail: dict[str, DriverError] = {}
        self.raises: DriverError | None = None
        self.omit: set[str] = set()

    async def write_many(
        self, items: Sequence[tuple[str, Value]], *, purpose: HmiPurpose
    ) -> Mapping[str, Value | DriverError]:
        self.calls.append((self.name, purpose, list(items)))
        if self.raises is not None:
            raise self.raises
        return {t: self.fail.get(t, v) for t, v in items if t not in self.omit}


def _writer(
    cfg: Config, clock_value: list[float] | None = None
) -> tuple[HmiWriter, dict[str, FakeSink], list]:
    calls: list[tuple[str, HmiPurpose, list[tuple[str, Value]]]] = []
    sinks = {d.name: FakeSink(d.name, calls) for d in cfg.devices}
    device_of = {t.name: d.name for d, t in cfg.iter_tags()}
    clock = clock_value if clock_value is not None else [0.0]
    return HmiWriter(cfg, sinks, device_of, clock=lambda: clock[0]), sinks, calls


def _block(**kw: int) -> HmiBlock:
    base = dict(
        alarm_word=0b101,
        unacked_word=0b100,
        shelved_word=0,
        out_of_service_word=0,
        alert_word=0b10,
        highest_severity=3,
        active_count=2,
        first_out_code=3,
        fault_class=0,
    )
    base.update(kw)
    return HmiBlock(**base)  # type: ignore[arg-type]


SHOWN = {"t2": 12.5, "klass": 2.0, "hours": 410.0}


# ---------------------------------------------------------------------------- block values


def test_field_order_covers_every_hmi_field_details_first() -> None:
    assert set(FIELD_ORDER) == set(AssetHmi.model_fields)
    assert len(FIELD_ORDER) == len(set(FIELD_ORDER))
    assert FIELD_ORDER == DETAIL_FIELDS + WORD_FIELDS
    assert set(WORD_FIELDS) == {"alarm_word", "unacked_word", "shelved_word", "alert_word"}


def test_block_values_take_sources_from_the_asset(tmp_path: Path) -> None:
    asset = _config(tmp_path).assets[0]
    values = block_values(_block(), asset, SHOWN, 9)
    assert list(values) == list(FIELD_ORDER)
    assert values == {
        "highest_severity": 3,
        "active_count": 2,
        "first_out_code": 3,
        "fault_class": 2,
        "anomaly_score": 12.5,
        "rul": 410.0,
        "recommender_reason": 9,
        "alarm_word": 0b101,
        "unacked_word": 0b100,
        "shelved_word": 0,
        "alert_word": 0b10,
    }
    filled = with_sources(_block(), asset, SHOWN)
    assert (filled.fault_class, filled.rul) == (2, 410.0)
    assert block_values(filled, asset, SHOWN, 9) == values  # filling twice changes nothing


def test_the_recommender_code_shows_rate_limited_while_the_guard_steps() -> None:
    energy = ReasonCode.ENERGY_OPTIMUM
    assert recommender_code(energy, None) == 1
    assert recommender_code(energy, Decision(None, Action.WRITE, 2000.0)) == 1
    stepping = Decision(None, Action.CLAMP, 2000.0, (f"{Reason.RATE_LIMITED}: 10 rpm/s",))
    assert recommender_code(energy, stepping) == int(ReasonCode.RATE_LIMITED) == 8
    waiting = Decision(None, Action.HOLD, None, (f"{Reason.RATE_WAIT}: 0.4 s", "not a reason head"))
    assert recommender_code(ReasonCode.LEVEL_LOW, waiting) == 8
    held = Decision(None, Action.HOLD, None, (str(Reason.PERMISSIVE_OFF),))
    assert recommender_code(ReasonCode.LEVEL_LOW, held) == 6
    # a stopped pump's code is not hidden behind its speed setpoint's rate limit
    assert recommender_code(ReasonCode.STOPPED_FOR_ENERGY, stepping) == 9


def test_unknown_sources_are_not_made_up(tmp_path: Path) -> None:
    asset = _config(tmp_path).assets[0]
    values = block_values(_block(), asset, {"t2": None, "klass": math.nan})
    assert values["anomaly_score"] is None and values["rul"] is None
    assert values["fault_class"] == 0  # an integer code: unknown shows "no class"
    no_sources = asset.model_copy(
        update={"anomaly_source": None, "fault_class_source": None, "rul_source": None}
    )
    values = block_values(_block(), no_sources, SHOWN)
    assert (values["anomaly_score"], values["fault_class"], values["rul"]) == (None, 0, None)


# ---------------------------------------------------------------------------- display blocks


async def test_block_written_details_first_words_last(tmp_path: Path) -> None:
    cfg = _config(tmp_path, words_first_in_yaml=True)
    writer, _, calls = _writer(cfg)
    values = block_values(_block(), cfg.assets[0], {"t2": 12.5})  # no RUL, no reason: not written
    await writer.write_blocks({"pump1": values}, now=0.0)
    assert len(calls) == 1
    device, purpose, items = calls[0]
    assert (device, purpose) == ("hmi", "display")
    fields = dict((tag, f) for f, tag in cfg.assets[0].hmi.items())
    assert [fields[t] for t, _ in items] == [f for f in FIELD_ORDER if f not in ("rul", "recommender_reason")]
    assert dict(items)["P1.Anomaly"] == 12.5 and "P1.RUL" not in dict(items)


async def test_one_bad_value_does_not_block_its_block(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    writer, sinks, calls = _writer(cfg)
    sinks["hmi"].fail["P1.Count"] = WriteRefused("P1.Count (HR 104, 40105): 70000 does not fit uint16")
    values = block_values(_block(), cfg.assets[0], SHOWN, 9)
    with capture_logs() as logs:
        await writer.write_blocks({"pump1": values}, now=0.0)
        await writer.write_blocks({"pump1": values}, now=1.0)
        await writer.write_blocks({"pump1": values}, now=2.0)
    # Every value was offered in the first call; only the failing one is retried after it.
    assert len(calls[0][2]) == len(FIELD_ORDER)
    assert [c[2] for c in calls[1:]] == [[("P1.Count", 2)], [("P1.Count", 2)]]
    stats = writer.stats
    assert stats["P1.AlarmWord"].written == 1 and stats["P1.AlarmWord"].failing is None
    assert stats["P1.Count"].written == 0 and stats["P1.Count"].failed == 3
    assert stats["P1.Count"].failed_by == {"WriteRefused": 3}
    assert "does not fit uint16" in (stats["P1.Count"].failing or "")
    assert writer.failing == {"P1.Count": "P1.Count (HR 104, 40105): 70000 does not fit uint16"}
    failed = [e for e in logs if e["event"] == "HMI write failed"]
    assert len(failed) == 1  # the transition, not every retry
    assert failed[0]["tags"] == ["P1.Count"] and failed[0]["purpose"] == "display"
    assert "does not fit uint16" in failed[0]["error"] and failed[0]["log_level"] == "warning"

    del sinks["hmi"].fail["P1.Count"]
    with capture_logs() as logs:
        await writer.write_blocks({"pump1": values}, now=3.0)
        await writer.write_blocks({"pump1": values}, now=4.0)
    assert calls[-2][2] == [("P1.Count", 2)] and len(calls) == 4  # recovered, then nothing is due
    assert [e["event"] for e in logs] == ["HMI write recovered"]
    assert logs[0]["tags"] == ["P1.Count"] and logs[0]["log_level"] == "info"
    assert writer.failing == {} and writer.stats["P1.Count"].written == 1


async def test_a_failed_call_fails_every_value_once_logged(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    writer, sinks, calls = _writer(cfg)
    sinks["hmi"].raises = DeviceUnreachable("hmi: connection refused")
    values = block_values(_block(), cfg.assets[0], SHOWN, 9)
    with capture_logs() as logs:
        await writer.write_blocks({"pump1": values}, now=0.0)
        await writer.write_blocks({"pump1": values}, now=1.0)
    assert len(calls) == 2 and len(calls[1][2]) == len(FIELD_ORDER)  # all retried
    assert set(writer.failing) == {tag for _, tag in cfg.assets[0].hmi.items()}
    assert all(
        s.failed_by == {"DeviceUnreachable": 2} for t, s in writer.stats.items() if t.startswith("P1.")
    )
    assert len(logs) == 1 and logs[0]["error"] == "hmi: connection refused"  # one line for one cause
    assert len(logs[0]["tags"]) == len(FIELD_ORDER)


async def test_a_tag_missing_from_the_result_counts_as_failed(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    writer, sinks, calls = _writer(cfg)
    sinks["hmi"].omit = {"P1.RUL"}
    values = block_values(_block(), cfg.assets[0], SHOWN, 9)
    await writer.write_blocks({"pump1": values}, now=0.0)
    await writer.write_blocks({"pump1": values}, now=1.0)
    assert calls[1][2] == [("P1.RUL", 410.0)]
    assert writer.stats["P1.RUL"].failed_by == {"DriverError": 2}


async def test_values_rewritten_when_changed_or_due(tmp_path: Path) -> None:
    cfg = _config(tmp_path, refresh_s=10.0)
    writer, _, calls = _writer(cfg)
    asset = cfg.assets[0]
    await writer.write_blocks({"pump1": block_values(_block(), asset, SHOWN, 9)}, now=0.0)
    await writer.write_blocks({"pump1": block_values(_block(), asset, SHOWN, 9)}, now=5.0)
    assert len(calls) == 1  # nothing changed, nothing due
    await writer.write_blocks({"pump1": block_values(_block(active_count=3), asset, SHOWN, 9)}, now=6.0)
    assert calls[-1][2] == [("P1.Count", 3)]
    await writer.write_blocks({"pump1": block_values(_block(active_count=3), asset, SHOWN, 9)}, now=10.0)
    # Due again 10 s after their last write: everything but the count (written at 6 s).
    assert [t for t, _ in calls[-1][2]] == [
        tag for f in FIELD_ORDER if f != "active_count" for ff, tag in asset.hmi.items() if ff == f
    ]
    await writer.write_blocks({"pump1": block_values(_block(active_count=3), asset, SHOWN, 9)}, now=16.0)
    assert calls[-1][2] == [("P1.Count", 3)]


async def test_nan_is_unchanged_from_nan_and_one_is_not_true(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    writer, _, calls = _writer(cfg)
    await writer.write_blocks({"pump1": {"anomaly_score": math.nan, "alert_word": 1}}, now=0.0)
    await writer.write_blocks({"pump1": {"anomaly_score": math.nan, "alert_word": 1}}, now=1.0)
    assert len(calls) == 1
    await writer.write_blocks({"pump1": {"anomaly_score": math.nan, "alert_word": True}}, now=2.0)
    assert calls[-1][2] == [("P1.AlertWord", True)]


async def test_unknown_asset_or_field_is_a_bug(tmp_path: Path) -> None:
    writer, _, calls = _writer(_config(tmp_path))
    with pytest.raises(KeyError):
        await writer.write_blocks({"pump9": {"alarm_word": 1}}, now=0.0)
    with pytest.raises(KeyError, match="alarm_wrd"):
        await writer.write_blocks({"pump1": {"alarm_wrd": 1}}, now=0.0)
    assert calls == []


# ---------------------------------------------------------------------------- heartbeat and status


async def test_heartbeat_and_status_go_alone_while_displays_fail(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    # Displays and heartbeat on one device: the displays failing must not touch the heartbeat.
    writer, sinks, calls = _writer(cfg)
    sinks["hmi"].raises = DeviceUnreachable("hmi: timeout")
    sinks["plc"].fail = {t: WriteRefused(f"{t}: refused") for t in ("P1.Vib",)}
    values = block_values(_block(), cfg.assets[0], SHOWN, 9)
    for k in range(3):
        await writer.write_blocks({"pump1": values}, now=float(k))
        await writer.write_agent_status(True, 0b1000101, now=float(k))
    beats = [items for _, purpose, items in calls if purpose == "heartbeat"]
    assert beats == [[("Agent.Heartbeat", 1)], [("Agent.Heartbeat", 2)], [("Agent.Heartbeat", 3)]]
    status = [(dev, items) for dev, purpose, items in calls if purpose == "status"]
    assert status == [("plc", [("Agent.Status", 0b1000101)])]  # unchanged afterwards: written once
    assert (
        writer.stats["Agent.Heartbeat"].written == 3
        and writer.stats["Agent.Heartbeat"].purpose == "heartbeat"
    )
    assert writer.stats["P1.AlarmWord"].failed == 3


async def test_a_failing_status_word_does_not_stop_the_heartbeat(tmp_path: Path) -> None:
    writer, sinks, calls = _writer(_config(tmp_path))
    sinks["plc"].fail["Agent.Status"] = WriteRefused("Agent.Status: device exception 02")
    with capture_logs() as logs:
        await writer.write_agent_status(True, 1, now=0.0)
        await writer.write_agent_status(True, 1, now=1.0)
    assert [(p, items) for _, p, items in calls] == [
        ("heartbeat", [("Agent.Heartbeat", 1)]),
        ("status", [("Agent.Status", 1)]),
        ("heartbeat", [("Agent.Heartbeat", 2)]),
        ("status", [("Agent.Status", 1)]),  # failing: retried
    ]
    assert [(e["event"], e["purpose"]) for e in logs] == [("HMI write failed", "status")]


async def test_status_refresh_and_change(tmp_path: Path) -> None:
    writer, _, calls = _writer(_config(tmp_path, refresh_s=10.0))
    for now, word in [(0.0, 1), (5.0, 1), (6.0, 3), (15.0, 3), (16.0, 3)]:
        await writer.write_agent_status(False, word, now=now)
    assert [(p, items) for _, p, items in calls] == [
        ("status", [("Agent.Status", 1)]),
        ("status", [("Agent.Status", 3)]),
        ("status", [("Agent.Status", 3)]),  # 10 s after 6 s
    ]


async def test_no_heartbeat_when_told_not_to_beat(tmp_path: Path) -> None:
    writer, _, calls = _writer(_config(tmp_path))
    await writer.write_agent_status(True, 1, now=0.0)
    await writer.write_agent_status(False, 3, now=1.0)
    await writer.write_agent_status(True, 1, now=2.0)
    beats = [items[0][1] for _, p, items in calls if p == "heartbeat"]
    assert beats == [1, 2]  # the counter resumes from where it stopped


async def test_heartbeat_counter_wraps_at_16_bits(tmp_path: Path) -> None:
    writer, _, calls = _writer(_config(tmp_path))
    writer._heartbeat = 65534
    await writer.write_agent_status(True, 0, now=0.0)
    await writer.write_agent_status(True, 0, now=1.0)
    assert [items[0][1] for _, p, items in calls if p == "heartbeat"] == [65535, 0]


async def test_final_status_written_even_unchanged_without_a_beat(tmp_path: Path) -> None:
    clock = [100.0]
    writer, sinks, calls = _writer(_config(tmp_path), clock)
    await writer.write_agent_status(True, 0b10000000, now=99.0)
    calls.clear()
    await writer.write_final_status(0b10000000)
    assert calls == [("plc", "status", [("Agent.Status", 0b10000000)])]
    sinks["plc"].raises = DeviceUnreachable("plc: connection lost")
    await writer.write_final_status(0b10000000)  # a device fault does not raise at shutdown
    assert writer.failing == {"Agent.Status": "plc: connection lost"}


async def test_no_hmi_tags_writes_nothing(tmp_path: Path) -> None:
    cfg = parse_config(
        f"agent: {{state_dir: {tmp_path}}}\n"
        "devices: [{name: plc, protocol: modbus_tcp, host: 127.0.0.1, tags: []}]\n"
    )
    writer = HmiWriter(cfg, {}, {})
    await writer.write_blocks({}, now=0.0)
    await writer.write_agent_status(True, 1, now=0.0)
    await writer.write_final_status(1)
    assert writer.stats == {}


# ---------------------------------------------------------------------------- wiring errors


def test_every_hmi_tag_needs_a_sink(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    device_of = {t.name: d.name for d, t in cfg.iter_tags()}
    with pytest.raises(ValueError, match=r"P1\.AlarmWord"):
        HmiWriter(cfg, {"plc": FakeSink("plc", [])}, device_of)
    with pytest.raises(ValueError, match=r"Agent\.Status"):
        HmiWriter(
            cfg, {"plc": FakeSink("plc", []), "hmi": FakeSink("hmi", [])}, {**device_of, "Agent.Status": "x"}
        )


def test_one_tag_for_two_purposes_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg = cfg.model_copy(update={"hmi": cfg.hmi.model_copy(update={"status_tag": "Agent.Heartbeat"})})
    sinks = {"plc": FakeSink("plc", []), "hmi": FakeSink("hmi", [])}
    with pytest.raises(ValueError, match=r"Agent\.Heartbeat"):
        HmiWriter(cfg, sinks, {t.name: d.name for d, t in cfg.iter_tags()})


async def test_a_sink_bug_is_not_taken_for_a_device_fault(tmp_path: Path) -> None:
    # Only DriverError is a device fault; anything else escaping the sink is a bug and raises.
    writer, sinks, _ = _writer(_config(tmp_path))
    sinks["plc"].raises = CodecError("registers do not decode")  # type: ignore[assignment]
    with pytest.raises(CodecError):
        await writer.write_agent_status(True, 1, now=0.0)
