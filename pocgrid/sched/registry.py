"""Policies by name: what ``--policy`` and the live scheduler's config accept."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from pocgrid.sched.policies.binpack import Binpack
from pocgrid.sched.policies.cost import Cost
from pocgrid.sched.policies.fifo import Fifo
from pocgrid.sched.policies.hetero import Hetero
from pocgrid.sched.policies.spread import Spread
from pocgrid.sched.policy import QueuePolicy
from pocgrid.sched.quota import QuotaBook

_Factory = Callable[[QuotaBook | None, Mapping[str, float]], QueuePolicy]

_FACTORIES: Final[dict[str, _Factory]] = {
    "fifo": lambda q, _p: Fifo(q),
    "binpack": lambda q, _p: Binpack(q),
    "spread": lambda q, _p: Spread(q),
    "hetero": lambda q, _p: Hetero(q),
    "cost": lambda q, p: Cost(p, q),
}

POLICY_NAMES: Final = tuple(_FACTORIES)


def make_policy(
    name: str, quotas: QuotaBook | None = None, prices: Mapping[str, float] | None = None
) -> QueuePolicy:
    """The policy called ``name``; ValueError naming the known ones otherwise. ``prices``
    (per device-hour by chip type) is what ``cost`` ranks chip types by."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    return factory(quotas, prices or {})
