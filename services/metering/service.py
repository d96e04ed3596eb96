"""The metering process: servicer, usage storage, the durable JetStream batch consumer and the
invoice finalizer."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import timedelta

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.price_book import default_price_book
from pocgrid.v1 import admin_pb2, admin_pb2_grpc, events_pb2, metering_pb2, metering_pb2_grpc
from services.core.apikeys import configured_tenants
from services.core.config import CommonConfig
from services.core.logging import get_logger
from services.core.nats_auth import METERING_DURABLE
from services.core.service import Service
from services.core.tenants import TenantDirectory
from services.metering.config import MeteringConfig
from services.metering.invoices import Invoicer
from services.metering.migrations import MIGRATIONS
from services.metering.recorder import UsageRecorder
from services.metering.servicer import MeteringServicer
from services.metering.store import UsageStore

log = get_logger()

USAGE_STREAM = "POCGRID_USAGE"
USAGE_SUBJECTS = "usage.>"
#: Durable consumer name: every replica shares it, so each event goes to one of them.
DURABLE = METERING_DURABLE


class MeteringServer(Service):
    name = "metering"
    config_type = MeteringConfig

    def __init__(
        self,
        common: CommonConfig,
        config: MeteringConfig,
        *,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        super().__init__(common, env=env, span_processors=span_processors)
        self.config = config
        self.store: UsageStore | None = None
        self.invoicer: Invoicer | None = None
        self.tenants: frozenset[str] = frozenset()
        self.directory: TenantDirectory | None = None
        self.ingest_lag = self.gauge(
            "pocgrid.metering.ingest.lag",
            unit="s",
            description="At the last commit of usage: its time minus the event time (ended_at) "
            "of the last usage event committed",
        )

    def _committed(self, event_us: int) -> None:
        # Lag at commit, not "now - last event time" at scrape: an idle metering that has
        # stored everything is not lagging, however long ago the last usage was. A backlog
        # shows in pocgrid.bus.consumer.pending{consumer="metering"}.
        self.ingest_lag.set(time.time() - event_us / 1e6)

    async def on_start(self, server: grpc.aio.Server) -> None:
        db = await self.open_database(self.config.metering_database_url, MIGRATIONS)
        self.store = UsageStore(db)
        # Tenants metering accepts usage for: those of the gateway's key configuration (the
        # same POCGRID_API_KEYS / _FILE), kept in its own table so a tenant whose key is
        # removed is still known (its invoices, its late usage).
        configured = configured_tenants(self.config.api_keys, self.config.api_keys_file)
        self.tenants = await self.store.add_tenants(configured)
        if not self.tenants and not self.config.registry_addr:
            log.warning(
                "metering.no_tenants",
                hint="set POCGRID_REGISTRY_ADDR (the key store), or POCGRID_API_KEYS or _FILE",
            )
        # Every version ever priced with stays available; a changed book needs a new version.
        books = tuple(await self.store.keep_books((default_price_book(),)))
        self.invoicer = Invoicer(self.store, books, timedelta(seconds=self.config.invoice_grace_s))
        await self.connect_bus()
        if self.config.registry_addr:
            assert self.bus is not None
            self.directory = TenantDirectory(
                admin_pb2_grpc.TenantDirectoryServiceStub(self.channel(self.config.registry_addr)),
                self.bus,
                self._tenants_changed,
            )
        metering_pb2_grpc.add_MeteringServiceServicer_to_server(
            MeteringServicer(self.store, books, self.invoicer), server
        )
        self.add_service(metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name)

    async def on_serving(self) -> None:
        assert self.bus is not None and self.store is not None and self.invoicer is not None
        # Supervised by the bus (retries, dead letters, health); timings come from
        # CommonConfig's consumer_* settings.
        self.bus.consume_batch(
            stream=USAGE_STREAM,
            durable=DURABLE,
            subject=USAGE_SUBJECTS,
            message_type=events_pb2.UsageRecorded,
            handler=UsageRecorder(
                self.store, lambda: self.tenants, self._committed, self._learn
            ).handle_batch,
            batch=self.config.metering_ingest_batch,
        )
        self.spawn(self.invoicer.run(self.config.invoice_check_interval_s), "invoices")
        if self.directory is not None:
            self.spawn(self.directory.run(), "tenants")

    async def _tenants_changed(self, tenants: Mapping[str, admin_pb2.Tenant]) -> None:
        # Kept in metering's own table like the configured ones: a tenant stays known for its
        # invoices and late usage whatever happens to it in the store.
        if self.store is not None and not set(tenants) <= self.tenants:
            self.tenants = await self.store.add_tenants(tenants)
            log.info("metering.tenants", tenants=len(self.tenants))

    async def _learn(self, unknown: frozenset[str]) -> frozenset[str]:
        """Usage for tenants not known yet: ask the store once (a tenant created a moment ago
        may not have reached this replica) before refusing it."""
        if self.directory is not None:
            await self._tenants_changed(await self.directory.refresh())
        return self.tenants
