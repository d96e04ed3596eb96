"""Every RPC in the contract is implemented by a servicer, and every public one is routed.

The expected sets come from the proto descriptors of every generated module in ``pocgrid.v1``
(found on disk, so a new .proto is covered without editing this file), never from the gateway's
own tables: a service or method missing from ``PUBLIC_BACKENDS`` or from a servicer fails here.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from types import ModuleType

from google.protobuf.descriptor import ServiceDescriptor

import pocgrid.v1
from gateway.config import GatewayConfig
from gateway.routing import public_routes
from services.adapter.servicer import AdapterServicer
from services.agent.servicer import AgentServicer
from services.evaluator.servicer import EvaluatorServicer
from services.metering.servicer import MeteringServicer
from services.registry.admin import AdminServicer, TenantDirectoryServicer
from services.registry.servicer import NodeLeaseServicer, RegistryServicer
from services.scheduler.servicer import SchedulerServicer

#: Services that only other services call; the gateway must not route them.
INTERNAL = {
    "pocgrid.v1.NodeLeaseService",
    "pocgrid.v1.AgentService",
    "pocgrid.v1.TenantDirectoryService",
}
#: Served by the gateway itself rather than forwarded.
GATEWAY = "pocgrid.v1.GatewayService"
IMPLEMENTED_BY: dict[str, type] = {
    "pocgrid.v1.RegistryService": RegistryServicer,
    "pocgrid.v1.NodeLeaseService": NodeLeaseServicer,
    "pocgrid.v1.AgentService": AgentServicer,
    "pocgrid.v1.SchedulerService": SchedulerServicer,
    "pocgrid.v1.MeteringService": MeteringServicer,
    "pocgrid.v1.AdapterService": AdapterServicer,
    "pocgrid.v1.EvaluatorService": EvaluatorServicer,
    "pocgrid.v1.AdminService": AdminServicer,
    "pocgrid.v1.TenantDirectoryService": TenantDirectoryServicer,
}


def _generated(suffix: str) -> list[ModuleType]:
    return [
        importlib.import_module(f"pocgrid.v1.{m.name}")
        for m in pkgutil.iter_modules(pocgrid.v1.__path__)
        if m.name.endswith(suffix)
    ]


def _services() -> list[ServiceDescriptor]:
    return [s for m in _generated("_pb2") for s in m.DESCRIPTOR.services_by_name.values()]


def _paths(services: list[ServiceDescriptor]) -> set[str]:
    return {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}


def _public() -> list[ServiceDescriptor]:
    return [s for s in _services() if s.full_name not in INTERNAL | {GATEWAY}]


def test_the_descriptors_hold_the_services_this_test_knows():
    names = {s.full_name for s in _services()}
    assert len(_generated("_pb2")) >= 9
    assert names == set(IMPLEMENTED_BY) | {GATEWAY}, "map each new service to its servicer here"


def test_every_rpc_is_implemented_by_its_servicer():
    bases = {
        name.removesuffix("Servicer"): getattr(m, name)
        for m in _generated("_pb2_grpc")
        for name in dir(m)
        if name.endswith("Servicer")
    }
    for service in _services():
        if service.full_name == GATEWAY:
            continue  # the gateway's own handler; see the last test
        servicer = IMPLEMENTED_BY[service.full_name]
        base = bases[service.name]
        assert issubclass(servicer, base), f"{servicer.__name__} is not a {base.__name__}"
        for method in service.methods:
            impl = getattr(servicer, method.name, None)
            assert impl is not None and impl is not getattr(base, method.name), (
                f"{service.full_name}/{method.name} is not implemented by {servicer.__name__}"
            )


def test_every_public_rpc_is_routed_and_no_internal_one():
    routes = public_routes()
    assert set(routes) == _paths(_public())
    backends = {f.name for f in dataclasses.fields(GatewayConfig)}
    methods = {f"/{s.full_name}/{m.name}": m for s in _public() for m in s.methods}
    for path, route in routes.items():
        assert route.path == path
        assert route.backend_field in backends, path
        assert route.client_streaming == methods[path].client_streaming, path
        assert route.server_streaming == methods[path].server_streaming, path
    # One backend per service: every method of a service goes to the same address.
    for service in _public():
        fields = {routes[f"/{service.full_name}/{m.name}"].backend_field for m in service.methods}
        assert len(fields) == 1, service.full_name


def test_the_gateway_serves_every_public_rpc_and_no_internal_one():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.auth import ApiKeys
    from gateway.forwarder import GatewayHandler
    from gateway.ratelimit import RateLimiter
    from services.core.service_tokens import TokenSigner
    from services.core.telemetry import create_tracer_provider

    provider = create_tracer_provider("gateway", env={})
    signer = TokenSigner("gateway", Ed25519PrivateKey.generate())
    handler = GatewayHandler(public_routes(), {}, ApiKeys({}), RateLimiter(), provider, 1.0, signer)

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    gateway = [s for s in _services() if s.full_name == GATEWAY]
    for path in _paths(_public()) | _paths(gateway):
        assert handler.service(Details(path)) is not None, path
    internal = [s for s in _services() if s.full_name in INTERNAL]
    for path in _paths(internal):
        assert handler.service(Details(path)) is None, path
