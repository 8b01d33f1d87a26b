"""The config section that binds a model bundle's roles to tags, per asset.

One bundle serves every identical asset: the binding names, for each asset, the tag that
plays each of the model's roles. :func:`check_binding` compares the binding with the
manifest (every role bound, units equal, tags sampled at least as often as the model
expects) and refuses a mismatch with a message naming both sides, e.g.::

    model pca-pump v1 role bearing_vibration expects unit mm/s, tag p1_vibration
    (configs/demo.yaml) has unit in/s

YAML::

    models:
      - name: pca-pump
        bundle: models/pca-pump
        threads: 1
        bad_input: hold
        hold_cycles: 3
        assets:
          p1: {bearing_vibration: p1_vibration, motor_current: p1_current}
          p2: {bearing_vibration: p2_vibration, motor_current: p2_current}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from agent.configbase import FrozenModel
from agent.errors import ModelError
from agent.modelstore.manifest import Manifest

__all__ = [
    "BadInputPolicy",
    "ModelBinding",
    "Problem",
    "binding_problems",
    "binding_warnings",
    "check_binding",
]

BadInputPolicy = Literal["skip", "hold"]

_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"

# A tag polled this much slower than the model's sample period is still accepted (jitter in
# configured intervals, e.g. 1000 ms vs 1.0 s written as 1.001).
_PERIOD_TOLERANCE = 1e-3


class ModelBinding(FrozenModel):
    """One model in the config: its bundle, threads, and which tag plays which role per asset.

    ``bad_input``: what happens when an input is BAD, stale, not finite or out of the
    manifest's plausible range. ``skip``: the asset's window is not scored until the bad
    sample has left it. ``hold``: the last good value stands in for at most ``hold_cycles``
    consecutive ticks (and the frame's good mask says so), then as ``skip``. Ticks are the
    model's own (every ``window.sample_period_s`` of its manifest), not the agent's cycles.
    """

    name: Annotated[str, Field(pattern=_NAME, max_length=64)]
    bundle: Path
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    variant: str | None = None
    assets: Annotated[dict[str, dict[str, str]], Field(min_length=1)]
    bad_input: BadInputPolicy = "skip"
    hold_cycles: Annotated[int, Field(ge=1, le=10_000)] = 3
    persist_window: bool | None = None
    """Keep the window in the state directory across restarts; by default (None) for models
    sampled every 5 s or slower (agent.inference.PERSIST_MIN_PERIOD_S)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.bad_input == "skip" and "hold_cycles" in self.model_fields_set:
            raise ValueError("hold_cycles applies only to bad_input: hold")
        for asset, roles in self.assets.items():
            if not roles:
                raise ValueError(f"asset {asset!r} binds no roles")
        return self

    @property
    def hold_limit(self) -> int:
        """How many consecutive ticks a held value may stand in (0 for ``skip``)."""
        return self.hold_cycles if self.bad_input == "hold" else 0


def _fmt_period(seconds: float) -> str:
    return f"{seconds:g} s"


Problem = tuple[tuple[str, ...], str]
"""Where in the binding (``("assets", asset, role)``, or ``()`` for the binding itself) and what."""


def binding_problems(
    manifest: Manifest,
    binding: ModelBinding,
    tag_units: Mapping[str, str],
    tag_periods_s: Mapping[str, float],
    *,
    source: str = "config",
) -> list[Problem]:
    """Every mismatch between a binding and its manifest, each with where in the binding it is.

    ``tag_units`` maps tag → engineering unit, ``tag_periods_s`` tag → how often it is
    refreshed (the poll interval). ``source`` names the config file in messages. A tag
    refreshed faster than the model's sample period is fine (the window takes the latest value,
    or the mean of the polls, on each tick); slower is a mismatch (the window would repeat
    stale values). Units must be equal as written: the agent never converts units silently.
    """
    who = f"model {manifest.ident}"
    period = manifest.window.sample_period_s
    problems: list[Problem] = []
    if binding.name != manifest.name:
        problems.append(
            (
                ("name",),
                f"binding {binding.name!r} ({source}) points at bundle {binding.bundle}, "
                f"whose manifest names {who}",
            )
        )
    wanted = manifest.roles
    for asset, roles in binding.assets.items():
        for role in wanted:
            if role not in roles:
                problems.append(
                    (("assets", asset), f"{who} needs role {role}, asset {asset} ({source}) does not bind it")
                )
        for role, tag in roles.items():
            where = ("assets", asset, role)
            if role not in wanted:
                problems.append(
                    (
                        where,
                        f"{who} has no role {role} (roles: {', '.join(wanted)}), "
                        f"asset {asset} ({source}) binds it to tag {tag}",
                    )
                )
                continue
            spec = manifest.role(role)
            unit = tag_units.get(tag)
            if unit is None:
                problems.append(
                    (
                        where,
                        f"{who} role {role} of asset {asset}: tag {tag} ({source}) is not a configured tag",
                    )
                )
                continue
            if unit.strip() != spec.unit.strip():
                shown = unit if unit else "no unit"
                problems.append(
                    (
                        where,
                        f"{who} role {role} expects unit {spec.unit}, tag {tag} ({source}) has "
                        f"{'unit ' + shown if unit else shown}",
                    )
                )
            tag_period = tag_periods_s.get(tag)
            if tag_period is None:
                problems.append(
                    (where, f"{who} role {role}: tag {tag} ({source}) has no known refresh period")
                )
            elif tag_period > period * (1 + _PERIOD_TOLERANCE):
                problems.append(
                    (
                        where,
                        f"{who} role {role} expects a sample every {_fmt_period(period)}, "
                        f"tag {tag} ({source}) is polled every {_fmt_period(tag_period)}: "
                        "poll it at least as often as the model samples",
                    )
                )
    return problems


def binding_warnings(
    manifest: Manifest, binding: ModelBinding, tag_periods_s: Mapping[str, float], *, source: str = "config"
) -> list[Problem]:
    """What works but is likely not what the model was trained on: a ``mean`` role whose tag
    is polled fewer than twice per sample period (the "mean" is then one sample)."""
    who = f"model {manifest.ident}"
    period = manifest.window.sample_period_s
    out: list[Problem] = []
    for asset, roles in binding.assets.items():
        for role, tag in roles.items():
            if role not in manifest.roles or manifest.role(role).aggregation != "mean":
                continue
            tag_period = tag_periods_s.get(tag)
            if tag_period is None or tag_period > period * (1 + _PERIOD_TOLERANCE):
                continue  # an error already (binding_problems)
            polls = period / tag_period
            if polls < 2 * (1 - _PERIOD_TOLERANCE):
                out.append(
                    (
                        ("assets", asset, role),
                        f"{who} role {role} is the mean over {_fmt_period(period)}, tag {tag} ({source}) is "
                        f"polled every {_fmt_period(tag_period)}: {polls:.3g} polls per period, fewer than 2",
                    )
                )
    return out


def check_binding(
    manifest: Manifest,
    binding: ModelBinding,
    tag_units: Mapping[str, str],
    tag_periods_s: Mapping[str, float],
    *,
    source: str = "config",
) -> None:
    """Check a binding against its manifest; raise ModelError listing every mismatch
    (:func:`binding_problems`)."""
    problems = binding_problems(manifest, binding, tag_units, tag_periods_s, source=source)
    if problems:
        raise ModelError("\n".join(message for _, message in problems))
