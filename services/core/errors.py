"""One typed error hierarchy; the servicer boundary maps it to a gRPC status.

Services raise these instead of calling ``context.abort`` so the rule for which code each
failure gets lives in one place, and bad input can never surface as INTERNAL.
"""

from __future__ import annotations

import grpc


class PocgridError(Exception):
    """Base: a failure with the gRPC status it should be reported as."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PocgridError):
    """A request field breaks a rule; the message names the field and the rule."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(PocgridError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, ident: str, hint: str = "") -> None:
        suffix = f" ({hint})" if hint else ""
        super().__init__(f"{kind} '{ident}' not found{suffix}")
        self.kind = kind
        self.ident = ident


class AlreadyExists(PocgridError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(PocgridError):
    """The request is valid but the system is not in a state to do it; says what must happen."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(PocgridError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(PocgridError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(PocgridError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(PocgridError):
    code = grpc.StatusCode.UNAVAILABLE
