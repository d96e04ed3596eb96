"""gRPC interceptors: authentication, tracing, logging, context and error mapping on the
server; the caller's signed service token, trace context and deadline on the client.

The tenant and role of a call come only from a verified service token
(services/core/service_tokens.py), never from bare metadata: a process without a mesh key cannot
act for a tenant. Health checks and reflection stay open (probes and tooling hold no key).

One server interceptor does all of it so each RPC is wrapped once (this is on the hot path of
every call, the gateway's included).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from pocgrid.metadata import ADMIN_ROLE, ROLE_METADATA_KEY, TENANT_METADATA_KEY
from services.core import rpc_context, telemetry
from services.core.errors import PocgridError, internal_status
from services.core.logging import get_logger
from services.core.mesh_policy import authorize
from services.core.metrics import ServiceMetrics
from services.core.service_tokens import TOKEN_METADATA_KEY, Caller, TokenSigner, TokenVerifier
from services.core.tenant_view import is_tenant_view, strip_internal
from services.core.validation import decode_request

log = get_logger()

# Health checks and reflection are polled constantly and carry no request context worth a span.
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
#: Recorded only when the caller's request carries a trace (POCGRID_TRACE_HEARTBEATS=1 makes the
#: agent send one): every node heartbeats every few seconds, which would bury real traces.
UNTRACED_BY_DEFAULT: frozenset[str] = frozenset({"/pocgrid.v1.NodeLeaseService/Heartbeat"})


def _split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


Decoder = Callable[[bytes], Any]

_ANONYMOUS = Caller("", "", False)


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        provider: telemetry.PocgridTracerProvider,
        tracer_name: str,
        metrics: ServiceMetrics | None = None,
        *,
        untraced: frozenset[str] = UNTRACED_BY_DEFAULT,
        verifier: TokenVerifier | None = None,
    ) -> None:
        """``verifier`` None serves every call as an anonymous caller (no tenant, no role):
        only benchmarks and unit tests build one so; ``Service`` always passes its own."""
        self._verifier = verifier
        self._provider = provider
        self._tracer = provider.get_tracer(tracer_name)
        self._metrics = metrics if metrics is not None and metrics.exporting else None
        self._untraced = untraced

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_QUIET_PREFIXES):
            return handler
        method = details.method
        # A unary request is decoded inside the wrapper, not by grpc: a corrupt message then
        # gets INVALID_ARGUMENT naming the request, where grpc's own decoding answers UNKNOWN.
        decode = handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, decode),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, decode),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, handler.stream_unary, None),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, handler.stream_stream, None),
            request_deserializer=decode,
            response_serializer=handler.response_serializer,
        )

    def _authenticate(self, method: str, metadata: dict[str, str]) -> Caller | PocgridError:
        if self._verifier is None:
            return _ANONYMOUS
        try:
            caller = self._verifier.verify(
                metadata.get(TOKEN_METADATA_KEY), _split_method(method)[0]
            )
            authorize(method, caller)
        except PocgridError as exc:
            return exc
        return caller

    def _enter(
        self, method: str, context: grpc.aio.ServicerContext
    ) -> tuple[Any, Caller | PocgridError]:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        caller = self._authenticate(method, metadata)
        known = caller if isinstance(caller, Caller) else _ANONYMOUS
        tenant = known.tenant
        rpc_context.set_caller(known.service)
        rpc_context.set_tenant(tenant)
        rpc_context.set_admin(known.admin)
        rpc_context.set_key_id(known.key_id)
        rpc_context.set_deadline_from_remaining(context.time_remaining())
        parent = telemetry.extract(metadata)
        untraced = method in self._untraced and "traceparent" not in metadata
        if not self._provider.exporting or untraced:
            # Nothing would read a recorded span: keep the trace (logs, downstream calls and
            # events still carry its ids) without building one.
            span_cm = trace.use_span(telemetry.unrecorded_span(parent), end_on_exit=True)
            return span_cm, caller
        service, name = _split_method(method)
        span_cm = self._tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                "pocgrid.tenant": tenant,
                "pocgrid.caller": known.service,
            },
        )
        return span_cm, caller

    def _record(
        self,
        method: str,
        started: float,
        context: grpc.aio.ServicerContext,
        error: BaseException | None = None,
    ) -> None:
        if self._metrics is None:
            return
        if isinstance(error, PocgridError):
            code = error.code.value[0]
        elif error is not None:
            code = grpc.StatusCode.INTERNAL.value[0]
        else:
            # An aborted call's code is on the context; a returned one is OK.
            aborted = context.code()
            code = aborted.value[0] if isinstance(aborted, grpc.StatusCode) else 0
        service, name = _split_method(method)
        self._metrics.rpc_duration.record(
            (time.perf_counter() - started) * 1e3,
            {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                "rpc.grpc.status_code": code,
            },
        )

    async def _fail(
        self, exc: BaseException, method: str, context: grpc.aio.ServicerContext, span: Any
    ) -> NoReturn:
        if isinstance(exc, PocgridError):
            span.set_attribute("rpc.grpc.status_code", exc.code.value[0])
            span.set_status(Status(StatusCode.ERROR, exc.message))
            log.info("rpc.rejected", method=method, code=exc.code.name, error=exc.message)
            status = exc.status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        trace_id = telemetry.current_trace_id()
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        log.exception("rpc.failed", method=method, trace_id=trace_id)
        status = internal_status(trace_id)
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("context.abort returned")

    def _wrap_unary(
        self, method: str, behavior: Callable[..., Any], decode: Decoder | None
    ) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span_cm, caller = self._enter(method, context)
            with span_cm as span:
                started = time.perf_counter()
                try:
                    if isinstance(caller, PocgridError):
                        raise caller
                    if decode is not None:
                        request = decode_request(decode, request, method)
                    response = await behavior(request, context)
                    if is_tenant_view(caller):
                        strip_internal(response)
                except grpc.aio.AbortError:
                    self._record(method, started, context)
                    raise
                except Exception as exc:
                    self._record(method, started, context, error=exc)
                    await self._fail(exc, method, context, span)
                self._record(method, started, context)
                log.debug("rpc", method=method, ms=round((time.perf_counter() - started) * 1e3, 2))
                return response

        return wrapped

    def _wrap_stream(
        self, method: str, behavior: Callable[..., Any], decode: Decoder | None
    ) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span_cm, caller = self._enter(method, context)
            with span_cm as span:
                try:
                    if isinstance(caller, PocgridError):
                        raise caller
                    if decode is not None:
                        request = decode_request(decode, request, method)
                    tenant_view = is_tenant_view(caller)
                    # Closed here when the client goes away, not whenever the garbage
                    # collector gets to it: handlers finish their work (usage) as they close.
                    async with contextlib.aclosing(behavior(request, context)) as stream:
                        async for item in stream:
                            if tenant_view:
                                strip_internal(item)
                            yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await self._fail(exc, method, context, span)

        return wrapped


def signed_metadata(
    signer: TokenSigner, method: str, metadata: Any
) -> list[tuple[str, str | bytes]]:
    """``metadata`` with the caller's service token added: the tenant (and admin role) named in
    it as ``x-pocgrid-tenant`` / ``x-pocgrid-role`` become the token's claims and leave the
    metadata (a server never reads them); without one the tenant is the one being served."""
    out: list[tuple[str, str | bytes]] = []
    tenant: str | None = None
    admin = False
    for key, value in metadata or ():
        if key == TENANT_METADATA_KEY:
            tenant = str(value)
        elif key == ROLE_METADATA_KEY:
            admin = value == ADMIN_ROLE
        elif key != TOKEN_METADATA_KEY:
            out.append((key, value))
    if tenant is None:
        tenant = rpc_context.current_tenant()
    audience = method.lstrip("/").rpartition("/")[0]
    out.append((TOKEN_METADATA_KEY, signer.token(tenant, admin, audience)))
    return out


class _ClientContext:
    """Signs the call, injects traceparent, and caps the deadline at the caller's remaining
    time."""

    def __init__(self, tracer: trace.Tracer, cap_s: float, signer: TokenSigner) -> None:
        self._tracer = tracer
        self._cap_s = cap_s
        self._signer = signer
        self._ending: set[asyncio.Future[None]] = set()  # stream spans being ended

    def _details(self, details: Any, cap_s: float | None) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        metadata = signed_metadata(self._signer, method, details.metadata)
        carrier: dict[str, str] = {}
        telemetry.inject(carrier)
        metadata.extend(carrier.items())
        timeout: float | None
        if cap_s is not None:
            timeout = rpc_context.downstream_timeout(cap_s, details.timeout)
        else:
            left = rpc_context.remaining_s()
            bounds = [t for t in (left, details.timeout) if t is not None]
            timeout = max(0.001, min(bounds)) if bounds else None
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=grpc.aio.Metadata(*metadata),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class UnaryClientInterceptor(_ClientContext, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        with self._tracer.start_as_current_span(
            method.lstrip("/"), kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc"}
        ) as span:
            call = await continuation(self._details(details, self._cap_s), request)
            try:
                return await call
            except grpc.aio.AioRpcError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.code().value[0])
                span.set_status(Status(StatusCode.ERROR, exc.code().name))
                raise


class StreamClientInterceptor(_ClientContext, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """One object per kind of call: a grpc.aio channel files an interceptor under the first
    kind it implements, so one class implementing both never saw a stream."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        # The span covers the whole stream: it ends when the call does (all responses read,
        # failed or cancelled), not when the call object is handed back, which is at once.
        span = self._tracer.start_span(
            method.lstrip("/"), kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc"}
        )
        try:
            with trace.use_span(span, end_on_exit=False):
                call = await continuation(self._details(details, self._cap_s), request)
        except BaseException:
            span.set_status(Status(StatusCode.ERROR, "call not started"))
            span.end()
            raise
        call.add_done_callback(self._stream_done(span))
        return call

    def _stream_done(self, span: trace.Span) -> Callable[[Any], None]:
        def done(call: Any) -> None:
            # The aio call's status accessors are coroutines; the call is over, so they
            # answer at once, from a task (a done callback cannot await).
            task = asyncio.ensure_future(_end_stream_span(call, span))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

        return done


async def _end_stream_span(call: Any, span: trace.Span) -> None:
    try:
        code = await call.code()
        if code is not grpc.StatusCode.OK:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            span.set_status(Status(StatusCode.ERROR, code.name))
    finally:
        span.end()


def open_channel(
    target: str,
    tracer: trace.Tracer,
    cap_s: float,
    max_message_bytes: int = 4 * 1024 * 1024,
    *,
    signer: TokenSigner,
) -> grpc.aio.Channel:
    """A plaintext channel to another service with the client interceptor installed: every
    call carries ``signer``'s token (the channel is not encrypted; the token proves the
    caller, see docs/security.md for what that leaves open)."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=[
            UnaryClientInterceptor(tracer, cap_s, signer),
            StreamClientInterceptor(tracer, cap_s, signer),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
