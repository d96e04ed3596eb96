"""gRPC servicers: the public RegistryService and the agents' internal NodeLeaseService."""

from __future__ import annotations

import grpc

from pocgrid.catalog import Catalog, UnknownNameError
from pocgrid.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.core import rpc_context
from services.core import validation as v
from services.core.config import ConfigError, parse_hostport
from services.core.errors import InvalidArgument, NotFound
from services.registry.config import RegistryConfig
from services.registry.convert import chip_to_proto, model_to_proto
from services.registry.pool import NodePool

MAX_DEVICES = 64
_KNOWN_FAMILIES_RULE = "must be a vendor family the catalogue knows"


def _hint(exc: UnknownNameError) -> str:
    text = str(exc)
    return text[text.find("did you mean") :] if "did you mean" in text else ""


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, catalog: Catalog, pool: NodePool) -> None:
        self._catalog = catalog
        self._pool = pool
        self._families = {c.vendor_family for c in catalog.chips}
        self._chips = {c.name: chip_to_proto(c) for c in catalog.chips}
        self._models = {m.name: model_to_proto(m) for m in catalog.models}

    async def ListChips(
        self, request: registry_pb2.ListChipsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListChipsResponse:
        if request.vendor_family and request.vendor_family not in self._families:
            raise InvalidArgument(
                "vendor_family", f"{_KNOWN_FAMILIES_RULE}: " + ", ".join(sorted(self._families))
            )
        chips = [
            c
            for c in self._chips.values()
            if (not request.vendor_family or c.vendor_family == request.vendor_family)
            and (not request.domestic_only or c.domestic)
            and (not request.emulatable_only or c.emulatable)
        ]
        return registry_pb2.ListChipsResponse(chips=chips)

    async def GetChip(
        self, request: registry_pb2.GetChipRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetChipResponse:
        v.require_text("name", request.name)
        try:
            chip = self._catalog.find_chip(request.name)
        except UnknownNameError as exc:
            raise NotFound("chip", request.name, _hint(exc)) from None
        return registry_pb2.GetChipResponse(chip=self._chips[chip.name])

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        kinds = {m.kind for m in self._models.values()}
        if request.kind and request.kind not in kinds:
            raise InvalidArgument("kind", "must be one of " + ", ".join(sorted(kinds)))
        models = [m for m in self._models.values() if not request.kind or m.kind == request.kind]
        return registry_pb2.ListModelsResponse(models=models)

    async def GetModel(
        self, request: registry_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetModelResponse:
        v.require_text("name", request.name)
        try:
            model = self._catalog.model(request.name)
        except UnknownNameError as exc:
            raise NotFound("model", request.name, _hint(exc)) from None
        return registry_pb2.GetModelResponse(model=self._models[model.name])

    async def ListNodes(
        self, request: registry_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListNodesResponse:
        size = v.page_size("page.page_size", request.page.page_size)
        offset = v.page_offset("page.page_token", request.page.page_token)
        if request.vendor_family and request.vendor_family not in self._families:
            raise InvalidArgument("vendor_family", _KNOWN_FAMILIES_RULE)
        if request.chip and request.chip not in self._chips:
            raise InvalidArgument("chip", f"unknown chip '{request.chip}'")
        if request.state not in registry_pb2.NodeState.values():
            raise InvalidArgument("state", "is not a NodeState value")
        if request.device_health not in common_pb2.DeviceHealth.values():
            raise InvalidArgument("device_health", "is not a DeviceHealth value")
        nodes = [
            n
            for n in self._pool.nodes()
            if (not request.vendor_family or n.vendor_family == request.vendor_family)
            and (not request.chip or n.chip == request.chip)
            and (not request.state or n.state == request.state)
            and (
                not request.device_health
                or any(d.health == request.device_health for d in n.devices)
            )
        ]
        page = nodes[offset : offset + size]
        next_token = str(offset + size) if offset + size < len(nodes) else ""
        return registry_pb2.ListNodesResponse(
            nodes=page,
            page=common_pb2.PageResponse(next_page_token=next_token, total_size=len(nodes)),
        )

    async def GetNode(
        self, request: registry_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetNodeResponse:
        v.require_text("node_id", request.node_id, 63)
        return registry_pb2.GetNodeResponse(node=self._pool.get(request.node_id))


class NodeLeaseServicer(registry_pb2_grpc.NodeLeaseServiceServicer):
    def __init__(self, catalog: Catalog, pool: NodePool, config: RegistryConfig) -> None:
        self._catalog = catalog
        self._pool = pool
        self._config = config

    async def RegisterNode(
        self, request: registry_pb2.RegisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RegisterNodeResponse:
        v.require_id("node_id", request.node_id)
        v.require_text("chip", request.chip, 64)
        try:
            chip = self._catalog.chip(request.chip)
        except UnknownNameError as exc:
            raise InvalidArgument("chip", f"unknown chip '{request.chip}' {_hint(exc)}") from None
        try:
            parse_hostport("agent_address", request.agent_address)
        except ConfigError:
            raise InvalidArgument("agent_address", "must be HOST:PORT") from None
        v.require_labels("labels", request.labels)
        for name in ("runtime_name", "runtime_version", "collective_library", "hostname"):
            v.optional_text(name, getattr(request, name), 256)
        if not 1 <= len(request.devices) <= MAX_DEVICES:
            raise InvalidArgument("devices", f"must list 1..{MAX_DEVICES} devices")
        for i, device in enumerate(request.devices):
            field = f"devices[{i}]"
            if device.index != i:
                raise InvalidArgument(f"{field}.index", f"must be {i} (indexes are 0..n-1)")
            v.require_text(f"{field}.device_id", device.device_id, 64)
            v.optional_text(f"{field}.uuid", device.uuid, 128)
            if device.chip and device.chip != chip.name:
                raise InvalidArgument(f"{field}.chip", f"must be empty or '{chip.name}'")
            if device.memory_total_bytes <= 0:
                raise InvalidArgument(f"{field}.memory_total_bytes", "must be > 0")
            if not 0 <= device.memory_used_bytes <= device.memory_total_bytes:
                raise InvalidArgument(
                    f"{field}.memory_used_bytes", "must be between 0 and memory_total_bytes"
                )
            if device.health not in common_pb2.DeviceHealth.values():
                raise InvalidArgument(f"{field}.health", "is not a DeviceHealth value")
            v.optional_text(f"{field}.health_reason", device.health_reason, 512)
        node = registry_pb2.Node(
            node_id=request.node_id,
            chip=chip.name,
            vendor_family=chip.vendor_family,
            agent_address=request.agent_address,
            labels=request.labels,
            runtime_name=request.runtime_name,
            runtime_version=request.runtime_version,
            collective_library=request.collective_library,
            hostname=request.hostname,
        )
        for device in request.devices:
            added = node.devices.add()
            added.CopyFrom(device)
            added.chip = chip.name
            if not added.health:
                added.health = common_pb2.DEVICE_HEALTH_HEALTHY
        node = await self._pool.register(
            node, rpc_context.current_caller(), rpc_context.current_is_admin()
        )
        return registry_pb2.RegisterNodeResponse(
            node=node,
            heartbeat_interval_ms=self._config.heartbeat_interval_ms,
            lease_ttl_ms=self._config.lease_ttl_ms,
            registry_epoch=self._pool.epoch,
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.HeartbeatResponse:
        v.require_id("node_id", request.node_id)
        if request.sequence <= 0:
            raise InvalidArgument("sequence", "must be > 0")
        if len(request.devices) > MAX_DEVICES:
            raise InvalidArgument("devices", f"at most {MAX_DEVICES} entries")
        seen: set[int] = set()
        for i, status in enumerate(request.devices):
            if status.index < 0 or status.index in seen:
                raise InvalidArgument(f"devices[{i}].index", "must be >= 0 and unique")
            seen.add(status.index)
            if status.health not in common_pb2.DeviceHealth.values():
                raise InvalidArgument(f"devices[{i}].health", "is not a DeviceHealth value")
            if status.memory_used_bytes < 0:
                raise InvalidArgument(f"devices[{i}].memory_used_bytes", "must be >= 0")
            v.optional_text(f"devices[{i}].health_reason", status.health_reason, 512)
        # Heartbeats are the agents' alone (no admin role): only the node's holder renews it.
        self._pool.check_holder(request.node_id, rpc_context.current_caller(), admin=False)
        node = await self._pool.heartbeat(request.node_id, request.sequence, list(request.devices))
        return registry_pb2.HeartbeatResponse(
            lease_expires_at=node.lease_expires_at, registry_epoch=self._pool.epoch
        )

    async def DeregisterNode(
        self, request: registry_pb2.DeregisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeregisterNodeResponse:
        v.require_id("node_id", request.node_id)
        v.optional_text("reason", request.reason, 512)
        self._pool.check_holder(
            request.node_id, rpc_context.current_caller(), rpc_context.current_is_admin()
        )
        await self._pool.deregister(request.node_id, request.reason)
        return registry_pb2.DeregisterNodeResponse()
