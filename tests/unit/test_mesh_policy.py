"""Who may call the internal RPCs, and what a tenant's view of a response leaves out."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.routing import PUBLIC_BACKENDS
from pocgrid.v1 import admin_pb2, agent_pb2, registry_pb2, scheduler_pb2
from services.core.errors import PermissionDenied
from services.core.mesh_identity import IDENTITIES
from services.core.mesh_policy import INTERNAL_SERVICES, RULES, authorize
from services.core.service_tokens import Caller
from services.core.tenant_view import INTERNAL_FIELDS, is_tenant_view, strip_internal

INTERNAL = [
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
    registry_pb2.DESCRIPTOR.services_by_name["NodeLeaseService"],
    admin_pb2.DESCRIPTOR.services_by_name["TenantDirectoryService"],
]


def test_every_internal_rpc_names_its_callers() -> None:
    assert sorted(s.full_name for s in INTERNAL) == sorted(INTERNAL_SERVICES)
    paths = {f"/{s.full_name}/{m.name}" for s in INTERNAL for m in s.methods}
    missing = paths - set(RULES)
    assert not missing, f"internal RPCs without a rule in services/core/mesh_policy.py: {missing}"
    assert set(RULES) <= paths, "a rule names an RPC the contract does not have"
    for rule in RULES.values():
        assert rule.services <= set(IDENTITIES)


@pytest.mark.parametrize(
    ("method", "allowed"),
    [
        ("RunTask", {"scheduler", "evaluator"}),
        ("StartTask", {"scheduler", "evaluator"}),
        ("ServeRequests", {"scheduler", "evaluator"}),
        ("JoinCommunicator", {"scheduler", "evaluator"}),
        ("AllocateMemory", {"scheduler", "evaluator"}),
        ("SetDeviceHealth", {"scheduler"}),
        ("Generate", {"scheduler", "evaluator", "gateway"}),
    ],
)
def test_agents_take_work_from_the_scheduler_and_the_evaluator(
    method: str, allowed: set[str]
) -> None:
    path = f"/pocgrid.v1.AgentService/{method}"
    for identity in (*IDENTITIES, "agent-a"):
        caller = Caller(identity, "acme" if identity != "agent" else "", False)
        if identity in allowed:
            authorize(path, caller)
        else:
            with pytest.raises(PermissionDenied, match=f"not by service identity '{identity}'"):
                authorize(path, caller)
    authorize(path, Caller("operator", "", True))  # an admin may, by hand


def test_node_leases_come_from_agents_or_an_admin() -> None:
    for method in ("RegisterNode", "DeregisterNode"):
        path = f"/pocgrid.v1.NodeLeaseService/{method}"
        authorize(path, Caller("agent", "", False))
        # An agent with an identity of its own (which node it may hold is the registry's check).
        authorize(path, Caller("agent-ascend-910b2", "", False))
        authorize(path, Caller("gateway", "ops", True))
        for identity in {*IDENTITIES, "agents", "agentx"} - {"agent"}:
            with pytest.raises(PermissionDenied):
                authorize(path, Caller(identity, "acme", False))


def test_public_rpcs_take_any_authenticated_caller() -> None:
    for service in PUBLIC_BACKENDS:
        for method in service.methods:
            assert f"/{service.full_name}/{method.name}" not in RULES


def _address_fields(desc: Descriptor | None, seen: set[str]) -> set[str]:
    assert desc is not None
    if desc.full_name in seen:
        return set()
    seen.add(desc.full_name)
    found = set()
    for field in desc.fields:
        if field.name.endswith("_address") or field.name.endswith("_addr"):
            found.add(field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            found |= _address_fields(field.message_type, seen)
    return found


def test_every_address_field_a_public_response_holds_is_hidden_from_tenants() -> None:
    for service in PUBLIC_BACKENDS:
        for method in service.methods:
            fields = _address_fields(method.output_type, set())
            assert fields <= INTERNAL_FIELDS, (method.full_name, fields - INTERNAL_FIELDS)


def test_a_tenant_view_clears_agent_addresses_wherever_they_are() -> None:
    nodes = registry_pb2.ListNodesResponse(
        nodes=[
            registry_pb2.Node(node_id="n1", agent_address="10.0.0.1:5000", chip="x"),
            registry_pb2.Node(node_id="n2", agent_address="10.0.0.2:5000"),
        ]
    )
    strip_internal(nodes)
    assert [(n.node_id, n.agent_address, n.chip) for n in nodes.nodes] == [
        ("n1", "", "x"),
        ("n2", "", ""),
    ]
    job = scheduler_pb2.GetJobResponse(
        job=scheduler_pb2.Job(
            job_id="j",
            assignments=[scheduler_pb2.Assignment(node_id="n1", agent_address="10.0.0.1:5000")],
        )
    )
    strip_internal(job)
    assert job.job.assignments[0].agent_address == "" and job.job.assignments[0].node_id == "n1"


def test_only_a_tenant_call_through_the_gateway_is_a_tenant_view() -> None:
    assert is_tenant_view(Caller("gateway", "acme", False))
    assert not is_tenant_view(Caller("gateway", "ops", True))  # an admin key
    assert not is_tenant_view(Caller("gateway", "", False))  # the gateway's own lookups
    assert not is_tenant_view(Caller("evaluator", "acme", False))  # a service needs them
