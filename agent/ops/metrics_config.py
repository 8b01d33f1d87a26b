"""``agent.metrics``: where the Prometheus endpoint listens (:mod:`agent.ops.metrics` serves it).

Kept apart from the endpoint so that loading a config never imports prometheus-client (about
10 MB and 50 ms); the agent imports that only when the endpoint is on.
"""

from __future__ import annotations

import ipaddress
from typing import Self

from pydantic import model_validator

from agent.configbase import FrozenModel

__all__ = ["MetricsConfig", "parse_listen"]


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` or ``"[::1]:9108"`` → (host, port). Raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r}: expected host:port, e.g. 127.0.0.1:9108")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is not in 0..65535")
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsConfig(FrozenModel):
    """``agent.metrics``: the Prometheus endpoint (absent: off)."""

    listen: str = "127.0.0.1:9108"
    """host:port to listen on; an IP address (``[::1]:9108`` for IPv6) or ``localhost``. Port 0
    picks a free port (logged at start)."""
    allow_remote: bool = False
    """Listen on an address other than loopback (the endpoint has no authentication: expose it
    through a proxy or a firewall rule that limits who may scrape)."""

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> Self:
        host, _ = parse_listen(self.listen)
        if not self.allow_remote and not _is_loopback(host):
            raise ValueError(
                f"listen {self.listen!r} is not a loopback address: the metrics endpoint has no "
                "authentication; set allow_remote: true to serve it there anyway"
            )
        if self.allow_remote and host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"listen {self.listen!r}: {host!r} is not an IP address") from None
        return self
