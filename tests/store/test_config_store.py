"""Config additions of the model store: `store:` bindings, `models_store`, the model-status
register; every error names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import check_paths, load_config
from agent.errors import ConfigError
from tests.store.kit import write_config


def edited(tmp_path: Path, old: str, new: str) -> Path:
    path = write_config(tmp_path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


def line_of(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def test_store_binding_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path))
    assert cfg.models[0].store == "tiny" and cfg.models[0].bundle is None
    assert cfg.models_store.keep == 3 and cfg.hmi.model_status_tag == "ModelStatus"
    problems = check_paths(cfg, tmp_path / "agent.yaml")
    line = line_of(tmp_path / "agent.yaml", "store: tiny")
    assert problems == [
        f"{tmp_path / 'agent.yaml'}:{line} models[0].store: the model store {tmp_path / 'store'} has no "
        "current version of tiny (edge-agent models install BUNDLE)"
    ]
    (tmp_path / "store" / "tiny").mkdir(parents=True)
    (tmp_path / "store" / "tiny" / "current").symlink_to("1")
    assert check_paths(cfg, tmp_path / "agent.yaml") == []


def test_bundle_and_store_together_refused(tmp_path: Path) -> None:
    path = edited(tmp_path, "    store: tiny\n", "    store: tiny\n    bundle: /opt/tiny\n")
    msg = error(path)
    assert f"{path}:{line_of(path, '- name: tiny')} models[0]:" in msg
    assert "exactly one of bundle" in msg


def test_neither_bundle_nor_store_refused(tmp_path: Path) -> None:
    path = edited(tmp_path, "    store: tiny\n", "")
    assert "exactly one of bundle (a directory) or store" in error(path)


def test_bad_store_name_and_keep(tmp_path: Path) -> None:
    path = edited(tmp_path, "store: tiny", "store: ../etc")
    msg = error(path)
    assert f"{path}:{line_of(path, 'store: ../etc')} models[0].store:" in msg
    path = edited(tmp_path, "keep: 3", "keep: 1")
    assert f"{path}:{line_of(path, 'keep: 1')} models_store.keep:" in error(path)


def test_model_status_tag_needs_purpose_status(tmp_path: Path) -> None:
    path = edited(tmp_path, "access: read-write, purpose: status", "access: read-write, purpose: display")
    msg = error(path)
    assert (
        f"{path}:{line_of(path, 'hmi: {model_status_tag')} hmi.model_status_tag:" in msg
        and "purpose status" in msg
    )
    path = edited(tmp_path, "model_status_tag: ModelStatus", "model_status_tag: Nope")
    assert "hmi.model_status_tag: unknown tag 'Nope'" in error(path)
