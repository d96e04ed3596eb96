"""Every service of the mesh in this process, behind one gateway, with one agent: the fixture of
the public API walk and of the security tests (tests/integration/test_mesh_security.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from services.adapter.config import AdapterConfig
from services.adapter.service import AdapterServer
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.core.config import CommonConfig
from services.evaluator.config import EvaluatorConfig
from services.evaluator.service import EvaluatorServer
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import SchedulerServer
from tests.conftest import wait_for


@dataclass
class PublicMesh:
    registry: RegistryServer
    scheduler: SchedulerServer
    metering: MeteringServer
    adapter: AdapterServer
    evaluator: EvaluatorServer
    gateway: GatewayServer
    agent: AgentServer

    def services(self) -> dict[str, Any]:
        """Every service behind the gateway (the agent included), by name."""
        return {
            "registry": self.registry,
            "scheduler": self.scheduler,
            "metering": self.metering,
            "adapter": self.adapter,
            "evaluator": self.evaluator,
            "agent": self.agent,
        }


async def start_public_mesh(
    common: CommonConfig,
    closer: list[Any],
    api_keys: str,
    chip: str = "mtt-s4000",
    node_id: str = "walk-node",
) -> PublicMesh:
    """Start it all (stopped by ``closer``); returns once the agent has registered."""

    async def started(svc: Any) -> Any:
        await svc.start()
        closer.append(svc)
        return svc

    reg = await started(RegistryServer(common, RegistryConfig()))
    sched = await started(SchedulerServer(common, SchedulerConfig(registry_addr=reg.address)))
    meter = await started(MeteringServer(common, MeteringConfig(api_keys=api_keys)))
    adapter = await started(AdapterServer(common, AdapterConfig()))
    # The evaluator finds the pool's agents in the registry.
    evaluator = await started(EvaluatorServer(common, EvaluatorConfig(registry_addr=reg.address)))
    gw = await started(
        GatewayServer(
            common,
            GatewayConfig(
                api_keys=api_keys,
                registry_addr=reg.address,
                scheduler_addr=sched.address,
                metering_addr=meter.address,
                adapter_addr=adapter.address,
                evaluator_addr=evaluator.address,
            ),
        )
    )
    agent = await started(
        AgentServer(
            common,
            AgentConfig(chip=chip, devices=2, node_id=node_id, registry_addr=reg.address),
        )
    )
    await wait_for(lambda: agent.lease.registered.is_set(), what="agent registered")
    return PublicMesh(reg, sched, meter, adapter, evaluator, gw, agent)
