"""The registry process: servicers, storage, lease reaper, heartbeat flusher, outbox relay, the
key and tenant store with its admin API, and the audit log's consumer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import admin_pb2, admin_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.core.audit import AUDIT_STREAM, AUDIT_SUBJECTS
from services.core.bus import EventMeta
from services.core.config import CommonConfig
from services.core.nats_auth import REGISTRY_AUDIT_DURABLE
from services.core.service import Service
from services.registry.admin import AdminServicer, TenantDirectoryServicer
from services.registry.config import RegistryConfig
from services.registry.keys import KeyStore
from services.registry.migrations import MIGRATIONS
from services.registry.pool import NodePool
from services.registry.servicer import NodeLeaseServicer, RegistryServicer
from services.registry.store import NodeStore

#: Durable consumer of every service's audit events (one per registry deployment).
AUDIT_DURABLE = REGISTRY_AUDIT_DURABLE


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
        self.keys: KeyStore | None = None

    async def on_start(self, server: grpc.aio.Server) -> None:
        db = await self.open_database(self.config.registry_database_url, MIGRATIONS)
        store = NodeStore(db)
        await self.connect_bus()
        relay = self.start_outbox_relay(store.outbox)
        self.pool = NodePool(self.config, store, relay.notify)
        await self.pool.load()
        self.keys = KeyStore(db, store.outbox)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.keys, relay.notify), server
        )
        admin_pb2_grpc.add_TenantDirectoryServiceServicer_to_server(
            TenantDirectoryServicer(self.keys), server
        )
        for svc in ("AdminService", "TenantDirectoryService"):
            self.add_service(admin_pb2.DESCRIPTOR.services_by_name[svc].full_name)
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
        assert self.bus is not None and self.keys is not None
        self.bus.consume_batch(
            stream=AUDIT_STREAM,
            durable=AUDIT_DURABLE,
            subject=AUDIT_SUBJECTS,
            message_type=admin_pb2.AuditEvent,
            handler=self._store_audit,
            # The audit log may lag while NATS is away (its events wait in the stream); the
            # registry's own work (the pool, the key store) must not stop for it.
            essential=False,
        )

    async def _store_audit(
        self, batch: Sequence[tuple[admin_pb2.AuditEvent, EventMeta]]
    ) -> list[str]:
        assert self.keys is not None
        # Each once, by event id: a redelivered batch stores nothing twice.
        await self.keys.record_audit([record for record, _ in batch])
        return [""] * len(batch)

    async def on_stop(self) -> None:
        if self.pool is not None:
            await self.pool.flush_heartbeats()
