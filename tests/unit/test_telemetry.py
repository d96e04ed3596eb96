"""W3C trace-context helpers agree with the OpenTelemetry propagator."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.core import telemetry


def _headers_via_propagator(span: trace.Span) -> dict[str, str]:
    carrier: dict[str, str] = {}
    telemetry.inject(carrier, trace.set_span_in_context(span))
    return carrier


def test_trace_headers_match_the_propagator():
    provider = telemetry.create_tracer_provider("t", env={})
    span = provider.get_tracer("t").start_span("s")
    assert dict(telemetry.trace_headers(span)) == _headers_via_propagator(span)
    state = trace.TraceState([("vendor", "x1")])
    ctx = span.get_span_context()
    child_ctx = trace.SpanContext(ctx.trace_id, 7, False, ctx.trace_flags, state)
    with_state = trace.NonRecordingSpan(child_ctx)
    assert dict(telemetry.trace_headers(with_state)) == _headers_via_propagator(with_state)
    assert telemetry.trace_headers(trace.INVALID_SPAN) == ()


def test_unrecorded_span_joins_the_parent_or_starts_a_sampled_trace():
    fresh = telemetry.unrecorded_span(None).get_span_context()
    assert fresh.is_valid and fresh.trace_flags.sampled and not fresh.is_remote
    parent = telemetry.extract({"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-00"})
    child = telemetry.unrecorded_span(parent).get_span_context()
    assert child.trace_id == int("ab" * 16, 16)
    assert child.span_id != int("cd" * 8, 16)
    assert not child.trace_flags.sampled  # the caller's decision is kept


def test_provider_knows_whether_it_exports():
    provider = telemetry.create_tracer_provider("t", env={})
    assert not provider.exporting
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert provider.exporting
