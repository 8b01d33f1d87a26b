"""Config refusals for start/stop targets: a request bit of purpose command, never the feedback."""

from __future__ import annotations

from agent.config import parse_config
from tests.unit.test_config_writes import BASE, P1_SP, edit, line, refused

TAGS = """
      - {name: Pump1.StartRequest, table: coil, address: 10, type: bool, access: read-write, purpose: command}
      - {name: Pump1.Running, table: discrete, address: 10, type: bool}
      - {name: Pump1.RemoteStart, table: discrete, address: 11, type: bool}"""
SS = """
  start_stop:
    - {tag: Pump1.StartRequest, asset: pump1, running_tag: Pump1.Running, remote_start_tag: Pump1.RemoteStart}"""
ALLOW = "allow_list: [Pump1.ExternalSpeedSetpoint,"


def config(tags: str = TAGS, ss: str = SS) -> str:
    text = edit(
        BASE, (P1_SP, P1_SP + tags), (ALLOW, "allow_list: [Pump1.StartRequest, Pump1.ExternalSpeedSetpoint,")
    )
    return text.rstrip("\n") + ss + "\n"


def test_a_start_stop_target_loads() -> None:
    cfg = parse_config(config(), "x.yaml")
    assert cfg.guard is not None and cfg.guard.start_stop[0].running_tag == "Pump1.Running"


def test_the_running_feedback_as_the_request_is_refused() -> None:
    text = config(ss=SS.replace("tag: Pump1.StartRequest,", "tag: Pump1.Running,"))
    problems = refused(text)
    assert (
        len(problems) == 1
        and "running feedback" in problems[0]
        and "never the motor's own run coil" in problems[0]
    )


def test_a_request_on_the_feedback_coil_under_another_name_is_refused() -> None:
    # the request written to the very coil the feedback is read from
    tags = TAGS.replace("table: discrete, address: 10", "table: coil, address: 10") + (
        "\n      - {name: Pump1.RunCoil, table: coil, address: 10, type: bool, access: read-write, purpose: command}"
    )
    text = config(tags=tags, ss=SS.replace("tag: Pump1.StartRequest,", "tag: Pump1.RunCoil,")).replace(
        "allow_list: [Pump1.StartRequest,", "allow_list: [Pump1.RunCoil,"
    )
    problems = refused(text)
    assert any(
        "guard.start_stop[0].tag" in p and "never writes the motor's feedback" in p for p in problems
    ), problems


def test_a_request_needs_purpose_command() -> None:
    text = config(tags=TAGS.replace("purpose: command", "purpose: display"))
    assert refused(text) == [
        f"x.yaml:{line(text, 'start_stop:') + 1} guard.start_stop[0].tag: tag 'Pump1.StartRequest' is declared "
        "purpose display; a start/stop request needs purpose command"
    ]
