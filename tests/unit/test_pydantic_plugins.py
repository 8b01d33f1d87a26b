"""agent.pydantic_plugins: the agent's process validates without pydantic plugins, and without
the ``importlib.metadata`` scan pydantic's loader would import to look for them; the switch
pydantic documents (``PYDANTIC_DISABLE_PLUGINS``) still decides.

Each case runs in a fresh interpreter: which loader a process has is decided once, by its first
import of the agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Validates the shipped demo config and a bundle manifest, the agent's two uses of pydantic.
_VALIDATE = (
    "import sys, agent.pydantic_plugins as p; "
    "from agent.config import load_config; from agent.modelstore.bundle import load_bundle; "
    "cfg = load_config('configs/demo.yaml'); "
    "b = load_bundle('models/pca-pump', trusted_keys=['export/keys/dev-ed25519.pub']); "
    "loader = sys.modules[p.LOADER]; "
    "print(len(cfg.devices), b.manifest.name, "
    "'stub' if loader.get_plugins is p._no_plugins else 'pydantic', "
    "'metadata' if 'importlib.metadata' in sys.modules else 'no-metadata', "
    "list(loader.get_plugins()))"
)


def _run(code: str, disable: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if disable is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = disable
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_agent_validates_with_no_plugin_and_no_metadata_scan() -> None:
    for disable in (None, "__all__", "1", "true"):
        assert _run(_VALIDATE, disable) == "1 pca-pump stub no-metadata []", disable


def test_any_other_value_of_the_switch_leaves_pydantic_its_own_loader() -> None:
    # empty: every plugin; a name list: all but those (pydantic's documented meanings)
    for disable in ("", "some_plugin"):
        assert _run(_VALIDATE, disable) == "1 pca-pump pydantic metadata []", disable


def test_pydantic_still_keeps_its_loader_where_the_agent_replaces_it() -> None:
    """The pin: this pydantic's loader is a module at LOADER whose get_plugins the validator
    factory imports, and under the switch it answers what the stub answers (no plugins)."""
    code = (
        "import inspect, os, agent.pydantic_plugins as p, pydantic.plugin._schema_validator as s; "
        "assert f'from ._loader import get_plugins' in inspect.getsource(s.create_schema_validator); "
        "import importlib; real = importlib.import_module(p.LOADER); "
        "assert real.get_plugins is not p._no_plugins; "
        "os.environ['PYDANTIC_DISABLE_PLUGINS'] = '__all__'; print(list(real.get_plugins()))"
    )
    assert _run(code, "") == "[]"


def test_a_loader_imported_before_the_agent_stands() -> None:
    """A process that built a pydantic validator before it imported the agent keeps pydantic's
    loader (and its answer): the agent does not swap it under running code."""
    code = (
        "import pydantic, sys\n"
        "class M(pydantic.BaseModel):\n    x: int = 1\n"
        "M()\n"
        "import agent.pydantic_plugins as p\n"
        "print(p.load_no_plugins(), sys.modules[p.LOADER].get_plugins is p._no_plugins)"
    )
    assert _run(code, None) == "False False"
