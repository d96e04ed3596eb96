"""Retry eligibility is what the contract's ``idempotency_level`` options say, not a name."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

from gateway.routing import PUBLIC_BACKENDS, public_routes
from pocgrid.idempotency import is_retry_safe
from pocgrid.v1 import (
    adapter_pb2,
    admin_pb2,
    agent_pb2,
    evaluator_pb2,
    gateway_pb2,
    metering_pb2,
    registry_pb2,
    scheduler_pb2,
)

MODULES = (
    adapter_pb2,
    admin_pb2,
    agent_pb2,
    evaluator_pb2,
    gateway_pb2,
    metering_pb2,
    registry_pb2,
    scheduler_pb2,
)
SAFE = {
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
}


def _levels_from_descriptors() -> dict[
    str, descriptor_pb2.MethodOptions.IdempotencyLevel.ValueType
]:
    """Every method's idempotency_level, read from the serialized file descriptors (the
    contract as compiled), not through the code under test."""
    levels = {}
    for module in MODULES:
        proto = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        for service in proto.service:
            for method in service.method:
                path = f"/{proto.package}.{service.name}/{method.name}"
                levels[path] = method.options.idempotency_level
    return levels


def test_gateway_retry_set_is_what_the_descriptors_say():
    public = {s.full_name for s in PUBLIC_BACKENDS}
    expected = {
        path
        for path, level in _levels_from_descriptors().items()
        if path.split("/")[1] in public and level in SAFE
    }
    retried = {path for path, route in public_routes().items() if route.retry_safe}
    assert retried == expected
    assert retried  # the reads are marked; an empty set would mean the options were lost


def test_the_contract_marks_reads_and_leaves_state_changes_unmarked():
    levels = _levels_from_descriptors()
    for path, level in levels.items():
        name = path.rsplit("/", 1)[1]
        if name.startswith(("Get", "List", "Check")) or name == "WhoAmI":
            assert level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, path
    never = [
        "/pocgrid.v1.SchedulerService/SubmitJob",  # idempotent only with a key
        "/pocgrid.v1.SchedulerService/CancelJob",  # a repeat is FAILED_PRECONDITION
        "/pocgrid.v1.AgentService/AllocateMemory",
        "/pocgrid.v1.AgentService/FreeMemory",
        "/pocgrid.v1.NodeLeaseService/RegisterNode",
        "/pocgrid.v1.NodeLeaseService/DeregisterNode",
    ]
    for path in never:
        assert levels[path] not in SAFE, path
    assert levels["/pocgrid.v1.AgentService/RunTask"] == descriptor_pb2.MethodOptions.IDEMPOTENT


def test_a_method_name_decides_nothing():
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    file.message_type.add(name="M")
    service = file.service.add(name="S")
    service.method.add(name="GetThing", input_type=".t.M", output_type=".t.M")
    frob = service.method.add(name="Frobnicate", input_type=".t.M", output_type=".t.M")
    frob.options.idempotency_level = descriptor_pb2.MethodOptions.IDEMPOTENT
    pool.Add(file)
    methods = pool.FindServiceByName("t.S").methods_by_name
    assert not is_retry_safe(methods["GetThing"])
    assert is_retry_safe(methods["Frobnicate"])
