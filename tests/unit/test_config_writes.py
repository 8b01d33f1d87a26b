"""The config refuses every tag the agent would write unsafely (issue 10), file:line:field.

The base below is the demo's station in small: a permissive and an acknowledge coil, heartbeat
and status words, per pump an HMI alarm word, a recommendation and a float setpoint at HR120-121
(HR220-221). Each test changes one thing and checks the exact one-line refusal.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import ModbusTag, parse_config
from agent.configbase import PURPOSES
from agent.errors import ConfigError
from agent.pipeline.guard import GuardConfig, SetpointTarget

BASE = """\
agent:
  state_dir: /nonexistent/edge-agent-test-state
  cycle_ms: 1000
devices:
  - name: plant
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 5020
    tags:
      - {name: Station.Permissive, table: coil, address: 0, type: bool}
      - {name: Station.Acknowledge, table: coil, address: 1, type: bool}
      - {name: Station.AgentHeartbeat, table: holding, address: 0, type: uint16, access: read-write, purpose: heartbeat}
      - {name: Station.AgentStatus, table: holding, address: 1, type: uint16, access: read-write, purpose: status}
      - {name: Pump1.Vibration, table: input, address: 113, type: float32, engineering_unit: mm/s}
      - {name: Pump1.AlarmWord, table: holding, address: 100, type: uint16, access: read-write, purpose: display}
      - {name: Pump1.RecommendedSpeed, table: holding, address: 109, type: float32, access: read-write, purpose: recommendation}
      - {name: Pump1.ExternalSpeedSetpoint, table: holding, address: 120, type: float32, range: [0, 3200], access: read-write, purpose: setpoint}
      - {name: Pump2.AlarmWord, table: holding, address: 200, type: uint16, access: read-write, purpose: display}
      - {name: Pump2.RecommendedSpeed, table: holding, address: 209, type: float32, access: read-write, purpose: recommendation}
      - {name: Pump2.ExternalSpeedSetpoint, table: holding, address: 220, type: float32, range: [0, 3200], access: read-write, purpose: setpoint}
assets:
  - name: pump1
    values: {vibration: Pump1.Vibration}
    hmi: {alarm_word: Pump1.AlarmWord}
  - name: pump2
    hmi: {alarm_word: Pump2.AlarmWord}
alarms:
  ack_tag: Station.Acknowledge
  defs:
    - {name: vibration_high, code: 1, source: vibration, high: {value: 4.5, severity: 3}, response: Check the pump.}
hmi:
  heartbeat_tag: Station.AgentHeartbeat
  status_tag: Station.AgentStatus
guard:
  writes_enabled: false
  mode: auto
  permissive_tag: Station.Permissive
  allow_list: [Pump1.ExternalSpeedSetpoint, Pump2.ExternalSpeedSetpoint, Pump1.RecommendedSpeed, Pump2.RecommendedSpeed]
  targets:
    - tag: Pump1.ExternalSpeedSetpoint
      recommendation_tag: Pump1.RecommendedSpeed
      min: 1500
      max: 2950
      rate_per_min: 600
      max_input_age_s: 5
    - tag: Pump2.ExternalSpeedSetpoint
      recommendation_tag: Pump2.RecommendedSpeed
      min: 1500
      max: 2950
      rate_per_min: 600
      max_input_age_s: 5
"""

P1_SP = "      - {name: Pump1.ExternalSpeedSetpoint, table: holding, address: 120, type: float32, range: [0, 3200], access: read-write, purpose: setpoint}"
PERMISSIVE = "      - {name: Station.Permissive, table: coil, address: 0, type: bool}"
ACK = "      - {name: Station.Acknowledge, table: coil, address: 1, type: bool}"


def edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert text.count(old) >= 1, f"not in the text: {old!r}"
        text = text.replace(old, new, 1)
    return text


def line(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line containing ``needle``."""
    hits = [i + 1 for i, s in enumerate(text.splitlines()) if needle in s]
    assert len(hits) >= nth, f"{needle!r} found {len(hits)} times"
    return hits[nth - 1]


def refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x.yaml")
    return err.value.problems


def add_tag(text: str, spec: str) -> str:
    return edit(text, (P1_SP, P1_SP + "\n      - " + spec))


