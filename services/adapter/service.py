"""The adapter process: fit check, imports, coverage and plans; its own database (imported
models, stored plans), no events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import adapter_pb2, adapter_pb2_grpc
from services.adapter.config import AdapterConfig
from services.adapter.imports import ModelBook
from services.adapter.migrations import MIGRATIONS
from services.adapter.servicer import AdapterServicer
from services.adapter.store import AdapterStore
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
        db = await self.open_database(self.config.adapter_database_url, MIGRATIONS)
        store = AdapterStore(db)
        models = ModelBook(store, self.catalog, self.config.adapter_max_model_bytes)
        adapter_pb2_grpc.add_AdapterServiceServicer_to_server(
            AdapterServicer(self.catalog, self.config, models), server
        )
        self.add_service(adapter_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name)
