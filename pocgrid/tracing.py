"""Span export for any pocgrid process: the SDK's CLI and every service.

Providers are per process part rather than global so several services can run in one test
process and still report their own ``service.name``. Exporters: OTLP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, a JSON-lines file when ``POCGRID_TRACE_FILE`` is set, and
whatever extra processors a caller passes (tests pass an in-memory exporter).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span; lets a developer see traces with no collector."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "service": span.resource.attributes.get("service.name"),
                        "trace_id": f"{ctx.trace_id:032x}" if ctx else "",
                        "span_id": f"{ctx.span_id:016x}" if ctx else "",
                        "parent_span_id": f"{parent.span_id:016x}" if parent else "",
                        "kind": span.kind.name,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": {k: _jsonable(v) for k, v in (span.attributes or {}).items()},
                    }
                )
            )
        with self._lock, self._path.open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class PocgridTracerProvider(TracerProvider):
    """An SDK provider that knows whether anything reads its spans.

    With no span processor a recorded span is built and thrown away unseen; the gateway and the
    server interceptor read ``exporting`` to skip that work on every call (``unrecorded_span``).
    """

    exporting: bool = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.exporting = True


def create_tracer_provider(
    service: str,
    *,
    trace_file: str = "",
    env: Mapping[str, str] | None = None,
    extra_processors: Iterable[SpanProcessor] = (),
) -> PocgridTracerProvider:
    env = os.environ if env is None else env
    provider = PocgridTracerProvider(resource=Resource.create({"service.name": service}))
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if endpoint:
        # Imported lazily: the OTLP exporter pulls in a second gRPC stack most runs never use.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    return provider