def test_base_is_valid_and_every_written_tag_declares_its_purpose() -> None:
    cfg = parse_config(BASE, "x.yaml")
    purposes = {t.name: t.purpose for _, t in cfg.iter_tags() if t.writable}
    assert purposes == {
        "Station.AgentHeartbeat": "heartbeat",
        "Station.AgentStatus": "status",
        "Pump1.AlarmWord": "display",
        "Pump1.RecommendedSpeed": "recommendation",
        "Pump1.ExternalSpeedSetpoint": "setpoint",
        "Pump2.AlarmWord": "display",
        "Pump2.RecommendedSpeed": "recommendation",
        "Pump2.ExternalSpeedSetpoint": "setpoint",
    }
    assert set(purposes.values()) < set(PURPOSES)


# --------------------------------------------------------------------------- issue 10's reproductions


def test_status_tag_on_a_setpoint_is_refused() -> None:
    text = edit(BASE, ("status_tag: Station.AgentStatus", "status_tag: Pump2.ExternalSpeedSetpoint"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'status_tag')} hmi.status_tag: tag 'Pump2.ExternalSpeedSetpoint' is "
        "guard.targets[1].tag (a setpoint): only the Guard writes a setpoint, and only as that target"
    ]


def test_heartbeat_on_the_permissive_coil_is_refused() -> None:
    # As in the report, the coil is writable (the engineer made it so for commissioning).
    writable = PERMISSIVE.replace("type: bool}", "type: bool, access: read-write, purpose: heartbeat}")
    text = edit(BASE, (PERMISSIVE, writable), ("heartbeat_tag: Station.AgentHeartbeat", "heartbeat_tag: Station.Permissive"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'heartbeat_tag')} hmi.heartbeat_tag: tag 'Station.Permissive' is "
        "guard.permissive_tag (the permissive): the agent must never write the permissive"
    ]
    # Read-only (the demo's), it is refused too: the agent writes the heartbeat.
    text = edit(BASE, ("heartbeat_tag: Station.AgentHeartbeat", "heartbeat_tag: Station.Permissive"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'heartbeat_tag')} hmi.heartbeat_tag: tag 'Station.Permissive' is written by "
        "the agent but its access is read"
    ]


def test_status_on_the_acknowledge_coil_is_refused() -> None:
    writable = ACK.replace("type: bool}", "type: bool, access: read-write, purpose: status}")
    text = edit(BASE, (ACK, writable), ("status_tag: Station.AgentStatus", "status_tag: Station.Acknowledge"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'status_tag')} hmi.status_tag: tag 'Station.Acknowledge' is alarms.ack_tag "
        "(the acknowledge tag): the agent must never write the operator's acknowledge"
    ]


def test_recommendation_tag_that_is_another_targets_setpoint_is_refused() -> None:
    text = edit(BASE, ("recommendation_tag: Pump2.RecommendedSpeed", "recommendation_tag: Pump1.ExternalSpeedSetpoint"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'recommendation_tag: Pump1.ExternalSpeedSetpoint')} "
        "guard.targets[1].recommendation_tag: 'Pump1.ExternalSpeedSetpoint' is the setpoint of targets[0]: "
        "advise mode would write it without that target's limits"
    ]


def test_alarm_word_inside_a_float_setpoint_is_refused_naming_both_addresses() -> None:
    text = edit(
        BASE,
        ("{name: Pump1.AlarmWord, table: holding, address: 100,", "{name: Pump1.AlarmWord, table: holding, address: 121,"),
    )
    assert refused(text) == [
        f"x.yaml:{line(text, 'hmi: {alarm_word: Pump1.AlarmWord}')} assets[0].hmi.alarm_word: tag "
        "'Pump1.AlarmWord' at holding 121 (40122) overlaps guard.targets[0].tag 'Pump1.ExternalSpeedSetpoint' "
        "at holding 120-121 (40121-40122), a setpoint, on device plant unit 1: only the Guard writes a "
        "setpoint, and only as that target"
    ]


def test_duplicate_writes_enabled_is_refused_at_the_second_key() -> None:
    text = edit(BASE, ("  writes_enabled: false\n", "  writes_enabled: false\n  writes_enabled: true\n"))
    first = line(text, "writes_enabled: false")
    assert refused(text) == [
        f"x.yaml:{first + 1} guard.writes_enabled: duplicate key (first given at line {first}; "
        "YAML would silently keep the last)"
    ]


