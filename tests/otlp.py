"""An OTLP receiver for tests: a real gRPC server implementing OTLP's TraceService and
MetricsService that keeps what services export to it."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metric_names: set[tuple[str, str]] = set()

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for rs in request.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append(
                            {
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "resource": resource,
                                "attributes": {
                                    a.key: a.value.string_value or a.value.int_value
                                    for a in span.attributes
                                },
                                "links": [
                                    (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                                ],
                            }
                        )
            return trace_service_pb2.ExportTraceServiceResponse()
        for rm in request.resource_metrics:
            service = next(
                a.value.string_value for a in rm.resource.attributes if a.key == "service.name"
            )
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self.metric_names.add((service, metric.name))
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def by_service(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["resource"].get("service.name") == name]


async def start_receiver() -> tuple[Receiver, int, grpc.aio.Server]:
    server = grpc.aio.server()
    rec = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return rec, port, server
