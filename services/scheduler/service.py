"""The scheduler process: servicer, job storage and the outbox sweeper.

Placement on agents is not implemented yet, so submitted jobs stay QUEUED (see ``jobs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.core.config import CommonConfig
from services.core.service import Service
from services.core.storage import Database
from services.scheduler.config import SchedulerConfig
from services.scheduler.jobs import JobBook
from services.scheduler.outbox import EventOutbox
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.store import JobStore


class SchedulerServer(Service):
    name = "scheduler"

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
        self.db = Database(config.scheduler_database_url or common.sqlite_url(self.name))
        self.outbox: EventOutbox | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SchedulerServer:
        return cls(CommonConfig.from_env(env), SchedulerConfig.from_env(env), env=env)

    async def on_start(self, server: grpc.aio.Server) -> None:
        store = JobStore(self.db)
        await store.init()
        bus = await self.connect_bus()
        self.outbox = EventOutbox(store, bus.publish, self.config.scheduler_outbox_sweep_ms / 1000)
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
            SchedulerServicer(self.catalog, JobBook(store, self.outbox)), server
        )
        self.add_service(scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name)

    async def on_serving(self) -> None:
        assert self.outbox is not None
        self.spawn(self.outbox.run_sweeper(), "outbox")

    async def on_stop(self) -> None:
        await self.db.dispose()
