"""``cost``: the cheapest chip type that still meets the job's deadline.

Kueue's flavor fungibility tries resource flavors in a configured order (cheapest first, falling
back to dearer ones); here the order is computed per job: the price of running the job's
remaining work on each chip type (price per device-hour x devices x share x hours the work takes
at the job's speed there), cheapest first among the chip types on which the job would finish by
its deadline. Chip types that would miss it come after, fastest first, so late work is at
least as little late as it can be. A job without a deadline simply runs where it is cheapest.

Prices are device-hour prices per chip type, given to the policy (the default price book of
``pocgrid.pricing`` in the CLI and the simulator). A chip type without a price is tried last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pocgrid.sched.model import WHOLE, Demand
from pocgrid.sched.policy import QueuePolicy
from pocgrid.sched.pool import Pool
from pocgrid.sched.quota import QuotaBook


class Cost(QueuePolicy):
    name = "cost"
    nodes = "fullest"
    device = "tightest"

    def __init__(
        self,
        prices: Mapping[str, float],
        quotas: QuotaBook | None = None,
        *,
        preemption: bool = True,
        strict: bool = False,
    ) -> None:
        super().__init__(quotas, preemption=preemption, strict=strict)
        for chip, price in prices.items():
            if not price >= 0:
                raise ValueError(f"price of {chip} must be >= 0, got {price}")
        self.prices = dict(prices)

    def job_cost(self, demand: Demand, chip: str) -> float:
        """What the remaining work costs on ``chip`` (inf without a price). Work that runs
        until stopped (``work`` 0, serving) is priced per hour of reference work."""
        price = self.prices.get(chip)
        if price is None:
            return math.inf
        work = demand.work if demand.work > 0 else 3600.0
        hours = work / demand.speed_on(chip) / 3600.0
        return price * demand.devices * demand.share_milli / WHOLE * hours

    def chip_order(self, demand: Demand, pool: Pool, now: float) -> Sequence[str]:
        chips = [c for c in pool.chips if demand.allows(c)]

        def finish(c: str) -> float:
            return now + demand.work / demand.speed_on(c)

        if demand.deadline is None:
            on_time, late = chips, []
        else:
            deadline = demand.deadline
            on_time = [c for c in chips if finish(c) <= deadline]
            late = [c for c in chips if finish(c) > deadline]
        on_time.sort(key=lambda c: (self.job_cost(demand, c), finish(c)))
        late.sort(key=finish)
        return on_time + late
