"""AgentService: the emulated vendor runtime of one node, over gRPC.

Work (``RunTask``, ``Generate``) is done for a tenant: the caller (the gateway's tenant, passed
on by the scheduler or evaluator) names it in the ``x-pocgrid-tenant`` metadata. Work without
one is refused with UNAUTHENTICATED, before anything runs: its usage could be billed to nobody.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from pocgrid.metadata import TENANT_METADATA_KEY
from pocgrid.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from services.agent.convert import HEALTH_FROM_PROTO, device_to_proto
from services.agent.runtime.memory import Allocation
from services.agent.runtime.runtime import VendorRuntime
from services.agent.work.comm import CommRanks
from services.agent.work.executor import TaskExecutor
from services.agent.work.tasks import TaskRunner
from services.core import rpc_context
from services.core import validation as v
from services.core.errors import InvalidArgument, NotFound, Unauthenticated


def require_tenant() -> str:
    """The tenant the work is for; refuses work that names none."""
    tenant = rpc_context.current_tenant()
    if not tenant:
        raise Unauthenticated(
            f"no tenant: work on an agent is done for a tenant, named in the "
            f"'{TENANT_METADATA_KEY}' metadata (the gateway sets it for its callers)",
            reason="TENANT_REQUIRED",
            metadata={"metadata_key": TENANT_METADATA_KEY},
        )
    return tenant


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        node_id: str,
        chip: str,
        runtime: VendorRuntime,
        executor: TaskExecutor,
        tasks: TaskRunner,
        ranks: CommRanks,
    ) -> None:
        self._node_id = node_id
        self._chip = chip
        self._runtime = runtime
        self._executor = executor
        self._tasks = tasks
        self._ranks = ranks
        self._allocations: dict[str, Allocation] = {}

    def _check_index(self, field: str, index: int) -> None:
        if not 0 <= index < self._runtime.device_count:
            raise InvalidArgument(field, f"must be 0..{self._runtime.device_count - 1}")

    async def GetNodeInfo(
        self, request: agent_pb2.GetNodeInfoRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetNodeInfoResponse:
        rt = self._runtime
        return agent_pb2.GetNodeInfoResponse(
            node_id=self._node_id,
            chip=self._chip,
            vendor_family=rt.family,
            runtime_name=rt.profile.runtime.name,
            runtime_version=rt.runtime_version,
            collective_library=rt.collective_library,
            smi_tool=rt.smi_tool,
            devices=[device_to_proto(self._chip, d) for d in rt.devices],
        )

    async def AllocateMemory(
        self, request: agent_pb2.AllocateMemoryRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AllocateMemoryResponse:
        self._check_index("device_index", request.device_index)
        if request.bytes <= 0:
            raise InvalidArgument("bytes", "must be > 0")
        v.optional_text("tag", request.tag, 128)
        allocation = self._runtime.malloc(request.device_index, request.bytes, request.tag)
        allocation_id = f"{self._node_id}/{request.device_index}/{allocation.handle}"
        self._allocations[allocation_id] = allocation
        free = self._runtime.memory_info(request.device_index).free_bytes
        return agent_pb2.AllocateMemoryResponse(
            allocation_id=allocation_id, bytes=allocation.charged_bytes, device_free_bytes=free
        )

    async def FreeMemory(
        self, request: agent_pb2.FreeMemoryRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.FreeMemoryResponse:
        v.require_text("allocation_id", request.allocation_id)
        allocation = self._allocations.pop(request.allocation_id, None)
        if allocation is None:
            raise NotFound("allocation", request.allocation_id)
        self._runtime.free(allocation)
        free = self._runtime.memory_info(allocation.device_index).free_bytes
        return agent_pb2.FreeMemoryResponse(device_free_bytes=free)

    async def SetDeviceHealth(
        self, request: agent_pb2.SetDeviceHealthRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.SetDeviceHealthResponse:
        self._check_index("device_index", request.device_index)
        if request.health == common_pb2.DEVICE_HEALTH_UNSPECIFIED:
            raise InvalidArgument("health", "must be set")
        if request.health not in HEALTH_FROM_PROTO:
            raise InvalidArgument("health", "is not a DeviceHealth value")
        v.optional_text("reason", request.reason, 512)
        self._runtime.set_health(
            request.device_index, HEALTH_FROM_PROTO[request.health], request.reason
        )
        info = self._runtime.device(request.device_index)
        return agent_pb2.SetDeviceHealthResponse(device=device_to_proto(self._chip, info))

    async def RunTask(
        self, request: agent_pb2.RunTaskRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RunTaskResponse:
        return await self._executor.run_task(require_tenant(), request)

    async def StartTask(
        self, request: agent_pb2.StartTaskRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.StartTaskResponse:
        return agent_pb2.StartTaskResponse(task=await self._tasks.start(require_tenant(), request))

    async def GetTask(
        self, request: agent_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetTaskResponse:
        return agent_pb2.GetTaskResponse(
            task=await self._tasks.get(require_tenant(), request.task_id)
        )

    async def CancelTask(
        self, request: agent_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.CancelTaskResponse:
        task = await self._tasks.cancel(require_tenant(), request.task_id, request.reason)
        return agent_pb2.CancelTaskResponse(task=task)

    async def ServeRequests(
        self, request: agent_pb2.ServeRequestsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ServeRequestsResponse:
        return await self._executor.serve_requests(require_tenant(), request)

    async def Generate(
        self, request: agent_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.GenerateResponse]:
        tenant = require_tenant()
        # Closed here, not left to the garbage collector: an abandoned stream records its usage
        # as it closes.
        async with contextlib.aclosing(self._executor.generate(tenant, request)) as tokens:
            async for token in tokens:
                yield token

    async def JoinCommunicator(
        self, request: agent_pb2.JoinCommunicatorRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.JoinCommunicatorResponse:
        return await self._ranks.join(require_tenant(), request)
