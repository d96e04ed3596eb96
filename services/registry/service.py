"""The registry process: servicers, storage, lease reaper and heartbeat flusher."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import registry_pb2, registry_pb2_grpc
from services.core.config import CommonConfig
from services.core.service import Service
from services.core.storage import Database
from services.registry.config import RegistryConfig
from services.registry.pool import NodePool
from services.registry.servicer import NodeLeaseServicer, RegistryServicer
from services.registry.store import NodeStore


class RegistryServer(Service):
    name = "registry"

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
        self.db = Database(config.registry_database_url or common.sqlite_url(self.name))
        self.pool: NodePool | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RegistryServer:
        return cls(CommonConfig.from_env(env), RegistryConfig.from_env(env), env=env)

    async def on_start(self, server: grpc.aio.Server) -> None:
        store = NodeStore(self.db)
        await store.init()
        bus = await self.connect_bus()
        self.pool = NodePool(self.config, store, bus.publish)
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
        await self.db.dispose()
