"""Channels that sign, without the tracing interceptor: for tools and tests that call a service
port directly, and for calls a service makes untraced (the agents' lease heartbeats).

A call's tenant and admin role are named as usual, in ``x-pocgrid-tenant`` / ``x-pocgrid-role``
metadata; the interceptor turns them into the claims of the channel identity's signed token
(services/core/interceptors.signed_metadata), so the server trusts them because the key holder
said so, not because the header was there::

    creds = MeshCredentials.from_dir(keys_dir, "scheduler")
    async with signed_aio_channel(agent_address, creds.signer) as ch:
        await AgentServiceStub(ch).RunTask(req, metadata=(("x-pocgrid-tenant", "acme"),))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from services.core.interceptors import signed_metadata
from services.core.service_tokens import TokenSigner

ChannelOptions = Sequence[tuple[str, Any]]


def _signed(details: Any, signer: TokenSigner, cls: Any) -> Any:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    fields = {
        "method": details.method,
        "timeout": details.timeout,
        "metadata": signed_metadata(signer, method, details.metadata),
        "credentials": details.credentials,
        "wait_for_ready": details.wait_for_ready,
    }
    if cls is grpc.aio.ClientCallDetails:
        fields["metadata"] = grpc.aio.Metadata(*fields["metadata"])
        return cls(**fields)
    return _SyncDetails(**fields, compression=getattr(details, "compression", None))


class _SyncDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self, key, value)


class _AioUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(
            _signed(details, self._signer, grpc.aio.ClientCallDetails), request
        )


class _AioStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    # Its own object: a grpc.aio channel files an interceptor under the first kind it
    # implements (see interceptors.StreamClientInterceptor).
    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(
            _signed(details, self._signer, grpc.aio.ClientCallDetails), request
        )


class _Sync(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_signed(details, self._signer, None), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_signed(details, self._signer, None), request)


def signed_aio_channel(
    target: str, signer: TokenSigner, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """A grpc.aio channel whose every call carries ``signer``'s token."""
    return grpc.aio.insecure_channel(
        target, options=list(options), interceptors=[_AioUnary(signer), _AioStream(signer)]
    )


def signed_channel(target: str, signer: TokenSigner, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel whose every call carries ``signer``'s token."""
    return grpc.intercept_channel(
        grpc.insecure_channel(target, options=list(options)), _Sync(signer)
    )
