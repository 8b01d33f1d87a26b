"""The agent's one error hierarchy. Library exceptions are translated at the seam.

::

    AgentError
    ├── ConfigError              a config file is invalid (file, line, field path)
    ├── SecretError              a secret could not be read (its value never appears)
    ├── CodecError               a value cannot be encoded/decoded for a tag's type and order
    ├── DriverError              talking to a device failed
    │   ├── DeviceUnreachable    connect failed / connection lost / timeout
    │   ├── DeviceException      the device answered with a protocol exception (code kept)
    │   ├── BadReply             the reply is malformed: short, wrong unit, wrong function
    │   ├── WriteRefused         a write was refused (read-only, not allowed, wrong purpose,
    │   │                        device exception): it was not applied
    │   ├── WriteUnconfirmed     a write was sent but no reply came: possibly applied
    │   └── ReadBackFailed       a write was acknowledged but its verifying read failed
    ├── ModelError               a bundle or session is invalid (manifest/binding mismatch, hash)
    ├── AlarmError               an alarm command names an unknown asset or code, or saved
    │                            alarm state is unusable (also a ValueError)
    └── AuditError               the audit log cannot be written (writes must stop)

``asyncio.CancelledError`` is never turned into any of these.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AlarmError",
    "AuditError",
    "BadReply",
    "CodecError",
    "ConfigError",
    "DeviceException",
    "DeviceUnreachable",
    "DriverError",
    "ModelError",
    "ReadBackFailed",
    "SecretError",
    "WriteRefused",
    "WriteUnconfirmed",
]


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration error; ``str()`` is ``file:line path: message`` for each problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SecretError(AgentError):
    """A secret could not be resolved. The message names the source, never the value."""


class CodecError(AgentError):
    """A value does not fit a tag's type, or registers do not decode to a valid value."""


class DriverError(AgentError):
    """Talking to a device failed."""


class DeviceUnreachable(DriverError):
    """No answer: connect failed, connection lost, or the request timed out."""


class DeviceException(DriverError):
    """The device answered with a protocol exception."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


class BadReply(DriverError):
    """The device answered, but the reply cannot be trusted (short, wrong unit, ...)."""


class WriteRefused(DriverError):
    """A write was refused by the device or by the agent's own rules."""


class ModelError(AgentError):
    """A model bundle is invalid or does not match its bindings."""


class AlarmError(AgentError, ValueError):
    """An alarm command names an unknown asset or code or is not allowed, or saved state is
    unusable."""


class AuditError(AgentError):
    """The audit log cannot be written; automatic writes must stop."""


class WriteUnconfirmed(DriverError):
    """A write was sent but its reply never came (timeout, connection lost): possibly applied."""


class ReadBackFailed(DriverError):
    """A write was acknowledged but the read issued after it failed: applied, not verified."""
