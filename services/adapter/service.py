"""The adapter process: the fit check over the packaged catalogue (no database, no events)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import adapter_pb2, adapter_pb2_grpc
from services.adapter.config import AdapterConfig
from services.adapter.servicer import AdapterServicer
from services.core.config import CommonConfig
from services.core.service import Service


class AdapterServer(Service):
    name = "adapter"
    config_type = AdapterConfig

    def __init__(
        self,
        common: CommonConfig,
        config: AdapterConfig,
        *,
        catalog: Catalog | None = None,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        super().__init__(common, env=env, span_processors=span_processors)
        self.config = config
        self.catalog = catalog or default_catalog()

    async def on_start(self, server: grpc.aio.Server) -> None:
        adapter_pb2_grpc.add_AdapterServiceServicer_to_server(
            AdapterServicer(self.catalog, self.config), server
        )
        self.add_service(adapter_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name)
