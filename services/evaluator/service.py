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
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    evaluator_pb2,
    evaluator_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from services.core.config import CommonConfig
from services.core.interceptors import open_channel
from services.core.service import Service
from services.evaluator.config import EvaluatorConfig
from services.evaluator.evaluations import Evaluations
from services.evaluator.migrations import MIGRATIONS
from services.evaluator.runner import Node, NoPrices, Price, Prices, Runner
from services.evaluator.scenarios import load_catalog
from services.evaluator.servicer import EvaluatorServicer
from services.evaluator.store import EvaluationStore


class RegistryPool:
    """Runs go to agents found in the registry: per chip type, the READY node with the lowest
    node id whose devices are all healthy. (When the scheduler places evaluation jobs, a
    scheduler-backed pool replaces this one; see ``services.evaluator.runner``.)"""

    placement = "registry"

    def __init__(
        self, service: EvaluatorServer, registry_addr: str, serve_timeout_s: float
    ) -> None:
        self._service = service
        self._registry = registry_pb2_grpc.RegistryServiceStub(service.channel(registry_addr))
        self._timeout = serve_timeout_s
        self._agents: dict[str, agent_pb2_grpc.AgentServiceStub] = {}

    async def nodes(self) -> dict[str, Node]:
        found: dict[str, Node] = {}
        token = ""
        while True:
            resp = await self._registry.ListNodes(
                registry_pb2.ListNodesRequest(
                    state=registry_pb2.NODE_STATE_READY,
                    page=common_pb2.PageRequest(page_size=1000, page_token=token),
                )
            )
            for n in resp.nodes:
                healthy = all(d.health == common_pb2.DEVICE_HEALTH_HEALTHY for d in n.devices)
                if not healthy or not n.devices:
                    continue
                best = found.get(n.chip)
                if best is None or n.node_id < best.node_id:
                    found[n.chip] = Node(n.node_id, n.chip, n.agent_address, len(n.devices))
            token = resp.page.next_page_token
            if not token:
                return found

    async def serve(
        self, node: Node, request: agent_pb2.ServeRequestsRequest
    ) -> agent_pb2.ServeRequestsResponse:
        stub = self._agents.get(node.address)
        if stub is None:
            stub = agent_pb2_grpc.AgentServiceStub(self._service.agent_channel(node.address))
            self._agents[node.address] = stub
        response: agent_pb2.ServeRequestsResponse = await stub.ServeRequests(
            request, timeout=self._timeout
        )
        return response

    async def run_task(
        self, node: Node, request: agent_pb2.RunTaskRequest
    ) -> agent_pb2.RunTaskResponse:
        stub = self._agents.get(node.address)
        if stub is None:
            stub = agent_pb2_grpc.AgentServiceStub(self._service.agent_channel(node.address))
            self._agents[node.address] = stub
        response: agent_pb2.RunTaskResponse = await stub.RunTask(request, timeout=self._timeout)
        return response


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
        prices: Prices = self._prices or (
            MeteringPrices(self.channel(self.config.metering_addr))
            if self.config.metering_addr
            else NoPrices()
        )
        runner: Runner | None = None
        if self.config.registry_addr:
            pool = RegistryPool(
                self, self.config.registry_addr, self.config.evaluator_serve_timeout_s
            )
            runner = Runner(self.catalog, pool, prices, self.config.evaluator_parallel_runs)
        self.evaluations = Evaluations(store, self.catalog, scenarios, lambda: runner, "registry")
        await self.evaluations.recover()
        evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(
            EvaluatorServicer(scenarios, self.catalog, self.evaluations, store), server
        )
        self.add_service(evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name)

    async def on_drain(self) -> None:
        if self.evaluations is not None:
            await self.evaluations.close()

    async def on_stop(self) -> None:
        for ch in self._agent_channels:
            await ch.close()
