"""The scheduler process: servicer, job storage and the outbox relay of job events.

Placement on agents is not implemented yet, so submitted jobs stay QUEUED (see ``jobs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.core.config import CommonConfig
from services.core.outbox import OutboxRelay
from services.core.service import Service
from services.scheduler.config import SchedulerConfig
from services.scheduler.jobs import JobBook
from services.scheduler.migrations import MIGRATIONS
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.store import JobStore


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

    async def on_start(self, server: grpc.aio.Server) -> None:
        db = await self.open_database(self.config.scheduler_database_url, MIGRATIONS)
        store = JobStore(db)
        await self.connect_bus()
        self.relay = self.start_outbox_relay(store.outbox)
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
            SchedulerServicer(self.catalog, JobBook(store, self.relay)), server
        )
        self.add_service(scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name)
