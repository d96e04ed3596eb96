"""Which service identities may call which internal RPC.

A public service's RPCs (the ones the gateway routes) take any authenticated caller: the servicer
then scopes the call to the caller's tenant. The internal services are narrower: an agent does
work only for the scheduler and the evaluator (and the gateway's OpenAI endpoint streams
completions from it), and node leases are the agents' own business. The admin role (the
gateway's admin keys, the operator) may do what an agent's owner does by hand: mark a device
unhealthy, run a diagnostic task, deregister a node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from services.core.errors import PermissionDenied
from services.core.mesh_identity import AGENT, IDENTITIES, is_agent
from services.core.service_tokens import Caller


@dataclass(frozen=True, slots=True)
class Allowed:
    services: frozenset[str]
    """Identities that may call it; ``agent`` stands for every agent identity."""
    admin: bool = True
    """The admin role may call it whichever identity carries the role."""

    def check(self, method: str, caller: Caller) -> None:
        if caller.service in self.services or (self.admin and caller.admin):
            return
        if AGENT in self.services and is_agent(caller.service):
            return
        who = ", ".join(sorted(self.services)) + (" or an admin" if self.admin else "")
        raise PermissionDenied(
            f"{method} may be called only by {who}, not by service identity {caller.service!r}",
            reason="CALLER_NOT_ALLOWED",
            metadata={"caller": caller.service},
        )


_WORK: Final = frozenset({"scheduler", "evaluator"})
_AGENT = "/pocgrid.v1.AgentService/"
_LEASE = "/pocgrid.v1.NodeLeaseService/"
_DIRECTORY = "/pocgrid.v1.TenantDirectoryService/"

RULES: Final[dict[str, Allowed]] = {
    # What the node is (chip, devices): nothing a tenant is billed for.
    f"{_AGENT}GetNodeInfo": Allowed(frozenset(IDENTITIES)),
    # Work billed to a tenant, and the device memory it holds.
    f"{_AGENT}RunTask": Allowed(_WORK),
    f"{_AGENT}StartTask": Allowed(_WORK),
    f"{_AGENT}GetTask": Allowed(_WORK),
    f"{_AGENT}CancelTask": Allowed(_WORK),
    f"{_AGENT}ServeRequests": Allowed(_WORK),
    f"{_AGENT}AllocateMemory": Allowed(_WORK),
    f"{_AGENT}FreeMemory": Allowed(_WORK),
    # A communicator rank: training billed to a tenant, and the unique id it carries is the
    # communicator's secret (whoever holds it may join), so it comes only from the work givers.
    f"{_AGENT}JoinCommunicator": Allowed(_WORK),
    # The gateway's OpenAI-compatible endpoint streams completions from an agent for its tenant.
    f"{_AGENT}Generate": Allowed(_WORK | {"gateway"}),
    f"{_AGENT}SetDeviceHealth": Allowed(frozenset({"scheduler"})),
    # Which node an agent identity may hold is the registry's to check (the first identity to
    # register a node id holds it): services/registry/pool.py.
    f"{_LEASE}RegisterNode": Allowed(frozenset({"agent"})),
    f"{_LEASE}Heartbeat": Allowed(frozenset({"agent"}), admin=False),
    f"{_LEASE}DeregisterNode": Allowed(frozenset({"agent"})),
    # The key store: a key's tenant is the gateways' to know; tenants and quotas are read by
    # those that apply them.
    f"{_DIRECTORY}LookupKey": Allowed(frozenset({"gateway"}), admin=False),
    f"{_DIRECTORY}SnapshotTenants": Allowed(frozenset({"gateway", "scheduler", "metering"})),
}
"""Full method path -> who may call it; a method not named here takes any authenticated
caller. tests/unit/test_mesh_policy.py checks every internal RPC of the contract is named."""

INTERNAL_SERVICES: Final = (
    "pocgrid.v1.AgentService",
    "pocgrid.v1.NodeLeaseService",
    "pocgrid.v1.TenantDirectoryService",
)
"""Services with no public route: every one of their RPCs must have a rule."""


def authorize(method: str, caller: Caller) -> None:
    rule = RULES.get(method)
    if rule is not None:
        rule.check(method, caller)
