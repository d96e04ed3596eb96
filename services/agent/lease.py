"""Keeping this node in the registry: register, heartbeat, re-register when the registry forgets.

The agent registers again whenever the registry says it doesn't know the node (NOT_FOUND), that
the node's lease was lost (FAILED_PRECONDITION), or answers with a new epoch (it restarted).
While the registry is unreachable the agent keeps trying with capped backoff; it never exits.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import grpc

from pocgrid.v1 import registry_pb2, registry_pb2_grpc
from services.agent.convert import HEALTH_TO_PROTO, device_to_proto
from services.agent.runtime.runtime import VendorRuntime
from services.core.logging import get_logger

log = get_logger()

_REREGISTER = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
_MAX_BACKOFF_S = 2.0


class LeaseKeeper:
    def __init__(
        self,
        stub: registry_pb2_grpc.NodeLeaseServiceStub,
        node_id: str,
        chip: str,
        runtime: VendorRuntime,
        advertise: Callable[[], str],
        call_timeout_s: float = 10.0,
    ) -> None:
        self._stub = stub
        # The lease channel may carry no client interceptor (heartbeats untraced), so each call
        # names its own deadline: a hung registry must not hang the lease loop.
        self._timeout_s = call_timeout_s
        self._node_id = node_id
        self._chip = chip
        self._runtime = runtime
        self._advertise = advertise
        self._sequence = 0
        self._epoch = ""
        self.interval_s = 1.0
        self.registrations = 0
        self.registered = asyncio.Event()

    def _register_request(self) -> registry_pb2.RegisterNodeRequest:
        rt = self._runtime
        return registry_pb2.RegisterNodeRequest(
            node_id=self._node_id,
            chip=self._chip,
            agent_address=self._advertise(),
            devices=[device_to_proto(self._chip, d) for d in rt.devices],
            runtime_name=rt.profile.runtime.name,
            runtime_version=rt.runtime_version,
            collective_library=rt.collective_library,
            hostname=socket.gethostname(),
            labels={"smi_tool": rt.smi_tool},
        )

    def _heartbeat_request(self) -> registry_pb2.HeartbeatRequest:
        self._sequence += 1
        return registry_pb2.HeartbeatRequest(
            node_id=self._node_id,
            sequence=self._sequence,
            devices=[
                registry_pb2.DeviceStatus(
                    index=d.index,
                    health=HEALTH_TO_PROTO[d.health],
                    health_reason=d.health_reason,
                    memory_used_bytes=d.memory_used_bytes,
                )
                for d in self._runtime.devices
            ],
        )

    async def register(self) -> None:
        resp = await self._stub.RegisterNode(self._register_request(), timeout=self._timeout_s)
        self._epoch = resp.registry_epoch
        self.interval_s = resp.heartbeat_interval_ms / 1000
        self.registrations += 1
        self.registered.set()
        log.info(
            "agent.registered",
            node_id=self._node_id,
            epoch=self._epoch,
            heartbeat_ms=resp.heartbeat_interval_ms,
        )

    async def run(self) -> None:
        backoff = 0.1
        need_register = True
        while True:
            try:
                if need_register:
                    await self.register()
                    need_register = False
                resp = await self._stub.Heartbeat(
                    self._heartbeat_request(), timeout=self._timeout_s
                )
                if resp.registry_epoch != self._epoch:
                    log.info("agent.registry_restarted", old=self._epoch, new=resp.registry_epoch)
                    need_register = True
                    continue
                backoff = 0.1
                await asyncio.sleep(self.interval_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _REREGISTER:
                    log.info("agent.reregister", reason=exc.details())
                    need_register = True
                    continue
                log.warning("agent.registry_unreachable", code=exc.code().name, retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def deregister(self, reason: str) -> None:
        try:
            await self._stub.DeregisterNode(
                registry_pb2.DeregisterNodeRequest(node_id=self._node_id, reason=reason),
                timeout=2.0,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("agent.deregister_failed", code=exc.code().name)
