"""OpenTelemetry tracing for services: one TracerProvider per service (``pocgrid.tracing``), W3C
trace context across hops."""

from __future__ import annotations

import random
from collections.abc import Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# The providers and exporters live in the SDK (the CLI exports its spans too); re-exported here
# for the services.
from pocgrid.tracing import JsonLinesSpanExporter as JsonLinesSpanExporter
from pocgrid.tracing import PocgridTracerProvider as PocgridTracerProvider
from pocgrid.tracing import create_tracer_provider as create_tracer_provider

PROPAGATOR = TraceContextTextMapPropagator()


def inject(carrier: MutableMapping[str, str], ctx: otel_context.Context | None = None) -> None:
    PROPAGATOR.inject(carrier, context=ctx)


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    return PROPAGATOR.extract(carrier)


def unrecorded_span(parent: otel_context.Context | None) -> trace.Span:
    """A span that joins (or starts) a trace and is passed on, but records nothing.

    For a service that exports no spans: its children in other services still share one trace
    id. A new trace is marked sampled, as the SDK's default parent-based always-on sampler
    would, so downstream services that do export keep their spans.
    """
    parent_ctx = trace.get_current_span(parent).get_span_context()
    if parent_ctx.is_valid:
        trace_id, flags, state = parent_ctx.trace_id, parent_ctx.trace_flags, parent_ctx.trace_state
    else:
        trace_id = random.getrandbits(128) or 1
        flags, state = trace.TraceFlags(trace.TraceFlags.SAMPLED), None
    return trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id,
            random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=flags,
            trace_state=state,
        )
    )


def trace_headers(span: trace.Span) -> tuple[tuple[str, str], ...]:
    """W3C trace-context headers naming ``span`` as the parent, as gRPC metadata pairs.

    The same headers ``inject`` writes for a context holding ``span``, without building that
    context: the gateway calls this on every request, where each avoided call counts.
    """
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ()
    traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    if ctx.trace_state:
        return (("traceparent", traceparent), ("tracestate", ctx.trace_state.to_header()))
    return (("traceparent", traceparent),)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""
