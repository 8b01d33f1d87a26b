"""Tests of the alarm engine: ISA-18.2 states, delays, deadband, shelving, persistence."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.pipeline.alarms import AlarmDef, AlarmEngine, AlarmError, AlarmsConfig, HmiBlock
from agent.types import Alarm, AlarmState

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
RESPONSE = "Reduce speed and check the bearing"


def adef(**kw: Any) -> AlarmDef:
    base: dict[str, Any] = {"name": "temp_high", "code": 1, "source": "temp", "response": RESPONSE}
    base.update(kw)
    return AlarmDef.model_validate(base)


def hi(value: float, severity: int = 2) -> dict[str, Any]:
    return {"value": value, "severity": severity}


class Clock:
    """An injected clock: monotonic seconds and the matching UTC time."""

    def __init__(self, mono: float = 1000.0) -> None:
        self.mono = mono
        self.start = mono

    @property
    def utc(self) -> datetime:
        return T0 + timedelta(seconds=self.mono - self.start)

    def advance(self, dt: float) -> None:
        self.mono += dt


class Rig:
    """An engine on one asset with a clock; feeds values and keeps every transition."""

    def __init__(self, *defs: AlarmDef, asset: str = "P1", **cfg: Any) -> None:
        self.config = AlarmsConfig(defs=defs, **cfg)
        self.engine = AlarmEngine(self.config, [asset])
        self.asset = asset
        self.clock = Clock()
        self.log: list[Alarm] = []

    def feed(self, source_values: Mapping[str, float | None], dt: float = 1.0) -> list[Alarm]:
        self.clock.advance(dt)
        out = self.engine.evaluate(self.asset, source_values, self.clock.mono, self.clock.utc)
        self.log.extend(out)
        return out

    def series(self, source: str, xs: Iterable[float | None], dt: float = 1.0) -> list[Alarm]:
        out: list[Alarm] = []
        for x in xs:
            out.extend(self.feed({source: x}, dt))
        return out

    def ack(self, code: int | None = None) -> list[Alarm]:
        out = self.engine.acknowledge(self.asset, code, self.clock.mono, self.clock.utc)
        self.log.extend(out)
        return out

    def ack_tag(self, value: float | bool | None) -> list[Alarm]:
        out = self.engine.on_ack_tag(self.asset, value, self.clock.mono, self.clock.utc)
        self.log.extend(out)
        return out

    def state(self, code: int = 1) -> AlarmState:
        return self.engine.state(self.asset, code)

    def hmi(self) -> HmiBlock:
        return self.engine.hmi_block(self.asset)


def states(alarms: Iterable[Alarm]) -> list[tuple[AlarmState, int]]:
    return [(a.state, a.severity) for a in alarms]


# --------------------------------------------------------------------------- configuration


def test_alarm_needs_a_response_alert_does_not() -> None:
    with pytest.raises(ValidationError, match="operator response"):
        adef(response="", high=hi(80))
    alert = adef(kind="alert", response="", source="anomaly.t2", high=hi(5, 1))
    assert alert.kind == "alert"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "at least one limit"),
        ({"high": hi(80), "equals": 3, "severity": 3}, "not both"),
        ({"equals": 3}, "needs severity"),
        ({"high": hi(80), "severity": 3}, "per limit"),
        ({"high": hi(90), "high_high": hi(80, 4)}, "ordered"),
        ({"low": hi(50), "high": hi(60), "deadband": 10}, "deadband"),
        ({"equals": 3, "in_classes": [3], "severity": 2}, "not both"),
        ({"in_classes": [], "severity": 2}, "at least one class"),
        ({"high": hi(80), "code": 17}, "less than or equal to 16"),
        ({"high": {"value": 80, "severity": 5}}, "less than or equal to 4"),
        ({"high": hi(80), "unknown": 1}, "Extra inputs"),
    ],
)
def test_invalid_definitions_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        adef(**kw)


def test_codes_and_names_unique_across_alarms_and_alerts() -> None:
    a = adef(high=hi(80))
    b = adef(name="score", kind="alert", response="", high=hi(5, 1))
    with pytest.raises(ValidationError, match="codes must be unique"):
        AlarmsConfig(defs=(a, b))
    with pytest.raises(ValidationError, match="names must be unique"):
        AlarmsConfig(defs=(a, adef(code=2, high=hi(80))))


def test_unknown_asset_and_code_raise() -> None:
    rig = Rig(adef(high=hi(80)))
    with pytest.raises(AlarmError, match="unknown asset"):
        rig.engine.evaluate("P9", {}, 0.0, T0)
    with pytest.raises(AlarmError, match="code 7"):
        rig.engine.acknowledge("P1", 7, 0.0, T0)
    with pytest.raises(AlarmError, match="timezone"):
        rig.engine.evaluate("P1", {}, 0.0, datetime(2024, 1, 1))


# --------------------------------------------------------------------------- conditions


def test_on_delay_ignores_short_excursions() -> None:
    rig = Rig(adef(high=hi(80), on_delay_s=5))
    # 4 s above the limit (samples at 1 s): never 5 s in a row.
    assert rig.series("temp", [70, 85, 85, 85, 85, 70, 85, 85, 70]) == []
    assert rig.state() is AlarmState.NORMAL
    out = rig.series("temp", [85] * 7)
    assert states(out) == [(AlarmState.UNACK, 2)]
    # the first of the 7 samples started the timer; the 6th is 5 s later
    assert out[0].at == T0 + timedelta(seconds=9 + 6)
    assert out[0].value == 85 and RESPONSE in out[0].message and "HIGH limit 80" in out[0].message


def test_a_limit_with_its_own_on_delay_raises_sooner_far_beyond() -> None:
    # an anomaly score's alert: 70 s just above its threshold, 30 s far above it
    rig = Rig(adef(kind="alert", response="", high=hi(1.0, 1),
                   high_high={"value": 3.0, "severity": 2, "on_delay_s": 30}, on_delay_s=70))
    # far above for 29 s, then just above: nothing before 70 s of exceeding the high limit
    assert rig.series("temp", [5.0] * 29 + [1.5] * 41) == []
    out = rig.series("temp", [1.5])
    assert states(out) == [(AlarmState.UNACK, 1)]  # 70 s after the first sample above 1.0
    rig.series("temp", [0.5] * 5)
    rig.ack()
    assert rig.state() is AlarmState.NORMAL
    # far above: raised after 30 s at the high_high severity, not after 70
    assert rig.series("temp", [5.0] * 30) == []
    out = rig.series("temp", [5.0])
    assert states(out) == [(AlarmState.UNACK, 2)] and "HIGH_HIGH limit 3" in out[0].message


def test_a_limits_on_delay_is_validated() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        adef(high={"value": 1.0, "severity": 1, "on_delay_s": -1})


def test_off_delay_holds_through_short_returns() -> None:
    rig = Rig(adef(high=hi(80), off_delay_s=3))
    assert states(rig.series("temp", [85])) == [(AlarmState.UNACK, 2)]
    rig.ack()
    assert rig.series("temp", [70, 70, 85, 70, 70, 85]) == []
    assert rig.state() is AlarmState.ACKED
    out = rig.series("temp", [70, 70, 70, 70])
    assert states(out) == [(AlarmState.NORMAL, 2)]
    assert out[0].at == rig.clock.utc  # the 4th sample: 3 s after the first one back in range


def transitions_on_noisy_limit(deadband: float) -> int:
    rig = Rig(adef(high=hi(80), deadband=deadband))
    xs = [80 + 1.5 * math.sin(i * 0.9) + 0.4 * ((i * 7919) % 11 - 5) / 5 for i in range(400)]
    for x in xs:
        rig.feed({"temp": x})
        if rig.state() is AlarmState.UNACK:
            rig.ack()  # an operator who acknowledges at once: only chatter remains
    return sum(1 for a in rig.log if a.state is AlarmState.UNACK)


def test_deadband_stops_chatter() -> None:
    assert transitions_on_noisy_limit(0.0) > 50  # the classic chattering alarm
    assert transitions_on_noisy_limit(4.0) == 1  # wider than the noise: raised once, held


def test_deadband_is_on_the_return_side() -> None:
    rig = Rig(adef(high=hi(80), low=hi(20, 1), deadband=2))
    assert rig.series("temp", [79, 80]) == []  # strictly above the limit raises
    assert states(rig.series("temp", [80.5])) == [(AlarmState.UNACK, 2)]
    assert rig.series("temp", [79, 78.5, 78]) == []  # still within the deadband
    assert states(rig.series("temp", [77.9])) == [(AlarmState.RTN_UNACK, 0 + 2)]
    rig.ack()
    assert states(rig.series("temp", [19.9])) == [(AlarmState.UNACK, 1)]
    assert rig.series("temp", [21.5, 22]) == []
    assert states(rig.series("temp", [22.1])) == [(AlarmState.RTN_UNACK, 1)]


def test_high_high_low_low_severities() -> None:
    rig = Rig(
        adef(high=hi(80, 2), high_high=hi(95, 4), low=hi(20, 1), low_low=hi(10, 3)),
    )
    assert states(rig.series("temp", [85])) == [(AlarmState.UNACK, 2)]
    assert rig.hmi().highest_severity == 2
    rig.ack()
    # escalation: a new severity and a new acknowledgement
    out = rig.series("temp", [96])
    assert states(out) == [(AlarmState.UNACK, 4)] and "HIGH_HIGH limit 95" in out[0].message
    assert rig.hmi().highest_severity == 4
    assert states(rig.ack()) == [(AlarmState.ACKED, 4)]
    # de-escalation is reported, without asking for another acknowledgement
    assert states(rig.series("temp", [90])) == [(AlarmState.ACKED, 2)]
    assert states(rig.series("temp", [50])) == [(AlarmState.NORMAL, 2)]
    assert states(rig.series("temp", [15])) == [(AlarmState.UNACK, 1)]
    assert states(rig.series("temp", [5])) == [(AlarmState.UNACK, 3)]
    assert rig.hmi().highest_severity == 3
    # straight from low_low to high_high: the severity follows
    assert states(rig.series("temp", [99])) == [(AlarmState.UNACK, 4)]


def test_classifier_alarm_on_fault_classes() -> None:
    rig = Rig(adef(name="fault", source="fault_class", in_classes=[2, 3], severity=3))
    assert rig.series("fault_class", [0, 1, 2.5]) == []
    assert states(rig.series("fault_class", [3.0])) == [(AlarmState.UNACK, 3)]
    assert rig.series("fault_class", [2]) == []
    assert states(rig.series("fault_class", [0])) == [(AlarmState.RTN_UNACK, 3)]
    only = Rig(adef(name="cav", source="fault_class", equals=4, severity=2))
    assert states(only.series("fault_class", [3, 4])) == [(AlarmState.UNACK, 2)]


# --------------------------------------------------------------------------- states


def test_rtn_unack_path() -> None:
    rig = Rig(adef(high=hi(80)))
    assert states(rig.series("temp", [85])) == [(AlarmState.UNACK, 2)]
    assert states(rig.series("temp", [70])) == [(AlarmState.RTN_UNACK, 2)]
    block = rig.hmi()
    assert block.alarm_word == 0 and block.unacked_word == 1 and block.active_count == 0
    # back before the ack: active again, still unacknowledged
    assert states(rig.series("temp", [86])) == [(AlarmState.UNACK, 2)]
    assert states(rig.series("temp", [70])) == [(AlarmState.RTN_UNACK, 2)]
    out = rig.ack()
    assert states(out) == [(AlarmState.NORMAL, 2)] and "acknowledged" in out[0].message
    assert rig.hmi() == HmiBlock(0, 0, 0, 0, 0, 0, 0, 0)


def test_ack_then_return_goes_to_normal() -> None:
    rig = Rig(adef(high=hi(80)))
    rig.series("temp", [85])
    assert states(rig.ack(1)) == [(AlarmState.ACKED, 2)]
    assert rig.ack(1) == []  # nothing left to acknowledge
    block = rig.hmi()
    assert (block.alarm_word, block.unacked_word, block.active_count) == (1, 0, 1)
    assert states(rig.series("temp", [70])) == [(AlarmState.NORMAL, 2)]


def test_latch_holds_until_acknowledged() -> None:
    rig = Rig(adef(high=hi(80), latch=True))
    rig.series("temp", [85])
    assert rig.series("temp", [70, 60, 50]) == []  # the condition cleared; the alarm did not
    assert rig.state() is AlarmState.UNACK and rig.hmi().alarm_word == 1
    assert states(rig.ack()) == [(AlarmState.NORMAL, 2)]
    # acknowledged while the condition is present: it returns when the condition clears
    rig.series("temp", [85])
    assert states(rig.ack()) == [(AlarmState.ACKED, 2)]
    assert states(rig.series("temp", [70])) == [(AlarmState.NORMAL, 2)]


def test_latched_alarm_keeps_its_highest_severity() -> None:
    rig = Rig(adef(high=hi(80, 2), high_high=hi(95, 4), latch=True))
    assert states(rig.series("temp", [85, 96, 85, 70])) == [(AlarmState.UNACK, 2), (AlarmState.UNACK, 4)]
    assert rig.hmi().highest_severity == 4


def test_ack_only_on_rising_edge_of_ack_tag() -> None:
    rig = Rig(adef(high=hi(80)), ack_tag="ack_button")
    rig.series("temp", [85])
    assert rig.ack_tag(1) == []  # first value seen (a button stuck on at start-up): no ack
    assert rig.ack_tag(1) == []
    assert rig.state() is AlarmState.UNACK
    assert rig.ack_tag(0) == []
    assert states(rig.ack_tag(1)) == [(AlarmState.ACKED, 2)]  # 0 → 1
    rig.series("temp", [70, 85])
    assert rig.ack_tag(True) == []  # held on: no new edge
    assert rig.ack_tag(False) == []
    assert rig.ack_tag(None) == []  # BAD: the edge detector forgets the last level
    assert rig.ack_tag(1.0) == []
    assert rig.ack_tag(math.nan) == []
    assert rig.state() is AlarmState.UNACK
    rig.ack_tag(0)
    assert states(rig.ack_tag(1)) == [(AlarmState.ACKED, 2)]


def test_bad_input_holds_state() -> None:
    rig = Rig(adef(high=hi(80), on_delay_s=3, off_delay_s=3))
    assert rig.series("temp", [85, 85, None, 85, 85]) == []  # BAD restarted the on-delay
    assert rig.series("temp", [85, math.nan, 85, 85, math.inf, 85, 85, 85]) == []
    assert states(rig.series("temp", [85])) == [(AlarmState.UNACK, 2)]  # 3 s of good samples
    # an active alarm: garbage never clears it, nor does a gap in the data
    assert rig.series("temp", [None] * 20) == []
    assert rig.series("temp", [70, 70, None, 70, 70, None, 70]) == []
    assert rig.state() is AlarmState.UNACK
    assert rig.series("other", [70] * 10) == []  # a source absent from values: not updated
    assert states(rig.series("temp", [70, 70, 70, 70])) == [(AlarmState.RTN_UNACK, 2)]
    # BAD while normal never raises
    rig.ack()
    assert rig.series("temp", [None, math.nan, None]) == []
    assert rig.state() is AlarmState.NORMAL


# --------------------------------------------------------------------------- shelving and service


def test_shelve_is_visible_and_expires() -> None:
    rig = Rig(adef(high=hi(80)), max_shelve_s=600)
    rig.series("temp", [85])
    c = rig.clock
    out = rig.engine.shelve("P1", 1, 60, c.mono, c.utc)
    assert states(out) == [(AlarmState.SHELVED, 2)] and "shelved until" in out[0].message
    block = rig.hmi()
    assert (block.alarm_word, block.unacked_word, block.shelved_word, block.active_count) == (0, 0, 1, 0)
    assert rig.series("temp", [70, 90, 96]) == []  # no transitions while shelved
    assert rig.ack() == []  # and no acknowledging a shelved alarm
    out = rig.series("temp", [85] * 60)
    assert states(out) == [(AlarmState.UNACK, 2)]  # expired with the condition present: anew
    assert out[0].at == T0 + timedelta(seconds=61)
    assert rig.hmi().shelved_word == 0 and rig.hmi().alarm_word == 1
    # expiring with the condition gone → NORMAL; an empty evaluate is enough to expire
    rig.ack()
    rig.engine.shelve("P1", 1, 10, c.mono, c.utc)
    rig.series("temp", [70])
    assert states(rig.feed({}, dt=10)) == [(AlarmState.NORMAL, 2)]


def test_shelve_expiry_is_reported_apart_from_what_comes_with_it() -> None:
    rig = Rig(adef(high=hi(80)), max_shelve_s=600)
    c = rig.clock
    rig.series("temp", [85])
    rig.engine.shelve("P1", 1, 5, c.mono, c.utc)
    c.advance(5)
    # expiry and an acknowledgement at the same moment: two transitions, in order
    assert states(rig.ack()) == [(AlarmState.UNACK, 2), (AlarmState.ACKED, 2)]
    rig.engine.shelve("P1", 1, 5, c.mono, c.utc)
    # the sample that arrives as the shelve expires decides: back in range → straight to NORMAL
    assert states(rig.series("temp", [70], dt=5)) == [(AlarmState.NORMAL, 2)]


def test_shelve_limits_and_unshelve() -> None:
    rig = Rig(adef(high=hi(80)), max_shelve_s=600)
    c = rig.clock
    with pytest.raises(AlarmError, match="out of range"):
        rig.engine.shelve("P1", 1, 601, c.mono, c.utc)
    with pytest.raises(AlarmError, match="out of range"):
        rig.engine.shelve("P1", 1, 0, c.mono, c.utc)
    assert states(rig.engine.shelve("P1", 1, 600, c.mono, c.utc)) == [(AlarmState.SHELVED, 2)]
    assert rig.engine.shelve("P1", 1, 300, c.mono, c.utc) == []  # re-shelving: new expiry, same state
    rig.series("temp", [85])
    assert states(rig.engine.unshelve("P1", 1, c.mono, c.utc)) == [(AlarmState.UNACK, 2)]
    assert rig.engine.unshelve("P1", 1, c.mono, c.utc) == []


def test_out_of_service_is_visible() -> None:
    rig = Rig(adef(high=hi(80)), adef(name="off", code=3, high=hi(50), enabled=False))
    c = rig.clock
    assert rig.state(3) is AlarmState.OUT_OF_SERVICE  # disabled by design: visible, never hidden
    assert rig.hmi().out_of_service_word == 0b100 and rig.hmi().shelved_word == 0b100
    rig.series("temp", [85])
    assert states(rig.engine.set_out_of_service("P1", 1, True, c.mono, c.utc)) == [
        (AlarmState.OUT_OF_SERVICE, 2)
    ]
    block = rig.hmi()
    assert (block.alarm_word, block.shelved_word, block.out_of_service_word) == (0, 0b101, 0b101)
    with pytest.raises(AlarmError, match="out of service"):
        rig.engine.shelve("P1", 1, 60, c.mono, c.utc)
    with pytest.raises(AlarmError, match="disabled"):
        rig.engine.set_out_of_service("P1", 3, False, c.mono, c.utc)
    assert rig.series("temp", [70, 90]) == []
    assert states(rig.engine.set_out_of_service("P1", 1, False, c.mono, c.utc)) == [(AlarmState.UNACK, 2)]


# --------------------------------------------------------------------------- HMI block


def test_first_out_code() -> None:
    rig = Rig(
        adef(name="flow_low", code=2, source="flow", low=hi(10, 2)),
        adef(name="temp_high", code=5, high=hi(80, 3)),
        adef(name="vib_high", code=9, source="vib", high=hi(7.1, 3)),
    )
    rig.feed({"temp": 85, "flow": 50, "vib": 2})
    rig.feed({"flow": 5, "vib": 9})
    block = rig.hmi()
    assert block.first_out_code == 5
    assert block.alarm_word == (1 << 1) | (1 << 4) | (1 << 8) and block.active_count == 3
    rig.feed({"temp": 70})
    rig.ack()
    assert rig.hmi().first_out_code == 5  # others still active: same episode
    rig.feed({"flow": 50, "vib": 2})
    assert rig.hmi().first_out_code == 0  # all clear and acknowledged: the episode is over
    rig.feed({"vib": 9, "temp": 90})  # same sample: definition order breaks the tie
    assert rig.hmi().first_out_code == 5
    rig.feed({"vib": 2, "temp": 70})
    assert rig.hmi().first_out_code == 5  # returned but not acknowledged
    rig.ack()
    assert rig.hmi().first_out_code == 0
    rig.feed({"vib": 9})
    assert rig.hmi().first_out_code == 9


def test_alerts_kept_apart_from_alarms() -> None:
    rig = Rig(
        adef(high=hi(80, 2)),
        adef(name="anomaly", code=4, kind="alert", response="", source="anomaly.t2", high=hi(5.0, 1)),
    )
    out = rig.feed({"anomaly.t2": 9.0})
    assert [(a.state, a.is_alert, a.code) for a in out] == [(AlarmState.UNACK, True, 4)]
    block = rig.hmi()
    assert block.alert_word == 0b1000
    assert (block.alarm_word, block.unacked_word, block.active_count, block.highest_severity) == (0, 0, 0, 0)
    assert block.first_out_code == 0
    rig.feed({"temp": 85})
    assert rig.hmi().first_out_code == 1 and rig.hmi().active_count == 1
    # an alert returns to NORMAL without waiting for an acknowledgement
    assert states(rig.feed({"anomaly.t2": 1.0})) == [(AlarmState.NORMAL, 1)]
    assert rig.hmi().alert_word == 0
    # and can be acknowledged, optionally
    rig.feed({"anomaly.t2": 9.0})
    assert [(a.code, a.state) for a in rig.ack()] == [(1, AlarmState.ACKED), (4, AlarmState.ACKED)]


# --------------------------------------------------------------------------- persistence


def test_restart_keeps_active_unacked_and_shelving() -> None:
    defs = (
        adef(high=hi(80, 2), high_high=hi(95, 4), on_delay_s=5),
        adef(name="vib", code=2, source="vib", high=hi(7.1, 3)),
        adef(name="flow", code=3, source="flow", low=hi(10, 2)),
        adef(name="pressure", code=4, source="p", high=hi(10, 2)),
        adef(name="anomaly", code=5, kind="alert", response="", source="a", high=hi(5, 1)),
    )
    rig = Rig(*defs, max_shelve_s=3600)
    c = rig.clock
    rig.series("temp", [96] * 6)
    rig.feed({"vib": 9, "flow": 5, "a": 9})
    rig.engine.acknowledge("P1", 3, c.mono, c.utc)
    rig.engine.shelve("P1", 2, 600, c.mono, c.utc)
    rig.engine.set_out_of_service("P1", 4, True, c.mono, c.utc)
    before = {code: rig.state(code) for code in range(1, 6)}
    block = rig.hmi()
    saved = json.loads(json.dumps(rig.engine.state_dict()))

    # restart 100 s later on a new monotonic timebase
    fresh = AlarmEngine(rig.config, ["P1"])
    assert fresh.restore(saved, 5.0, c.utc + timedelta(seconds=100)) == []
    assert {code: fresh.state("P1", code) for code in range(1, 6)} == before
    assert before[1] is AlarmState.UNACK and before[2] is AlarmState.SHELVED
    assert fresh.hmi_block("P1") == block
    # shelve expiry is kept in UTC: 600 - 100 s are left
    assert fresh.evaluate("P1", {"vib": 9}, 5.0 + 499, c.utc + timedelta(seconds=599)) == []
    out = fresh.evaluate("P1", {}, 5.0 + 500, c.utc + timedelta(seconds=600))
    assert states(out) == [(AlarmState.UNACK, 3)]
    # the high_high condition was restored: back at 96 the alarm holds (no new on-delay needed)
    assert fresh.evaluate("P1", {"temp": 96}, 506.0, c.utc) == []
    assert fresh.evaluate("P1", {"temp": 70}, 507.0, c.utc)[0].state is AlarmState.RTN_UNACK


def test_restore_expired_shelve_and_wrong_clock() -> None:
    rig = Rig(adef(high=hi(80)), max_shelve_s=600)
    c = rig.clock
    rig.series("temp", [85])
    rig.engine.shelve("P1", 1, 600, c.mono, c.utc)
    saved = rig.engine.state_dict()
    # down for longer than the shelve: reported as an expiry at restore, alarm annunciated anew
    late = AlarmEngine(rig.config, ["P1"])
    assert states(late.restore(saved, 0.0, c.utc + timedelta(seconds=700))) == [(AlarmState.UNACK, 2)]
    # a clock far behind at boot cannot stretch the shelve beyond max_shelve_s
    skewed = AlarmEngine(rig.config, ["P1"])
    assert skewed.restore(saved, 0.0, c.utc - timedelta(days=30)) == []
    assert skewed.evaluate("P1", {}, 599.0, c.utc) == []
    assert skewed.evaluate("P1", {}, 600.0, c.utc)[0].state is AlarmState.UNACK


def test_restore_skips_changed_config_and_rejects_garbage() -> None:
    rig = Rig(adef(high=hi(80)))
    rig.series("temp", [85])
    saved = rig.engine.state_dict()
    renamed = AlarmEngine(AlarmsConfig(defs=(adef(name="other", high=hi(80)),)), ["P1", "P2"])
    assert renamed.restore(saved, 0.0, T0) == []
    assert renamed.state("P1", 1) is AlarmState.NORMAL
    with pytest.raises(AlarmError, match="version"):
        renamed.restore({"version": 99}, 0.0, T0)
    with pytest.raises(AlarmError, match="malformed"):
        renamed.restore({"version": 1, "assets": {"P1": {"alarms": {"1": {}}}}}, 0.0, T0)


# --------------------------------------------------------------------------- properties

Op = tuple[str, float | None, float]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["value", "value", "value", "value", "ack", "ack_tag", "shelve", "unshelve", "oos"]
            ),
            st.one_of(
                st.none(), st.floats(0, 120), st.sampled_from([79.5, 80.0, 80.5, 95.0, 19.5, math.nan])
            ),
            st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0]),
        ),
        max_size=120,
    ),
    st.booleans(),
    st.sampled_from([0.0, 1.0]),
    st.sampled_from([0.0, 2.0]),
)
def test_no_repeated_transitions(ops: list[Op], latch: bool, deadband: float, delay: float) -> None:
    rig = Rig(
        adef(
            high=hi(80, 2),
            high_high=hi(95, 4),
            low=hi(20, 1),
            latch=latch,
            deadband=deadband,
            on_delay_s=delay,
            off_delay_s=delay,
        ),
        adef(name="a", code=2, kind="alert", response="", high=hi(50, 1), on_delay_s=delay),
        max_shelve_s=10,
    )
    e, c = rig.engine, rig.clock
    log: list[Alarm] = []
    for op, x, dt in ops:
        c.advance(dt)
        now = (c.mono, c.utc)
        if op == "value":
            out = e.evaluate("P1", {"temp": x}, *now)
        elif op == "ack":
            out = e.acknowledge("P1", None, *now)
        elif op == "ack_tag":
            out = e.on_ack_tag("P1", None if x is None or math.isnan(x) else x > 60, *now)
        elif op == "shelve":
            try:
                out = e.shelve("P1", 1, 5, *now)
            except AlarmError:  # out of service
                out = []
        elif op == "unshelve":
            out = e.unshelve("P1", 1, *now)
        else:
            out = e.set_out_of_service("P1", 1, bool(x is not None and x > 60), *now)
        log.extend(out)
        last = {a.code: a.state for a in out}  # a shelve expiring, then the command: two reports
        for code, state in last.items():  # the last transition names the state the alarm is now in
            assert state is rig.state(code)
        block = rig.hmi()
        assert block.active_count == bin(block.alarm_word).count("1")
        assert block.alarm_word & block.shelved_word == 0
    for code in (1, 2):
        seen = [(a.state, a.severity) for a in log if a.code == code]
        for prev, cur in itertools.pairwise(seen):
            assert prev != cur, seen
