"""Protocol drivers. :func:`make_driver` picks the driver for a configured device.

asyncua is imported only when an OPC UA device is configured (it costs about 25 MB of RSS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import AnyDevice
    from agent.drivers.modbus import ModbusDriver
    from agent.drivers.opcua import OpcUaDriver

__all__ = ["make_driver"]


def make_driver(device: AnyDevice) -> ModbusDriver | OpcUaDriver:
    """A Source and Sink for ``device`` (not yet entered)."""
    if device.protocol == "opcua":
        from agent.drivers.opcua import OpcUaDriver

        return OpcUaDriver(device)
    from agent.drivers.modbus import ModbusDriver

    return ModbusDriver(device)
