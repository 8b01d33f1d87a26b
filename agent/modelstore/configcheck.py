"""A new bundle's manifest checked against the running config, before it enters the store.

Every binding that names the model (``store: NAME``, or a binding of the same name) is checked
with :func:`~agent.modelstore.binding.check_binding` (roles, units, the bound tags polled at
least as often as the model's sample period), and each role's plausible range against what
its tag can hold (a range the tag cannot represent at all is a mismatch).
"""

from __future__ import annotations

from collections.abc import Callable

from agent.config import Config
from agent.errors import ModelError
from agent.modelstore.binding import check_binding
from agent.modelstore.manifest import Manifest

__all__ = ["binding_checker"]


def binding_checker(config: Config, source: str) -> Callable[[Manifest], None]:
    """A ``check(manifest)`` for :meth:`agent.modelstore.store.Store.install`: raises
    ModelError listing every mismatch with the bindings of ``config`` (read from ``source``)."""
    units = {t.name: t.engineering_unit for _, t in config.iter_tags()}
    periods = {t.name: d.poll_interval_ms / 1000 for d, t in config.iter_tags()}
    limits = {t.name: getattr(t, "value_limits", None) for _, t in config.iter_tags()}

    def check(manifest: Manifest) -> None:
        problems: list[str] = []
        for b in config.models:
            if b.store != manifest.name and not (b.store is None and b.name == manifest.name):
                continue
            try:
                check_binding(
                    manifest, b.model_copy(update={"name": manifest.name}), units, periods, source=source
                )
            except ModelError as exc:
                problems.append(str(exc))
            for asset, roles in b.assets.items():
                for role, tag in roles.items():
                    lim = limits.get(tag)
                    if lim is None or role not in manifest.roles:
                        continue
                    lo, hi = manifest.role(role).range
                    if hi < lim[0] or lo > lim[1]:
                        problems.append(
                            f"model {manifest.ident} role {role} has range [{lo:g}, {hi:g}], tag {tag} of "
                            f"asset {asset} ({source}) can only hold [{lim[0]:g}, {lim[1]:g}]"
                        )
        if problems:
            raise ModelError("\n".join(problems))

    return check
