"""Recommender bundles: a pumping station identified from its own data, signed like a model.

``edge-export identify`` fits every pump's head–flow and power–flow curve and the system curve
from recordings and writes a directory::

    station.json     the parameters with their standard errors, and the sha256 and size of
                     every other file (report.json, report.md)
    report.json      the fit: residuals, data used, prior and posterior per parameter
    report.md        the same for people
    signature.json   ed25519 over the exact bytes of station.json (agent.modelstore.signing)

Curves (r = n / n_rated, q per pump in m³/h, heads in m, power in kW):

* head: ``H = a r² + b r q − c q²``
* electrical power: ``P = d0 + p0 r³ + p1 r² q + p2 r q² + p3 q³``
* system (differential head the pump must make): ``H = static_head + level + k Q² + k_s q²``
* tank: ``A dL/dt = Q − D``

:func:`load_station_bundle` checks the signature against ``models_trust`` exactly as a model
bundle is checked and every listed file's hash, and raises :class:`~agent.errors.ModelError`
naming the bundle on any problem, so the caller keeps what it had.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError

from agent.configbase import FrozenModel
from agent.errors import ModelError
from agent.modelstore.files import MAX_FILE_BYTES, MAX_METADATA_BYTES, BundleDir
from agent.modelstore.signing import SIGNATURE_FILE, verify_manifest_signature

__all__ = [
    "STATION_FILE",
    "FileEntry",
    "Fitted",
    "PumpFit",
    "StationManifest",
    "SystemFit",
    "load_station_bundle",
]

STATION_FILE = "station.json"

_Finite = Annotated[float, Field(allow_inf_nan=False)]
_NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Fitted(FrozenModel):
    """A fitted value and its standard error (1 sigma, from the posterior of the fit)."""

    value: _Finite
    se: _NonNeg


class PumpFit(FrozenModel):
    """One pump's identified curves."""

    asset: str
    head: tuple[Fitted, Fitted, Fitted]  # a, b, c of H = a r² + b r q − c q²
    power: tuple[Fitted, Fitted, Fitted, Fitted, Fitted]  # d0, p0, p1, p2, p3
    bep_flow_m3h: Annotated[float, Field(gt=0, allow_inf_nan=False)]  # wire-to-water BEP, rated speed
    min_flow_m3h: _NonNeg  # minimum continuous flow at rated speed (proportional to speed)
    residual_head_m: _NonNeg  # RMS of the head fit
    residual_power_kw: _NonNeg


class SystemFit(FrozenModel):
    """The system curve, the suction line and the tank."""

    static_head_m: Fitted  # differential head at zero flow and empty tank
    system_k: Fitted  # m/(m³/h)², on the station flow
    suction_k: Fitted  # m/(m³/h)², per pump
    tank_area_m2: Fitted
    residual_head_m: _NonNeg


class FileEntry(FrozenModel):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0)]


class StationManifest(FrozenModel):
    """``station.json``: what the recommender uses instead of the datasheet."""

    schema_version: Literal[1] = 1
    kind: Literal["station"] = "station"
    name: str
    created_utc: str
    rated_speed_rpm: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    pumps: Annotated[list[PumpFit], Field(min_length=1)]
    system: SystemFit
    data: dict[str, str | int | float | list[str]] = {}
    files: dict[str, FileEntry] = {}

    @property
    def ident(self) -> str:
        return f"station {self.name} ({self.created_utc})"


def load_station_bundle(
    path: str | os.PathLike[str],
    trusted_keys: Sequence[str | os.PathLike[str]],
    allow_unsigned: bool = False,
) -> StationManifest:
    """Read, verify and parse a recommender bundle; ModelError naming it on any problem."""
    d = Path(path)
    with BundleDir(d) as bundle:
        raw = bundle.read(STATION_FILE, limit=MAX_METADATA_BYTES)
        signature = bundle.read_optional(SIGNATURE_FILE, limit=MAX_METADATA_BYTES)
        if not (allow_unsigned and signature is None):
            verify_manifest_signature(
                raw, signature, [Path(k) for k in trusted_keys], d, signed_file=STATION_FILE
            )
        try:
            manifest = StationManifest.model_validate(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ModelError(f"{d / STATION_FILE}: not JSON: {exc}") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ModelError(f"{d / STATION_FILE}: {where}: {err['msg']}") from None
        for name, entry in manifest.files.items():
            data = bundle.read(name, limit=MAX_FILE_BYTES, size=entry.size)
            actual = hashlib.sha256(data).hexdigest()
            if actual != entry.sha256:
                raise ModelError(
                    f"{d / name}: modified or corrupted: {STATION_FILE} says sha256 {entry.sha256}, "
                    f"the file has {actual}"
                )
    return manifest
