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
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.auth import ApiKeys, Tenant
from gateway.ratelimit import RateLimiter
from gateway.routing import Route
from pocgrid.v1 import gateway_pb2
from services.core import telemetry
from services.core.errors import PocgridError
from services.core.logging import get_logger
from services.core.rpc_context import TENANT_METADATA_KEY

log = get_logger()

_RETRY_BACKOFF_S = 0.05
_HEALTH_TIMEOUT_S = 2.0


class GatewayHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(
        self,
        routes: Mapping[str, Route],
        channels: Mapping[str, grpc.aio.Channel],
        keys: ApiKeys,
        limiter: RateLimiter,
        tracer: trace.Tracer,
        cap_s: float,
    ) -> None:
        self._keys = keys
        self._limiter = limiter
        self._tracer = tracer
        self._cap_s = cap_s
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for path, route in routes.items():
            channel = channels.get(route.backend_field)
            self._handlers[path] = self._forwarding_handler(route, channel)
        self._backends = {field.removesuffix("_addr"): ch for field, ch in channels.items()}
        self._handlers["/pocgrid.v1.GatewayService/WhoAmI"] = grpc.unary_unary_rpc_method_handler(
            self._who_am_i,
            request_deserializer=gateway_pb2.WhoAmIRequest.FromString,
            response_serializer=gateway_pb2.WhoAmIResponse.SerializeToString,
        )
        self._handlers["/pocgrid.v1.GatewayService/CheckServices"] = (
            grpc.unary_unary_rpc_method_handler(
                self._check_services,
                request_deserializer=gateway_pb2.CheckServicesRequest.FromString,
                response_serializer=gateway_pb2.CheckServicesResponse.SerializeToString,
            )
        )

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(details.method)

    # -- the per-call steps ---------------------------------------------------------------
    def _span(self, path: str, metadata: Mapping[str, str]) -> Any:
        return self._tracer.start_as_current_span(
            path.lstrip("/"),
            context=telemetry.extract(metadata),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": path},
        )

    def _admit(self, metadata: Mapping[str, str], span: Any) -> Tenant:
        tenant = self._keys.authenticate(metadata.get("authorization"))
        span.set_attribute("pocgrid.tenant", tenant.name)
        self._limiter.acquire(tenant)
        return tenant

    def _downstream(self, tenant: Tenant, context: grpc.aio.ServicerContext) -> tuple[Any, float]:
        carrier: dict[str, str] = {TENANT_METADATA_KEY: tenant.name}
        telemetry.inject(carrier)
        remaining = context.time_remaining()
        timeout = self._cap_s if remaining is None else min(remaining, self._cap_s)
        return tuple(carrier.items()), max(timeout, 0.001)

    async def _reject(self, exc: PocgridError, span: Any, context: Any, path: str) -> NoReturn:
        span.set_status(Status(StatusCode.ERROR, exc.message))
        log.info("gateway.rejected", method=path, code=exc.code.name, error=exc.message)
        await context.abort(exc.code, exc.message)
        raise AssertionError("abort returned")

    async def _relay_error(
        self, exc: grpc.aio.AioRpcError, route: Route, span: Any, context: Any
    ) -> NoReturn:
        span.set_status(Status(StatusCode.ERROR, exc.code().name))
        details = exc.details() or ""
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            details = f"{route.backend_field.removesuffix('_addr')} unavailable: {details}"
        await context.abort(exc.code(), details)
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

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = dict(context.invocation_metadata() or ())
            with self._span(route.path, metadata) as span:
                try:
                    tenant = self._admit(metadata, span)
                except PocgridError as exc:
                    await self._reject(exc, span, context, route.path)
                out_md, timeout = self._downstream(tenant, context)
                attempts = 2 if route.idempotent else 1
                for attempt in range(attempts):
                    try:
                        response: bytes = await call(request, timeout=timeout, metadata=out_md)
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

        return forward

    def _stream(self, route: Route, channel: grpc.aio.Channel) -> Callable[..., Any]:
        call = channel.unary_stream(route.path)

        async def forward(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            metadata = dict(context.invocation_metadata() or ())
            with self._span(route.path, metadata) as span:
                try:
                    tenant = self._admit(metadata, span)
                except PocgridError as exc:
                    await self._reject(exc, span, context, route.path)
                out_md, _ = self._downstream(tenant, context)
                # Streams (token streaming) may outlive the unary cap: keep the caller's deadline.
                remaining = context.time_remaining()
                try:
                    async for item in call(request, timeout=remaining, metadata=out_md):
                        yield item
                except grpc.aio.AioRpcError as exc:
                    await self._relay_error(exc, route, span, context)

        return forward

    async def _who_am_i(
        self, request: gateway_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.WhoAmIResponse:
        path = "/pocgrid.v1.GatewayService/WhoAmI"
        metadata = dict(context.invocation_metadata() or ())
        with self._span(path, metadata) as span:
            try:
                tenant = self._admit(metadata, span)
            except PocgridError as exc:
                await self._reject(exc, span, context, path)
            return gateway_pb2.WhoAmIResponse(
                tenant=tenant.name, rate_limit_per_s=tenant.rate_per_s, burst=tenant.burst
            )

    async def _check_services(
        self, request: gateway_pb2.CheckServicesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CheckServicesResponse:
        path = "/pocgrid.v1.GatewayService/CheckServices"
        metadata = dict(context.invocation_metadata() or ())
        with self._span(path, metadata) as span:
            try:
                self._admit(metadata, span)
            except PocgridError as exc:
                await self._reject(exc, span, context, path)
            results = await asyncio.gather(
                *(_probe(name, ch) for name, ch in sorted(self._backends.items()))
            )
            return gateway_pb2.CheckServicesResponse(
                services=[
                    gateway_pb2.ServiceHealth(name="gateway", healthy=True, status="SERVING"),
                    *results,
                ]
            )


async def _probe(name: str, channel: grpc.aio.Channel) -> gateway_pb2.ServiceHealth:
    try:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=_HEALTH_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        return gateway_pb2.ServiceHealth(name=name, healthy=False, status=exc.code().name)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return gateway_pb2.ServiceHealth(
        name=name, healthy=resp.status == health_pb2.HealthCheckResponse.SERVING, status=status
    )
