"""The scheduler process: servicer, job storage, the placement loop over the live pool, the
node-lost consumer and the outbox relay of job events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.price_book import card_hour_prices
from pocgrid.sched import Policy, QueuePolicy, Quota, QuotaBook, make_policy
from pocgrid.sched.shaping import Shaped
from pocgrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.core.config import CommonConfig
from services.core.logging import get_logger
from services.core.nats_auth import SCHEDULER_NODE_LOST_DURABLE
from services.core.outbox import OutboxRelay
from services.core.service import Service
from services.core.tenants import TenantDirectory
from services.scheduler.config import SchedulerConfig
from services.scheduler.gauges import SchedulerGauges
from services.scheduler.jobs import JobBook
from services.scheduler.migrations import MIGRATIONS
from services.scheduler.placement import AgentCalls, Placer
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.store import JobStore

#: The registry's stream and the durable consumer of lost nodes.
REGISTRY_STREAM = "POCGRID_REGISTRY"
NODE_LOST_DURABLE = SCHEDULER_NODE_LOST_DURABLE


log = get_logger()

#: Second 0 of the live clock (``time.time()``), which ``Shaped`` maps to the tariff's hours.
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def live_policy(config: SchedulerConfig, catalog: Catalog) -> Policy:
    """The configured policy as the live loop runs it: ``cost`` ranks chip types by the default
    price book's card-hours (the same prices the simulator uses), and with a tariff file the
    policy is wrapped in ``Shaped`` (deferrable work held under the load cap, in devices or in
    watts)."""
    prices = card_hour_prices(c.name for c in catalog.emulatable_chips())
    policy: Policy = make_policy(config.scheduler_policy, config.quota_book(), prices)
    tariff = config.tariff()
    if tariff is not None:
        # A cap in watts counts each busy device at its chip's TDP from the catalogue.
        power = {c.name: c.tdp_w for c in catalog.emulatable_chips() if c.tdp_w}
        policy = Shaped(policy, tariff.time_of_use, tariff.cap, epoch=UNIX_EPOCH, power=power)
    return policy


class SchedulerServer(Service):
    name = "scheduler"
    config_type = SchedulerConfig

    def __init__(
        self,
        common: CommonConfig,
        config: SchedulerConfig,
        *,
        catalog: Catalog | None = None,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        super().__init__(common, env=env, span_processors=span_processors)
        self.config = config
        self.catalog = catalog or default_catalog()
        self.relay: OutboxRelay | None = None
        self.placer: Placer | None = None
        self.gauges: SchedulerGauges | None = None
        self.directory: TenantDirectory | None = None

    async def on_start(self, server: grpc.aio.Server) -> None:
        db = await self.open_database(self.config.scheduler_database_url, MIGRATIONS)
        store = JobStore(db)
        await self.connect_bus()
        self.relay = self.start_outbox_relay(store.outbox)
        nodes = None
        if self.config.registry_addr:
            registry = registry_pb2_grpc.RegistryServiceStub(
                self.channel(self.config.registry_addr)
            )
            policy = live_policy(self.config, self.catalog)
            self.placer = Placer(
                store,
                self.relay,
                policy,
                registry,
                AgentCalls(self.channel),
                self.config.placement_interval_ms / 1000,
            )
            nodes = self.placer.nodes
            assert self.bus is not None
            self.directory = TenantDirectory(
                admin_pb2_grpc.TenantDirectoryServiceStub(self.channel(self.config.registry_addr)),
                self.bus,
                self._quotas_changer(policy, self.placer),
            )
        book = JobBook(
            store,
            self.relay,
            wake=self.placer.notify if self.placer else lambda: None,
            stop_tasks=self.placer.stop_tasks if self.placer else None,
        )
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
            SchedulerServicer(self.catalog, book, store, nodes), server
        )
        self.add_service(scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name)
        self.gauges = SchedulerGauges(self.gauge, store, nodes)
        self.sample_gauges("scheduler", self.gauges.sample)

    async def on_serving(self) -> None:
        if self.placer is None:
            return
        assert self.bus is not None
        self.bus.consume(
            stream=REGISTRY_STREAM,
            durable=NODE_LOST_DURABLE,
            subject="registry.node.lost",
            message_type=events_pb2.NodeLost,
            handler=self.placer.on_node_lost,
        )
        self.spawn(self.placer.run(), "placement")
        if self.directory is not None:
            self.spawn(self.directory.run(), "tenants")

    def _quotas_changer(
        self, policy: Policy, placer: Placer
    ) -> Callable[[Mapping[str, admin_pb2.Tenant]], Awaitable[None]]:
        # The quotas live in the queue policy, under the tariff's Shaped when there is one.
        queue = policy.inner if isinstance(policy, Shaped) else policy
        assert isinstance(queue, QueuePolicy), type(queue)
        configured = self.config.quota_book()

        async def changed(tenants: Mapping[str, admin_pb2.Tenant]) -> None:
            queue.quotas = quota_book(configured, tenants)
            log.info("scheduler.quotas", tenants=len(tenants))
            placer.notify()

        return changed


def quota_book(
    configured: QuotaBook | None, tenants: Mapping[str, admin_pb2.Tenant]
) -> QuotaBook | None:
    """The quotas of the key and tenant store's tenants over those of the configuration
    (``POCGRID_SCHEDULER_QUOTAS``, still read as a bootstrap): a tenant in the store has the
    store's quota; one only in the configuration keeps its configured quota."""
    if not tenants:
        return configured
    book = dict(configured.tenants) if configured is not None else {}
    for name, tenant in tenants.items():
        book[name] = Quota(
            guaranteed_milli=round(tenant.guaranteed_devices * 1000),
            borrow_limit_milli=round(tenant.borrow_limit_devices * 1000)
            if tenant.HasField("borrow_limit_devices")
            else None,
        )
    return QuotaBook(book, configured.default if configured is not None else Quota())
