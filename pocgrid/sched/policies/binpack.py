"""``binpack``: fill the fullest node and the fullest device first (HAMi's binpack).

HAMi's node-scheduler-policy ``binpack`` scores the node with the most already allocated
highest, and its gpu-scheduler-policy ``binpack`` the device with the least free room that
still fits; keeping whole nodes and devices empty leaves room for the large gangs and whole
devices that arrive later (less fragmentation). Order as fifo.
"""

from __future__ import annotations

from pocgrid.sched.policy import QueuePolicy


class Binpack(QueuePolicy):
    name = "binpack"
    nodes = "fullest"
    device = "tightest"
