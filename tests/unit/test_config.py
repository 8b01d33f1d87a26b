"""Config loading: every shipped config loads; malformed ones name file, line and field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import load_config, modbus_reference, parse_config
from agent.configbase import Secret
from agent.errors import ConfigError, SecretError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "configs"


# Agent configs; export configs (export-*.yaml) are loaded by export's own tests.
AGENT_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("export-"))


@pytest.mark.parametrize("path", AGENT_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.devices, f"{path} configures no device"


def test_shipped_configs_exist() -> None:
    assert len(AGENT_CONFIGS) >= 2


def test_bad_word_order_names_file_line_and_path() -> None:
    path = GOLDEN / "bad_word_order.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:22 devices[1].tags[3].word_order: must be one of ABCD, BADC, CDAB, DCBA"


def _errors(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x.yaml")
    return str(err.value)


def test_unknown_key_is_an_error_with_its_line() -> None:
    text = "devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    hots: 1\n"
    assert _errors(text) == "x.yaml:5 devices[0].hots: unknown key"


def test_unknown_protocol_and_missing_fields() -> None:
    assert "unknown protocol 'profibus'" in _errors("devices:\n  - name: p\n    protocol: profibus\n")
    out = _errors("devices:\n  - name: p\n    protocol: modbus_tcp\n")
    assert out == "x.yaml:2 devices[0].host: required field is missing"


def test_tag_rules_give_precise_messages() -> None:
    base = "devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n"
    assert "use type bool" in _errors(base + "      - {name: a, table: coil, address: 0, type: uint16}\n")
    assert "needs bit" in _errors(base + "      - {name: a, table: holding, address: 0, type: bit}\n")
    assert "read-only in Modbus" in _errors(
        base + "      - {name: a, table: input, address: 0, type: uint16, access: write}\n"
    )
    out = _errors(base + "      - {name: a, table: holding, address: 0, type: uint16, unit: 9}\n")
    assert out.startswith("x.yaml:6 devices[0].tags[0].unit: unit 9 is not one of")
    out = _errors(base + "      - {name: a, table: holding, address: 0, type: int16, word_order: ABCD}\n")
    assert out == "x.yaml:6 devices[0].tags[0].word_order: must be one of AB, BA"
    dup = base + "      - {name: a, table: holding, address: 0, type: int16}\n" * 2
    assert "x.yaml:7 devices[0].tags[1].name: duplicate tag name 'a'" in _errors(dup)


def test_yaml_syntax_error_has_a_line() -> None:
    assert _errors("devices:\n  - name: [unclosed\n").startswith("x.yaml:")


def test_config_is_frozen() -> None:
    cfg = parse_config("devices:\n  - {name: p, protocol: modbus_tcp, host: h}\n")
    with pytest.raises(Exception, match="frozen"):
        cfg.devices[0].host = "other"  # type: ignore[misc]


def test_reference_notation() -> None:
    assert modbus_reference("holding", 0) == "40001"
    assert modbus_reference("input", 9) == "30010"
    assert modbus_reference("coil", 0) == "00001"
    assert modbus_reference("discrete", 4) == "10005"


def test_secrets_from_env_file_and_credentials_never_show_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EA_PW", "hunter2")
    s = Secret(env="EA_PW")
    assert s.reveal() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    assert Secret(file=f).reveal() == "s3cret"
    (tmp_path / "opcua-pw").write_text("cred")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert Secret(credential="opcua-pw").reveal() == "cred"
    monkeypatch.delenv("EA_PW")
    with pytest.raises(SecretError, match="environment variable EA_PW") as err:
        s.reveal()
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="exactly one"):
        Secret(env="A", file=f)
    assert os.environ.get("CREDENTIALS_DIRECTORY") == str(tmp_path)


def test_one_device_per_endpoint() -> None:
    text = (
        "devices:\n"
        "  - {name: a, protocol: modbus_tcp, host: 10.0.0.1, port: 502, units: [1]}\n"
        "  - {name: b, protocol: modbus_tcp, host: 10.0.0.1, port: 502, units: [2]}\n"
    )
    out = _errors(text)
    assert out.startswith("x.yaml:3 devices[1].port: a already uses 10.0.0.1:502")


def test_detector_source_must_be_a_value_or_a_model_output() -> None:
    base = (
        "devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n"
        "      - {name: v, table: holding, address: 0, type: uint16}\n"
        "assets:\n  - name: pump1\n    values: {vib: v}\n    detectors:\n"
    )
    ok = base + "      - {name: d, source: vib, detector: {kind: ewma}}\n"
    assert parse_config(ok).assets[0].detectors[0].detector.kind == "ewma"
    bad = base + "      - {name: d, source: nope, detector: {kind: sigma3}}\n"
    assert "x.yaml:11 assets[0].detectors[0].source: 'nope' is neither" in _errors(bad)
    out = _errors(base + "      - {name: d, source: vib, detector: {kind: x}}\n")
    assert out == "x.yaml:11 assets[0].detectors[0].detector: unknown kind 'x'; must be one of sigma3, iqr, ewma, stuck"
