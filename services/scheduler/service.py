"""The scheduler process: servicer, job storage, the placement loop over the live pool, the
node-lost consumer and the outbox relay of job events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.price_book import card_hour_prices
from pocgrid.sched import Policy, make_policy
from pocgrid.sched.shaping import Shaped
from pocgrid.v1 import events_pb2, registry_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.core.config import CommonConfig
from services.core.nats_auth import SCHEDULER_NODE_LOST_DURABLE
from services.core.outbox import OutboxRelay
from services.core.service import Service
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
            self.placer = Placer(
                store,
                self.relay,
                live_policy(self.config, self.catalog),
                registry,
                AgentCalls(self.channel),
                self.config.placement_interval_ms / 1000,
            )
            nodes = self.placer.nodes
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
