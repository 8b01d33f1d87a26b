"""The ``record:`` section of the agent config (:class:`RecordConfig`), apart from the recorder
(:mod:`agent.record`) so that validating a config does not load the recorder: an agent that
records nothing never imports it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, model_validator

from agent.configbase import FrozenModel

__all__ = ["MIB", "RecordConfig"]

MIB = 1 << 20


class RecordConfig(FrozenModel):
    """The ``record:`` section of the agent config (absent: the agent records nothing).

    The running agent records from the polls it already makes (the PLC sees no extra client);
    ``edge-agent record`` takes its defaults from here and its command-line options win.
    """

    enabled: bool = True
    dir: Path | None = None
    """The recording directory (default: ``recording`` in the state directory; relative: to the
    working directory, as ``state_dir``). A recording already there is continued when it has
    the same tags and period, and refused otherwise."""
    tags: list[str] = []
    """Tags to record; with ``model`` the tags bound to its roles are added; neither: every
    tag the agent reads."""
    model: str | None = None
    """A model binding (``models[].name``): record the tags bound to its roles, for every asset."""
    period_s: Annotated[float, Field(ge=0.01, le=86_400)] | None = None
    """One row every period (default: the model's sample period, else the slowest poll
    interval of the devices recorded)."""
    rotate_mb: Annotated[float, Field(gt=0)] = 16.0
    """A new file pair once the open one holds this many MiB ..."""
    rotate_s: Annotated[float, Field(gt=0)] = 86_400.0
    """... or spans this many seconds."""
    quota_mb: Annotated[float, Field(gt=0)] = 1024.0
    """The recording's files never exceed this (the oldest pair is removed first)."""
    reserve_mb: Annotated[float, Field(ge=0)] = 512.0
    reserve_percent: Annotated[float, Field(ge=0, le=50)] = 5.0
    """Recording pauses while its file system has less free space than the smaller of the two
    (the audit log's room: a full audit disk stops automatic writes)."""
    flush_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    """Rows are written (off the event loop) this often."""
    manifest_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """``recording.json`` is rewritten at least this often while recording (and at every new
    file, pause, removal and the end): flash memory wears with every rewrite."""

    @model_validator(mode="after")
    def _quota_holds_two_files(self) -> Self:
        if self.rotate_mb * 2 > self.quota_mb:
            raise ValueError(
                f"rotate_mb {self.rotate_mb:g} must be at most half of quota_mb {self.quota_mb:g} "
                "(the open file pair and at least one closed)"
            )
        return self

    def directory(self, state_dir: Path) -> Path:
        """Where the recording goes."""
        return self.dir if self.dir is not None else state_dir / "recording"

    def reserve_bytes(self, total: int) -> int:
        """The free space kept for the audit log on a file system of ``total`` bytes."""
        return int(min(total * self.reserve_percent / 100, self.reserve_mb * MIB))
