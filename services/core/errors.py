"""One typed error hierarchy; the servicer boundary maps it to a gRPC status.

Services raise these instead of calling ``context.abort`` so the rule for which code each
failure gets lives in one place, and bad input can never surface as INTERNAL.

Each error also says what it means for a program, as a ``google.rpc.Status`` sent in the
``grpc-status-details-bin`` trailer (``status()``): an ``ErrorInfo`` with a stable ``reason`` and
its ``metadata``, ``BadRequest`` field violations for INVALID_ARGUMENT, ``RetryInfo`` where the
caller should wait, ``ResourceInfo`` for NOT_FOUND. ``pocgrid.error_details`` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: ErrorInfo.domain of every error pocgrid itself raises.
DOMAIN = "pocgrid"


class PocgridError(Exception):
    """Base: a failure with the gRPC status it should be reported as."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: ErrorInfo.reason (UPPER_SNAKE_CASE, stable for programs); empty sends no ErrorInfo.
    reason: str = ""

    def __init__(
        self, message: str, *, reason: str = "", metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def details(self) -> list[Message]:
        """The google.rpc detail messages this error carries."""
        if not self.reason:
            return []
        return [
            error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        ]

    def status(self) -> grpc.Status:
        """Code, message and the details trailer, ready for ``context.abort``."""
        rich = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details():
            rich.details.add().Pack(detail)
        return rpc_status.to_status(rich)


class InvalidArgument(PocgridError):
    """A request field breaks a rule; the message names the field and the rule."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def details(self) -> list[Message]:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.field, description=self.rule
        )
        return [*super().details(), error_details_pb2.BadRequest(field_violations=[violation])]


class NotFound(PocgridError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, ident: str, hint: str = "") -> None:
        suffix = f" ({hint})" if hint else ""
        super().__init__(f"{kind} '{ident}' not found{suffix}")
        self.kind = kind
        self.ident = ident
        self.hint = hint

    def details(self) -> list[Message]:
        resource = error_details_pb2.ResourceInfo(
            resource_type=self.kind, resource_name=self.ident, description=self.hint
        )
        return [*super().details(), resource]


class AlreadyExists(PocgridError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(PocgridError):
    """The request is valid but the system is not in a state to do it; says what must happen."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(PocgridError):
    """A quota, rate limit or capacity is used up; ``retry_after_s`` when waiting helps."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s

    def details(self) -> list[Message]:
        details = super().details()
        if self.retry_after_s is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromNanoseconds(max(0, round(self.retry_after_s * 1e9)))
            details.append(retry)
        return details


class Unauthenticated(PocgridError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(PocgridError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(PocgridError):
    code = grpc.StatusCode.UNAVAILABLE


def internal_status(trace_id: str) -> grpc.Status:
    """An unexpected failure: no internals leak, the trace id says where to look."""
    error = PocgridError(
        f"internal error (trace {trace_id})", reason="INTERNAL", metadata={"trace_id": trace_id}
    )
    return error.status()
