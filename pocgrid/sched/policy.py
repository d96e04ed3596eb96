"""The one scheduling interface, and the round every queue-based policy shares.

``Policy.schedule(queue, pool, now)`` is all the live scheduler and the simulator call: the
same object drives both. A round takes the queued demands in the policy's order and, for each:
refuses what the pool can never hold (``NEVER_FITS``, an error for the caller to report at
submit), asks the quota book, looks for devices the policy's way, and, when none are free,
tries preemption (only of preemptible work: lower priority, or borrowed quota its owner
reclaims). Gang semantics hold by construction: a demand is placed with all its devices or
not at all. What a round decides is applied to the pool at once, so it never double-books.

A policy varies three hooks: ``order`` (who goes first), ``chip_order`` (which chip types to
try, best first) and ``find`` (which devices on a chip).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from pocgrid.sched import fit
from pocgrid.sched.model import (
    WHOLE,
    Decision,
    Demand,
    PendingCode,
    PendingReason,
    Placement,
    Preemption,
)
from pocgrid.sched.pool import Pool
from pocgrid.sched.preemption import VictimChooser
from pocgrid.sched.quota import QuotaBook


class Policy(Protocol):
    """Given the queue, the pool and the time, decide placements (and preemptions)."""

    @property
    def name(self) -> str: ...

    def schedule(self, queue: Sequence[Demand], pool: Pool, now: float) -> Decision: ...


def never_fits(demand: Demand, pool: Pool) -> PendingReason | None:
    """Why the pool can never hold ``demand``, however long it waits; None if it can."""
    chips = [c for c in pool.chips if demand.allows(c)]
    if not chips:
        wanted = ", ".join(sorted(demand.chips))
        return PendingReason(PendingCode.NEVER_FITS, f"no device of chip type {wanted} in the pool")
    largest = max(pool.node_max(c) if demand.single_node else pool.total_devices(c) for c in chips)
    if demand.devices > largest:
        where = "on one node" if demand.single_node else "of one chip type"
        return PendingReason(
            PendingCode.NEVER_FITS,
            f"asks for {demand.devices} devices {where}; the pool has at most {largest}",
        )
    if demand.share_milli < WHOLE:
        memory = max(pool.memory_max(c) for c in chips)
        if demand.memory_gib > memory + 1e-9:
            return PendingReason(
                PendingCode.NEVER_FITS,
                f"asks for {demand.memory_gib:g} GiB on one device; the largest has {memory:g}",
            )
    return None


def default_order(queue: Sequence[Demand]) -> list[Demand]:
    """Priority, then arrival, then id (Kueue's BestEffortFIFO order)."""
    return sorted(queue, key=lambda d: (-d.priority, d.submitted_at, d.job_id))


class QueuePolicy:
    """The shared round. Subclasses set ``name`` and override the hooks."""

    name = "queue"
    nodes: fit.NodePreference = "first"
    device: fit.DevicePreference = "tightest"

    def __init__(
        self, quotas: QuotaBook | None = None, *, preemption: bool = True, strict: bool = False
    ) -> None:
        self.quotas = quotas
        self.preemption = preemption
        self.strict = strict
        """Kueue's StrictFIFO: once a job cannot start, nobody behind it starts either."""

    # -- hooks ------------------------------------------------------------------------------

    def order(self, queue: Sequence[Demand], pool: Pool, now: float) -> Iterable[Demand]:
        return default_order(queue)

    def chip_order(self, demand: Demand, pool: Pool, now: float) -> Sequence[str]:
        if not demand.chips:
            return pool.chips
        return [c for c in pool.chips if c in demand.chips]

    def find(self, demand: Demand, chip: str, pool: Pool, now: float) -> Placement | None:
        return fit.find(demand, chip, pool, self.nodes, self.device)

    # -- the round --------------------------------------------------------------------------

    def place(self, demand: Demand, pool: Pool, now: float) -> Placement | None:
        fraction = demand.share_milli < WHOLE
        for chip in self.chip_order(demand, pool, now):
            # O(1) checks on the index first: most chips of a busy pool fail here
            if fraction:
                if pool.max_free_share(chip) < demand.share_milli:
                    continue
            elif pool.whole_free(chip) < demand.devices:
                continue
            p = self.find(demand, chip, pool, now)
            if p is not None:
                return p
        return None

    def schedule(self, queue: Sequence[Demand], pool: Pool, now: float) -> Decision:
        placements: list[Placement] = []
        preemptions: list[Preemption] = []
        pending: dict[str, PendingReason] = {}
        waiting = {d.tenant for d in queue}
        # Within one round free room only shrinks (until a preemption frees some), so a shape
        # that found no room stays roomless: later jobs of that shape are answered from here.
        failed: dict[tuple[object, ...], PendingReason] = {}
        blocked: PendingReason | None = None
        chooser = VictimChooser(pool, self.quotas)
        never: dict[tuple[object, ...], PendingReason | None] = {}
        for d in self.order(queue, pool, now):
            if blocked is not None:
                pending[d.job_id] = PendingReason(PendingCode.BEHIND, blocked.message)
                continue
            key = (d.chips, d.devices, d.single_node, d.share_milli < WHOLE and d.memory_gib)
            if key in never:
                reason = never[key]
            else:
                reason = never[key] = never_fits(d, pool)
            if reason is None and self.quotas is not None:
                reason = self.quotas.admit(d, pool, waiting)
            if reason is None:
                shape = self._shape(d)
                reason = failed.get(shape)
                if reason is None:
                    placement = self.place(d, pool, now)
                    if placement is None and self.preemption:
                        placement, victims = self._preempt(d, pool, now, chooser)
                        if victims:
                            preemptions.extend(victims)
                            failed.clear()
                    if placement is not None:
                        pool.reserve(d, placement, now)
                        placements.append(placement)
                        continue
                    reason = self._why(d, pool)
                    failed[shape] = reason
            pending[d.job_id] = reason
            if self.strict and reason.code is not PendingCode.NEVER_FITS:
                blocked = PendingReason(
                    PendingCode.BEHIND, f"strict order: waits behind {d.job_id}"
                )
        return Decision(tuple(placements), tuple(preemptions), pending)

    def _shape(self, d: Demand) -> tuple[object, ...]:
        # Preemption depends on priority and, with quotas, on the tenant's standing.
        tenant = d.tenant if self.quotas is not None else ""
        return (d.chips, d.devices, d.share_milli, d.memory_gib, d.single_node, d.priority, tenant)

    def _why(self, d: Demand, pool: Pool) -> PendingReason:
        chips = [c for c in pool.chips if d.allows(c)]
        if d.share_milli == WHOLE and d.devices > 1:
            idle = max(pool.whole_free(c) for c in chips)
            if idle >= d.devices:
                together = max(
                    (len(v) for c in chips for v in pool.whole_free_by_node(c).values()), default=0
                )
                return PendingReason(
                    PendingCode.GANG,
                    f"needs {d.devices} devices together on one node; {idle} idle of one chip "
                    f"type, at most {together} on one node",
                )
            return PendingReason(
                PendingCode.NO_CAPACITY,
                f"needs {d.devices} idle devices of one chip type; at most {idle} are idle",
            )
        best = max(pool.max_free_share(c) for c in chips)
        what = (
            "an idle device" if d.share_milli == WHOLE else f"{d.share_milli / 10:g} % of a device"
        )
        return PendingReason(
            PendingCode.NO_CAPACITY,
            f"needs {what}; the freest allowed device has {best / 10:g} % free",
        )

    # -- preemption -------------------------------------------------------------------------

    def _preempt(
        self, d: Demand, pool: Pool, now: float, chooser: VictimChooser
    ) -> tuple[Placement | None, list[Preemption]]:
        for chip in self.chip_order(d, pool, now):
            victims = chooser.choose(d, chip)
            if not victims:
                continue
            for a, _ in victims:
                pool.release(a.demand.job_id)
            placement = self.find(d, chip, pool, now)
            if placement is None:  # the targeted room was not enough after all (memory)
                for a, _ in victims:
                    pool.reserve(a.demand, a.placement, a.started_at)
                continue
            # Put back every victim the placement does not need.
            used = {s.key for s in placement.slots}
            kept: list[Preemption] = []
            for a, cause in victims:
                if used.isdisjoint(s.key for s in a.placement.slots):
                    pool.reserve(a.demand, a.placement, a.started_at)
                else:
                    kept.append(Preemption(a.demand.job_id, d.job_id, cause))
            return placement, kept
        return None, []
