"""Bad-PV alarms (``kind: bad_pv``): an instrument diagnostic alarm on the quality of an input.

The definition (what it takes and refuses, with file:line:field errors from a config), the
engine (on/off delay, the text naming the tag and the quality reason, an alarm on the HMI
words), what :mod:`agent.pipeline.sources` feeds it, and the replay (``agent/replay.py``)
raising it from a recording's BAD rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from agent.config import AssetConfig, parse_config
from agent.errors import ConfigError
from agent.modelstore.binding import ModelBinding
from agent.pipeline.alarms import AlarmDef, AlarmEngine, AlarmsConfig, bad_key
from agent.pipeline.sources import input_quality, watched_inputs
from agent.replay import AlarmInputs, Recording, ReplaySetup, alarm_inputs, run_alarms
from agent.types import AlarmState, Quality

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
RESPONSE = "Check the transmitter and its wiring; the anomaly model is blind to this pump meanwhile."


def bad_pv(**kw: Any) -> AlarmDef:
    base: dict[str, Any] = {
        "name": "input_bad", "code": 8, "kind": "bad_pv", "source": "seq", "severity": 2,
        "response": RESPONSE, "on_delay_s": 10, "off_delay_s": 5,
    }  # fmt: skip
    base.update(kw)
    return AlarmDef.model_validate(base)


# --------------------------------------------------------------------------- the definition


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"high": {"value": 1, "severity": 2}},
            "a bad_pv alarm is active while its input is not GOOD: it takes no high",
        ),
        ({"equals": 3}, "it takes no equals"),
        ({"deadband": 0.5}, "it takes no deadband"),
        ({"severity": None}, "a bad_pv alarm needs severity: 1..4"),
        ({"response": " "}, "an alarm needs a defined operator response"),
    ],
)
def test_a_bad_pv_alarm_takes_a_severity_a_response_and_no_condition(
    extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        bad_pv(**extra)


def test_the_existing_kinds_read_their_source_and_bad_pv_its_quality_key() -> None:
    assert bad_pv().input_key == bad_key("seq") == "bad:seq"
    limit = AlarmDef.model_validate(
        {"name": "t", "code": 1, "source": "temp", "high": {"value": 1, "severity": 2}, "response": "r"}
    )
    assert limit.input_key == "temp"


# --------------------------------------------------------------------------- the engine


class Rig:
    def __init__(self, *defs: AlarmDef) -> None:
        self.engine = AlarmEngine(AlarmsConfig(defs=defs), ["pump1"])
        self.t = 0.0
        self.log: list[Any] = []

    def feed(
        self, values: dict[str, float | None], reasons: dict[str, str] | None = None, dt: float = 1.0
    ) -> None:
        self.t += dt
        self.log += self.engine.evaluate("pump1", values, self.t, T0 + timedelta(seconds=self.t), reasons)


def test_the_alarm_rises_after_its_on_delay_names_the_tag_and_reason_and_clears_after_its_off_delay() -> None:
    rig = Rig(bad_pv())
    why = {"seq": "Pump1.DischargePressure BAD (out of range: 655.35 not in [0, 10])"}
    rig.feed({"bad:seq": 0.0})
    for _ in range(9):  # a glitch shorter than the on-delay raises nothing
        rig.feed({"bad:seq": 1.0}, why)
    rig.feed({"bad:seq": 0.0})
    assert rig.log == []
    for _ in range(11):
        rig.feed({"bad:seq": 1.0}, why)
    (raised,) = rig.log
    assert (raised.state, raised.severity, raised.is_alert) == (AlarmState.UNACK, 2, False)
    assert raised.message == (
        "input_bad: Pump1.DischargePressure BAD (out of range: 655.35 not in [0, 10]); response: " + RESPONSE
    )
    block = rig.engine.hmi_block("pump1")
    assert (block.alarm_word, block.alert_word, block.active_count, block.highest_severity, block.first_out_code) == (
        1 << 7, 0, 1, 2, 8,
    )  # fmt: skip
    for _ in range(6):
        rig.feed({"bad:seq": 0.0})
    assert rig.log[-1].state is AlarmState.RTN_UNACK  # an alarm: the operator acknowledges it


def test_without_a_reason_the_text_says_which_source_and_an_unknown_quality_holds() -> None:
    rig = Rig(bad_pv(on_delay_s=0))
    rig.feed({"bad:seq": None})  # unknown: nothing changes
    assert rig.log == []
    rig.feed({"bad:seq": 1.0})
    assert rig.log[0].message.startswith("input_bad: seq: not GOOD; response:")


def test_the_value_itself_does_not_raise_a_bad_pv_alarm() -> None:
    """It reads the quality key only: a NaN or a value under the source's own name is not it."""
    rig = Rig(bad_pv(on_delay_s=0, source="discharge_pressure"))
    rig.feed({"discharge_pressure": None})
    rig.feed({"discharge_pressure": 1.0})
    assert rig.log == []


# --------------------------------------------------------------------------- what the engine is fed


ASSET = AssetConfig.model_validate(
    {
        "name": "pump1",
        "values": {"discharge_pressure": "Pump1.DischargePressure", "vibration": "Pump1.Vibration"},
    }
)
BINDING = ModelBinding.model_validate(
    {
        "name": "seq",
        "bundle": "unused",
        "assets": {
            "pump1": {
                "speed": "Pump1.Speed",
                "flow": "Pump1.Flow",
                "discharge_pressure": "Pump1.DischargePressure",
            }
        },
    }
)


