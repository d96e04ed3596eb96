"""Runtime device records to their protobuf messages."""

from __future__ import annotations

from pocgrid.precision import PRECISION_BY_NAME
from pocgrid.v1 import common_pb2, registry_pb2
from services.agent.runtime.devices import DeviceHealth, DeviceInfo

HEALTH_TO_PROTO: dict[DeviceHealth, common_pb2.DeviceHealth.ValueType] = {
    DeviceHealth.HEALTHY: common_pb2.DEVICE_HEALTH_HEALTHY,
    DeviceHealth.DEGRADED: common_pb2.DEVICE_HEALTH_DEGRADED,
    DeviceHealth.FAILED: common_pb2.DEVICE_HEALTH_FAILED,
}
HEALTH_FROM_PROTO = {v: k for k, v in HEALTH_TO_PROTO.items()}


def device_to_proto(chip: str, info: DeviceInfo) -> registry_pb2.Device:
    return registry_pb2.Device(
        device_id=info.device_id,
        uuid=info.uuid,
        index=info.index,
        chip=chip,
        memory_total_bytes=info.memory_total_bytes,
        memory_used_bytes=info.memory_used_bytes,
        compute_units=info.compute_units or 0,
        precisions=[PRECISION_BY_NAME[p] for p in info.precisions if p in PRECISION_BY_NAME],
        health=HEALTH_TO_PROTO[info.health],
        health_reason=info.health_reason,
    )
