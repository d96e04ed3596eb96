"""``spread``: the emptiest node and the freest device first (HAMi's spread).

HAMi's ``spread`` at node and device level: work goes where the least is allocated, so jobs
share devices and nodes as little as they can (less interference, smaller blast radius of a
lost node) at the price of fragmentation. Order as fifo.
"""

from __future__ import annotations

from pocgrid.sched.policy import QueuePolicy


class Spread(QueuePolicy):
    name = "spread"
    nodes = "emptiest"
    device = "loosest"
