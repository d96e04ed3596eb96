"""Policies by name: what ``--policy`` and the live scheduler's config accept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pocgrid.sched.policies.fifo import Fifo
from pocgrid.sched.policy import Policy, QueuePolicy
from pocgrid.sched.quota import QuotaBook

_FACTORIES: Final[dict[str, Callable[[QuotaBook | None], QueuePolicy]]] = {
    "fifo": lambda q: Fifo(q),
}

POLICY_NAMES: Final = tuple(_FACTORIES)


def make_policy(name: str, quotas: QuotaBook | None = None) -> Policy:
    """The policy called ``name``; ValueError naming the known ones otherwise."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    return factory(quotas)
