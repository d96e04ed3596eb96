"""The gateway process: the forwarder, the OpenAI-compatible endpoint, and the API keys (the
bootstrap ones of its configuration, the registry's key store behind a short cache that hears
revocations on NATS)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from gateway.auth import ApiKeys, Tenant
from gateway.config import GatewayConfig
from gateway.forwarder import GatewayHandler
from gateway.openai_http import OpenAIEndpoint
from gateway.ratelimit import RateLimiter
from gateway.routing import public_routes, public_service_names
from gateway.tls import GatewayTls
from pocgrid.v1 import admin_pb2, admin_pb2_grpc, events_pb2
from services.core.bus import EventBus
from services.core.config import CommonConfig, ConfigError
from services.core.errors import Unavailable
from services.core.logging import get_logger
from services.core.service import Service

log = get_logger()
#: A key lookup waits this long for the registry (a cache miss; cached keys never wait).
_LOOKUP_TIMEOUT_S = 2.0


class GatewayServer(Service):
    name = "gateway"
    config_type = GatewayConfig
    # The forwarder does its own auth/tracing/error mapping per call; a second wrapping layer
    # would only add latency to every request.
    use_interceptor = False

    def __init__(
        self,
        common: CommonConfig,
        config: GatewayConfig,
        *,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        super().__init__(common, env=env, span_processors=span_processors)
        self.config = config
        self._bus = (
            EventBus(common.nats_url, self.tracer, self.name, common)
            if config.registry_addr
            else None
        )
        self._directory: admin_pb2_grpc.TenantDirectoryServiceStub | None = None
        self.keys = ApiKeys.load(
            config.api_keys,
            config.api_keys_file,
            config.rate_limit_per_s,
            config.rate_limit_burst,
            self._lookup_key if config.registry_addr else None,
            ttl_s=config.key_cache_ttl_s,
            bus_state=self._bus_state,
        )
        self.limiter = RateLimiter(config.unauthenticated_rate_per_s, config.unauthenticated_burst)
        self.tls = GatewayTls.from_config(config)
        self.openai: OpenAIEndpoint | None = None
        self._agent_channels: dict[str, grpc.aio.Channel] = {}

    def _bus_state(self) -> tuple[bool, int]:
        bus = self._bus
        return (False, 0) if bus is None else (bus.connected, bus.connection_changes)

    async def _lookup_key(self, key_sha256: str) -> Tenant | None:
        assert self._directory is not None
        try:
            found = await self._directory.LookupKey(
                admin_pb2.LookupKeyRequest(key_sha256=key_sha256), timeout=_LOOKUP_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable(
                f"cannot check the API key: the key store (registry) answered "
                f"{exc.code().name}: {exc.details()}",
                reason="KEY_STORE_UNAVAILABLE",
            ) from None
        tenant = found.tenant
        return Tenant(
            tenant.name,
            tenant.rate_limit_per_s or self.config.rate_limit_per_s,
            tenant.burst or self.config.rate_limit_burst,
            found.key.role == admin_pb2.KEY_ROLE_ADMIN,
            found.key.key_id,
        )

    async def _hear_the_store(self) -> None:
        """Connect to NATS (retrying: the gateway serves without it, trusting cached keys for
        a second only) and hear revocations and tenant changes."""
        assert self._bus is not None
        delay = 0.2
        while True:
            try:
                await self._bus.connect()
                break
            except Exception as exc:
                log.warning("gateway.bus_unavailable", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self._bus.subscribe(
            "registry.key.revoked",
            events_pb2.ApiKeyRevoked,
            lambda e: self.keys.forget_key(e.key_id),
        )
        await self._bus.subscribe(
            "registry.tenant.>",
            events_pb2.TenantChanged,
            lambda e: self.keys.forget_tenant(e.tenant.name),
        )
        # Anything cached before the subscriptions existed may have missed an event.
        self.keys.forget_all()

    async def on_start(self, server: grpc.aio.Server) -> None:
        if self.config.registry_addr:
            self._directory = admin_pb2_grpc.TenantDirectoryServiceStub(
                self.channel(self.config.registry_addr)
            )
            self.spawn(self._hear_the_store(), "key-events")
        routes = public_routes()
        channels = {
            field: self.channel_raw(getattr(self.config, field))
            for field in {r.backend_field for r in routes.values()}
            if getattr(self.config, field)
        }
        server.add_generic_rpc_handlers(
            (
                GatewayHandler(
                    routes,
                    channels,
                    self.keys,
                    self.limiter,
                    self.tracer_provider,
                    self.common.downstream_timeout_cap_s,
                    self.credentials.signer,
                ),
            )
        )
        for name in public_service_names():
            self.add_service(name)
        if self.config.openai_listen:
            if not self.config.registry_addr:
                raise ConfigError(
                    "POCGRID_OPENAI_LISTEN needs POCGRID_REGISTRY_ADDR (it finds "
                    "the chips' nodes in the registry)"
                )
            self.openai = OpenAIEndpoint(
                self.config.openai_listen,
                self.keys,
                # One bucket per tenant across gRPC and HTTP: a tenant's limit is its limit.
                self.limiter,
                self.channel(self.config.registry_addr),
                self._agent_channel,
                speed_factor=self.config.openai_speed_factor,
                max_body_bytes=self.config.openai_max_body_bytes,
                shutdown_s=self.common.shutdown_grace_s,
                ssl_context=None if self.tls is None else self.tls.ssl_context(),
            )
            await self.openai.start()

    def server_credentials(self) -> grpc.ServerCredentials | None:
        return None if self.tls is None else self.tls.grpc_credentials()

    def _agent_channel(self, address: str) -> grpc.aio.Channel:
        """One channel per agent, closed with the gateway."""
        if address not in self._agent_channels:
            self._agent_channels[address] = self.channel(address)
        return self._agent_channels[address]

    async def on_drain(self) -> None:
        # Streams in flight finish (up to the grace period) before the channels they read close.
        if self.openai is not None:
            await self.openai.stop()

    async def on_stop(self) -> None:
        if self.openai is not None:  # start() failed part-way: on_drain did not run
            await self.openai.stop()
        if self._bus is not None:
            await self._bus.close()
