"""The pool as the scheduler sees it: every device's free share and memory, who holds what.

HAMi's device records, kept in memory with an index so a placement never scans the pool:
per chip type, the healthy devices bucketed by free share (thousandths) and, for whole devices,
grouped by node. A round of a policy reads the index and reserves through ``reserve``; the
live scheduler loads its reservation table into a pool, the simulator keeps one for the run.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pocgrid.sched.model import WHOLE, Demand, DeviceKey, Placement, Slot


class PoolError(ValueError):
    """A reservation that does not match the pool (a bug in the caller or a policy)."""


@dataclass(slots=True)
class Device:
    node: str
    index: int
    chip: str
    memory_gib: float
    healthy: bool = True
    share_free: int = WHOLE
    memory_free_gib: float = 0.0
    holders: dict[str, Slot] = field(default_factory=dict)

    @property
    def key(self) -> DeviceKey:
        return (self.node, self.index)

    @property
    def idle(self) -> bool:
        return self.share_free == WHOLE


@dataclass(frozen=True, slots=True)
class Allocation:
    """A running job: what it asked, where it runs, since when."""

    demand: Demand
    placement: Placement
    started_at: float


class _ChipIndex:
    """The healthy devices of one chip type, bucketed for placement without a scan."""

    __slots__ = (
        "by_level",
        "devices",
        "healthy",
        "levels",
        "memory_max",
        "node_max",
        "per_node",
        "whole_by_node",
    )

    def __init__(self) -> None:
        self.by_level: dict[int, dict[DeviceKey, None]] = {}
        self.levels: list[int] = []  # non-empty levels, ascending
        self.whole_by_node: dict[str, dict[int, None]] = {}
        self.devices: dict[DeviceKey, Device] = {}
        self.healthy = 0
        self.per_node: dict[str, int] = {}  # devices per node, healthy or not
        self.node_max = 0  # most devices on one node
        self.memory_max = 0.0

    def add(self, d: Device) -> None:
        bucket = self.by_level.get(d.share_free)
        if bucket is None:
            bucket = self.by_level[d.share_free] = {}
            bisect.insort(self.levels, d.share_free)
        bucket[d.key] = None
        if d.share_free == WHOLE:
            self.whole_by_node.setdefault(d.node, {})[d.index] = None

    def remove(self, d: Device) -> None:
        bucket = self.by_level[d.share_free]
        del bucket[d.key]
        if not bucket:
            del self.by_level[d.share_free]
            self.levels.pop(bisect.bisect_left(self.levels, d.share_free))
        if d.share_free == WHOLE:
            free = self.whole_by_node[d.node]
            del free[d.index]
            if not free:
                del self.whole_by_node[d.node]

    @property
    def max_free(self) -> int:
        return self.levels[-1] if self.levels else 0

    def whole_free(self) -> int:
        bucket = self.by_level.get(WHOLE)
        return len(bucket) if bucket else 0


class Pool:
    """Devices, their free room and their holders. Mutated only by ``reserve``/``release`` and
    the health calls, so the index always matches the devices."""

    def __init__(self) -> None:
        self._devices: dict[DeviceKey, Device] = {}
        self._chips: dict[str, _ChipIndex] = {}
        self._node_devices: dict[str, list[DeviceKey]] = {}
        self.running: dict[str, Allocation] = {}
        self._tenant_milli: dict[str, int] = {}
        self._used_milli = 0
        self._chip_order: tuple[str, ...] = ()

    # -- building ---------------------------------------------------------------------------

    def add_device(self, node: str, index: int, chip: str, memory_gib: float) -> Device:
        key = (node, index)
        if key in self._devices:
            raise PoolError(f"device {node}/{index} is already in the pool")
        d = Device(node, index, chip, memory_gib, memory_free_gib=memory_gib)
        self._devices[key] = d
        self._node_devices.setdefault(node, []).append(key)
        ix = self._chips.get(chip)
        if ix is None:
            ix = self._chips[chip] = _ChipIndex()
            self._chip_order = (*self._chip_order, chip)
        ix.devices[key] = d
        ix.add(d)
        ix.healthy += 1
        ix.per_node[node] = ix.per_node.get(node, 0) + 1
        ix.node_max = max(ix.node_max, ix.per_node[node])
        ix.memory_max = max(ix.memory_max, memory_gib)
        return d

    def add_node(self, node: str, chip: str, devices: int, memory_gib: float) -> None:
        for i in range(devices):
            self.add_device(node, i, chip, memory_gib)

    def set_node_health(self, node: str, healthy: bool) -> list[str]:
        """Mark every device of a node; returns the jobs that ran there (a lost node's work,
        for the caller to release and requeue)."""
        if node not in self._node_devices:
            raise PoolError(f"node {node} is not in the pool")
        jobs: dict[str, None] = {}
        for key in self._node_devices[node]:
            d = self._devices[key]
            jobs.update(dict.fromkeys(d.holders))
            if d.healthy == healthy:
                continue
            ix = self._chips[d.chip]
            if healthy:
                d.healthy = True
                ix.add(d)
                ix.healthy += 1
            else:
                ix.remove(d)
                d.healthy = False
                ix.healthy -= 1
        return list(jobs)

    # -- reading ----------------------------------------------------------------------------

    @property
    def chips(self) -> tuple[str, ...]:
        """Chip types in the order they joined the pool."""
        return self._chip_order

    def device(self, key: DeviceKey) -> Device:
        return self._devices[key]

    def devices(self, chip: str | None = None) -> Iterator[Device]:
        if chip is None:
            yield from self._devices.values()
        elif chip in self._chips:
            yield from self._chips[chip].devices.values()

    def nodes(self) -> list[str]:
        return list(self._node_devices)

    def node_devices(self, node: str) -> list[Device]:
        return [self._devices[k] for k in self._node_devices.get(node, [])]

    def healthy_devices(self, chip: str) -> int:
        ix = self._chips.get(chip)
        return ix.healthy if ix else 0

    def total_devices(self, chip: str) -> int:
        """Devices of ``chip``, healthy or not: what the pool can ever give one job."""
        ix = self._chips.get(chip)
        return len(ix.devices) if ix else 0

    def node_max(self, chip: str) -> int:
        """Most devices of ``chip`` on one node, healthy or not."""
        ix = self._chips.get(chip)
        return ix.node_max if ix else 0

    def memory_max(self, chip: str) -> float:
        ix = self._chips.get(chip)
        return ix.memory_max if ix else 0.0

    def max_free_share(self, chip: str) -> int:
        """The largest free share on one healthy device of ``chip`` (0 when none)."""
        ix = self._chips.get(chip)
        return ix.max_free if ix else 0

    def whole_free(self, chip: str) -> int:
        ix = self._chips.get(chip)
        return ix.whole_free() if ix else 0

    def whole_free_by_node(self, chip: str) -> dict[str, dict[int, None]]:
        """Node -> indices of its idle healthy devices of ``chip`` (read-only use)."""
        ix = self._chips.get(chip)
        return ix.whole_by_node if ix else {}

    def free_levels(self, chip: str) -> list[int]:
        """Distinct free shares present on healthy devices of ``chip``, ascending."""
        ix = self._chips.get(chip)
        return ix.levels if ix else []

    def at_level(self, chip: str, level: int) -> Iterable[DeviceKey]:
        ix = self._chips.get(chip)
        if ix is None:
            return ()
        return ix.by_level.get(level, {})

    def tenant_milli(self, tenant: str) -> int:
        """Device-thousandths the tenant's running jobs hold."""
        return self._tenant_milli.get(tenant, 0)

    @property
    def used_milli(self) -> int:
        return self._used_milli

    @property
    def capacity_milli(self) -> int:
        return WHOLE * sum(ix.healthy for ix in self._chips.values())

    # -- changing ---------------------------------------------------------------------------

    def reserve(self, demand: Demand, placement: Placement, now: float) -> None:
        if placement.job_id in self.running:
            raise PoolError(f"job {placement.job_id} already holds devices")
        if len(placement.slots) != demand.devices:
            raise PoolError(
                f"job {demand.job_id}: {len(placement.slots)} slots for {demand.devices} devices"
            )
        for s in placement.slots:
            d = self._devices.get(s.key)
            if d is None or d.chip != placement.chip or not d.healthy:
                raise PoolError(f"job {demand.job_id}: device {s.node}/{s.index} is not usable")
            if s.share_milli > d.share_free or s.memory_gib > d.memory_free_gib + 1e-9:
                raise PoolError(f"job {demand.job_id}: device {s.node}/{s.index} is too full")
        for s in placement.slots:
            d = self._devices[s.key]
            ix = self._chips[d.chip]
            ix.remove(d)
            d.share_free -= s.share_milli
            d.memory_free_gib -= s.memory_gib
            d.holders[demand.job_id] = s
            ix.add(d)
        self.running[demand.job_id] = Allocation(demand, placement, now)
        self._tenant_milli[demand.tenant] = (
            self._tenant_milli.get(demand.tenant, 0) + demand.size_milli
        )
        self._used_milli += demand.size_milli

    def release(self, job_id: str) -> Allocation:
        alloc = self.running.pop(job_id, None)
        if alloc is None:
            raise PoolError(f"job {job_id} holds no devices")
        for s in alloc.placement.slots:
            d = self._devices[s.key]
            ix = self._chips[d.chip]
            if d.healthy:
                ix.remove(d)
            d.share_free += s.share_milli
            d.memory_free_gib += s.memory_gib
            del d.holders[job_id]
            if d.healthy:
                ix.add(d)
        t = alloc.demand.tenant
        self._tenant_milli[t] -= alloc.demand.size_milli
        self._used_milli -= alloc.demand.size_milli
        return alloc

    def slot_for(self, demand: Demand, device: Device) -> Slot:
        """The slot ``demand`` takes on ``device``: a whole device takes all of its memory."""
        if demand.share_milli == WHOLE:
            return Slot(device.node, device.index, WHOLE, device.memory_gib)
        return Slot(device.node, device.index, demand.share_milli, demand.memory_gib)
