"""Device-memory accounting for one emulated device.

The vendor's rules (size rounding, alignment, reserved memory) come from the catalogue; this
module only does the arithmetic and keeps the books. It never changes state on a refused
allocation, so a failed malloc leaves the device exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocgrid.catalog import MemoryRules

# Each device's virtual address range starts at its own 1 TiB boundary so addresses from two
# devices never collide and a pointer's device can be read off its high bits, as with UVA.
_DEVICE_ADDRESS_STRIDE = 1 << 40


@dataclass(frozen=True, slots=True)
class Allocation:
    """One live device allocation, as returned by ``VendorRuntime.malloc``."""

    handle: int
    """Unique within its runtime; identifies the allocation for ``free``."""
    device_index: int
    address: int
    """Emulated device virtual address, aligned to the vendor's alignment."""
    requested_bytes: int
    charged_bytes: int
    """What the device really lost: the request after the vendor's rounding rules."""
    tag: str


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """Memory figures of one device, as ``*MemGetInfo`` plus allocator stats would give them."""

    device_index: int
    total_bytes: int
    reserved_bytes: int
    used_bytes: int
    free_bytes: int
    peak_used_bytes: int
    allocation_count: int


class DeviceMemory:
    """The books of one device: live allocations, usage, and a bump address allocator."""

    __slots__ = ("_live", "_next_address", "_peak", "_rules", "_used", "index", "reserved", "total")

    def __init__(self, index: int, total: int, reserved: int, rules: MemoryRules) -> None:
        if reserved > total:
            raise ValueError(f"device {index}: reserved {reserved} B exceeds total {total} B")
        self.index = index
        self.total = total
        self.reserved = reserved
        self._rules = rules
        self._live: dict[int, Allocation] = {}
        self._used = 0
        self._peak = 0
        self._next_address = (index + 1) * _DEVICE_ADDRESS_STRIDE

    @property
    def free(self) -> int:
        return self.total - self.reserved - self._used

    def charged_bytes(self, nbytes: int) -> int:
        return self._rules.charged_bytes(nbytes)

    def allocate(self, handle: int, nbytes: int, tag: str) -> Allocation | None:
        """Book an allocation, or return None (changing nothing) when it does not fit."""
        charged = self._rules.charged_bytes(nbytes)
        if charged > self.free:
            return None
        align = self._rules.alignment_bytes.value
        address = -(-self._next_address // align) * align
        allocation = Allocation(
            handle=handle,
            device_index=self.index,
            address=address,
            requested_bytes=nbytes,
            charged_bytes=charged,
            tag=tag,
        )
        self._next_address = address + charged
        self._live[handle] = allocation
        self._used += charged
        self._peak = max(self._peak, self._used)
        return allocation

    def release(self, handle: int) -> Allocation | None:
        """Return the allocation's memory; None when the handle is not live here."""
        allocation = self._live.pop(handle, None)
        if allocation is not None:
            self._used -= allocation.charged_bytes
        return allocation

    def owns(self, allocation: Allocation) -> bool:
        return self._live.get(allocation.handle) == allocation

    def info(self) -> MemoryInfo:
        return MemoryInfo(
            device_index=self.index,
            total_bytes=self.total,
            reserved_bytes=self.reserved,
            used_bytes=self._used,
            free_bytes=self.free,
            peak_used_bytes=self._peak,
            allocation_count=len(self._live),
        )


def format_size(nbytes: int) -> str:
    """Byte counts the way PyTorch-derived vendor plugins print them in OOM messages."""
    # Same thresholds as c10's format_size, which torch_npu/torch_mlu/torch_musa inherit.
    if nbytes <= 1024:
        return f"{nbytes} bytes"
    if nbytes <= 1024 * 1024:
        return f"{nbytes / 1024:.2f} KiB"
    if nbytes <= 1024 * 1024 * 1024:
        return f"{nbytes / (1024 * 1024):.2f} MiB"
    return f"{nbytes / (1024 * 1024 * 1024):.2f} GiB"
