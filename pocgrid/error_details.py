"""Read the structured details of a failed call: the ``google.rpc.Status`` that pocgrid services
and the gateway send in the ``grpc-status-details-bin`` trailer.

    try:
        pg.scheduler.GetJob(...)
    except grpc.RpcError as exc:
        info = error_details(exc)
        info.reason, info.retry_after_s, info.field_violations, info.metadata["vendor_code"]

The message text stays for people; these fields are for programs: ``ErrorInfo`` (a stable
``reason``, its ``domain`` and ``metadata``, e.g. a vendor runtime's symbol and numeric code),
``BadRequest`` (which field broke which rule), ``RetryInfo`` (how long to wait, e.g. after a rate
limit) and ``ResourceInfo`` (what was not found).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The trailer that carries a serialized google.rpc.Status (the gRPC convention).
DETAILS_METADATA_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    retry_after_s: float | None = None
    resource_type: str = ""
    resource_name: str = ""


def rich_status(exc: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call carried, or None when it carried none."""
    trailing: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == DETAILS_METADATA_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def error_details(exc: grpc.RpcError) -> ErrorDetails:
    """Everything a failed call says about why, structured; plain code and text when the
    server sent no details."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message: str = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    status = rich_status(exc)
    if status is None:
        return ErrorDetails(code, message)
    found: dict[str, Any] = {}
    for detail in status.details:
        for name, kind in (
            ("info", error_details_pb2.ErrorInfo),
            ("bad_request", error_details_pb2.BadRequest),
            ("retry", error_details_pb2.RetryInfo),
            ("resource", error_details_pb2.ResourceInfo),
        ):
            if detail.Is(kind.DESCRIPTOR):
                message_of_kind = kind()
                detail.Unpack(message_of_kind)
                found.setdefault(name, message_of_kind)
    info = found.get("info")
    bad = found.get("bad_request")
    retry = found.get("retry")
    resource = found.get("resource")
    return ErrorDetails(
        code=code,
        message=message,
        reason=info.reason if info else "",
        domain=info.domain if info else "",
        metadata=dict(info.metadata) if info else {},
        field_violations=tuple(
            FieldViolation(v.field, v.description) for v in (bad.field_violations if bad else ())
        ),
        retry_after_s=retry.retry_delay.ToTimedelta().total_seconds() if retry else None,
        resource_type=resource.resource_type if resource else "",
        resource_name=resource.resource_name if resource else "",
    )
