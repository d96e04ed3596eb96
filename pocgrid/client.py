"""Typed client SDK for the pocgrid gateway.

    from pocgrid.client import Client
    with Client("127.0.0.1:50051", api_key="...") as pg:
        for chip in pg.registry.ListChips(registry_pb2.ListChipsRequest()).chips: ...

    with Client.from_local_mesh() as pg:  # the mesh `pocgrid up` started on this machine
        ...

    with Client("gw.example:50051", api_key="...", ca_file="ca.pem") as pg:  # a TLS gateway
        ...

Every call carries ``authorization: Bearer <key>`` and W3C trace context, so a client span (when
the caller has a tracer) and the gateway's and services' spans share one trace.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import grpc
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pocgrid.meshstate import pocgrid_home, running_mesh
from pocgrid.v1 import (
    adapter_pb2_grpc,
    admin_pb2_grpc,
    evaluator_pb2_grpc,
    gateway_pb2_grpc,
    metering_pb2_grpc,
    registry_pb2_grpc,
    scheduler_pb2_grpc,
)

_PROPAGATOR = TraceContextTextMapPropagator()


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _AuthInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, api_key: str, default_timeout_s: float) -> None:
        self._auth = ("authorization", f"Bearer {api_key}")
        self._timeout = default_timeout_s

    def _details(self, details: Any) -> _CallDetails:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        metadata = [*(details.metadata or ()), self._auth, *carrier.items()]
        return _CallDetails(
            details.method,
            details.timeout if details.timeout is not None else self._timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)


class NoLocalMeshError(RuntimeError):
    """No local mesh is running (or it has not finished starting)."""


def gateway_channel(gateway: str, ca_file: str | Path | None = None) -> grpc.Channel:
    """A channel to ``gateway``: TLS verified against the PEM CA bundle ``ca_file`` when one is
    given (the gateway's certificate must name the host in ``gateway``), else plaintext."""
    if not ca_file:
        return grpc.insecure_channel(gateway)
    try:
        roots = Path(ca_file).read_bytes()
    except OSError as exc:
        raise ValueError(f"ca_file {str(ca_file)!r}: cannot read ({exc.strerror})") from None
    return grpc.secure_channel(gateway, grpc.ssl_channel_credentials(root_certificates=roots))


class Client:
    """Blocking client; one channel, one stub per public service."""

    def __init__(
        self,
        gateway: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        ca_file: str | Path | None = None,
    ) -> None:
        self.gateway = gateway
        self._raw = gateway_channel(gateway, ca_file)
        self.channel = grpc.intercept_channel(self._raw, _AuthInterceptor(api_key, timeout_s))
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.metering = metering_pb2_grpc.MeteringServiceStub(self.channel)
        self.adapter = adapter_pb2_grpc.AdapterServiceStub(self.channel)
        self.evaluator = evaluator_pb2_grpc.EvaluatorServiceStub(self.channel)
        self.gateway_service = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        #: Admin keys only: tenants, API keys, the audit log.
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    @classmethod
    def from_local_mesh(cls, home: Path | None = None, *, timeout_s: float = 30.0) -> Client:
        """The gateway and development API key of the mesh ``pocgrid up`` runs on this machine
        (its state file, ``$POCGRID_HOME/mesh.json``, default ``~/.pocgrid``)."""
        home = pocgrid_home() if home is None else home
        state = running_mesh(home)
        if state is None:
            raise NoLocalMeshError(
                f"no local mesh is running (none recorded in {home}); run `pocgrid up --detach`"
            )
        if state.status != "ready" or not state.gateway:
            raise NoLocalMeshError(f"the local mesh is {state.status}, not ready yet")
        return cls(state.gateway, state.api_key, timeout_s=timeout_s, ca_file=state.ca_file or None)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def tracer(name: str = "pocgrid.client") -> trace.Tracer:
    return trace.get_tracer(name)
