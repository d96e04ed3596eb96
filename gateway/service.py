"""The gateway process."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from gateway.auth import ApiKeys
from gateway.config import GatewayConfig
from gateway.forwarder import GatewayHandler
from gateway.ratelimit import RateLimiter
from gateway.routing import public_routes, public_service_names
from services.core.config import CommonConfig
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
                    RateLimiter(),
                    self.tracer_provider,
                    self.common.downstream_timeout_cap_s,
                ),
            )
        )
        for name in public_service_names():
            self.add_service(name)
