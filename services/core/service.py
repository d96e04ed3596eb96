"""Service bootstrap and lifecycle: a gRPC aio server with health, reflection and interceptors.

Every service subclasses ``Service``. It is ``async with``-able; ``stop()`` is idempotent and
follows the shutdown order the mesh relies on: health NOT_SERVING (load balancers and the
launcher stop sending) -> drain in-flight work -> ``server.stop(grace)`` -> close channels and
the NATS connection (``drain``) -> flush telemetry.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Self, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor

from services.core.bus import EventBus
from services.core.config import CommonConfig, EnvConfig, parse_hostport
from services.core.gauges import GaugeSet, attrs, sample_forever
from services.core.interceptors import UNTRACED_BY_DEFAULT, ServerInterceptor, open_channel
from services.core.logging import configure_logging, get_logger
from services.core.mesh_auth import MeshCredentials
from services.core.mesh_channel import signed_aio_channel
from services.core.metrics import ServiceMetrics
from services.core.migrations import Migrations, migrate
from services.core.outbox import Outbox, OutboxRelay
from services.core.storage import Database, create_database_if_missing
from services.core.telemetry import PocgridTracerProvider, create_tracer_provider

log = get_logger()


LIVENESS: Final = "pocgrid.liveness"
"""Health name that is SERVING while the server runs (the Kubernetes liveness probe's)."""


class Service:
    """Base for every pocgrid service process."""

    #: Name used for logs, spans (``service.name``) and the default SQLite file.
    name: str = "service"
    #: Wrap every RPC in the tracing/logging/error interceptor (the gateway does its own).
    use_interceptor: bool = True
    #: The service's own settings; ``from_env`` reads them next to ``CommonConfig``.
    config_type: ClassVar[type[EnvConfig]]

    def __init__(
        self,
        common: CommonConfig,
        *,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
        resource_attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.common = common
        self._env = dict(os.environ if env is None else env)
        self.tracer_provider: PocgridTracerProvider = create_tracer_provider(
            self.name,
            trace_file=common.trace_file,
            env=self._env,
            extra_processors=span_processors,
            resource_attributes=resource_attributes,
        )
        self.metrics = ServiceMetrics(self.name, common, self._env, resource_attributes)
        self.tracer: trace.Tracer = self.tracer_provider.get_tracer(f"pocgrid.{self.name}")
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.bus: EventBus | None = None
        self._credentials: MeshCredentials | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._databases: list[Database] = []
        self._service_names: list[str] = []
        self._port = 0
        self._serving = False
        self._health_lock = asyncio.Lock()
        self._started = False
        self._stopped = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """Build from ``POCGRID_*`` variables: ``CommonConfig`` and the service's
        ``config_type``; every subclass takes ``(common, config, *, env=...)``."""
        build = cast("Callable[..., Self]", cls)
        return build(CommonConfig.from_env(env), cls.config_type.from_env(env), env=env)

    # -- hooks for subclasses -------------------------------------------------------------
    async def on_start(self, server: grpc.aio.Server) -> None:
        """Open storage and connections, add servicers; called before the port opens."""

    async def on_serving(self) -> None:
        """Start background work that needs the server up (e.g. registering with the registry)."""

    async def on_drain(self) -> None:
        """Finish or hand off in-flight work after health went NOT_SERVING."""

    async def on_stop(self) -> None:
        """Release what on_start opened (database engines, ...)."""

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for the gRPC port; None (the default) serves plaintext."""
        return None

    # -- helpers for subclasses -----------------------------------------------------------
    def add_service(self, name: str) -> None:
        """Record a full service name for health and reflection."""
        self._service_names.append(name)

    @property
    def credentials(self) -> MeshCredentials:
        """This process's mesh identity (loaded by ``start``, or on first use before it)."""
        if self._credentials is None:
            self._credentials = MeshCredentials.load(self.common, self.name)
        return self._credentials

    def channel(self, target: str) -> grpc.aio.Channel:
        """A client channel to another service, closed with this service: calls are traced,
        carry the deadline, and are signed as this service (for the tenant being served)."""
        ch = open_channel(
            target,
            self.tracer,
            self.common.downstream_timeout_cap_s,
            self.common.max_message_bytes,
            signer=self.credentials.signer,
        )
        self._channels.append(ch)
        return ch

    def _message_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.common.max_message_bytes),
            ("grpc.max_send_message_length", self.common.max_message_bytes),
        ]

    def channel_raw(self, target: str) -> grpc.aio.Channel:
        """A channel with no client interceptor, for callers that propagate context and sign
        their calls themselves (the gateway's forwarder)."""
        ch = grpc.aio.insecure_channel(target, options=self._message_options())
        self._channels.append(ch)
        return ch

    def channel_untraced(self, target: str) -> grpc.aio.Channel:
        """A channel that only signs (no spans, no deadline cap): the agents' heartbeats."""
        ch = signed_aio_channel(target, self.credentials.signer, self._message_options())
        self._channels.append(ch)
        return ch

    async def connect_bus(self) -> EventBus:
        self.bus = EventBus(
            self.common.nats_url,
            self.tracer,
            self.name,
            self.common,
            on_health_change=self._refresh_health,
        )
        await self.bus.connect()
        return self.bus

    async def _refresh_health(self) -> None:
        """Publish gRPC health from the bus's state.

        ``""`` and the service's own names follow its essential consumers: a service whose
        consumer cannot recover is not doing its job (metering would stop billing), so it says
        NOT_SERVING (the registry's audit consumer is not essential: the log may lag). The
        NATS connection alone does not touch them: a publisher's RPCs never wait on the bus (its
        outbox holds events until NATS is back), so it keeps answering and stays SERVING. The
        bus itself is reported under ``pocgrid.bus`` (NOT_SERVING while NATS is unreachable or a
        consumer is unhealthy) and each consumer under ``pocgrid.bus.consumer.<durable>``; the
        gateway's CheckServices reports ``pocgrid.bus`` next to ``""``, so `pocgrid status`
        shows NATS down without the RPCs being refused.
        """
        async with self._health_lock:
            if not self._serving:
                return
            ok = health_pb2.HealthCheckResponse.SERVING
            bad = health_pb2.HealthCheckResponse.NOT_SERVING
            overall = ok if self.bus is None or self.bus.consumers_healthy else bad
            for svc in ["", *self._service_names]:
                await self.health.set(svc, overall)
            # Liveness: the process answers. Kept apart from "" so an orchestrator restarts a
            # wedged process, not one whose NATS is down (a restart would not bring NATS back).
            await self.health.set(LIVENESS, ok)
            for name, serving in (self.bus.health() if self.bus is not None else {}).items():
                await self.health.set(name, ok if serving else bad)

    async def open_database(
        self, url: str, migrations: Migrations, *, file_name: str = ""
    ) -> Database:
        """The service's own database, migrated to the newest revision; disposed at stop.

        ``url`` is the service's ``POCGRID_<NAME>_DATABASE_URL``; empty means the database
        named ``file_name`` (default: the service's name) under ``POCGRID_DATABASE_URL``, made on
        first use, or else a SQLite file so named in ``data_dir``.
        """
        if not url:
            url = self.common.default_database_url(file_name or self.name)
            if self.common.database_url:
                await create_database_if_missing(url)
        db = Database(url)
        self._databases.append(db)
        await migrate(db, migrations)
        return db

    def start_outbox_relay(self, outbox: Outbox) -> OutboxRelay:
        """Publish ``outbox`` through the bus (``connect_bus`` first), in a task of its own that
        stops with the service; what it has not published yet waits in the database."""
        assert self.bus is not None, "connect_bus() before start_outbox_relay()"
        bus = self.bus
        relay = OutboxRelay(
            outbox,
            bus.publish,
            sweep_interval_s=self.common.outbox_sweep_ms / 1000,
            ready=lambda: bus.connected,
        )
        self.spawn(relay.run(), "outbox")
        return relay

    def gauge(self, name: str, *, unit: str, description: str) -> GaugeSet:
        """An observable gauge of this service; fill it from a ``sample_gauges`` sampler."""
        return GaugeSet(self.metrics.meter, name, unit=unit, description=description)

    def sample_gauges(self, name: str, sample: Callable[[], Awaitable[None]]) -> None:
        """Run ``sample`` every ``POCGRID_GAUGE_INTERVAL_MS`` while the service runs, if it
        exports metrics at all (otherwise nobody would read what the queries found)."""
        if self.metrics.exporting:
            interval_s = self.common.gauge_interval_ms / 1000
            self.spawn(sample_forever(name, sample, interval_s), f"gauges.{name}")

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run a background task that is cancelled on stop and whose crash is logged."""
        task = asyncio.create_task(coro, name=f"{self.name}.{name}")
        task.add_done_callback(self._report_task)
        self._tasks.append(task)
        return task

    def _sample_backlog(self, bus: EventBus) -> None:
        # Every consumer's backlog: for metering's usage consumer, its ingest lag in events.
        backlog = self.gauge(
            "pocgrid.bus.consumer.pending",
            unit="{event}",
            description="Events a durable consumer has not finished: not yet delivered to it, "
            "or delivered and not acknowledged",
        )

        async def sample() -> None:
            backlog.replace({attrs(consumer=d): n for d, n in (await bus.backlog()).items()})

        self.sample_gauges("bus", sample)

    def _report_task(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task crashed", task=task.get_name(), error=repr(task.exception()))

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def service_names(self) -> tuple[str, ...]:
        """The full names of the gRPC services this server hosts (health and reflection aside)."""
        return tuple(self._service_names)

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        host, _ = parse_hostport("listen", self.common.listen)
        return f"{host}:{self._port}"

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        # Before anything opens: a service that cannot check its callers must not serve.
        mesh = self.credentials
        options = [
            ("grpc.max_receive_message_length", self.common.max_message_bytes),
            ("grpc.max_send_message_length", self.common.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        interceptors = (
            [
                ServerInterceptor(
                    self.tracer_provider,
                    f"pocgrid.{self.name}",
                    self.metrics,
                    untraced=frozenset() if self.common.trace_heartbeats else UNTRACED_BY_DEFAULT,
                    verifier=mesh.verifier,
                )
            ]
            if self.use_interceptor
            else []
        )
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        await self.on_start(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)
        credentials = self.server_credentials()
        self._port = (
            self.server.add_insecure_port(self.common.listen)
            if credentials is None
            else self.server.add_secure_port(self.common.listen, credentials)
        )
        if self._port == 0:
            raise RuntimeError(f"{self.name}: could not bind {self.common.listen}")
        await self.server.start()
        self._serving = True
        await self._refresh_health()
        await self.on_serving()
        if self.bus is not None and self.bus.consumer_states():
            self._sample_backlog(self.bus)
        log.info("service.started", address=self.address)

    async def stop(self) -> None:
        if not self._started or self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        try:
            await self.on_drain()
        finally:
            if self.server is not None:
                await self.server.stop(self.common.shutdown_grace_s)
            await cancel_and_reap(self._tasks)
            for ch in self._channels:
                await ch.close()
            if self.bus is not None:
                await self.bus.close()
            await self.on_stop()
            for db in self._databases:
                await db.dispose()
            # In a thread: the last export blocks until the collector answers (or its timeout),
            # and a collector served by this event loop (a test's receiver, a dev tool in the
            # same process) could not answer a call that blocked the loop itself.
            await asyncio.to_thread(self.tracer_provider.shutdown)
            await asyncio.to_thread(self.metrics.shutdown)
            log.info("service.stopped")

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self._abandon()
            raise
        return self

    async def _abandon(self) -> None:
        # start() failed part-way: stop whatever did start so no port or connection leaks.
        self._stopped = False
        self._started = True
        await self.stop()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# How long stop() waits for a cancelled task before cancelling it again.
REAP_PATIENCE_S: Final = 2.0


async def cancel_and_reap(
    tasks: Iterable[asyncio.Task[Any]], patience_s: float = REAP_PATIENCE_S
) -> None:
    """Cancel ``tasks`` and wait for them to end. A task still running after ``patience_s`` has
    lost its cancellation (Python 3.11's ``asyncio.wait_for``, inside grpc.aio and nats-py
    calls, drops one that races a reply): it is logged and cancelled again, so a stop never
    waits forever on one loop that swallowed it."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=patience_s)
        for task in pending:
            log.warning("service.task_ignored_cancel", task=task.get_name())
            task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved, as gather did; reporting it is the spawner's job


def _write_address_file(path: str, address: str) -> None:
    # Written atomically so a launcher polling for it never reads half a line.
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(address + "\n")
    tmp.replace(target)


async def serve(service: Service, env: Mapping[str, str]) -> None:
    """Run a service until SIGTERM/SIGINT (or until the launching parent process goes away)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with service:
        if env.get("POCGRID_ADDRESS_FILE"):
            _write_address_file(env["POCGRID_ADDRESS_FILE"], service.address)
        parent = int(env.get("POCGRID_PARENT_PID", "0") or 0)
        watchdog = asyncio.create_task(_watch_parent(parent, stop)) if parent else None
        await stop.wait()
        log.info("service.stopping", reason="signal")
        if watchdog is not None:
            watchdog.cancel()


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    # A child of `pocgrid up` must not outlive it even if the launcher is SIGKILLed.
    # Polling is the only portable way to notice re-parenting; there is no event for it.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    stop.set()


def run(build: Callable[[Mapping[str, str]], Service]) -> None:
    """Entry point for ``python -m services.<name>``."""
    env = dict(os.environ)
    common = CommonConfig.from_env(env)
    service = build(env)
    configure_logging(service.name, common.log_format, common.log_level)
    asyncio.run(serve(service, env))
