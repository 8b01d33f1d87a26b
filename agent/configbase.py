"""Base of every configuration model, and secrets.

Feature modules define their own config sections on :class:`FrozenModel` (frozen, unknown
keys rejected); :mod:`agent.config` assembles them and adds file and line to every error.

A :class:`Secret` names an environment variable, a file, or a systemd credential and is read
only when needed. Its value never appears in ``repr()``, logs or error messages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, model_validator

from agent.errors import SecretError

__all__ = ["FrozenModel", "Purpose", "Secret"]

Purpose = Literal["setpoint", "recommendation", "display", "heartbeat", "status", "command"]
"""Why the agent writes a tag; a write for any other purpose is refused."""


class FrozenModel(BaseModel):
    """Frozen, and unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Secret(FrozenModel):
    """Where a secret comes from: exactly one of ``env``, ``file`` or ``credential``.

    ``credential`` names a systemd credential (``LoadCredential=`` in the unit), read from
    ``$CREDENTIALS_DIRECTORY/<name>``.
    """

    env: str | None = None
    file: Path | None = None
    credential: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [k for k in ("env", "file", "credential") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file, credential")
        return self

    def describe(self) -> str:
        if self.env is not None:
            return f"environment variable {self.env}"
        if self.file is not None:
            return f"file {self.file}"
        return f"systemd credential {self.credential}"

    def reveal(self) -> str:
        """Read the secret now. Raises SecretError naming the source, never the value."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretError(f"secret not set: {self.describe()}")
            return value
        if self.file is not None:
            path = self.file
        else:
            cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
            if not cred_dir:
                raise SecretError(
                    f"secret unavailable: {self.describe()} (CREDENTIALS_DIRECTORY is not set; "
                    "is the agent running under systemd with LoadCredential=?)"
                )
            path = Path(cred_dir) / str(self.credential)
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"secret unreadable: {self.describe()}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"Secret({self.describe()})"
