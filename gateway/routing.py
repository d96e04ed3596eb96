"""Which RPCs the gateway exposes, derived from the contract's descriptors.

Only the public services are routed; internal ones (NodeLeaseService, AgentService) have no
route, so the gateway answers UNIMPLEMENTED for them exactly as for a method that doesn't exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from pocgrid.idempotency import is_retry_safe
from pocgrid.v1 import (
    adapter_pb2,
    admin_pb2,
    evaluator_pb2,
    gateway_pb2,
    metering_pb2,
    registry_pb2,
    scheduler_pb2,
)

#: Public service -> the GatewayConfig field holding its backend address.
PUBLIC_BACKENDS: dict[ServiceDescriptor, str] = {
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]: "registry_addr",
    scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"]: "scheduler_addr",
    metering_pb2.DESCRIPTOR.services_by_name["MeteringService"]: "metering_addr",
    adapter_pb2.DESCRIPTOR.services_by_name["AdapterService"]: "adapter_addr",
    evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"]: "evaluator_addr",
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"]: "registry_addr",
}
#: Public services only admin keys may call: the gateway refuses any other key with
#: PERMISSION_DENIED before forwarding (the service checks the role again).
ADMIN_ONLY: frozenset[ServiceDescriptor] = frozenset(
    {admin_pb2.DESCRIPTOR.services_by_name["AdminService"]}
)
GATEWAY_SERVICE: ServiceDescriptor = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # "/pocgrid.v1.RegistryService/ListChips"
    backend_field: str
    client_streaming: bool
    server_streaming: bool
    # Retried once on UNAVAILABLE when the contract marks the method NO_SIDE_EFFECTS or
    # IDEMPOTENT (its idempotency_level option); anything else is sent once.
    retry_safe: bool
    admin_only: bool = False

    @property
    def service(self) -> str:
        """The full name of the gRPC service the route goes to (its tokens' audience)."""
        return self.path[1:].rpartition("/")[0]


def method_path(method: MethodDescriptor) -> str:
    """The gRPC path of a method, from its descriptor: ``/pocgrid.v1.RegistryService/GetChip``."""
    return f"/{method.containing_service.full_name}/{method.name}"


def rpc_path(service: ServiceDescriptor, method_name: str) -> str:
    """The path of ``service``'s method ``method_name``; KeyError when the contract has none, so
    a renamed RPC fails where its path is used instead of routing nowhere."""
    return method_path(service.methods_by_name[method_name])


def public_routes() -> dict[str, Route]:
    routes = {}
    for service, backend in PUBLIC_BACKENDS.items():
        for method in service.methods:
            routes[method_path(method)] = Route(
                method_path(method),
                backend,
                method.client_streaming,
                method.server_streaming,
                is_retry_safe(method),
                service in ADMIN_ONLY,
            )
    return routes


def public_service_names() -> list[str]:
    return [s.full_name for s in (*PUBLIC_BACKENDS, GATEWAY_SERVICE)]
