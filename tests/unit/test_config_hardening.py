"""Broken and hostile config files (issue 16): always one line ``file:line field: message`` per
problem and exit 2, never a traceback, quickly and in bounded memory; and what ``edge-agent
check`` verifies outside the file (:func:`check_paths`)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import check_paths, load_config, parse_config
from agent.configyaml import MAX_ALIASES, MAX_CONFIG_BYTES, MAX_DEPTH
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "configs"
DEMO = ROOT / "configs" / "demo.yaml"
ONE_LINE = re.compile(r"^.+:\d+ .+: .+$")

DEVICE = "devices:\n  - {name: p, protocol: modbus_tcp, host: 127.0.0.1}\n"


def line(text: str, needle: str) -> int:
    (hit,) = [i + 1 for i, s in enumerate(text.splitlines()) if needle in s]
    return hit


def refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x.yaml")
    return err.value.problems


def refused_file(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.problems


# --------------------------------------------------------------------------- bytes and text


def test_a_file_larger_than_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.write(DEVICE.encode())
        f.write(b"# " + b"x" * (MAX_CONFIG_BYTES + 1) + b"\n")
    t0 = time.perf_counter()
    assert refused_file(big) == [f"{big}:1 (file): larger than 4 MiB: not read"]
    assert time.perf_counter() - t0 < 1.0
    assert refused(DEVICE + "#" * MAX_CONFIG_BYTES) == ["x.yaml:1 (file): larger than 4 MiB: not read"]
    # Multi-byte characters count as bytes.
    assert refused(DEVICE + "#" + "é" * (MAX_CONFIG_BYTES // 2)) == ["x.yaml:1 (file): larger than 4 MiB: not read"]


def test_only_a_regular_file_is_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # nobody writes it: reading would block for ever
    t0 = time.perf_counter()
    assert refused_file(fifo) == [f"{fifo}:1 (file): not a regular file"]
    assert time.perf_counter() - t0 < 1.0
    assert refused_file(Path("/dev/zero")) == ["/dev/zero:1 (file): not a regular file"]
    assert refused_file(tmp_path) == [f"{tmp_path}:1 (file): not a regular file"]
    missing = tmp_path / "missing.yaml"
    assert refused_file(missing) == [f"{missing}:1 (file): cannot read: No such file or directory"]


def test_latin1_names_the_line_of_the_first_bad_byte() -> None:
    path = GOLDEN / "latin1.yaml"
    assert refused_file(path) == [
        f"{path}:3 (encoding): not UTF-8: byte 0xE9 at column 20 (binary data, or another encoding such "
        "as Latin-1): save the file as UTF-8"
    ]


def test_binary_garbage_names_the_line_of_the_first_bad_byte() -> None:
    path = GOLDEN / "garbage.yaml"
    assert refused_file(path) == [
        f"{path}:3 (encoding): not UTF-8: byte 0xB9 at column 1 (binary data, or another encoding such "
        "as Latin-1): save the file as UTF-8"
    ]


def test_control_characters_and_lone_surrogates_are_refused_with_their_line() -> None:
    assert refused(DEVICE + "agent: {name: a\x00b}\n") == [
        "x.yaml:3 (yaml): unacceptable character #x0000: control characters are not allowed"
    ]
    assert refused("agent: {name: é}\n" + DEVICE + "x: \x07\n") == [
        "x.yaml:4 (yaml): unacceptable character #x0007: control characters are not allowed"
    ]
    assert refused(DEVICE + "agent: {name: \udc80}\n") == [
        "x.yaml:3 (encoding): character U+DC80 is not text (a lone surrogate)"
    ]


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + DEVICE.encode())
    assert load_config(path).devices[0].name == "p"


# --------------------------------------------------------------------------- YAML


def test_the_alias_bomb_is_refused_quickly_in_bounded_memory() -> None:
    path = GOLDEN / "alias_bomb.yaml"
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        problems = refused_file(path)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problems == [
        f"{path}:8 (yaml): aliases (*name) up to here would expand to 141148 nodes, more than 100000 "
        "beyond the file's own: refused (an alias-expansion bomb?)"
    ]
    assert elapsed < 1.0
    assert peak < 5 * 1024 * 1024


def test_a_wide_alias_bomb_is_refused_too() -> None:
    # Few levels, one big list referenced by every alias the budget allows.
    items = ", ".join(["x"] * 2000)
    text = DEVICE + f"big: &big [{items}]\nmany: [" + ", ".join(["*big"] * (MAX_ALIASES - 1)) + "]\n"
    (only,) = refused(text)
    assert only.startswith("x.yaml:4 (yaml): aliases (*name) up to here would expand to ")


def test_alias_budget_recursion_and_depth() -> None:
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    assert refused(many) == [f"x.yaml:2 (yaml): more than {MAX_ALIASES} aliases (*name)"]
    assert refused("a: &a [1, *a]\n") == ["x.yaml:1 (yaml): recursive alias *a: a node contains itself"]
    assert refused("a: &a 1\nb: &a 2\n") == ["x.yaml:2 b: anchor &a is defined twice"]
    deep = "a:\n" + "".join("  " * i + "- \n" for i in range(1, MAX_DEPTH + 2))
    (only,) = refused(deep)
    assert only.endswith(f"(yaml): nested more than {MAX_DEPTH} levels deep")
    assert refused("[" * 100_000)[0].startswith("x.yaml:1 (yaml): ")
    # Aliases within the budget are fine (a shared detector block, say).
    shared = DEVICE + "x: &d {kind: ewma}\ny: *d\n"
    assert refused(shared) == ["x.yaml:3 x: unknown key", "x.yaml:4 y: unknown key"]


def test_duplicate_keys_are_refused_everywhere() -> None:
    text = "devices:\n  - name: p\n    protocol: modbus_tcp\n    host: a\n    host: b\n"
    assert refused(text) == [
        "x.yaml:5 devices[0].host: duplicate key (first given at line 4; YAML would silently keep the last)"
    ]
    flow = DEVICE + "assets:\n  - {name: a, values: {v: x, v: y}}\n"
    assert refused(flow) == [
        "x.yaml:4 assets[0].values.v: duplicate key (first given at line 4; YAML would silently keep the last)"
    ]


def test_keys_must_be_text_and_exotic_yaml_is_refused() -> None:
    assert refused(DEVICE + "yes: 1\n") == ["x.yaml:3 (top level): key 'yes' reads as bool, not text: quote it"]
    assert refused(DEVICE + "? [a]\n: 1\n") == [
        "x.yaml:3 (top level): a key must be plain text, not a mapping or a sequence"
    ]
    assert refused(DEVICE + "<<: {agent: {}}\n") == [
        "x.yaml:3 (top level): merge keys (<<) are not supported: write the keys out"
    ]
    assert refused(DEVICE + "agent: !!python/object:os.system {}\n") == [
        "x.yaml:3 agent: unsupported tag tag:yaml.org,2002:python/object:os.system on a mapping"
    ]
    assert refused(DEVICE + "agent: {name: !!binary aGk=}\n") == [
        "x.yaml:3 agent.name: unsupported tag tag:yaml.org,2002:binary"
    ]
    assert refused(DEVICE + "agent: {name: 2024-13-45}\n") == [
        "x.yaml:3 agent.name: cannot read value '2024-13-45': month must be in 1..12"
    ]
    assert refused("a: 1\n---\nb: 2\n") == ["x.yaml:2 (yaml): a second document (---): a config is one document"]


# --------------------------------------------------------------------------- meaning


def test_empty_file_and_no_devices_are_errors() -> None:
    assert refused_file(GOLDEN / "empty.yaml") == [f"{GOLDEN / 'empty.yaml'}:1 devices: no devices configured"]
    assert refused("# only a comment\n") == ["x.yaml:1 devices: no devices configured"]
    assert refused("agent: {name: a}\ndevices: []\n") == ["x.yaml:2 devices: no devices configured"]
    assert refused("- a\n") == ["x.yaml:1 (top level): must be a mapping"]


ASSET = (
    "devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n"
    "      - {name: v, table: input, address: 0, type: float32}\n"
    "models:\n  - name: pca.v2\n    bundle: bundle\n    assets: {pump: {x: v}}\n"
    "assets:\n  - name: pump\n    values: {vibration: v}\n"
    "    detectors: [{name: vib_ewma, source: vibration, detector: {kind: ewma}}]\n"
    "alarms:\n  defs:\n    - {name: a, code: 1, kind: alert, source: SOURCE, high: {value: 1, severity: 1}}\n"
)


@pytest.mark.parametrize("source", ["vibration", "vib_ewma", "vib_ewma.outlier", "pca.v2.t2"])
def test_alarm_sources_that_name_something(source: str) -> None:
    assert parse_config(ASSET.replace("SOURCE", source), "x.yaml").alarms.defs[0].source == source


def test_an_alarm_source_that_names_nothing_is_an_error() -> None:
    assert refused(ASSET.replace("SOURCE", "vibraton")) == [
        "x.yaml:17 alarms.defs[0].source: 'vibraton' names nothing: not a value or detector of any asset, "
        "nor an output <model>.<output> of a model bound to one; did you mean 'vibration'?"
    ]
    assert refused(ASSET.replace("SOURCE", "pca.t2")) == [
        "x.yaml:17 alarms.defs[0].source: 'pca.t2' names nothing: not a value or detector of any asset, "
        "nor an output <model>.<output> of a model bound to one"
    ]
    text = ASSET.replace("SOURCE", "vibration").replace("    values:", "    anomaly_source: pca.v3.t2\n    values:")
    assert refused(text) == [
        "x.yaml:13 assets[0].anomaly_source: 'pca.v3.t2' is neither a value or detector of this asset nor an "
        "output <model>.<output> of a model bound to it"
    ]


def test_state_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    afile = tmp_path / "passwd"
    afile.write_text("root:x:0:0::/root:/bin/sh\n")
    text = f"agent:\n  state_dir: {afile}\n" + DEVICE
    assert refused(text) == [f"x.yaml:2 agent.state_dir: {afile} exists and is not a directory"]


# --------------------------------------------------------------------------- check_paths and edge-agent check


def write_config(tmp_path: Path, *, bundle: str, key: str, state_dir: Path, audit: Path | None = None) -> Path:
    text = (
        f"agent:\n  state_dir: {state_dir}\n"
        + "devices:\n  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n"
        "      - {name: v, table: input, address: 0, type: float32}\n"
        f"models:\n  - name: m\n    bundle: {bundle}\n    assets: {{pump: {{x: v}}}}\n"
        f"models_trust:\n  public_keys: [{key}]\n"
        "assets:\n  - name: pump\n"
    )
    if audit is not None:
        text += f"audit:\n  path: {audit}\n"
    path = tmp_path / "conf" / "agent.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_check_paths_all_well(tmp_path: Path) -> None:
    (tmp_path / "conf" / "bundles" / "m").mkdir(parents=True)
    (tmp_path / "conf" / "bundles" / "m" / "manifest.json").write_text("{}")
    (tmp_path / "conf" / "key.pub").write_text("key")
    # Relative bundle and key paths resolve against the config file's directory.
    path = write_config(tmp_path, bundle="bundles/m", key="key.pub", state_dir=tmp_path / "new" / "state")
    assert check_paths(load_config(path), path) == []


def test_check_paths_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "empty-bundle").mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    path = write_config(tmp_path, bundle="missing", key="nokey.pub", state_dir=blocker / "state", audit=blocker / "x" / "a.sqlite")
    conf = tmp_path / "conf"
    text = path.read_text()
    assert check_paths(load_config(path), path) == [
        f"{path}:{line(text, 'bundle:')} models[0].bundle: bundle directory {conf / 'missing'} does not exist",
        f"{path}:{line(text, 'public_keys')} models_trust.public_keys[0]: public key file {conf / 'nokey.pub'} "
        "does not exist",
        f"{path}:{line(text, 'state_dir')} agent.state_dir: state directory {blocker / 'state'} cannot be "
        f"created: {blocker} is not a directory",
        f"{path}:{line(text, '  path:')} audit.path: audit log directory {blocker / 'x'} cannot be created: "
        f"{blocker} is not a directory",
    ]
    path = write_config(tmp_path, bundle="empty-bundle", key="empty-bundle", state_dir=tmp_path)
    assert check_paths(load_config(path), path) == [
        f"{path}:{line(text, 'bundle:')} models[0].bundle: bundle directory {conf / 'empty-bundle'} has no "
        "manifest.json",
        f"{path}:{line(text, 'public_keys')} models_trust.public_keys[0]: public key file "
        f"{conf / 'empty-bundle'} is not a regular file",
    ]


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    """``edge-agent check -c path`` in a child (main() configures logging process-wide)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_edge_agent_check_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    path = write_config(tmp_path, bundle="missing", key="nokey.pub", state_dir=blocker / "state")
    proc = run_check(path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == check_paths(load_config(path), path)
    assert len(proc.stderr.splitlines()) == 3 and all(ONE_LINE.match(s) for s in proc.stderr.splitlines())
    assert "OK" not in proc.stdout


@pytest.mark.parametrize("name", ["latin1.yaml", "alias_bomb.yaml", "garbage.yaml", "empty.yaml"])
def test_edge_agent_check_on_a_broken_file_is_one_line_and_exit_2(name: str) -> None:
    proc = run_check(GOLDEN / name)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert ONE_LINE.match(line) and line.startswith(str(GOLDEN / name) + ":")


# --------------------------------------------------------------------------- fuzzing


def assert_one_line_errors(text: str) -> None:
    """parse_config either accepts ``text`` or raises ConfigError, one well-formed line each."""
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert ONE_LINE.match(problem), problem
            assert problem.splitlines() == [problem], problem
        for line in str(exc).splitlines():
            assert ONE_LINE.match(line), line


DEMO_TEXT = DEMO.read_text(encoding="utf-8")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
YAMLISH = st.sampled_from(
    [":", " ", "\n", "-", "[", "]", "{", "}", "&a", "*a", "!!", "'", '"', "#", "<<", "~", "\t", "\x00", "é", "?", ","]
)


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_random_text(text: str) -> None:
    assert_one_line_errors(text)


@FUZZ
@given(st.data())
def test_fuzz_mutated_demo_config(data: st.DataObject) -> None:
    text = DEMO_TEXT
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        kind = data.draw(st.sampled_from(["insert", "delete", "replace", "dup_line", "drop_line"]))
        if kind == "insert":
            text = text[:at] + data.draw(st.one_of(YAMLISH, st.text(max_size=8))) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 40)) :]
        elif kind == "replace":
            text = text[:at] + data.draw(YAMLISH) + text[at + 1 :]
        else:
            lines = text.splitlines(keepends=True)
            i = data.draw(st.integers(0, len(lines) - 1))
            lines[i : i + 1] = [lines[i]] * (2 if kind == "dup_line" else 0)
            text = "".join(lines)
    assert_one_line_errors(text)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["replace", "surrogateescape", "latin-1", "backslashreplace"]))
