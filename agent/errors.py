"""The agent's one error hierarchy. Library exceptions are translated at the seam.

::

    AgentError
    ├── ConfigError              a config file is invalid (file, line, field path)
    ├── SecretError              a secret could not be read (its value never appears)
    ├── CodecError               a value cannot be encoded/decoded for a tag's type and order
    ├── DriverError              talking to a device failed
    │   ├── DeviceUnreachable    connect failed / connection lost / timeout; from a write:
    │   │                        nothing was sent (no link, or a read the write needs failed)
    │   ├── DeviceException      the device answered with a protocol exception (code kept)
    │   ├── BadReply             the reply is malformed: short, wrong unit, wrong function
    │   ├── WriteRefused         a write was not applied: refused by the agent before sending
    │   │                        (unknown or read-only tag, purpose mismatch, value does not
    │   │                        encode) or by the device (exception reply)
    │   ├── WriteUnconfirmed     a write was sent but no valid reply came (timeout, connection
    │   │                        lost after sending): the value is possibly applied
    │   └── ReadBackFailed       a write was acknowledged but the verifying read failed
    │                            (timeout, short or invalid reply): applied, not verified
    ├── StateFileError           a state file the agent shares with the CLI cannot be read
    ├── ModelError               a bundle or session is invalid (manifest/binding mismatch, hash)
    ├── AlarmError               an alarm command names an unknown asset or code, or saved
    │                            alarm state is unusable (also a ValueError)
    ├── RecordError              a recording cannot be made or continued (its directory, or
    │                            a recording of other tags already there)
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
    "RecordError",
    "SecretError",
    "StateFileError",
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
    """No answer: connect failed, connection lost, or the request timed out.

    Raised by a write only when nothing was sent (see :class:`WriteUnconfirmed`)."""


class DeviceException(DriverError):
    """The device answered with a protocol exception."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


class BadReply(DriverError):
    """The device answered, but the reply cannot be trusted (short, wrong unit, ...)."""


class WriteRefused(DriverError):
    """A write was not applied: the agent's own rules refused it before anything was sent
    (unknown or read-only tag, purpose mismatch, a value that does not encode), or the device
    answered with an exception."""


class WriteUnconfirmed(DriverError):
    """A write was sent but no valid reply came (timeout, connection lost after sending, a
    reply that cannot be trusted): the value is *possibly applied*, and may still land later."""


class ReadBackFailed(DriverError):
    """A write was acknowledged by the device, but the read that verifies it failed (timeout,
    short or invalid reply): the value is applied, not verified."""


class StateFileError(AgentError):
    """A state file shared between the running agent and the CLI (the ownership file) exists
    but cannot be read or parsed; the message names the file."""


class ModelError(AgentError):
    """A model bundle is invalid or does not match its bindings."""


class AlarmError(AgentError, ValueError):
    """An alarm command names an unknown asset or code or is not allowed, or saved state is
    unusable."""


class AuditError(AgentError):
    """The audit log cannot be written; automatic writes must stop."""


class RecordError(AgentError):
    """A recording cannot be made or continued: its directory cannot be written, or it holds a
    recording of other tags or another period."""
