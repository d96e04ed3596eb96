"""The metering process: servicer, usage storage and the durable JetStream consumer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.price_book import default_price_book
from pocgrid.v1 import events_pb2, metering_pb2, metering_pb2_grpc
from services.core.config import CommonConfig
from services.core.service import Service
from services.metering.config import MeteringConfig
from services.metering.migrations import MIGRATIONS
from services.metering.recorder import UsageRecorder
from services.metering.servicer import MeteringServicer
from services.metering.store import UsageStore

USAGE_STREAM = "POCGRID_USAGE"
USAGE_SUBJECTS = "usage.>"
#: Durable consumer name: every replica shares it, so each event goes to one of them.
DURABLE = "metering"


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

    async def on_start(self, server: grpc.aio.Server) -> None:
        db = await self.open_database(self.config.metering_database_url, MIGRATIONS)
        self.store = UsageStore(db)
        await self.connect_bus()
        metering_pb2_grpc.add_MeteringServiceServicer_to_server(
            MeteringServicer(self.store, (default_price_book(),)), server
        )
        self.add_service(metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name)

    async def on_serving(self) -> None:
        assert self.bus is not None and self.store is not None
        # Supervised by the bus (retries, dead letters, health); batch and timings come from
        # CommonConfig's consumer_* settings.
        self.bus.consume(
            stream=USAGE_STREAM,
            durable=DURABLE,
            subject=USAGE_SUBJECTS,
            message_type=events_pb2.UsageRecorded,
            handler=UsageRecorder(self.store).handle,
        )
