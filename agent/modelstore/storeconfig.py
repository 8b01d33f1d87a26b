"""The ``models_store`` config section (kept apart from :mod:`agent.modelstore.store` so that
loading a config imports no onnxruntime)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from agent.configbase import FrozenModel

__all__ = ["DEFAULT_STORE_DIR", "ModelsStoreConfig"]

DEFAULT_STORE_DIR = Path("/var/lib/edge-agent/models")


class ModelsStoreConfig(FrozenModel):
    """Where the model store lives and how many versions of each model it keeps.

    YAML: ``models_store: {dir: /var/lib/edge-agent/models, keep: 3, poll_s: 2.0}``.
    """

    dir: Path = DEFAULT_STORE_DIR
    keep: Annotated[int, Field(ge=2, le=100)] = 3
    """Versions kept per model (the current one and the newest others); older are removed."""
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """How often the running agent looks at each store model's ``current`` and ``incoming/``."""