def test_guard_max_beyond_the_tags_range_is_refused() -> None:
    text = edit(BASE, ("      max: 2950\n", "      max: 9000\n"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'max: 9000')} guard.targets[0].max: 9000 is outside the range [0, 3200] "
        "of tag 'Pump1.ExternalSpeedSetpoint'"
    ]


# --------------------------------------------------------------------------- aliases by register or node


def test_display_tag_on_the_permissive_coil_under_another_name_is_refused() -> None:
    text = add_tag(BASE, "{name: Pump2.Lamp, table: coil, address: 0, type: bool, access: read-write, purpose: display}")
    text = edit(text, ("hmi: {alarm_word: Pump2.AlarmWord}", "hmi: {alarm_word: Pump2.AlarmWord, fault_class: Pump2.Lamp}"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'fault_class: Pump2.Lamp')} assets[1].hmi.fault_class: tag 'Pump2.Lamp' at "
        "coil 0 (00001) overlaps guard.permissive_tag 'Station.Permissive' at coil 0 (00001), the permissive, "
        "on device plant unit 1: the agent must never write the permissive"
    ]


def test_two_recommendation_tags_sharing_a_register_are_refused() -> None:
    text = edit(
        BASE,
        (
            "{name: Pump2.RecommendedSpeed, table: holding, address: 209,",
            "{name: Pump2.RecommendedSpeed, table: holding, address: 110,",
        ),
    )
    assert refused(text) == [
        f"x.yaml:{line(text, 'recommendation_tag: Pump2.RecommendedSpeed')} guard.targets[1].recommendation_tag: "
        "tag 'Pump2.RecommendedSpeed' at holding 110-111 (40111-40112) overlaps "
        "guard.targets[0].recommendation_tag 'Pump1.RecommendedSpeed' at holding 109-110 (40110-40111), "
        "a recommendation tag, on device plant unit 1: two values the agent writes must not share a register"
    ]


def test_a_bit_tag_occupies_its_whole_register() -> None:
    text = add_tag(
        BASE,
        "{name: Pump1.Flag, table: holding, address: 0, type: bit, bit: 3, access: read-write, purpose: display, bit_write: read_modify_write}",
    )
    text = edit(text, ("hmi: {alarm_word: Pump1.AlarmWord}", "hmi: {alarm_word: Pump1.AlarmWord, rul: Pump1.Flag}"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'rul: Pump1.Flag')} assets[0].hmi.rul: tag 'Pump1.Flag' at holding 0 bit 3 "
        "(40001) overlaps hmi.heartbeat_tag 'Station.AgentHeartbeat' at holding 0 (40001), the heartbeat, "
        "on device plant unit 1: two values the agent writes must not share a register"
    ]


def test_one_display_tag_written_by_two_assets_is_refused() -> None:
    text = edit(BASE, ("hmi: {alarm_word: Pump2.AlarmWord}", "hmi: {alarm_word: Pump1.AlarmWord}"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'alarm_word: Pump1.AlarmWord', 2)} assets[1].hmi.alarm_word: tag 'Pump1.AlarmWord' "
        "is assets[0].hmi.alarm_word (an HMI display tag): two values the agent writes must not share a tag"
    ]


def test_setpoint_on_the_permissive_register_is_refused() -> None:
    text = edit(
        BASE,
        (PERMISSIVE, "      - {name: Station.Permissive, table: holding, address: 221, type: bit, bit: 0}"),
    )
    assert refused(text) == [
        f"x.yaml:{line(text, 'tag: Pump2.ExternalSpeedSetpoint')} guard.targets[1].tag: tag "
        "'Pump2.ExternalSpeedSetpoint' at holding 220-221 (40221-40222) overlaps guard.permissive_tag "
        "'Station.Permissive' at holding 221 bit 0 (40222), the permissive, on device plant unit 1: "
        "the agent must never write the permissive"
    ]


def test_different_units_and_tables_do_not_overlap() -> None:
    # Coil 0 and holding 0, and holding 120 on another unit, are different places.
    text = edit(BASE, ("    port: 5020\n", "    port: 5020\n    units: [1, 2]\n"))
    text = add_tag(text, "{name: U2.Word, unit: 2, table: holding, address: 120, type: uint16, access: read-write, purpose: display}")
    text = edit(text, ("hmi: {alarm_word: Pump2.AlarmWord}", "hmi: {alarm_word: Pump2.AlarmWord, active_count: U2.Word}"))
    cfg = parse_config(text, "x.yaml")
    assert cfg.assets[1].hmi.active_count == "U2.Word"


