"""Base of every configuration model, and secrets.

Feature modules define their own config sections on :class:`FrozenModel` (frozen, unknown
keys rejected); :mod:`agent.config` assembles them and adds file and line to every error.

A :class:`Secret` names an environment variable, a file, or a systemd credential and is read
only when needed. Its value never appears in ``repr()``, logs or error messages.

A validator that knows *which nested field* is wrong raises :class:`LocatedError` with a path
relative to the model it validates; :func:`agent.config.parse_config` appends it to the model's
own path and finds the line. One ``LocatedError`` may carry several problems, so a cross-check
reports every problem it finds at once.

Every tag the agent may write declares its :data:`Purpose`; the drivers refuse a write made for
any other purpose (:func:`check_purpose` is the rule both protocols' tags share).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, model_validator

from agent.errors import SecretError
from agent.ops.logging import registers_secret

__all__ = ["PURPOSES", "FrozenModel", "Loc", "LocatedError", "Purpose", "Secret", "check_purpose"]

Loc = tuple[int | str, ...]
"""A field path: keys and list indexes, e.g. ``("devices", 1, "tags", 3, "word_order")``."""

Purpose = Literal["setpoint", "recommendation", "display", "heartbeat", "status", "command"]
"""Why the agent writes a tag: a Guard target's setpoint, a target's recommendation (advise
mode), an HMI display value, the heartbeat, the status word, or a deliberate command
(commissioning writes). A write made for another purpose than the tag's is refused."""

PURPOSES: tuple[str, ...] = get_args(Purpose)


class LocatedError(ValueError):
    """Raised by validators to point at nested fields (paths relative to the model validated).

    ``LocatedError(loc, message)`` is one problem; :meth:`many` bundles several. ``str()`` is
    every message, ``; ``-separated (what a bare pydantic ValidationError shows).
    """

    def __init__(self, loc: Loc, message: str) -> None:
        self.problems: list[tuple[Loc, str]] = [(loc, message)]
        super().__init__(message)

    @property
    def loc(self) -> Loc:
        """The path of the first problem."""
        return self.problems[0][0]

    @classmethod
    def many(cls, problems: Sequence[tuple[Loc, str]]) -> LocatedError:
        """One error carrying every ``(loc, message)`` of ``problems`` (at least one)."""
        err = cls(*problems[0])
        err.problems = list(problems)
        err.args = ("; ".join(m for _, m in problems),)
        return err


def check_purpose(access: str, purpose: str | None) -> None:
    """A tag the agent may write (access other than ``read``) declares its purpose; a tag it
    only reads declares none. Raises :class:`LocatedError` at ``purpose``."""
    if access != "read" and purpose is None:
        raise LocatedError(
            ("purpose",),
            f"access {access} needs purpose: one of {', '.join(PURPOSES)} "
            "(the agent writes a tag only for its declared purpose)",
        )
    if access == "read" and purpose is not None:
        raise LocatedError(
            ("purpose",),
            f"purpose {purpose} applies only to a tag the agent writes (access write or read-write)",
        )


class FrozenModel(BaseModel):
    """Frozen, and unknown keys are errors (a typo must never be silently ignored)."""

    # defer_build: a model's validator is built when first used, so the sections nested in the
    # config are built once inside its validator and not again each on its own (memory).
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


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

    @registers_secret
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
