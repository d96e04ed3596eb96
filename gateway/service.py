"""The gateway process."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from gateway.auth import ApiKeys
from gateway.config import GatewayConfig
from gateway.forwarder import GatewayHandler
from gateway.openai_http import OpenAIEndpoint
from gateway.ratelimit import RateLimiter
from gateway.routing import public_routes, public_service_names
from gateway.tls import GatewayTls
from services.core.config import CommonConfig, ConfigError
from services.core.service import Service


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
        self.keys = ApiKeys.load(
            config.api_keys, config.api_keys_file, config.rate_limit_per_s, config.rate_limit_burst
        )
        self.limiter = RateLimiter(config.unauthenticated_rate_per_s, config.unauthenticated_burst)
        self.tls = GatewayTls.from_config(config)
        self.openai: OpenAIEndpoint | None = None
        self._agent_channels: dict[str, grpc.aio.Channel] = {}

    async def on_start(self, server: grpc.aio.Server) -> None:
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
