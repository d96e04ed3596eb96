"""The device model an emulated runtime exposes: identity, memory, precisions, health."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

# A fixed namespace makes device UUIDs a pure function of their inputs: the same node seed
# and index give the same UUID in every process, so registry records survive agent restarts.
_UUID_NAMESPACE = uuid.UUID("5d3c2f0e-6f1b-5c8e-9a47-0c1d2e3f4a5b")


class DeviceHealth(enum.Enum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    """Still accepts work and allocations; the scheduler should prefer other devices."""
    FAILED = "FAILED"
    """Gone as far as the runtime is concerned: allocations and submissions are refused."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A snapshot of one emulated device, as the vendor's SMI tool would describe it."""

    index: int
    device_id: str
    """Framework device string (``npu:0``, ``mlu:0``, ``cuda:0``, ...)."""
    uuid: str
    """Stable per (node seed, chip, index), in the vendor SMI's UUID spelling."""
    name: str
    physical_device: str
    """Device file the vendor driver creates (``/dev/davinci0``, ``/dev/cambricon_dev0``, ...)."""
    memory_total_bytes: int
    memory_reserved_bytes: int
    """Taken by firmware and the runtime context before any user allocation."""
    memory_used_bytes: int
    """Charged to live user allocations (after the vendor's size rounding)."""
    compute_units: int | None
    compute_unit_kind: str
    precisions: tuple[str, ...]
    health: DeviceHealth
    health_reason: str

    @property
    def memory_free_bytes(self) -> int:
        return self.memory_total_bytes - self.memory_reserved_bytes - self.memory_used_bytes


def device_uuid(node_seed: str, chip_name: str, index: int, uuid_format: str) -> str:
    """The vendor-formatted UUID of device ``index`` on the node seeded by ``node_seed``."""
    canonical = uuid.uuid5(_UUID_NAMESPACE, f"{node_seed}/{chip_name}/{index}")
    return uuid_format.format(uuid=canonical)
