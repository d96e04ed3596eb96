"""The agent process: one node of one chip type, an emulated vendor runtime behind gRPC."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping

import grpc
from google.protobuf.message import Message
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import agent_pb2, agent_pb2_grpc, registry_pb2_grpc
from services.agent.config import AgentConfig
from services.agent.lease import LeaseKeeper
from services.agent.migrations import MIGRATIONS
from services.agent.runtime.runtime import VendorRuntime, create_runtime
from services.agent.servicer import AgentServicer
from services.agent.tables import OUTBOX
from services.agent.work.comm import CommRanks
from services.agent.work.executor import TaskExecutor
from services.agent.work.tasks import TaskRunner, TaskStore
from services.core.addresses import host_of, reachable_address
from services.core.config import CommonConfig, ConfigError
from services.core.outbox import Outbox, OutboxEvent
from services.core.service import Service


class AgentServer(Service):
    name = "agent"
    config_type = AgentConfig

    def __init__(
        self,
        common: CommonConfig,
        config: AgentConfig,
        *,
        catalog: Catalog | None = None,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        catalog = catalog or default_catalog()
        try:
            self.chip = catalog.find_chip(config.chip)
        except KeyError as exc:
            raise ConfigError(f"POCGRID_CHIP: {exc.args[0] if exc.args else exc}") from None
        if not self.chip.emulatable:
            raise ConfigError(
                f"POCGRID_CHIP: {self.chip.name} lacks public figures (memory, bandwidth or a "
                "16-bit peak) needed to emulate it"
            )
        self.config = config
        self.node_id = config.node_id or f"{self.chip.name}-{socket.gethostname().lower()}"
        # Every span and metric of this agent names its node and chip.
        super().__init__(
            common,
            env=env,
            span_processors=span_processors,
            resource_attributes={
                "pocgrid.node_id": self.node_id,
                "pocgrid.chip": self.chip.name,
                "pocgrid.vendor": self.chip.vendor,
            },
        )
        self.runtime: VendorRuntime = create_runtime(
            self.chip, config.devices, node_seed=self.node_id
        )
        self.lease: LeaseKeeper | None = None
        self.executor: TaskExecutor | None = None
        self.tasks: TaskRunner | None = None
        self.ranks: CommRanks | None = None

    async def on_start(self, server: grpc.aio.Server) -> None:
        await self.connect_bus()
        db = await self.open_database(
            self.config.agent_database_url, MIGRATIONS, file_name=f"agent-{self.node_id}"
        )
        outbox = Outbox(db, OUTBOX)
        relay = self.start_outbox_relay(outbox)

        async def emit_usage(subject: str, event: Message, event_id: str) -> None:
            # Written before the task is answered, published by the relay: finished work is
            # never failed (nor held) by the bus, and its usage is sent once NATS is back.
            # Usage events are independent: each is its own aggregate, none holds back another.
            await outbox.emit(OutboxEvent(subject, event, event_id, aggregate=event_id))
            relay.notify()

        self.executor = TaskExecutor(
            self.node_id, self.chip, self.runtime, emit_usage, self.config.speed_factor
        )
        self.tasks = TaskRunner(TaskStore(db), self.executor)
        # A communicator rank listens for its peers where this agent is reached.
        self.ranks = CommRanks(
            self.node_id, self.runtime, self.executor, lambda: host_of(self.advertised())
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(
                self.node_id, self.chip.name, self.runtime, self.executor, self.tasks, self.ranks
            ),
            server,
        )
        self.add_service(agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name)
        # Heartbeats go without trace context unless asked for (POCGRID_TRACE_HEARTBEATS): the
        # registry then records no span for them (interceptors.UNTRACED_BY_DEFAULT).
        lease_channel = (
            self.channel(self.config.registry_addr)
            if self.common.trace_heartbeats
            else self.channel_untraced(self.config.registry_addr)
        )
        stub = registry_pb2_grpc.NodeLeaseServiceStub(lease_channel)
        self.lease = LeaseKeeper(
            stub,
            self.node_id,
            self.chip.name,
            self.runtime,
            self.advertised,
            call_timeout_s=self.common.downstream_timeout_cap_s,
        )

    async def on_serving(self) -> None:
        assert self.lease is not None and self.tasks is not None
        # Tasks a previous process of this node left RUNNING go on at their next step.
        await self.tasks.resume_all()
        self.spawn(self.lease.run(), "lease")

    def advertised(self) -> str:
        """HOST:PORT others reach this agent at."""
        return self.config.advertise_addr or reachable_address(self.address)

    async def on_drain(self) -> None:
        if self.ranks is not None:
            self.ranks.stop()
        if self.tasks is not None:
            # Left RUNNING in the table: a restarted agent resumes them where they stopped.
            await self.tasks.stop()
        if self.lease is not None and self.lease.registered.is_set():
            await self.lease.deregister("agent shutting down")
