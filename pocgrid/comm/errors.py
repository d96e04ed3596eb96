"""Errors of the communication library.

Every error carries the gRPC status a service boundary maps it to, and a message that names
the communicator, the rank and (for peer failures) the peer with its chip, so a failed
training step says which agent went away.
"""

from __future__ import annotations

from typing import ClassVar


class CommError(RuntimeError):
    """Base of every communication-library error."""

    status: ClassVar[str] = "INTERNAL"


class CommInputError(CommError, ValueError):
    """Bad input to a communicator call: names the argument and the rule."""

    status: ClassVar[str] = "INVALID_ARGUMENT"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class CommAbortedError(CommError):
    """The communicator can no longer be used: a peer failed, timed out or aborted."""

    status: ClassVar[str] = "UNAVAILABLE"


class PeerLostError(CommAbortedError):
    """A peer's connection closed (its process died or it aborted the communicator)."""


class CommTimeoutError(CommAbortedError):
    """A peer sent nothing within the communicator's timeout (stalled or partitioned)."""

    status: ClassVar[str] = "DEADLINE_EXCEEDED"


class CommProtocolError(CommAbortedError):
    """A frame arrived that this collective did not expect (mismatched calls across ranks)."""

    status: ClassVar[str] = "FAILED_PRECONDITION"
