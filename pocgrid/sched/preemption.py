"""Choosing what to preempt for a demand that finds no free room (device-targeted).

Only preemptible work is ever a victim, for one of two causes: a lower priority than the
demand's (``PRIORITY``), or, when the demand's tenant is still under its guarantee, work of a
tenant that borrows beyond its own (``RECLAIM``, Kueue's reclaimWithinCohort).

The choice looks at devices, not at the running list in some global order: for a fraction of a
device, the one device whose free share plus its victims' shares fits the demand with the
cheapest victims; for whole devices, devices whose every holder is a victim (idle ones cost
nothing), on one node when the demand needs that, cheapest first. Cheap means lowest priority,
then fewest victims, then the latest started (least work since a checkpoint to redo).

A per-round bound (``choose``) answers most hopeless attempts without a scan.
"""

from __future__ import annotations

from pocgrid.sched.model import WHOLE, Demand, PreemptionCause
from pocgrid.sched.pool import Allocation, Device, Pool
from pocgrid.sched.quota import QuotaBook

Victim = tuple[Allocation, PreemptionCause]
_Cost = tuple[int, int, float, float]


class VictimChooser:
    """One round's preemption choices on one pool."""

    def __init__(self, pool: Pool, quotas: QuotaBook | None) -> None:
        self.pool = pool
        self.quotas = quotas
        self._bounds: dict[tuple[str, int], tuple[int, int, int]] = {}

    def _reclaiming(self, d: Demand) -> bool:
        if self.quotas is None:
            return False
        q = self.quotas.quota(d.tenant)
        return self.pool.tenant_milli(d.tenant) + d.size_milli <= q.guaranteed_milli

    def _cause(self, a: Allocation, d: Demand, reclaiming: bool) -> PreemptionCause | None:
        v = a.demand
        if not v.preemptible or v.job_id == d.job_id:
            return None
        if v.priority < d.priority:
            return PreemptionCause.PRIORITY
        if (
            reclaiming
            and v.tenant != d.tenant
            and self.quotas is not None
            and self.quotas.borrowed_milli(v.tenant, self.pool) > 0
        ):
            return PreemptionCause.RECLAIM
        return None

    def _device(self, dev: Device, d: Demand, reclaiming: bool) -> tuple[int, float, list[Victim]]:
        """(share that could be free, memory that could be free, the victims it takes)."""
        share, memory = dev.share_free, dev.memory_free_gib
        victims: list[Victim] = []
        for job_id, slot in dev.holders.items():
            a = self.pool.running[job_id]
            cause = self._cause(a, d, reclaiming)
            if cause is None:
                continue
            share += slot.share_milli
            memory += slot.memory_gib
            victims.append((a, cause))
        return share, memory, victims

    def _bound(self, chip: str, priority: int) -> tuple[int, int, int]:
        """What victims of work at ``priority`` hold on ``chip``, taken once per round: (most
        share on one device, devices they wholly hold, most such plus idle on one node)."""
        key = (chip, priority)
        got = self._bounds.get(key)
        if got is not None:
            return got
        best = whole = 0
        per_node: dict[str, int] = {}
        for dev in self.pool.devices(chip):
            if not dev.healthy:
                continue
            share = 0
            for job_id, slot in dev.holders.items():
                v = self.pool.running[job_id].demand
                if v.preemptible and v.priority < priority:
                    share += slot.share_milli
            best = max(best, share)
            if dev.holders and share + dev.share_free == WHOLE:
                whole += 1
            if share + dev.share_free == WHOLE:
                per_node[dev.node] = per_node.get(dev.node, 0) + 1
        got = (best, whole, max(per_node.values(), default=0))
        self._bounds[key] = got
        return got

    def choose(self, d: Demand, chip: str) -> list[Victim] | None:
        """The victims to stop so ``d`` fits on ``chip``; None when no choice makes room.

        Before any scan, a bound: within a round every job placed before ``d`` has at least
        its priority (rounds go by priority), so no new victim of ``d`` appears; victims' room
        only moves to free room when preempted, and free room only shrinks otherwise. So the
        room taken at the round's first attempt, plus the free room now, bounds what a scan
        could find."""
        reclaiming = self._reclaiming(d)
        if not reclaiming:
            victim_share, victim_whole, node_whole = self._bound(chip, d.priority)
            if victim_share == 0:
                return None
            if d.share_milli < WHOLE:
                if self.pool.max_free_share(chip) + victim_share < d.share_milli:
                    return None
            elif self.pool.whole_free(chip) + victim_whole < d.devices or (
                d.single_node and node_whole < d.devices
            ):
                return None
        if d.share_milli < WHOLE:
            return self._for_fraction(d, chip, reclaiming)
        return self._for_whole(d, chip, reclaiming)

    @staticmethod
    def _cost(victims: list[Victim]) -> _Cost:
        if not victims:
            return (-1, 0, 0.0, 0.0)
        return (
            max(a.demand.priority for a, _ in victims),
            len(victims),
            -max(a.started_at for a, _ in victims),
            -max(a.demand.submitted_at for a, _ in victims),
        )

    @staticmethod
    def _cheapest_first(victims: list[Victim]) -> list[Victim]:
        return sorted(
            victims,
            key=lambda v: (v[0].demand.priority, -v[0].started_at, -v[0].demand.submitted_at),
        )

    def _for_fraction(self, d: Demand, chip: str, reclaiming: bool) -> list[Victim] | None:
        best: tuple[_Cost, list[Victim]] | None = None
        for dev in self.pool.devices(chip):
            if not dev.healthy:
                continue
            share, memory, victims = self._device(dev, d, reclaiming)
            if share < d.share_milli or memory + 1e-9 < d.memory_gib or not victims:
                continue
            # the cheapest prefix of this device's victims that makes room
            free, mem = dev.share_free, dev.memory_free_gib
            taken: list[Victim] = []
            for a, cause in self._cheapest_first(victims):
                if free >= d.share_milli and mem + 1e-9 >= d.memory_gib:
                    break
                slot = dev.holders[a.demand.job_id]
                free += slot.share_milli
                mem += slot.memory_gib
                taken.append((a, cause))
            cost = self._cost(taken)
            if best is None or cost < best[0]:
                best = (cost, taken)
        return None if best is None else best[1]

    def _for_whole(self, d: Demand, chip: str, reclaiming: bool) -> list[Victim] | None:
        # devices that could be wholly free, with what each costs
        by_node: dict[str, list[tuple[_Cost, list[Victim]]]] = {}
        for dev in self.pool.devices(chip):
            if not dev.healthy:
                continue
            share, _, victims = self._device(dev, d, reclaiming)
            if share == WHOLE:
                by_node.setdefault(dev.node, []).append((self._cost(victims), victims))
        if d.single_node:
            options = [sorted(devs, key=lambda cv: cv[0]) for devs in by_node.values()]
            options = [o[: d.devices] for o in options if len(o) >= d.devices]
        else:
            everything = sorted(
                (cv for devs in by_node.values() for cv in devs), key=lambda cv: cv[0]
            )
            options = [everything[: d.devices]] if len(everything) >= d.devices else []
        best: tuple[_Cost, list[Victim]] | None = None
        for chosen in options:
            union: dict[str, Victim] = {}
            for _, vs in chosen:
                for a, cause in vs:
                    union[a.demand.job_id] = (a, cause)
            if not union:
                continue  # would have fit without preemption: not this path
            vlist = list(union.values())
            cost = self._cost(vlist)
            if best is None or cost < best[0]:
                best = (cost, vlist)
        return None if best is None else best[1]
