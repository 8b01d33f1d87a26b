"""The ownership file the running agent keeps and ``edge-agent write`` reads (real files)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.errors import StateFileError
from agent.ops.ownership import FILE_NAME, boot_id, owned_in_auto, read_ownership, write_ownership


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_written_atomically_with_pid_boot_id_time_and_targets(tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = datetime.now(UTC)
    write_ownership(state, {"P1.sp": "auto", "P2.sp": "shadow"}, os.getpid())
    path = state / FILE_NAME
    body = json.loads(path.read_text())
    assert body["pid"] == os.getpid() and body["boot_id"] == boot_id() and boot_id()
    assert body["targets"] == {"P1.sp": "auto", "P2.sp": "shadow"}
    assert sorted(body) == ["boot_id", "pid", "targets", "written_at"]
    assert [p.name for p in state.iterdir()] == [FILE_NAME]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044  # readable by the engineer's CLI
    owner = read_ownership(state)
    assert owner is not None and owner.pid == os.getpid()
    assert before - timedelta(seconds=1) <= owner.written_at <= datetime.now(UTC)
    assert owned_in_auto(state, "P1.sp")
    assert not owned_in_auto(state, "P2.sp")  # owned, but in shadow
    assert not owned_in_auto(state, "P3.sp")
    # replaced as a whole: a target no longer listed is no longer owned
    write_ownership(state, {"P2.sp": "auto"}, os.getpid())
    assert not owned_in_auto(state, "P1.sp") and owned_in_auto(state, "P2.sp")


def test_no_file_owns_nothing(tmp_path: Path) -> None:
    assert read_ownership(tmp_path) is None
    assert read_ownership(tmp_path / "does-not-exist") is None
    assert not owned_in_auto(tmp_path, "P1.sp")


def test_a_file_left_by_a_process_that_is_gone_or_by_another_boot_owns_nothing(tmp_path: Path) -> None:
    write_ownership(tmp_path, {"P1.sp": "auto"}, dead_pid())
    assert read_ownership(tmp_path) is None and not owned_in_auto(tmp_path, "P1.sp")
    write_ownership(tmp_path, {"P1.sp": "auto"}, os.getpid())
    path = tmp_path / FILE_NAME
    body = json.loads(path.read_text())
    body["boot_id"] = "00000000-0000-0000-0000-000000000000"
    path.write_text(json.dumps(body))
    assert read_ownership(tmp_path) is None


def test_a_live_process_of_another_user_still_owns(tmp_path: Path) -> None:
    # pid 1 exists on every Linux system; an unprivileged caller may not signal it
    write_ownership(tmp_path, {"P1.sp": "auto"}, 1)
    assert owned_in_auto(tmp_path, "P1.sp")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"pid": 1}',
        '{"pid": "1", "boot_id": "x", "written_at": "2026-01-01T00:00:00.000000Z", "targets": {}}',
        '{"pid": 1, "boot_id": "x", "written_at": "yesterday", "targets": {}}',
        '{"pid": 1, "boot_id": "x", "written_at": "2026-01-01T00:00:00.000000Z", "targets": {"a": 1}}',
        "\udcff",
    ],
)
def test_an_unreadable_file_is_an_error_never_owns_nothing(tmp_path: Path, content: str) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(StateFileError, match=f"ownership file {path} is not valid"):
        read_ownership(tmp_path)
    with pytest.raises(StateFileError):
        owned_in_auto(tmp_path, "P1.sp")


def test_a_file_that_cannot_be_opened_is_an_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).mkdir()  # a directory where the file should be
    with pytest.raises(StateFileError, match="cannot read the ownership file"):
        read_ownership(tmp_path)
