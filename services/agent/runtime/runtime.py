"""``VendorRuntime``: one emulated vendor runtime for the devices of one node.

One class serves every vendor; what differs is the catalogue's ``VendorProfile`` (names, codes,
texts, allocation rules, precision rules) and operator coverage. A runtime is built from a
catalogue ``Chip`` by ``create_runtime`` and is used from one asyncio thread, so it takes no
locks; every operation checks before it changes anything, so state stays consistent after any
error.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pocgrid.catalog import (
    Catalog,
    Chip,
    ErrorSpec,
    OperatorCatalog,
    OperatorGap,
    Precision,
    Sourced,
    VendorProfile,
    default_catalog,
)
from services.agent.runtime.devices import DeviceHealth, DeviceInfo, device_uuid
from services.agent.runtime.errors import (
    DeviceOutOfMemory,
    DeviceUnavailable,
    InvalidArgument,
    InvalidHandle,
    VendorRuntimeError,
)
from services.agent.runtime.memory import Allocation, DeviceMemory, MemoryInfo, format_size
from services.agent.runtime.streams import VirtualClock, VirtualStream, to_seconds

# Vendors market HBM/GDDR capacities in binary units ("64 GB HBM2e" is 64 GiB of DRAM): an
# Ascend 910B reports 61.27 GiB usable, more than 64e9 bytes could hold. So catalogue GB -> GiB.
_GIB = 1024**3

_PRECISION_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "tensorfloat32": "tf32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8",
}

# The most devices one node may claim; a bound keeps a bad config from building huge tables.
MAX_DEVICES_PER_NODE = 64


class RuntimeConfigError(ValueError):
    """The chip or arguments cannot make a runtime (e.g. no memory size is known)."""


@dataclass(frozen=True, slots=True)
class OperatorSupport:
    """Whether one op is native, and if not, why."""

    op: str
    native: bool
    gap: OperatorGap | None


def _canonical_precision(precision: str) -> str:
    key = precision.strip().lower().replace("-", "").replace("_", "")
    return _PRECISION_ALIASES.get(key, key)


class VendorRuntime:
    """The emulated runtime of one node: ``device_count`` devices of one chip type."""

    def __init__(
        self,
        chip: Chip,
        profile: VendorProfile,
        operators: OperatorCatalog,
        device_count: int,
        node_seed: str,
    ) -> None:
        if chip.vendor_family != profile.family:
            raise RuntimeConfigError(
                f"chip '{chip.name}' is {chip.vendor_family}, profile is {profile.family}"
            )
        if not 1 <= device_count <= MAX_DEVICES_PER_NODE:
            raise RuntimeConfigError(
                f"device_count must be 1..{MAX_DEVICES_PER_NODE}, got {device_count}"
            )
        self.chip = chip
        self.profile = profile
        self.node_seed = node_seed
        self._operators = operators
        self._gaps = operators.gaps(profile.family, chip.name)
        self._precisions = profile.chip_precisions(chip)
        facts = profile.chip_facts(chip.name)
        self._compute_units = facts.compute_units if facts is not None else None
        memory_gib = profile.device_memory_gib(chip)
        if memory_gib is None:
            raise RuntimeConfigError(
                f"chip '{chip.name}': the catalogue has no memory_gib for it, in the chip table "
                f"or the {profile.family} vendor file, so its device memory cannot be emulated"
            )
        total = round(memory_gib * _GIB)
        reserved = min(profile.memory.reserved_bytes, total)
        self._memory = [
            DeviceMemory(i, total, reserved, profile.memory) for i in range(device_count)
        ]
        self._health = [(DeviceHealth.HEALTHY, "")] * device_count
        self._uuids = [
            device_uuid(node_seed, chip.name, i, profile.uuid_format.value)
            for i in range(device_count)
        ]
        self._handles = itertools.count(1)
        self._clock = VirtualClock()
        self._streams: list[list[VirtualStream]] = [
            [self._new_stream(i, "default")] for i in range(device_count)
        ]

    # -- identity ---------------------------------------------------------------------------

    @property
    def family(self) -> str:
        return self.profile.family

    @property
    def device_count(self) -> int:
        return len(self._memory)

    @property
    def runtime_version(self) -> str:
        return self.profile.runtime.version_string

    @property
    def smi_tool(self) -> str:
        return self.profile.smi_tool.value

    @property
    def collective_library(self) -> str:
        return self.profile.collective_library.value

    @property
    def compute_units(self) -> Sourced[int] | None:
        return self._compute_units

    @property
    def devices(self) -> list[DeviceInfo]:
        return [self.device(i) for i in range(self.device_count)]

    def device(self, index: int) -> DeviceInfo:
        memory = self._device_memory(index, api="device")
        health, reason = self._health[index]
        return DeviceInfo(
            index=index,
            device_id=self.profile.torch_device(index),
            uuid=self._uuids[index],
            name=self.chip.display_name,
            physical_device=self.profile.device_path(index),
            memory_total_bytes=memory.total,
            memory_reserved_bytes=memory.reserved,
            memory_used_bytes=memory.info().used_bytes,
            compute_units=None if self._compute_units is None else self._compute_units.value,
            compute_unit_kind=self.profile.compute_unit_kind.value,
            precisions=self._precisions,
            health=health,
            health_reason=reason,
        )

    # -- memory -----------------------------------------------------------------------------

    def malloc(self, device_index: int, nbytes: int, tag: str = "") -> Allocation:
        """Allocate ``nbytes`` on a device, or raise the vendor's error; never partially."""
        api = self.profile.memory.malloc_api
        memory = self._device_memory(device_index, api=api)
        self._require_alive(device_index, api)
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise self._error(
                InvalidArgument,
                self.profile.errors.invalid_argument,
                api,
                device_index,
                detail=f"size must be a positive integer number of bytes, got {nbytes!r}",
            )
        allocation = memory.allocate(next(self._handles), nbytes, tag)
        if allocation is None:
            raise self._out_of_memory(memory, nbytes)
        return allocation

    def free(self, allocation: Allocation) -> None:
        """Release an allocation; freeing one this runtime does not hold (again) is an error."""
        api = self.profile.memory.free_api
        index = allocation.device_index
        if not 0 <= index < self.device_count or not self._memory[index].owns(allocation):
            raise self._error(
                InvalidHandle,
                self.profile.errors.invalid_handle,
                api,
                index if 0 <= index < self.device_count else None,
                detail=f"address {allocation.address:#x} is not a live allocation of this runtime",
            )
        # Freeing on a FAILED device is allowed: cleanup must be possible after a fault.
        self._memory[index].release(allocation.handle)

    def memory_info(self, device_index: int) -> MemoryInfo:
        return self._device_memory(device_index, api="memory_info").info()

    # -- capabilities -----------------------------------------------------------------------

    @property
    def precisions(self) -> tuple[Precision, ...]:
        return self._precisions

    def supports_precision(self, precision: str) -> bool:
        return _canonical_precision(precision) in self._precisions

    @property
    def native_operators(self) -> frozenset[str]:
        return self._operators.base.difference(self._gaps)

    def supports_operator(self, op: str) -> bool:
        return op in self._operators.base and op not in self._gaps

    def operator_support(self, op: str) -> OperatorSupport:
        if op not in self._operators.base:
            outside = OperatorGap(
                op=op,
                reason="not in pocgrid's base operator set; no runtime claims it natively",
                basis="estimate",
                sources=(),
            )
            return OperatorSupport(op=op, native=False, gap=outside)
        gap = self._gaps.get(op)
        return OperatorSupport(op=op, native=gap is None, gap=gap)

    def unsupported_operators(self, ops: Iterable[str]) -> list[str]:
        """The ops in ``ops`` this runtime does not run natively, once each, in first-seen order."""
        return [op for op in dict.fromkeys(ops) if not self.supports_operator(op)]

    # -- health (fault injection) -------------------------------------------------------------

    def set_health(self, device_index: int, health: DeviceHealth, reason: str = "") -> None:
        self._device_memory(device_index, api="set_health")
        self._health[device_index] = (health, reason)

    # -- streams and virtual time -------------------------------------------------------------

    @property
    def streams(self) -> Mapping[int, VirtualStream]:
        """The default stream of each device, by device index."""
        return MappingProxyType({i: s[0] for i, s in enumerate(self._streams)})

    def create_stream(self, device_index: int, name: str = "") -> VirtualStream:
        """An extra stream on a device; work on it overlaps the device's other streams."""
        self._device_memory(device_index, api="create_stream")
        self._require_alive(device_index, "create_stream")
        stream = self._new_stream(device_index, name or f"stream{len(self._streams[device_index])}")
        self._streams[device_index].append(stream)
        return stream

    @property
    def now(self) -> float:
        return self._clock.now

    def synchronize(self, device_index: int | None = None) -> float:
        """Wait for every stream of one device (or of all devices); return the virtual time."""
        indices = range(self.device_count) if device_index is None else [device_index]
        if device_index is not None:
            self._device_memory(device_index, api="synchronize")
        for index in indices:
            for stream in self._streams[index]:
                stream.synchronize()
        return to_seconds(self._clock.now_ns)

    # -- internals --------------------------------------------------------------------------

    def _new_stream(self, device_index: int, name: str) -> VirtualStream:
        return VirtualStream(
            device_index, name, self._clock, lambda: self._require_alive(device_index, "launch")
        )

    def _device_memory(self, index: int, *, api: str) -> DeviceMemory:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"device index must be an int, got {index!r}")
        if not 0 <= index < self.device_count:
            raise self._error(
                InvalidArgument,
                self.profile.errors.invalid_argument,
                api,
                None,
                detail=f"invalid device ordinal {index}; this node has {self.device_count}",
            )
        return self._memory[index]

    def _require_alive(self, index: int, api: str) -> None:
        health, reason = self._health[index]
        if health is DeviceHealth.FAILED:
            raise self._error(
                DeviceUnavailable,
                self.profile.errors.device_unavailable,
                api,
                index,
                detail=reason or "device marked FAILED",
            )

    def _error(
        self,
        kind: type[VendorRuntimeError],
        spec: ErrorSpec,
        api: str,
        device_index: int | None,
        *,
        detail: str,
    ) -> VendorRuntimeError:
        message = spec.message.format(device=device_index if device_index is not None else "-")
        return kind(
            family=self.family,
            api=api,
            vendor_symbol=spec.symbol,
            vendor_code=spec.code,
            vendor_message=f"{message} ({detail})",
            device_index=device_index,
        )

    def _out_of_memory(self, memory: DeviceMemory, nbytes: int) -> DeviceOutOfMemory:
        spec = self.profile.errors.out_of_memory
        info = memory.info()
        # The figures a vendor plugin prints: total is what *MemGetInfo reports (reserved
        # firmware memory excluded), free is what is left for this process.
        fields = {
            "requested": format_size(nbytes),
            "device": memory.index,
            "total": format_size(info.total_bytes - self.profile.memory.hidden_mib.value * 2**20),
            "free": format_size(info.free_bytes),
            "allocated": format_size(info.used_bytes),
        }
        return DeviceOutOfMemory(
            family=self.family,
            api=self.profile.memory.malloc_api,
            vendor_symbol=spec.error.symbol,
            vendor_code=spec.error.code,
            vendor_message=spec.error.message.format(**fields),
            framework_message=spec.framework_message.value.format(**fields),
            device_index=memory.index,
            requested_bytes=nbytes,
            free_bytes=info.free_bytes,
        )


def create_runtime(
    chip: Chip, device_count: int, *, node_seed: str = "node-0", catalog: Catalog | None = None
) -> VendorRuntime:
    """The emulated runtime of ``chip``'s vendor family, with ``device_count`` devices; the
    vendor facts come from ``catalog`` (default: the packaged catalogue)."""
    cat = default_catalog() if catalog is None else catalog
    return VendorRuntime(
        chip,
        cat.vendor(chip.vendor_family),
        cat.operators,
        device_count,
        node_seed,
    )
