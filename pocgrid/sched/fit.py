"""Finding devices for one demand on one chip type, with a packing preference.

The preferences are HAMi's two levels: which node (``first`` in pool order, the ``fullest`` that
still fits = binpack, the ``emptiest`` = spread) and which device on it (the ``tightest`` free
share that fits = binpack, the ``loosest`` = spread). Every search reads the pool's index, so its
cost grows with distinct free levels and nodes, not with devices.
"""

from __future__ import annotations

import bisect
from typing import Literal

from pocgrid.sched.model import WHOLE, Demand, Placement
from pocgrid.sched.pool import Pool

NodePreference = Literal["first", "fullest", "emptiest"]
DevicePreference = Literal["tightest", "loosest"]


def find(
    demand: Demand,
    chip: str,
    pool: Pool,
    nodes: NodePreference = "first",
    device: DevicePreference = "tightest",
) -> Placement | None:
    """A placement of ``demand`` on ``chip`` devices, or None when it does not fit now."""
    if demand.share_milli < WHOLE:
        return _fraction(demand, chip, pool, device)
    return _whole(demand, chip, pool, nodes)


def _fraction(demand: Demand, chip: str, pool: Pool, device: DevicePreference) -> Placement | None:
    levels = pool.free_levels(chip)
    start = bisect.bisect_left(levels, demand.share_milli)
    if start == len(levels):
        return None
    order = levels[start:] if device == "tightest" else reversed(levels[start:])
    for level in order:
        if level == WHOLE and device == "loosest":
            # an idle device on the emptiest node: spreading at node level too
            keys = _idle_by_emptiest_node(chip, pool)
        else:
            keys = list(pool.at_level(chip, level))
        for key in keys:
            d = pool.device(key)
            if d.memory_free_gib + 1e-9 >= demand.memory_gib:
                return Placement(demand.job_id, chip, (pool.slot_for(demand, d),))
    return None


def _idle_by_emptiest_node(chip: str, pool: Pool) -> list[tuple[str, int]]:
    by_node = pool.whole_free_by_node(chip)
    node = max(by_node, key=lambda n: len(by_node[n]))
    return [(node, i) for i in by_node[node]]


def _whole(demand: Demand, chip: str, pool: Pool, nodes: NodePreference) -> Placement | None:
    n = demand.devices
    if pool.whole_free(chip) < n:
        return None
    by_node = pool.whole_free_by_node(chip)
    node = _pick_node(by_node, n, nodes)
    if node is not None:
        indices = list(by_node[node])[:n]
        slots = tuple(pool.slot_for(demand, pool.device((node, i))) for i in indices)
        return Placement(demand.job_id, chip, slots)
    if demand.single_node:
        return None
    # A gang across nodes: fewest nodes first (largest groups), so its collectives cross as
    # few node links as they can.
    groups = sorted(by_node.items(), key=lambda kv: -len(kv[1]))
    picked: list[tuple[str, int]] = []
    for node_name, free in groups:
        for i in free:
            picked.append((node_name, i))
            if len(picked) == n:
                slots = tuple(pool.slot_for(demand, pool.device(k)) for k in picked)
                return Placement(demand.job_id, chip, slots)
    return None


def _pick_node(by_node: dict[str, dict[int, None]], n: int, pref: NodePreference) -> str | None:
    if pref == "first":
        for node, free in by_node.items():
            if len(free) >= n:
                return node
        return None
    best: str | None = None
    best_free = 0
    for node, free in by_node.items():
        k = len(free)
        if k < n:
            continue
        if (
            best is None
            or (pref == "fullest" and k < best_free)
            or (pref == "emptiest" and k > best_free)
        ):
            best, best_free = node, k
            if pref == "fullest" and k == n:
                break  # an exact fit: nothing is fuller
    return best
