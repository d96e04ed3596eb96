"""Errors of the performance model.

Every error is a ``ValueError`` whose message starts with the offending field and states the
rule ("batch: must be >= 1"), and carries the gRPC status a service boundary should map it to.
A deployment that does not fit in memory is not an error: it is a result with ``fits=False``.
"""

from __future__ import annotations

from typing import ClassVar


class PerfInputError(ValueError):
    """Bad input: names the field and the rule it breaks."""

    status: ClassVar[str] = "INVALID_ARGUMENT"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class UnknownNameInput(PerfInputError):
    """A chip or model the catalogue does not hold."""

    status: ClassVar[str] = "NOT_FOUND"


class UnsupportedInput(PerfInputError):
    """Valid input the model cannot evaluate, e.g. a precision with no published peak."""

    status: ClassVar[str] = "FAILED_PRECONDITION"
