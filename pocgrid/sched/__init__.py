"""Scheduling as a pure library: demands, the pool, quotas, and the policies that place work.

No I/O and no service imports: the live scheduler (services/scheduler) and the trace-replay
simulator (``pocgrid sched replay``) drive the same ``Policy`` objects. See docs/scheduling.md.
"""

from pocgrid.sched.model import (
    JOB_KINDS,
    WHOLE,
    Decision,
    Demand,
    DemandError,
    DeviceKey,
    JobKind,
    PendingCode,
    PendingReason,
    Placement,
    Preemption,
    PreemptionCause,
    Slot,
)
from pocgrid.sched.policy import Policy, QueuePolicy, never_fits
from pocgrid.sched.pool import Allocation, Device, Pool, PoolError
from pocgrid.sched.quota import Quota, QuotaBook
from pocgrid.sched.registry import POLICY_NAMES, make_policy

__all__ = [
    "JOB_KINDS",
    "POLICY_NAMES",
    "WHOLE",
    "Allocation",
    "Decision",
    "Demand",
    "DemandError",
    "Device",
    "DeviceKey",
    "JobKind",
    "PendingCode",
    "PendingReason",
    "Placement",
    "Policy",
    "Pool",
    "PoolError",
    "Preemption",
    "PreemptionCause",
    "QueuePolicy",
    "Quota",
    "QuotaBook",
    "Slot",
    "make_policy",
    "never_fits",
]
