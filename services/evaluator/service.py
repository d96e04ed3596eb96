"""The evaluator process: scenarios, evaluations (stored per tenant) and the pool they run on."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import (
    adapter_pb2,
    adapter_pb2_grpc,
    evaluator_pb2,
    evaluator_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    registry_pb2_grpc,
    scheduler_pb2_grpc,
)
from services.core.addresses import host_of, reachable_address
from services.core.config import CommonConfig
from services.core.interceptors import open_channel
from services.core.service import Service
from services.evaluator.config import EvaluatorConfig
from services.evaluator.evaluations import Evaluations
from services.evaluator.migrations import MIGRATIONS
from services.evaluator.placement import RegistryPool, SchedulerPool
from services.evaluator.runner import NoPrices, Pool, Price, Prices, Runner
from services.evaluator.scenarios import load_catalog
from services.evaluator.servicer import EvaluatorServicer
from services.evaluator.store import EvaluationStore
from services.evaluator.usermodels import GetModel, GetSamples, UserModels


class MeteringPrices:
    """Prices from metering's price book in force (``GetPriceBook``), read once a minute at
    most: an evaluation of 27 chips asks once, not 27 times."""

    TTL_S = 60.0

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = metering_pb2_grpc.MeteringServiceStub(channel)
        self._cards: dict[str, Price] = {}
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def price(self, chip: str) -> Price | None:
        async with self._lock:
            if time.monotonic() - self._read_at > self.TTL_S:
                book = (await self._stub.GetPriceBook(metering_pb2.GetPriceBookRequest())).book
                basis = {
                    metering_pb2.PRICE_BASIS_PUBLISHED: "published",
                    metering_pb2.PRICE_BASIS_CONVERTED: "converted",
                    metering_pb2.PRICE_BASIS_ESTIMATED: "estimated",
                }
                self._cards = {
                    c.chip: Price(
                        busy_device_hour=float(c.busy_device_hour),
                        memory_gib_hour=float(c.memory_gib_hour),
                        currency=book.currency,
                        source=f"price book {book.version}, {basis.get(c.basis, 'unspecified')}"
                        + (f": {c.method}" if c.method else ""),
                    )
                    for c in book.cards
                }
                self._read_at = time.monotonic()
            return self._cards.get(chip)


class EvaluatorServer(Service):
    name = "evaluator"
    config_type = EvaluatorConfig

    def __init__(
        self,
        common: CommonConfig,
        config: EvaluatorConfig,
        *,
        catalog: Catalog | None = None,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
        prices: Prices | None = None,
    ) -> None:
        super().__init__(common, env=env, span_processors=span_processors)
        self.config = config
        self.catalog = catalog or default_catalog()
        self._prices = prices
        self.evaluations: Evaluations | None = None
        self._agent_channels: list[grpc.aio.Channel] = []

    def agent_channel(self, address: str) -> grpc.aio.Channel:
        """A channel to an agent whose calls may run as long as a serving run takes."""
        ch = open_channel(
            address,
            self.tracer,
            self.config.evaluator_serve_timeout_s,
            self.common.max_message_bytes,
            signer=self.credentials.signer,
        )
        self._agent_channels.append(ch)
        return ch

    async def on_start(self, server: grpc.aio.Server) -> None:
        path = (
            Path(self.config.evaluator_scenarios_file)
            if self.config.evaluator_scenarios_file
            else None
        )
        scenarios = load_catalog(self.catalog, path)
        db = await self.open_database(self.config.evaluator_database_url, MIGRATIONS)
        store = EvaluationStore(db)
        await self.connect_bus()
        relay = self.start_outbox_relay(store.outbox)
        prices: Prices = self._prices or (
            MeteringPrices(self.channel(self.config.metering_addr))
            if self.config.metering_addr
            else NoPrices()
        )
        users = UserModels(self._adapter_reader(), self._sample_reader(store))
        runner: Runner | None = None
        pool: Pool | None = None
        if self.config.registry_addr:
            registry = registry_pb2_grpc.RegistryServiceStub(
                self.channel(self.config.registry_addr)
            )
            timeout = self.config.evaluator_serve_timeout_s
            if self.config.scheduler_addr:
                pool = SchedulerPool(
                    scheduler_pb2_grpc.SchedulerServiceStub(
                        self.channel(self.config.scheduler_addr)
                    ),
                    registry,
                    self.agent_channel,
                    timeout,
                    self.config.evaluator_placement_timeout_s,
                )
            else:
                pool = RegistryPool(registry, self.agent_channel, timeout)
            runner = Runner(
                self.catalog,
                pool,
                prices,
                self.config.evaluator_parallel_runs,
                users,
                lambda: self.config.evaluator_comm_host or host_of(reachable_address(self.address)),
            )
        self.evaluations = Evaluations(
            store,
            self.catalog,
            scenarios,
            lambda: runner,
            pool.placement if pool is not None else "registry",
            relay.notify,
            tracer=self.tracer,
        )
        await self.evaluations.recover()
        evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(
            EvaluatorServicer(scenarios, self.catalog, self.evaluations, store, users), server
        )
        self.add_service(evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name)

    def _adapter_reader(self) -> GetModel | None:
        """The tenant's imported models, read from the adapter as the calling tenant."""
        if not self.config.adapter_addr:
            return None
        stub = adapter_pb2_grpc.AdapterServiceStub(self.channel(self.config.adapter_addr))

        async def get(
            request: adapter_pb2.GetImportedModelRequest,
        ) -> adapter_pb2.GetImportedModelResponse:
            response: adapter_pb2.GetImportedModelResponse = await stub.GetImportedModel(request)
            return response

        return get

    @staticmethod
    def _sample_reader(store: EvaluationStore) -> GetSamples:
        async def get(tenant: str, set_id: str) -> evaluator_pb2.ImportSampleSetRequest | None:
            row = await store.sample_set(tenant, set_id)
            if row is None:
                return None
            return evaluator_pb2.ImportSampleSetRequest.FromString(row.payload)

        return get

    async def on_drain(self) -> None:
        if self.evaluations is not None:
            await self.evaluations.close()

    async def on_stop(self) -> None:
        for ch in self._agent_channels:
            await ch.close()
