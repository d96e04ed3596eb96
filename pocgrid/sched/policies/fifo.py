"""``fifo``: first come, first served, blind to chip differences (the baseline).

Kueue's BestEffortFIFO (priority, then arrival; a job that cannot start does not hold back the
ones behind it) or, with ``strict=True``, StrictFIFO. Devices: the first allowed chip type in
pool order with room, the first node in pool order with enough idle devices, and for a fraction
the device whose free share fits it most tightly. This is the heterogeneity-unaware baseline
that Gavel (Narayanan et al., OSDI '20) compares against.
"""

from __future__ import annotations

from pocgrid.sched.policy import QueuePolicy


class Fifo(QueuePolicy):
    name = "fifo"
    nodes = "first"
    device = "tightest"
