"""The error hierarchy maps to google.rpc.Status details, and the client helper reads them."""

from __future__ import annotations

import grpc

from pocgrid.cli.queries import rpc_error_message
from pocgrid.error_details import FieldViolation, error_details
from services.agent.runtime.errors import DeviceOutOfMemory
from services.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PocgridError,
    ResourceExhausted,
    internal_status,
)


class _Failed(grpc.RpcError):  # type: ignore[misc]
    """What a client holds after a failed call, built from the status a server would send."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


def _roundtrip(exc: PocgridError):
    return error_details(_Failed(exc.status()))


def test_invalid_argument_names_the_field_as_a_violation():
    info = _roundtrip(InvalidArgument("llm_batch.batch", "must be between 1 and 65536 (got 0)"))
    assert info.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.message == "llm_batch.batch: must be between 1 and 65536 (got 0)"
    assert info.field_violations == (
        FieldViolation("llm_batch.batch", "must be between 1 and 65536 (got 0)"),
    )


def test_not_found_names_the_resource():
    info = _roundtrip(NotFound("chip", "nope", "see ListChips"))
    assert (info.resource_type, info.resource_name) == ("chip", "nope")


def test_resource_exhausted_carries_the_retry_delay_and_reason():
    exc = ResourceExhausted(
        "slow down", retry_after_s=0.25, reason="RATE_LIMITED", metadata={"tenant": "acme"}
    )
    info = _roundtrip(exc)
    assert info.retry_after_s == 0.25
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "RATE_LIMITED",
        "pocgrid",
        {"tenant": "acme"},
    )
    message = rpc_error_message(_Failed(exc.status()))
    assert message == "RESOURCE_EXHAUSTED [RATE_LIMITED]: slow down"


def test_vendor_errors_carry_the_vendor_code():
    exc = DeviceOutOfMemory(
        family="ascend",
        api="aclrtMalloc",
        vendor_symbol="ACL_ERROR_RT_MEMORY_ALLOCATION",
        vendor_code=207001,
        vendor_message="memory allocation error",
        framework_message="NPU out of memory",
        device_index=3,
        requested_bytes=10,
        free_bytes=4,
    )
    info = _roundtrip(exc)
    assert info.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.reason == "DEVICE_OUT_OF_MEMORY"
    assert info.metadata["vendor_code"] == "207001"
    assert info.metadata["vendor_symbol"] == "ACL_ERROR_RT_MEMORY_ALLOCATION"
    assert info.metadata["device_index"] == "3"
    assert (info.metadata["requested_bytes"], info.metadata["free_bytes"]) == ("10", "4")


def test_plain_errors_and_internal_ones():
    info = _roundtrip(FailedPrecondition("cancel it first"))
    assert (info.code, info.message, info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "cancel it first",
        "",
    )
    assert rpc_error_message(_Failed(FailedPrecondition("x").status())) == "FAILED_PRECONDITION: x"
    info = error_details(_Failed(internal_status("ab12")))
    assert info.code == grpc.StatusCode.INTERNAL and info.metadata == {"trace_id": "ab12"}
    assert info.message == "internal error (trace ab12)"


def test_a_call_without_details_still_reads():
    class Bare(grpc.RpcError):  # type: ignore[misc]
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection refused"

        def trailing_metadata(self):
            return ()

    info = error_details(Bare())
    assert (info.code, info.message, info.reason, info.retry_after_s) == (
        grpc.StatusCode.UNAVAILABLE,
        "connection refused",
        "",
        None,
    )
