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
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class OtlpTarget:
    endpoint: str
    insecure: bool


def otlp_target(env: Mapping[str, str]) -> OtlpTarget | None:
    """Where OTLP/gRPC goes, from ``OTEL_EXPORTER_OTLP_ENDPOINT``; None when unset.

    ``http://host:port`` is plaintext and ``https://host:port`` TLS, as the exporter reads them.
    A bare ``host:port`` (the OpenTelemetry convention allows it for gRPC) is plaintext unless
    ``OTEL_EXPORTER_OTLP_INSECURE=false``: the exporter on its own would try TLS, which the
    Collector's default OTLP receiver does not speak, so the common case would fail silently.
    """
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint:
        return None
    scheme = endpoint.partition("://")[0].lower() if "://" in endpoint else ""
    if scheme:
        return OtlpTarget(endpoint, insecure=scheme != "https")
    flag = env.get("OTEL_EXPORTER_OTLP_INSECURE", "").strip().lower()
    return OtlpTarget(endpoint, insecure=flag != "false")


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
    resource_attributes: Mapping[str, str] | None = None,
    export_timeout_s: float | None = None,
) -> PocgridTracerProvider:
    """``resource_attributes`` are stamped on every span (an agent names its node and chip).
    ``export_timeout_s`` bounds each OTLP export, retries included: the CLI passes a short one
    so an unreachable collector never holds up a command at exit."""
    env = os.environ if env is None else env
    provider = PocgridTracerProvider(
        resource=Resource.create({"service.name": service, **(resource_attributes or {})})
    )
    otlp = otlp_target(env)
    if otlp is not None:
        # Imported lazily: the OTLP exporter pulls in a second gRPC stack most runs never use.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=otlp.endpoint, insecure=otlp.insecure, timeout=export_timeout_s
        )
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                export_timeout_millis=(
                    export_timeout_s * 1000 if export_timeout_s is not None else 30_000
                ),
            )
        )
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    return provider
