"""Errors an emulated vendor runtime raises, in that vendor's own words.

Every error carries the vendor's symbol and numeric code and the message text the vendor's
stack prints, so code above the runtime (adapter, scheduler, error classifiers) sees what it
would see on the real chip. They subclass the project's ``PocgridError`` so the servicer
boundary maps them to a gRPC status without a second table.
"""

from __future__ import annotations

import grpc

from services.core.errors import PocgridError


class VendorRuntimeError(PocgridError):
    """A call into an emulated vendor runtime failed the way that vendor's runtime fails.

    Its ErrorInfo metadata carries the vendor's words for programs: ``family``, ``api``,
    ``vendor_symbol``, ``vendor_code`` (decimal), ``vendor_message``, ``device_index``.
    """

    code = grpc.StatusCode.INTERNAL
    reason = "VENDOR_RUNTIME_ERROR"

    def __init__(
        self,
        *,
        family: str,
        api: str,
        vendor_symbol: str,
        vendor_code: int,
        vendor_message: str,
        device_index: int | None = None,
    ) -> None:
        # The str() form is what a log line on the real stack would show: API, symbol, code, text.
        metadata = {
            "family": family,
            "api": api,
            "vendor_symbol": vendor_symbol,
            "vendor_code": str(vendor_code),
            "vendor_message": vendor_message,
        }
        if device_index is not None:
            metadata["device_index"] = str(device_index)
        super().__init__(
            f"{api} failed: {vendor_symbol} ({vendor_code}): {vendor_message}", metadata=metadata
        )
        self.family = family
        self.api = api
        self.vendor_symbol = vendor_symbol
        self.vendor_code = vendor_code
        self.vendor_message = vendor_message
        self.device_index = device_index


class DeviceOutOfMemory(VendorRuntimeError):
    """An allocation did not fit; nothing was allocated."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "DEVICE_OUT_OF_MEMORY"

    def __init__(
        self,
        *,
        family: str,
        api: str,
        vendor_symbol: str,
        vendor_code: int,
        vendor_message: str,
        framework_message: str,
        device_index: int,
        requested_bytes: int,
        free_bytes: int,
    ) -> None:
        super().__init__(
            family=family,
            api=api,
            vendor_symbol=vendor_symbol,
            vendor_code=vendor_code,
            vendor_message=vendor_message,
            device_index=device_index,
        )
        # What the vendor's PyTorch/Paddle plugin would raise on top of the runtime error;
        # error classifiers match on this text ("NPU out of memory", "MLU out of memory", ...).
        self.framework_message = framework_message
        self.requested_bytes = requested_bytes
        self.free_bytes = free_bytes
        self.metadata.update(
            framework_message=framework_message,
            requested_bytes=str(requested_bytes),
            free_bytes=str(free_bytes),
        )


class InvalidHandle(VendorRuntimeError):
    """A free of memory this runtime does not own (never allocated, or already freed)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "VENDOR_INVALID_HANDLE"


class InvalidArgument(VendorRuntimeError):
    """A call with an argument the vendor runtime rejects (size 0, bad device ordinal, ...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "VENDOR_INVALID_ARGUMENT"


class DeviceUnavailable(VendorRuntimeError):
    """The device was marked FAILED (fault injection); the runtime reports it as gone."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "DEVICE_UNAVAILABLE"