def test_watched_inputs_are_a_value_or_every_tag_a_model_reads() -> None:
    alarms = AlarmsConfig(
        defs=(
            bad_pv(),
            bad_pv(name="dp_bad", code=9, source="discharge_pressure"),
            bad_pv(name="x", code=10, source="other"),
        )
    )
    assert watched_inputs(alarms, ASSET, [BINDING]) == {
        "seq": ("Pump1.Speed", "Pump1.Flow", "Pump1.DischargePressure"),
        "discharge_pressure": ("Pump1.DischargePressure",),
    }
    other = ASSET.model_copy(update={"name": "pump2", "values": {}})
    assert watched_inputs(alarms, other, [BINDING]) == {}  # the model is not bound to pump2


def test_input_quality_names_the_first_bad_tag_and_counts_the_others() -> None:
    qualities = {
        "Pump1.Speed": Quality.good(),
        "Pump1.Flow": Quality.bad("timeout"),
        "Pump1.DischargePressure": Quality.bad("stale: no update for 3.0 s (limit 1.5 s)"),
    }
    watched = {"seq": tuple(qualities), "speed": ("Pump1.Speed",)}
    values, reasons = input_quality(watched, qualities.__getitem__)
    assert values == {"bad:seq": 1.0, "bad:speed": 0.0}
    assert reasons == {"seq": "Pump1.Flow BAD (timeout) (and 1 more of 3 inputs)"}
    qualities["Pump1.DischargePressure"] = Quality.good()
    assert input_quality(watched, qualities.__getitem__)[1] == {"seq": "Pump1.Flow BAD (timeout)"}


# --------------------------------------------------------------------------- configuration


CONFIG = (
    "devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n"
    "      - {name: v, table: input, address: 0, type: float32}\n"
    "models:\n  - name: seq\n    bundle: bundle\n    assets: {pump: {x: v}}\n"
    "assets:\n  - name: pump\n    values: {pressure: v}\n"
    "    detectors: [{name: p_ewma, source: pressure, detector: {kind: ewma}}]\n"
    "alarms:\n  defs:\n"
    "    - {name: a, code: 8, kind: bad_pv, source: SOURCE, severity: 2, response: check it}\n"
)


def refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "x.yaml")
    return exc.value.problems


@pytest.mark.parametrize("source", ["pressure", "seq"])
def test_a_bad_pv_source_is_a_value_or_a_model(source: str) -> None:
    (d,) = parse_config(CONFIG.replace("SOURCE", source), "x.yaml").alarms.defs
    assert (d.kind, d.source, d.severity) == ("bad_pv", source, 2)


def test_a_bad_pv_source_that_is_no_input_is_an_error_naming_file_line_and_field() -> None:
    assert refused(CONFIG.replace("SOURCE", "presure")) == [
        "x.yaml:17 alarms.defs[0].source: 'presure' names no input: a bad_pv alarm watches a value of an "
        "asset (values: name → tag) or a model bound to one (every tag it reads); did you mean 'pressure'?"
    ]
    # a detector or a model output has no quality of its own
    assert refused(CONFIG.replace("SOURCE", "p_ewma"))[0].startswith(
        "x.yaml:17 alarms.defs[0].source: 'p_ewma' names no input"
    )
    assert refused(CONFIG.replace("SOURCE", "seq.score"))[0].startswith(
        "x.yaml:17 alarms.defs[0].source: 'seq.score'"
    )
    bad = CONFIG.replace("SOURCE", "seq").replace(
        "severity: 2,", "severity: 2, high: {value: 1, severity: 2},"
    )
    assert refused(bad) == [
        "x.yaml:17 alarms.defs[0]: a bad_pv alarm is active while its input is not GOOD: it takes no high"
    ]


# --------------------------------------------------------------------------- the replay


def test_the_replay_raises_the_bad_pv_alarm_from_the_recordings_bad_rows() -> None:
    n = 120
    values = np.ones((n, 2))
    values[40:70, 0] = np.nan  # a dropout of 30 s on the watched value
    tags = ("Pump1.DischargePressure", "Pump1.Flow")
    rec = Recording(1_800_000_000.0 + np.arange(n, dtype=np.float64), tags, values)
    asset = AssetConfig.model_validate(
        {"name": "pump1", "values": {"discharge_pressure": "Pump1.DischargePressure"}}
    )
    alarms = AlarmsConfig(defs=(bad_pv(source="discharge_pressure"),))
    inputs, _ = alarm_inputs(rec, ReplaySetup([], [asset], alarms))
    assert isinstance(inputs, AlarmInputs)
    col, present = inputs.sources["pump1"]["bad:discharge_pressure"]
    assert present.all() and col.sum() == 30 and col[40] == 1.0 and col[39] == 0.0
    transitions = run_alarms(alarms, inputs)
    assert [(t.state, round(t.value or 0), (t.at.timestamp() - rec.t[0])) for t in transitions] == [
        (AlarmState.UNACK, 1, 50.0),  # 10 s on-delay after the first BAD row
        (AlarmState.RTN_UNACK, 0, 75.0),  # 5 s off-delay after the first GOOD row (70)
    ]
    assert transitions[0].message.startswith("input_bad: discharge_pressure: not GOOD")