OPCUA = """\
devices:
  - name: plc
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    security_policy: None
    security_mode: None
    allow_insecure: true
    tags:
      - {name: Permissive, node_id: "nsu=urn:plc;s=Permissive"}
      - {name: SP, node_id: "nsu=urn:plc;s=Pump.SP", access: read-write, purpose: setpoint, range: [0, 3000]}
      - {name: Shown, node_id: "NODE", access: read-write, purpose: display}
assets:
  - name: pump
    hmi: {anomaly_score: Shown}
guard:
  permissive_tag: Permissive
  allow_list: [SP]
  targets:
    - {tag: SP, min: 0, max: 2900, rate_per_min: 1, max_input_age_s: 5}
"""


def test_opcua_display_on_the_setpoints_node_is_refused() -> None:
    text = OPCUA.replace("NODE", "nsu=urn:plc;s=Pump.SP")
    assert refused(text) == [
        f"x.yaml:{line(text, 'anomaly_score')} assets[0].hmi.anomaly_score: tag 'Shown' at node "
        "nsu=urn:plc;s=Pump.SP overlaps guard.targets[0].tag 'SP' at node nsu=urn:plc;s=Pump.SP, a setpoint, "
        "on device plc: only the Guard writes a setpoint, and only as that target"
    ]
    # By index and by URI: possibly the same node, refused until both are written alike.
    text = OPCUA.replace("NODE", "ns=2;s=Pump.SP")
    (only,) = refused(text)
    assert "(one names the namespace by URI, the other by index: write both alike)" in only
    assert parse_config(OPCUA.replace("NODE", "nsu=urn:plc;s=Pump.Shown"), "x.yaml").assets[0].hmi.anomaly_score


def test_opcua_tag_written_needs_a_purpose() -> None:
    text = OPCUA.replace("NODE", "nsu=urn:plc;s=X").replace(", purpose: display", "")
    assert refused(text) == [
        f"x.yaml:{line(text, 'name: Shown')} devices[0].tags[2].purpose: access read-write needs purpose: "
        "one of setpoint, recommendation, display, heartbeat, status, command (the agent writes a tag "
        "only for its declared purpose)"
    ]


# --------------------------------------------------------------------------- purposes


def test_writable_modbus_tag_needs_a_purpose() -> None:
    text = edit(BASE, (", access: read-write, purpose: heartbeat}", ", access: read-write}"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'Station.AgentHeartbeat, table')} devices[0].tags[2].purpose: access read-write "
        "needs purpose: one of setpoint, recommendation, display, heartbeat, status, command (the agent "
        "writes a tag only for its declared purpose)"
    ]


def test_read_only_tag_takes_no_purpose() -> None:
    text = edit(BASE, ("engineering_unit: mm/s}", "engineering_unit: mm/s, purpose: display}"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'Pump1.Vibration, table')} devices[0].tags[4].purpose: purpose display applies "
        "only to a tag the agent writes (access write or read-write)"
    ]


@pytest.mark.parametrize(
    ("name", "wrong", "where", "noun", "right"),
    [
        ("Station.AgentHeartbeat", "heartbeat", "heartbeat_tag: Station", "the heartbeat", "heartbeat"),
        ("Station.AgentStatus", "status", "status_tag: Station", "the status word", "status"),
        ("Pump1.AlarmWord", "display", "alarm_word: Pump1", "an HMI display tag", "display"),
        ("Pump1.RecommendedSpeed", "recommendation", "recommendation_tag: Pump1", "a recommendation tag", "recommendation"),
        ("Pump1.ExternalSpeedSetpoint", "setpoint", "tag: Pump1.External", "a setpoint", "setpoint"),
    ],
)
def test_each_written_tag_must_declare_the_purpose_it_is_written_for(
    name: str, wrong: str, where: str, noun: str, right: str
) -> None:
    spec = next(s for s in BASE.splitlines() if f"name: {name}," in s)
    text = edit(BASE, (spec, spec.replace(f"purpose: {wrong}", "purpose: command")))
    field = {
        "heartbeat": "hmi.heartbeat_tag",
        "status": "hmi.status_tag",
        "display": "assets[0].hmi.alarm_word",
        "recommendation": "guard.targets[0].recommendation_tag",
        "setpoint": "guard.targets[0].tag",
    }[right]
    assert refused(text) == [
        f"x.yaml:{line(text, where)} {field}: tag {name!r} is declared purpose command; {noun} needs purpose {right}"
    ]


