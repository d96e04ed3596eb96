"""OpenTelemetry metrics for services: exported over OTLP next to the spans, and scrapeable as
Prometheus.

One MeterProvider per service (as for tracing: several services share a test process and keep
their own ``service.name``). Readers: OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, and a
Prometheus text endpoint on ``POCGRID_METRICS_LISTEN`` (its own registry, so two services in one
process never mix their series). With neither, instruments are no-ops in effect: the SDK
aggregates nothing it has no reader for.

Instruments every service has (names from OpenTelemetry's RPC semantic conventions):
``rpc.server.duration`` (ms, unary RPCs, by ``rpc.service``, ``rpc.method`` and
``rpc.grpc.status_code``); request rate is its count over time. Services add their own gauges
through ``meter`` (queue depth, pool utilization, ingest lag).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.metrics import Histogram, Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from pocgrid.tracing import otlp_target
from services.core.config import CommonConfig, parse_hostport


class ServiceMetrics:
    def __init__(
        self,
        service: str,
        common: CommonConfig,
        env: Mapping[str, str],
        resource_attributes: Mapping[str, str] | None = None,
    ) -> None:
        readers: list[MetricReader] = []
        otlp = otlp_target(env)
        if otlp is not None:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=otlp.endpoint, insecure=otlp.insecure),
                    export_interval_millis=common.metrics_export_interval_ms,
                )
            )
        self._http: Any = None
        self.prometheus_port = 0
        if common.metrics_listen:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry(auto_describe=True)
            readers.append(PrometheusMetricReader(registry=registry))
            host, port = parse_hostport("metrics_listen", common.metrics_listen)
            self._http, _thread = start_http_server(port, addr=host, registry=registry)
            self.prometheus_port = int(self._http.server_port)
        self.exporting = bool(readers)
        self.provider = MeterProvider(
            resource=Resource.create({"service.name": service, **(resource_attributes or {})}),
            metric_readers=readers,
        )
        self.meter: Meter = self.provider.get_meter(f"pocgrid.{service}")
        self.rpc_duration: Histogram = self.meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Duration of inbound unary RPCs"
        )

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        # Bounded: an unreachable collector must not hold a stopping service.
        self.provider.shutdown(timeout_millis=2_000)