def test_fuzz_random_bytes_decoded_leniently(data: bytes, how: str) -> None:
    text = data.decode("latin-1") if how == "latin-1" else data.decode("utf-8", how)
    assert_one_line_errors(DEVICE + text)
    assert_one_line_errors(text)


def _leaves(data: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(data, dict):
        return [path] + [p for k, v in data.items() for p in _leaves(v, (*path, k))]
    if isinstance(data, list):
        return [path] + [p for i, v in enumerate(data) for p in _leaves(v, (*path, i))]
    return [path]


DEMO_DATA = yaml.safe_load(DEMO_TEXT)
DEMO_PATHS = _leaves(DEMO_DATA)
TAG_NAMES = [t["name"] for t in DEMO_DATA["devices"][0]["tags"]]
VALUES = st.one_of(
    st.sampled_from(TAG_NAMES),
    st.sampled_from(["read", "read-write", "write", "setpoint", "display", "holding", "coil", "bit", "uint16", "mask"]),
    st.integers(-70000, 70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=6),
    st.lists(st.integers(0, 300), max_size=3),
    st.dictionaries(st.sampled_from(["name", "tag", "min", "max", "purpose", "x"]), st.integers(0, 300), max_size=2),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(DEMO_PATHS), VALUES), min_size=1, max_size=4))
def test_fuzz_mutated_demo_values(changes: list[tuple[tuple[object, ...], object]]) -> None:
    """Valid YAML, wrong meaning: any value of the demo replaced (tags, addresses, purposes, limits)."""
    data = copy.deepcopy(DEMO_DATA)
    for path, value in changes:
        if not path:
            continue
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this path
    assert_one_line_errors(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