def test_a_guard_target_must_be_readable() -> None:
    text = edit(BASE, (P1_SP, P1_SP.replace("access: read-write", "access: write")))
    assert refused(text) == [
        f"x.yaml:{line(text, 'tag: Pump1.ExternalSpeedSetpoint')} guard.targets[0].tag: tag "
        "'Pump1.ExternalSpeedSetpoint' has access write: the Guard reads the setpoint back as the origin of "
        "every step, so a target needs access read-write"
    ]


# --------------------------------------------------------------------------- Guard limits


def scaled_setpoint(text: str, spec: str) -> str:
    """Pump 1's setpoint re-declared as ``spec`` (the rest of the tag line)."""
    return edit(text, (P1_SP, "      - {name: Pump1.ExternalSpeedSetpoint, table: holding, address: 120, " + spec + "}"))


def test_guard_limits_must_fit_what_the_type_and_scale_hold() -> None:
    text = scaled_setpoint(BASE, "type: uint16, scale: 0.1, access: read-write, purpose: setpoint")
    text = edit(text, ("      max: 2950\n", "      max: 7000\n"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'max: 7000')} guard.targets[0].max: 7000 cannot be written to tag "
        "'Pump1.ExternalSpeedSetpoint': uint16 × 0.1 holds 0 to 6553.5"
    ]
    # The range is checked first: a limit outside it is reported once, against the range.
    ranged = scaled_setpoint(BASE, "type: uint16, scale: 0.1, range: [0, 3000], access: read-write, purpose: setpoint")
    ranged = edit(ranged, ("      max: 2950\n", "      max: 7000\n"))
    assert refused(ranged) == [
        f"x.yaml:{line(ranged, 'max: 7000')} guard.targets[0].max: 7000 is outside the range [0, 3000] "
        "of tag 'Pump1.ExternalSpeedSetpoint'"
    ]


def test_guard_limits_inside_the_int16_range_with_offset() -> None:
    text = scaled_setpoint(BASE, "type: int16, scale: 0.1, offset: 5, access: read-write, purpose: setpoint")
    text = edit(text, ("      max: 2950\n", "      max: 3300\n"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'max: 3300')} guard.targets[0].max: 3300 cannot be written to tag "
        "'Pump1.ExternalSpeedSetpoint': int16 × 0.1 + 5 holds -3271.8 to 3281.7"
    ]


def test_max_step_must_be_positive_and_at_least_one_register_step() -> None:
    text = scaled_setpoint(BASE, "type: uint16, scale: 0.1, access: read-write, purpose: setpoint")
    zero = edit(text, ("      rate_per_min: 600\n", "      rate_per_min: 600\n      max_step: 0\n"))
    assert refused(zero) == [
        f"x.yaml:{line(zero, 'max_step: 0')} guard.targets[0].max_step: Input should be greater than 0"
    ]
    small = edit(text, ("      rate_per_min: 600\n", "      rate_per_min: 600\n      max_step: 0.05\n"))
    assert refused(small) == [
        f"x.yaml:{line(small, 'max_step: 0.05')} guard.targets[0].max_step: 0.05 is less than one register "
        "step of tag 'Pump1.ExternalSpeedSetpoint' (0.1: uint16 × 0.1): no write could move it"
    ]
    ok = edit(text, ("      rate_per_min: 600\n", "      rate_per_min: 600\n      max_step: 0.1\n"))
    target = parse_config(ok, "x.yaml").guard.targets[0]  # type: ignore[union-attr]
    assert (target.max_step, target.step_limit) == (0.1, 0.1)
    assert parse_config(BASE, "x.yaml").guard.targets[0].step_limit == 600  # type: ignore[union-attr]


