"""Tenant quotas with borrowing and fair share, after Kueue's ClusterQueues in one cohort.

Each tenant has a guaranteed amount (Kueue's nominal quota) and may borrow beyond it, up to its
borrowing limit, from what the other tenants' guarantees leave idle. Amounts are device
thousandths (``Demand.size_milli``), across chip types. A tenant the book does not name has no
guarantee and borrows like any other (``default``). Borrowed room is taken back by preemption
when its owner needs it (``PreemptionCause.RECLAIM``; the policy decides the victims).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pocgrid.sched.model import Demand, PendingCode, PendingReason
from pocgrid.sched.pool import Pool


@dataclass(frozen=True, slots=True)
class Quota:
    guaranteed_milli: int = 0
    """Device thousandths the tenant can always get back (Kueue nominalQuota)."""
    borrow_limit_milli: int | None = None
    """Most it may hold above the guarantee; None = no limit (Kueue borrowingLimit)."""
    weight: float = 1.0
    """Fair-share weight: a tenant's share is what it holds over its weight."""

    def __post_init__(self) -> None:
        if self.guaranteed_milli < 0:
            raise ValueError("guaranteed_milli must be >= 0")
        if self.borrow_limit_milli is not None and self.borrow_limit_milli < 0:
            raise ValueError("borrow_limit_milli must be >= 0")
        if not self.weight > 0:
            raise ValueError("weight must be > 0")


@dataclass(frozen=True, slots=True)
class QuotaBook:
    tenants: Mapping[str, Quota] = field(default_factory=dict)
    default: Quota = Quota()
    """The quota of a tenant ``tenants`` does not name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenants", MappingProxyType(dict(self.tenants)))

    def quota(self, tenant: str) -> Quota:
        return self.tenants.get(tenant, self.default)

    def protected_milli(self, pool: Pool, waiting: Collection[str], tenant: str) -> int:
        """Guaranteed room that tenants other than ``tenant`` leave idle while they have work
        waiting: theirs to take, so nobody may borrow it."""
        return sum(
            max(0, self.quota(t).guaranteed_milli - pool.tenant_milli(t))
            for t in waiting
            if t != tenant
        )

    def admit(
        self, demand: Demand, pool: Pool, waiting: Collection[str] = ()
    ) -> PendingReason | None:
        """None when quota lets ``demand`` start now; otherwise why not.

        Within its guarantee a tenant is always admitted (capacity permitting). Beyond it the
        tenant borrows: up to its limit, and only room that no other tenant with waiting work
        (``waiting``) is guaranteed, so borrowing takes idle quota, never quota in demand.
        """
        q = self.quota(demand.tenant)
        used = pool.tenant_milli(demand.tenant)
        after = used + demand.size_milli
        if after <= q.guaranteed_milli:
            return None
        borrow = after - q.guaranteed_milli
        if q.borrow_limit_milli is not None and borrow > q.borrow_limit_milli:
            return PendingReason(
                PendingCode.QUOTA,
                f"tenant {demand.tenant} would borrow {borrow / 1000:g} devices over its "
                f"guarantee of {q.guaranteed_milli / 1000:g}; its borrowing limit is "
                f"{q.borrow_limit_milli / 1000:g}",
            )
        protected = self.protected_milli(pool, waiting, demand.tenant)
        free = pool.capacity_milli - pool.used_milli
        if demand.size_milli > free - protected and protected > 0:
            return PendingReason(
                PendingCode.QUOTA,
                f"tenant {demand.tenant} is over its guarantee of {q.guaranteed_milli / 1000:g} "
                f"devices and may borrow only idle quota; {protected / 1000:g} of the "
                f"{free / 1000:g} free devices are guaranteed to tenants with work waiting",
            )
        return None

    def share(self, tenant: str, pool: Pool) -> float:
        """Held room over weight, in guarantees when the tenant has one: lowest goes first."""
        q = self.quota(tenant)
        held = pool.tenant_milli(tenant)
        base = q.guaranteed_milli if q.guaranteed_milli > 0 else 1000
        return held / base / q.weight

    def borrowed_milli(self, tenant: str, pool: Pool) -> int:
        """What the tenant holds beyond its guarantee: what a reclaim may take back."""
        return max(0, pool.tenant_milli(tenant) - self.quota(tenant).guaranteed_milli)
