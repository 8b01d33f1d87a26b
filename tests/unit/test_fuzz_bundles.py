"""Fuzzing the bundle readers: a mutated manifest or archive is loaded or refused with a clear
ModelError (an archive: one line; a manifest: a head line and one line per problem, each naming
the file), never another exception, never a file written outside the destination.

Hypothesis mutates real inputs: the shipped manifests (byte flips, truncation, insertions,
and structured edits of their JSON: fields dropped, retyped, made huge or non-finite) and
tar.gz archives built member by member (names with ``..``, absolute paths, links, devices,
FIFOs, duplicate and nested members, oversized headers, garbage bytes).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ModelError
from agent.modelstore.archive import unpack_bundle
from agent.modelstore.manifest import parse_manifest

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "models").glob("*/manifest.json"))
SHIPPED = [p.read_bytes() for p in MANIFESTS]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line(exc: ModelError) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


def _parse(data: bytes) -> None:
    source = "models/x/manifest.json"
    try:
        parse_manifest(data, source)
    except ModelError as exc:
        head, *problems = str(exc).splitlines()
        assert head and "Traceback" not in str(exc), str(exc)
        assert head.startswith(source) or problems, str(exc)
        assert all(line.startswith(source) for line in problems), str(exc)


@FUZZ
@given(
    which=st.integers(0, len(SHIPPED) - 1),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 1 << 16), st.binary(max_size=8)),
        min_size=1,
        max_size=6,
    ),
)
def test_byte_mutations_of_a_shipped_manifest_load_or_are_refused_in_one_line(
    which: int, edits: list[tuple[str, int, bytes]]
) -> None:
    data = bytearray(SHIPPED[which])
    for kind, at, payload in edits:
        i = at % max(1, len(data))
        if kind == "flip" and data:
            data[i] ^= 1 << (at % 8)
        elif kind == "cut":
            del data[i:]
        elif kind == "insert":
            data[i:i] = payload
        elif kind == "delete":
            del data[i : i + len(payload) + 1]
    _parse(bytes(data))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@FUZZ
@given(which=st.integers(0, len(SHIPPED) - 1), data=st.data())
def test_structured_edits_of_a_shipped_manifest_load_or_are_refused_in_one_line(which: int, data: st.DataObject) -> None:
    doc = json.loads(SHIPPED[which])
    for _ in range(data.draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths))
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
    _parse(json.dumps(doc, allow_nan=True).encode())


# --------------------------------------------------------------------------- archives

MEMBER = st.fixed_dictionaries(
    {
        "name": st.sampled_from(
            ["manifest.json", "model.onnx", "b/manifest.json", "b/model.onnx", "../evil", "/etc/evil",
             "b/../../evil", "b/c/deep", "a/x", ".", "b/", "x\\y", "report.json", "model.onnx"]
        ) | st.text(min_size=1, max_size=12),
        "type": st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                 tarfile.CHRTYPE, tarfile.FIFOTYPE]),
        "data": st.binary(max_size=64),
        "link": st.sampled_from(["../../etc/passwd", "/etc/passwd", "model.onnx", "b/model.onnx"]),
        "size": st.sampled_from([None, 0, 1 << 40]),
    }
)  # fmt: skip


def _archive(members: list[dict[str, Any]], garbage: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m["name"])
            info.type = m["type"]
            if m["type"] in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = m["link"]
                tf.addfile(info)
            elif m["type"] == tarfile.REGTYPE:
                info.size = len(m["data"])
                tf.addfile(info, io.BytesIO(m["data"]))
            else:
                tf.addfile(info)
    raw = buf.getvalue()
    return raw + garbage if garbage else raw


@FUZZ
@given(members=st.lists(MEMBER, max_size=6), garbage=st.binary(max_size=16), flip=st.integers(0, 4096))
def test_archives_unpack_inside_their_destination_or_are_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, members: list[dict[str, Any]], garbage: bytes, flip: int
) -> None:
    work = tmp_path_factory.mktemp("arch")
    raw = bytearray(_archive(members, garbage))
    if flip < len(raw) and flip % 3 == 0:
        raw[flip] ^= 0xFF  # a damaged archive, too
    archive = work / "bundle.tar.gz"
    archive.write_bytes(bytes(raw))
    dest = work / "out"
    before = {p for p in work.parent.rglob("*")}
    try:
        unpack_bundle(archive, dest)
    except ModelError as exc:
        _one_line(exc)
    # whatever happened, nothing appeared outside dest, and dest holds only regular flat files
    outside = {p for p in work.parent.rglob("*")} - before - {dest} - set(dest.rglob("*"))
    assert not outside, outside
    for p in dest.rglob("*") if dest.exists() else []:
        assert p.is_file() and not p.is_symlink() and p.parent == dest, p