def test_a_rate_that_cannot_move_one_step_per_cycle_is_refused() -> None:
    text = scaled_setpoint(BASE, "type: uint16, scale: 0.1, access: read-write, purpose: setpoint")
    slow = edit(text, ("      rate_per_min: 600\n", "      rate_per_min: 3\n"))
    assert refused(slow) == [
        f"x.yaml:{line(slow, 'rate_per_min: 3')} guard.targets[0].rate_per_min: 3/min allows 0.05 per 1000 ms "
        "cycle, less than one register step of tag 'Pump1.ExternalSpeedSetpoint' (0.1: uint16 × 0.1): the "
        "setpoint could never move; give at least 6/min"
    ]
    # Exactly one step per cycle moves; a faster cycle needs a faster rate.
    assert parse_config(edit(text, ("      rate_per_min: 600\n", "      rate_per_min: 6\n")), "x.yaml")
    fast = edit(text, ("      rate_per_min: 600\n", "      rate_per_min: 6\n"), ("cycle_ms: 1000", "cycle_ms: 500"))
    assert "give at least 12/min" in refused(fast)[0]
    # A float setpoint has no register step: any positive rate can move it.
    assert parse_config(edit(BASE, ("      rate_per_min: 600\n", "      rate_per_min: 0.01\n")), "x.yaml")


def test_a_guard_target_must_be_a_number() -> None:
    text = add_tag(BASE, "{name: Pump1.Run, table: coil, address: 5, type: bool, access: read-write, purpose: setpoint}")
    text = edit(text, ("allow_list: [", "allow_list: [Pump1.Run, "), ("    - tag: Pump2.ExternalSpeedSetpoint", "    - tag: Pump1.Run"))
    text = edit(text, ("recommendation_tag: Pump2.RecommendedSpeed\n      min: 1500\n      max: 2950", "recommendation_tag: Pump2.RecommendedSpeed\n      min: 0\n      max: 1"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'tag: Pump1.Run')} guard.targets[1].tag: tag 'Pump1.Run' is type bool: a Guard "
        "target must be a number"
    ]


def test_two_targets_may_not_share_a_recommendation_tag() -> None:
    text = edit(BASE, ("recommendation_tag: Pump2.RecommendedSpeed", "recommendation_tag: Pump1.RecommendedSpeed"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'recommendation_tag: Pump1.RecommendedSpeed', 2)} guard.targets[1].recommendation_tag: "
        "'Pump1.RecommendedSpeed' is also the recommendation_tag of targets[0]"
    ]


def test_guard_config_alone_refuses_a_recommendation_on_another_setpoint() -> None:
    targets: list[dict[str, Any]] = [
        {"tag": "A", "recommendation_tag": "B", "min": 0, "max": 1, "rate_per_min": 1, "max_input_age_s": 1},
        {"tag": "B", "recommendation_tag": "A_rec", "min": 0, "max": 1, "rate_per_min": 1, "max_input_age_s": 1},
    ]
    with pytest.raises(ValidationError, match=r"'B' is the setpoint of targets\[1\]"):
        GuardConfig(permissive_tag="P", allow_list=["A", "B", "A_rec"], targets=targets)
    with pytest.raises(ValidationError, match="greater than 0"):
        SetpointTarget(tag="A", min=0, max=1, rate_per_min=1, max_step=-1, max_input_age_s=1)


# --------------------------------------------------------------------------- bit writes

BITS = """\
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    units: [1, 2]
    MASK
    tags:
      - {name: pump_running, table: holding, address: 10, type: bit, bit: 0}
      - {name: lamp, table: holding, address: 10, type: bit, bit: 4, access: read-write, purpose: command, bit_write: WRITE}
      - {name: other, unit: 2, table: holding, address: 10, type: bit, bit: 1, access: read-write, purpose: command, bit_write: WRITE}
"""


def bits(write: str, mask: str = "mask_write_units: [1, 2]") -> str:
    return BITS.replace("WRITE", write).replace("MASK", mask)


def test_mask_write_needs_the_unit_declared() -> None:
    ok = parse_config(bits("mask"), "x.yaml")
    assert [t.bit_write for t in ok.devices[0].tags] == [None, "mask", "mask"]
    text = bits("mask", "mask_write_units: [2]")
    assert refused(text) == [
        f"x.yaml:{line(text, 'name: lamp')} devices[0].tags[1].bit_write: mask needs unit 1 in this device's "
        "mask_write_units: declare there that the unit supports FC22 mask write (it is never probed)"
    ]
    text = bits("mask", "mask_write_units: [1, 3]")
    assert refused(text) == [
        f"x.yaml:{line(text, 'mask_write_units')} devices[0].mask_write_units[1]: unit 3 is not one of this "
        "device's units [1, 2]"
    ]


