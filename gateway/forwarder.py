"""The gateway's request path: authenticate, rate-limit, trace, then forward the raw bytes.

Requests are never decoded: the gateway forwards serialized messages, so its cost does not grow
with message size or schema, and a new RPC on a public service is routed without code changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from gateway.auth import ApiKeys, Tenant
from gateway.ratelimit import RateLimiter
from gateway.routing import GATEWAY_SERVICE, Route, rpc_path
from pocgrid.error_details import DETAILS_METADATA_KEY, rich_status
from pocgrid.v1 import admin_pb2, gateway_pb2
from services.core import telemetry
from services.core.bus import BUS_HEALTH
from services.core.errors import PermissionDenied, PocgridError
from services.core.logging import get_logger
from services.core.service_tokens import TOKEN_METADATA_KEY, TokenSigner
from services.core.validation import decode_request

log = get_logger()

WHO_AM_I = rpc_path(GATEWAY_SERVICE, "WhoAmI")
CHECK_SERVICES = rpc_path(GATEWAY_SERVICE, "CheckServices")
_ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
REVOKE_KEY = rpc_path(_ADMIN_SERVICE, "RevokeKey")
UPDATE_TENANT = rpc_path(_ADMIN_SERVICE, "UpdateTenant")
_RETRY_BACKOFF_S = 0.05
_HEALTH_TIMEOUT_S = 2.0


class GatewayHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(
        self,
        routes: Mapping[str, Route],
        channels: Mapping[str, grpc.aio.Channel],
        keys: ApiKeys,
        limiter: RateLimiter,
        tracer_provider: telemetry.PocgridTracerProvider,
        cap_s: float,
        signer: TokenSigner,
    ) -> None:
        self._keys = keys
        self._signer = signer
        self._limiter = limiter
        self._provider = tracer_provider
        self._tracer = tracer_provider.get_tracer("pocgrid.gateway")
        self._cap_s = cap_s
        # What this gateway forgets once the store confirmed a change (before the caller hears
        # of it): a revoked key fails on its very next call here, whatever the bus does.
        self._after: dict[str, Callable[[bytes], None]] = {
            REVOKE_KEY: lambda raw: keys.forget_key(
                admin_pb2.RevokeKeyRequest.FromString(raw).key_id
            ),
            UPDATE_TENANT: lambda raw: keys.forget_tenant(
                admin_pb2.UpdateTenantRequest.FromString(raw).name
            ),
        }
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for path, route in routes.items():
            channel = channels.get(route.backend_field)
            self._handlers[path] = self._forwarding_handler(route, channel)
        self._backends = {field.removesuffix("_addr"): ch for field, ch in channels.items()}
        # The gateway's own methods take raw bytes and decode them after admission, so that a
        # corrupt request is INVALID_ARGUMENT like on every service (grpc would say UNKNOWN).
        self._handlers[WHO_AM_I] = grpc.unary_unary_rpc_method_handler(
            self._who_am_i,
            response_serializer=gateway_pb2.WhoAmIResponse.SerializeToString,
        )
        self._handlers[CHECK_SERVICES] = grpc.unary_unary_rpc_method_handler(
            self._check_services,
            response_serializer=gateway_pb2.CheckServicesResponse.SerializeToString,
        )

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(details.method)

    # -- the per-call steps ---------------------------------------------------------------
    # This is the hot path of every public call. Measured in the running gateway, each SDK span
    # or propagator call costs several times what a micro-benchmark shows (cold caches between
    # calls): an SDK span alone was ~35 us of the ~100 us the gateway adds to a call. So the
    # path does each thing once: one pass over the metadata, one span started with all its
    # attributes and never made "current", the traceparent formatted from it; and when this
    # gateway exports no spans, no SDK span is built at all (the trace is still started and
    # passed on, see telemetry.unrecorded_span).
    async def _begin(
        self, path: str, context: grpc.aio.ServicerContext, admin_only: bool = False
    ) -> tuple[Span, Tenant | PocgridError]:
        authorization = traceparent = tracestate = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
            elif key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
        parent = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent}
            if tracestate is not None:
                carrier["tracestate"] = tracestate
            parent = telemetry.extract(carrier)
        admitted: Tenant | PocgridError
        tenant: Tenant | None = None
        try:
            tenant = await self._keys.authenticate(authorization)
            self._limiter.acquire(tenant)
            if admin_only and not tenant.admin:
                raise PermissionDenied(
                    f"{path[1:]} needs an admin API key", reason="ADMIN_KEY_REQUIRED"
                )
            admitted = tenant
        except PocgridError as exc:
            # No valid credentials: the call counts against its peer's own small budget.
            admitted = (
                exc
                if tenant is not None
                else self._limiter.refuse_unauthenticated(context.peer(), exc)
            )
        if not self._provider.exporting:
            return telemetry.unrecorded_span(parent), admitted
        attributes = {"rpc.system": "grpc", "rpc.method": path}
        if tenant is not None:  # rate-limited calls keep their tenant on the span
            attributes["pocgrid.tenant"] = tenant.name
        span = self._tracer.start_span(
            path[1:], context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        return span, admitted

    def _downstream(
        self, route: Route, tenant: Tenant, span: Span, context: grpc.aio.ServicerContext
    ) -> tuple[tuple[tuple[str, str], ...], float]:
        # The backend trusts the tenant and role only from the gateway's signed token (cached
        # per tenant, role and service, so this is a dict lookup, not a signature per call).
        token = self._signer.token(tenant.name, tenant.admin, route.service, tenant.key_id)
        metadata = ((TOKEN_METADATA_KEY, token), *telemetry.trace_headers(span))
        remaining = context.time_remaining()
        timeout = self._cap_s if remaining is None else min(remaining, self._cap_s)
        return metadata, max(timeout, 0.001)

    async def _reject(
        self, exc: PocgridError, span: Span, context: grpc.aio.ServicerContext, path: str
    ) -> NoReturn:
        span.set_status(Status(StatusCode.ERROR, exc.message))
        log.info(
            "gateway.rejected",
            method=path,
            code=exc.code.name,
            error=exc.message,
            trace_id=f"{span.get_span_context().trace_id:032x}",
        )
        status = exc.status()
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("abort returned")

    async def _relay_error(
        self, exc: grpc.aio.AioRpcError, route: Route, span: Span, context: grpc.aio.ServicerContext
    ) -> NoReturn:
        span.set_status(Status(StatusCode.ERROR, exc.code().name))
        details = exc.details() or ""
        # The backend's google.rpc.Status trailer goes on as it came (the client reads the
        # vendor code, field violations, retry delay from it); only where the gateway rewords
        # the text does the status get the same words, so the two never disagree.
        rich = rich_status(exc)
        trailer = next(
            (v for k, v in exc.trailing_metadata() or () if k == DETAILS_METADATA_KEY), None
        )
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            details = f"{route.backend_field.removesuffix('_addr')} unavailable: {details}"
            if rich is not None:
                rich.message = details
                trailer = rich.SerializeToString()
        trailing = () if trailer is None else ((DETAILS_METADATA_KEY, trailer),)
        await context.abort(exc.code(), details, trailing)
        raise AssertionError("abort returned")

    def _forwarding_handler(
        self, route: Route, channel: grpc.aio.Channel | None
    ) -> grpc.RpcMethodHandler:
        if channel is None:

            async def unconfigured(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{route.backend_field.removesuffix('_addr')} is not configured on this "
                    "gateway",
                )
                raise AssertionError("abort returned")

            return grpc.unary_unary_rpc_method_handler(unconfigured)
        if route.server_streaming and not route.client_streaming:
            return grpc.unary_stream_rpc_method_handler(self._stream(route, channel))
        if route.client_streaming:
            raise NotImplementedError(f"client streaming is not routed yet: {route.path}")
        return grpc.unary_unary_rpc_method_handler(self._unary(route, channel))

    def _unary(self, route: Route, channel: grpc.aio.Channel) -> Callable[..., Any]:
        # None serializers: the multicallable sends and returns the raw bytes untouched.
        call = channel.unary_unary(route.path)
        after = self._after.get(route.path)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            span, admitted = await self._begin(route.path, context, route.admin_only)
            try:
                if isinstance(admitted, PocgridError):
                    await self._reject(admitted, span, context, route.path)
                metadata, timeout = self._downstream(route, admitted, span, context)
                attempts = 2 if route.retry_safe else 1
                for attempt in range(attempts):
                    try:
                        response: bytes = await call(request, timeout=timeout, metadata=metadata)
                        if after is not None:
                            after(request)  # the service decoded it: it decodes
                        return response
                    except grpc.aio.AioRpcError as exc:
                        retry = (
                            exc.code() is grpc.StatusCode.UNAVAILABLE
                            and attempt + 1 < attempts
                            and (context.time_remaining() or self._cap_s) > _RETRY_BACKOFF_S
                        )
                        if not retry:
                            await self._relay_error(exc, route, span, context)
                    await asyncio.sleep(_RETRY_BACKOFF_S)
                raise AssertionError("unreachable: the loop returns or aborts")
            finally:
                span.end()

        return forward

    def _stream(self, route: Route, channel: grpc.aio.Channel) -> Callable[..., Any]:
        call = channel.unary_stream(route.path)

        async def forward(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            span, admitted = await self._begin(route.path, context, route.admin_only)
            try:
                if isinstance(admitted, PocgridError):
                    await self._reject(admitted, span, context, route.path)
                metadata, _ = self._downstream(route, admitted, span, context)
                # Streams (token streaming) may outlive the unary cap: keep the caller's deadline.
                remaining = context.time_remaining()
                try:
                    async for item in call(request, timeout=remaining, metadata=metadata):
                        yield item
                except grpc.aio.AioRpcError as exc:
                    await self._relay_error(exc, route, span, context)
            finally:
                span.end()

        return forward

    async def _admit_own(
        self, path: str, raw: bytes, decode: Callable[[bytes], Any], context: Any
    ) -> tuple[Span, Tenant]:
        """Admission, then decoding, for the gateway's own methods; rejects with a status."""
        span, admitted = await self._begin(path, context)
        try:
            if isinstance(admitted, PocgridError):
                await self._reject(admitted, span, context, path)
            try:
                # Checked, then dropped: these requests carry no field the gateway reads.
                decode_request(decode, raw, path)
            except PocgridError as exc:
                await self._reject(exc, span, context, path)
        except BaseException:
            span.end()
            raise
        return span, admitted

    async def _who_am_i(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.WhoAmIResponse:
        span, admitted = await self._admit_own(
            WHO_AM_I, request, gateway_pb2.WhoAmIRequest.FromString, context
        )
        span.end()
        return gateway_pb2.WhoAmIResponse(
            tenant=admitted.name, rate_limit_per_s=admitted.rate_per_s, burst=admitted.burst
        )

    async def _check_services(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CheckServicesResponse:
        span, _ = await self._admit_own(
            CHECK_SERVICES, request, gateway_pb2.CheckServicesRequest.FromString, context
        )
        # Probes end before the caller's deadline, so a service that does not answer is
        # reported as such instead of costing the whole answer.
        left = context.time_remaining()
        timeout = _HEALTH_TIMEOUT_S if left is None else min(_HEALTH_TIMEOUT_S, left * 0.8)
        try:
            results = await asyncio.gather(
                *(_probe(name, ch, timeout) for name, ch in sorted(self._backends.items()))
            )
        finally:
            span.end()
        return gateway_pb2.CheckServicesResponse(
            services=[
                gateway_pb2.ServiceHealth(name="gateway", healthy=True, status="SERVING"),
                *results,
            ]
        )


async def _probe(
    name: str, channel: grpc.aio.Channel, timeout_s: float
) -> gateway_pb2.ServiceHealth:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        return gateway_pb2.ServiceHealth(name=name, healthy=False, status=exc.code().name)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    bus = await _probe_bus(stub, timeout_s)
    return gateway_pb2.ServiceHealth(
        name=name,
        healthy=resp.status == health_pb2.HealthCheckResponse.SERVING and bus != "NOT_SERVING",
        status=status,
        bus_status=bus,
    )


async def _probe_bus(stub: health_pb2_grpc.HealthStub, timeout_s: float) -> str:
    """Status of the service's bus; '' when it has none (its health does not know the name)."""
    try:
        resp = await stub.Check(
            health_pb2.HealthCheckRequest(service=BUS_HEALTH), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as exc:
        return "" if exc.code() == grpc.StatusCode.NOT_FOUND else str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
