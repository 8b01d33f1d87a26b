"""The embedded plant: a pumping station with faults, a PLC, Modbus and OPC UA servers.

Never imports ``agent``. Importing this package is cheap (numpy, yaml); the servers are
imported only when used (``serve`` is loaded lazily, asyncua only when OPC UA is enabled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .faults import RUL_SENTINEL_H, Fault, FaultKind, Scenario, ScenarioEvent, load_scenario
from .listen import ListenError
from .physics import Plant, PlantState, PumpParams, StationParams, oracle_speed, specific_energy_curve
from .register_map import NAMESPACE_URI, REGISTER_MAP, UNIT_ID, RegisterEntry, build_register_map

if TYPE_CHECKING:
    from .station import Station, free_port, serve

__all__ = [
    "NAMESPACE_URI",
    "REGISTER_MAP",
    "RUL_SENTINEL_H",
    "UNIT_ID",
    "Fault",
    "FaultKind",
    "ListenError",
    "Plant",
    "PlantState",
    "PumpParams",
    "RegisterEntry",
    "Scenario",
    "ScenarioEvent",
    "Station",
    "StationParams",
    "build_register_map",
    "free_port",
    "load_scenario",
    "oracle_speed",
    "serve",
    "specific_energy_curve",
]


def __getattr__(name: str) -> Any:
    if name in ("serve", "Station", "free_port"):
        from . import station

        return getattr(station, name)
    raise AttributeError(f"module 'simulator' has no attribute {name!r}")
