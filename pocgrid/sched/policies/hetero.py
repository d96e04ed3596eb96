"""``hetero``: each job where its throughput per device is best, with fair share (Gavel-style).

Gavel (Narayanan et al., "Heterogeneity-Aware Cluster Scheduling Policies for Deep Learning
Workloads", OSDI '20) schedules over a job x accelerator throughput matrix: the same job runs
very differently fast on different chips, and the best chip differs between jobs. Here the
matrix is ``Demand.speed`` (work per second per device on each chip type, relative to a
reference); the live scheduler fills it for LLM jobs from the performance model through the
adapter's estimates, the simulator from the roofline of each job's arithmetic intensity.

Chip choice: allowed chip types in falling speed for this job; a slower chip is taken only when
the faster ones are full. Devices: binpack (keeps whole devices for the gangs).

Fairness (no tenant starves): within a priority class the next job comes from the tenant with
the lowest share of the pool now (held device thousandths over its guarantee and weight,
``QuotaBook.share``), recomputed after every placement, so a tenant with many queued jobs takes
turns with one that has few (max-min fairness in the spirit of Gavel's LAS policy).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Sequence

from pocgrid.sched.model import Demand
from pocgrid.sched.policy import QueuePolicy, default_order
from pocgrid.sched.pool import Pool
from pocgrid.sched.quota import QuotaBook


class Hetero(QueuePolicy):
    name = "hetero"
    nodes = "fullest"
    device = "tightest"

    def order(self, queue: Sequence[Demand], pool: Pool, now: float) -> Iterator[Demand]:
        book = self.quotas if self.quotas is not None else QuotaBook()
        by_priority: dict[int, dict[str, deque[Demand]]] = {}
        for d in default_order(queue):
            by_priority.setdefault(d.priority, {}).setdefault(d.tenant, deque()).append(d)
        for priority in sorted(by_priority, reverse=True):
            tenants = by_priority[priority]
            # (share now, arrival of the tenant's next job, tenant): the least served first
            heap = [(book.share(t, pool), q[0].submitted_at, t) for t, q in tenants.items()]
            heapq.heapify(heap)
            while heap:
                _, _, t = heapq.heappop(heap)
                q = tenants[t]
                yield q.popleft()
                if q:
                    heapq.heappush(heap, (book.share(t, pool), q[0].submitted_at, t))

    def chip_order(self, demand: Demand, pool: Pool, now: float) -> Sequence[str]:
        chips = [c for c in pool.chips if demand.allows(c)]
        return sorted(chips, key=lambda c: -demand.speed_on(c))
