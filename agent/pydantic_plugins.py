"""The agent validates with pydantic, without pydantic plugins.

Pydantic looks for plugins (entry points of the ``pydantic`` group of every installed
distribution) the first time it builds a validator, and a plugin runs its own code inside every
validation. In a process that writes setpoints, whether a config or a bundle's manifest is
accepted must not depend on what else happens to be installed beside the agent, so the agent
loads none. Pydantic's own switch for that, ``PYDANTIC_DISABLE_PLUGINS=__all__``, is read only
after its loader module has imported ``importlib.metadata`` (and with it ``email``,
``zipfile``, ``csv``, ``shutil``, ``bz2``, ``lzma``, ``tempfile``: about 1.6 MB of the agent's
resident memory for a scan whose answer is then ignored; bench/REPORT.md). So, unless
``PYDANTIC_DISABLE_PLUGINS`` says otherwise, :func:`load_no_plugins` puts a loader in its place
that answers what pydantic's own does under that switch: no plugins.

To let pydantic load plugins in the agent's process as usual, set ``PYDANTIC_DISABLE_PLUGINS``
to anything else than ``__all__``, ``1`` or ``true`` (empty: every plugin; a comma-separated
list: all but those), as pydantic documents.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Iterable
from typing import Any

__all__ = ["LOADER", "load_no_plugins"]

LOADER = "pydantic.plugin._loader"  # where pydantic >= 2.5 keeps get_plugins (tests pin it)
_DISABLED = (None, "__all__", "1", "true")  # unset, or pydantic's values for "no plugin at all"


def _no_plugins() -> Iterable[Any]:
    return ()


def load_no_plugins() -> bool:
    """Put the empty loader in place of pydantic's; True if it is now in place.

    Nothing is replaced when ``PYDANTIC_DISABLE_PLUGINS`` asks for plugins, when pydantic's
    loader is already imported (a validator was built before the agent's code was imported:
    its answer stands), or when this pydantic keeps its loader elsewhere."""
    if os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in _DISABLED:
        return False
    current = sys.modules.get(LOADER)
    if current is not None:
        return getattr(current, "get_plugins", None) is _no_plugins
    try:
        found = importlib.util.find_spec(LOADER) is not None
    except ImportError:
        found = False
    if not found:
        return False
    loader = types.ModuleType(
        LOADER, "pydantic's plugin loader for the agent: no plugins (agent.pydantic_plugins)"
    )
    loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    sys.modules[LOADER] = loader
    return True