def test_read_modify_write_is_refused_on_a_register_with_a_bit_the_plc_writes() -> None:
    text = bits("read_modify_write")
    # Unit 2's register 10 holds no read-only bit: only unit 1's lamp is refused.
    assert refused(text) == [
        f"x.yaml:{line(text, 'name: lamp')} devices[0].tags[1].bit_write: read_modify_write would write back "
        "the whole register holding 10 bit 4 (40011), which also holds bit tag 'pump_running' (bit 0) that "
        "the agent does not write: a change the PLC or operator makes to it in between would be undone; "
        "use mask (FC22)"
    ]
    alone = text.replace("      - {name: pump_running, table: holding, address: 10, type: bit, bit: 0}\n", "")
    assert parse_config(alone, "x.yaml").devices[0].tags[0].bit_write == "read_modify_write"


def test_read_modify_write_is_refused_on_the_permissive_register() -> None:
    # The permissive as a writable bit (for commissioning) or a whole word: not caught by the
    # read-only-bit rule, still never to be rewritten by a read-modify-write.
    for permissive in (
        "{name: remote, unit: 2, table: holding, address: 10, type: bit, bit: 0, access: read-write, purpose: command, bit_write: mask}",
        "{name: remote, unit: 2, table: holding, address: 10, type: uint16}",
    ):
        text = bits("read_modify_write").replace(
            "{name: pump_running, table: holding, address: 10, type: bit, bit: 0}", permissive
        )
        text += "guard:\n  permissive_tag: remote\n"
        # Unit 1's lamp shares no register with the permissive (unit 2); unit 2's "other" does.
        assert refused(text) == [
            f"x.yaml:{line(text, 'name: other')} devices[0].tags[2].bit_write: read_modify_write would write "
            "back the whole register holding 10 bit 1 (40011), which holds guard.permissive_tag 'remote' (the "
            "permissive): the agent must never write it; use mask (FC22)",
        ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "{name: a, table: holding, address: 0, type: bit, bit: 2, access: read-write, purpose: command}",
            "devices[0].tags[0].bit_write: a writable bit tag needs bit_write: mask (FC22 mask write, its unit "
            "listed in the device's mask_write_units) or read_modify_write (only where nothing else writes "
            "that register)",
        ),
        (
            "{name: a, table: holding, address: 0, type: uint16, access: read-write, purpose: command, bit_write: mask}",
            "devices[0].tags[0].bit_write: applies to type bit only (one bit of a holding register)",
        ),
        (
            "{name: a, table: holding, address: 0, type: bit, bit: 2, bit_write: mask}",
            "devices[0].tags[0].bit_write: applies only to a tag the agent writes (access write or read-write)",
        ),
    ],
)
def test_bit_write_declarations(spec: str, message: str) -> None:
    text = f"devices:\n  - name: plc\n    protocol: modbus_tcp\n    host: h\n    tags:\n      - {spec}\n"
    assert refused(text) == [f"x.yaml:6 {message}"]


def test_tag_helpers_for_messages_and_quantization() -> None:
    tag = ModbusTag(name="sp", table="holding", address=9999, type="int32", scale=-0.5, offset=1.0)
    assert tag.span() == "holding 9999-10000 (holding:10000-holding:10001)"
    assert tag.resolution == 0.5
    assert tag.value_limits == (-(2**31 - 1) * 0.5 + 1.0, 2**31 * 0.5 + 1.0)
    assert tag.encoding() == "int32 × -0.5 + 1"
    assert ModbusTag(name="f", table="holding", address=0, type="float32").resolution is None
    assert ModbusTag(name="s", table="holding", address=0, type="string", length=2).value_limits is None


def test_scale_and_offset_must_be_finite() -> None:
    for field in ("scale", "offset"):
        text = f"devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n      - {{name: a, table: holding, address: 0, type: uint16, {field}: .nan}}\n"
        assert refused(text) == [f"x.yaml:6 devices[0].tags[0].{field}: Input should be a finite number"]
