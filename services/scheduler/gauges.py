"""The scheduler's gauges: queue depth by job kind, and pool utilization by chip type.

Pool utilization is devices held over devices usable, per chip type: usable devices are those of
READY nodes whose health is not FAILED (what placement can give out); a device counts as held by
the share of it that running jobs hold (a fractional job holding half a device counts 0.5, two
such jobs on one device count 1). The values come from the scheduler's own store (queued jobs,
active assignments) and the registry's node list, the same sources GetQueue and GetPool read.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

from pocgrid.v1 import common_pb2, registry_pb2, scheduler_pb2
from services.core.gauges import Attributes, GaugeSet, attrs
from services.scheduler.spec import KIND_NAMES
from services.scheduler.store import JobStore


class SchedulerGauges:
    def __init__(
        self,
        gauge: Callable[..., GaugeSet],
        store: JobStore,
        nodes: Callable[[], Awaitable[list[registry_pb2.Node]]] | None,
    ) -> None:
        self._store = store
        self._nodes = nodes
        self.queue_depth = gauge(
            "pocgrid.scheduler.queue.depth",
            unit="{job}",
            description="Jobs waiting to be placed, by job kind",
        )
        self.devices_total = gauge(
            "pocgrid.pool.devices.total",
            unit="{device}",
            description="Devices placement can give out (READY nodes, not FAILED), by chip type",
        )
        self.devices_held = gauge(
            "pocgrid.pool.devices.held",
            unit="{device}",
            description="Devices held by running jobs (fractional holdings add up), by chip type",
        )
        self.utilization = gauge(
            "pocgrid.pool.utilization",
            unit="1",
            description="Devices held over devices placement can give out, by chip type",
        )

    async def sample(self) -> None:
        queued = await self._store.in_states([scheduler_pb2.JOB_STATE_QUEUED])
        by_kind = Counter(KIND_NAMES[j.spec.kind] for j in queued)
        # Every kind is reported, 0 when none waits: a queue that drains reads 0, not nothing.
        self.queue_depth.replace({attrs(kind=k): by_kind[k] for k in set(KIND_NAMES.values())})
        if self._nodes is None:
            return  # no registry configured: there is no pool to measure
        nodes = await self._nodes()
        shares: dict[tuple[str, int], float] = defaultdict(float)
        for _job_id, a in await self._store.active_assignments():
            for index in a.device_indexes:
                shares[(a.node_id, index)] += a.device_share or 1.0
        total: dict[Attributes, float] = defaultdict(float)
        held: dict[Attributes, float] = defaultdict(float)
        for node in nodes:
            if node.state != registry_pb2.NODE_STATE_READY:
                continue
            key = attrs(chip=node.chip)
            for d in node.devices:
                if d.health == common_pb2.DEVICE_HEALTH_FAILED:
                    continue
                total[key] += 1
                held[key] += min(1.0, shares.get((node.node_id, d.index), 0.0))
        self.devices_total.replace(total)
        self.devices_held.replace(held)
        self.utilization.replace({k: held[k] / n for k, n in total.items()})
