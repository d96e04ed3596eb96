"""Every RPC in the contract is implemented by a servicer, and every public one is routed."""

from __future__ import annotations

from google.protobuf.descriptor import FileDescriptor

from gateway.routing import GATEWAY_SERVICE, PUBLIC_BACKENDS, public_routes
from pocgrid.v1 import (
    adapter_pb2,
    agent_pb2,
    common_pb2,
    evaluator_pb2,
    events_pb2,
    gateway_pb2,
    metering_pb2,
    registry_pb2,
    scheduler_pb2,
)
from services.adapter.servicer import AdapterServicer
from services.agent.servicer import AgentServicer
from services.evaluator.servicer import EvaluatorServicer
from services.metering.servicer import MeteringServicer
from services.registry.servicer import NodeLeaseServicer, RegistryServicer
from services.scheduler.servicer import SchedulerServicer

FILES: list[FileDescriptor] = [
    m.DESCRIPTOR
    for m in (
        adapter_pb2,
        agent_pb2,
        common_pb2,
        evaluator_pb2,
        events_pb2,
        gateway_pb2,
        metering_pb2,
        registry_pb2,
        scheduler_pb2,
    )
]
IMPLEMENTED_BY = {
    "pocgrid.v1.RegistryService": RegistryServicer,
    "pocgrid.v1.NodeLeaseService": NodeLeaseServicer,
    "pocgrid.v1.AgentService": AgentServicer,
    "pocgrid.v1.SchedulerService": SchedulerServicer,
    "pocgrid.v1.MeteringService": MeteringServicer,
    "pocgrid.v1.AdapterService": AdapterServicer,
    "pocgrid.v1.EvaluatorService": EvaluatorServicer,
}
INTERNAL = {"pocgrid.v1.NodeLeaseService", "pocgrid.v1.AgentService"}


def _all_services() -> list:
    return [s for f in FILES for s in f.services_by_name.values()]


def test_every_service_is_public_or_internal():
    public = {s.full_name for s in PUBLIC_BACKENDS} | {GATEWAY_SERVICE.full_name}
    for service in _all_services():
        assert (service.full_name in public) != (service.full_name in INTERNAL), service.full_name


def test_every_rpc_is_implemented():
    for service in _all_services():
        if service == GATEWAY_SERVICE:
            continue  # served by the gateway's own handler; covered by the routing test below
        servicer = IMPLEMENTED_BY[service.full_name]
        base = servicer.__mro__[1]
        for method in service.methods:
            impl = getattr(servicer, method.name, None)
            assert impl is not None and impl is not getattr(base, method.name), (
                f"{service.full_name}/{method.name} is not implemented by {servicer.__name__}"
            )


def test_every_public_rpc_is_routed_and_no_internal_one():
    routes = public_routes()
    for service in PUBLIC_BACKENDS:
        for method in service.methods:
            assert f"/{service.full_name}/{method.name}" in routes
    assert not [p for p in routes if p.split("/")[1] in INTERNAL]


def test_gateway_serves_every_gateway_rpc():
    from gateway.auth import ApiKeys
    from gateway.forwarder import GatewayHandler
    from gateway.ratelimit import RateLimiter
    from services.core.telemetry import create_tracer_provider

    provider = create_tracer_provider("gateway", env={})
    handler = GatewayHandler({}, {}, ApiKeys({}), RateLimiter(), provider, 1.0)

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    for method in GATEWAY_SERVICE.methods:
        path = f"/{GATEWAY_SERVICE.full_name}/{method.name}"
        assert handler.service(Details(path)) is not None, path
