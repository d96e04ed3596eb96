"""The registry process: servicers, storage, lease reaper, heartbeat flusher, outbox relay."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import registry_pb2, registry_pb2_grpc
from services.core.config import CommonConfig
from services.core.service import Service
from services.registry.config import RegistryConfig
from services.registry.migrations import MIGRATIONS
from services.registry.pool import NodePool
from services.registry.servicer import NodeLeaseServicer, RegistryServicer
from services.registry.store import NodeStore


class RegistryServer(Service):
    name = "registry"
    config_type = RegistryConfig

    def __init__(
        self,
        common: CommonConfig,
        config: RegistryConfig,
        *,
        catalog: Catalog | None = None,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        super().__init__(common, env=env, span_processors=span_processors)
        self.config = config
        self.catalog = catalog or default_catalog()
        self.pool: NodePool | None = None

    async def on_start(self, server: grpc.aio.Server) -> None:
        db = await self.open_database(self.config.registry_database_url, MIGRATIONS)
        store = NodeStore(db)
        await self.connect_bus()
        relay = self.start_outbox_relay(store.outbox)
        self.pool = NodePool(self.config, store, relay.notify)
        await self.pool.load()
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(self.catalog, self.pool), server
        )
        registry_pb2_grpc.add_NodeLeaseServiceServicer_to_server(
            NodeLeaseServicer(self.catalog, self.pool, self.config), server
        )
        for svc in ("RegistryService", "NodeLeaseService"):
            self.add_service(registry_pb2.DESCRIPTOR.services_by_name[svc].full_name)

    async def on_serving(self) -> None:
        assert self.pool is not None
        self.spawn(self.pool.run_reaper(), "reaper")
        self.spawn(self.pool.run_flusher(), "flusher")

    async def on_stop(self) -> None:
        if self.pool is not None:
            await self.pool.flush_heartbeats()
