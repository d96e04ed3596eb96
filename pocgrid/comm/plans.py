"""Collective algorithms as plans: steps of transfers between ranks over a flat buffer.

One plan drives both the data movement (:mod:`pocgrid.comm.communicator` executes the
transfers of its own rank) and the virtual time (:func:`plan_seconds` prices every step with
the alpha-beta model of the links it uses), so the time charged is the time of what moved.

Algorithms (NCCL/Gloo shapes):

- ``ring``: reduce-scatter then all-gather around a ring, 2(p-1) steps of n/p; bandwidth-optimal.
  The ring visits each vendor family's ranks in a row, so it crosses the bridge once per group.
- ``tree``: binomial reduce to the first rank, then binomial broadcast; 2 ceil(log2 p) steps of
  the whole message; latency-optimal for small messages.
- ``hierarchical``: FlagCX's hybrid path: inside each vendor family the native library reduces
  to the family's leader (binomial), the leaders all-reduce over the bridge (ring), and each
  leader broadcasts back inside its family. Only the leaders cross vendor boundaries.
- ``pipeline`` (broadcast): the message in segments down a chain, so every link is busy.

:func:`choose` prices every candidate for the message and the topology and takes the fastest:
the choice is returned with the plan and its modelled time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pocgrid.comm.errors import CommInputError
from pocgrid.comm.topology import Topology
from pocgrid.perf.collective import CollectiveKind

ALGORITHMS: Final = ("ring", "tree", "hierarchical", "pipeline", "local")
PIPELINE_SEGMENT_BYTES: Final = 1 << 20
PIPELINE_MAX_SEGMENTS: Final = 16


@dataclass(frozen=True, slots=True)
class Transfer:
    """Rank ``src`` sends elements [lo, hi) of its buffer to the same range of ``dst``'s."""

    src: int
    dst: int
    lo: int
    hi: int
    reduce: bool
    """True: the receiver combines with the reduction op; False: it overwrites."""


Step = tuple[Transfer, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    kind: CollectiveKind
    algorithm: str
    detail: str
    """What the algorithm does here, e.g. the ring order or the groups and their libraries."""
    steps: tuple[Step, ...]
    elements: int
    """Length of the flat working buffer."""
    itemsize: int

    def transfers_of(self, rank: int) -> list[tuple[int, list[Transfer], list[Transfer]]]:
        """This rank's (step index, sends, receives), skipping steps it has no part in."""
        out: list[tuple[int, list[Transfer], list[Transfer]]] = []
        for i, step in enumerate(self.steps):
            sends = [t for t in step if t.src == rank]
            recvs = [t for t in step if t.dst == rank]
            if sends or recvs:
                out.append((i, sends, recvs))
        return out


@dataclass(frozen=True, slots=True)
class Choice:
    """The plan a collective runs, its modelled time, and what the others would have cost."""

    plan: Plan
    seconds: float
    """Virtual time: the plan's steps plus the native collective inside each rank."""
    candidates: tuple[tuple[str, float], ...]

    @property
    def algorithm(self) -> str:
        return self.plan.algorithm


def bounds(n: int, parts: int) -> list[int]:
    """Chunk boundaries of ``np.array_split`` (the first n % parts chunks one longer)."""
    base, extra = divmod(n, parts)
    out = [0]
    for i in range(parts):
        out.append(out[-1] + base + (1 if i < extra else 0))
    return out


def ring_order(topo: Topology) -> list[int]:
    """Ranks by vendor family (each family contiguous), so the ring crosses few bridges."""
    return [r for group in topo.groups for r in group]


def _nonempty(ts: Sequence[Transfer]) -> Step:
    return tuple(t for t in ts if t.hi > t.lo)


def _ring_reduce_scatter(order: Sequence[int], chunk: Sequence[tuple[int, int]]) -> list[Step]:
    """Position i ends holding the reduced chunk ``chunk[i]``."""
    p = len(order)
    steps: list[Step] = []
    for s in range(p - 1):
        ts = []
        for i in range(p):
            c = (i - s - 1) % p
            lo, hi = chunk[c]
            ts.append(Transfer(order[i], order[(i + 1) % p], lo, hi, True))
        steps.append(_nonempty(ts))
    return steps


def _ring_all_gather(order: Sequence[int], chunk: Sequence[tuple[int, int]]) -> list[Step]:
    """Position i starts holding ``chunk[i]``; everyone ends with every chunk."""
    p = len(order)
    steps: list[Step] = []
    for s in range(p - 1):
        ts = []
        for i in range(p):
            c = (i - s) % p
            lo, hi = chunk[c]
            ts.append(Transfer(order[i], order[(i + 1) % p], lo, hi, False))
        steps.append(_nonempty(ts))
    return steps


def _binomial_reduce(members: Sequence[int], lo: int, hi: int) -> list[Step]:
    k = len(members)
    steps: list[Step] = []
    level = 1
    while level < k:
        ts = [
            Transfer(members[i], members[i - level], lo, hi, True)
            for i in range(k)
            if i % (2 * level) == level
        ]
        steps.append(_nonempty(ts))
        level *= 2
    return steps


def _binomial_broadcast(members: Sequence[int], lo: int, hi: int) -> list[Step]:
    k = len(members)
    steps: list[Step] = []
    level = 1 << max(0, math.ceil(math.log2(k)) - 1) if k > 1 else 0
    while level >= 1:
        ts = [
            Transfer(members[i], members[i + level], lo, hi, False)
            for i in range(0, k, 2 * level)
            if i + level < k
        ]
        steps.append(_nonempty(ts))
        level //= 2
    return steps


def _pipeline_broadcast(members: Sequence[int], n: int, segments: int) -> list[Step]:
    k = len(members)
    seg = bounds(n, segments)
    steps: list[Step] = []
    for t in range(segments + k - 2):
        ts = []
        for i in range(k - 1):
            s = t - i
            if 0 <= s < segments:
                ts.append(Transfer(members[i], members[i + 1], seg[s], seg[s + 1], False))
        steps.append(_nonempty(ts))
    return steps


def _merge(*phases: list[Step]) -> list[Step]:
    """Run phases of disjoint rank sets side by side, step i with step i."""
    depth = max((len(p) for p in phases), default=0)
    return [tuple(t for p in phases if i < len(p) for t in p[i]) for i in range(depth)]


def _plan(
    kind: CollectiveKind, algorithm: str, detail: str, steps: list[Step], n: int, itemsize: int
) -> Plan:
    return Plan(kind, algorithm, detail, tuple(s for s in steps if s), n, itemsize)


def _lib_groups(topo: Topology) -> str:
    return " + ".join(f"{topo.library(g[0])}[{','.join(map(str, g))}]" for g in topo.groups)


def all_reduce_plan(topo: Topology, algorithm: str, n: int, itemsize: int) -> Plan:
    p = topo.size
    if p == 1:
        return _plan("all_reduce", "local", "one rank", [], n, itemsize)
    if algorithm == "ring":
        order = ring_order(topo)
        b = bounds(n, p)
        chunk = [(b[i], b[i + 1]) for i in range(p)]
        steps = _ring_reduce_scatter(order, chunk) + _ring_all_gather(order, chunk)
        return _plan("all_reduce", "ring", f"ring {order}", steps, n, itemsize)
    if algorithm == "tree":
        order = ring_order(topo)
        steps = _binomial_reduce(order, 0, n) + _binomial_broadcast(order, 0, n)
        return _plan(
            "all_reduce", "tree", f"binomial tree rooted at {order[0]}", steps, n, itemsize
        )
    if algorithm == "hierarchical":
        groups = topo.groups
        leaders = [g[0] for g in groups]
        inner_reduce = _merge(*(_binomial_reduce(g, 0, n) for g in groups))
        inner_bcast = _merge(*(_binomial_broadcast(g, 0, n) for g in groups))
        lb = bounds(n, len(leaders))
        chunk = [(lb[i], lb[i + 1]) for i in range(len(leaders))]
        across: list[Step] = []
        if len(leaders) > 1:
            across = _ring_reduce_scatter(leaders, chunk) + _ring_all_gather(leaders, chunk)
        detail = f"native {_lib_groups(topo)}; bridge ring over leaders {leaders}"
        steps = inner_reduce + across + inner_bcast
        return _plan("all_reduce", "hierarchical", detail, steps, n, itemsize)
    raise CommInputError("algorithm", f"all_reduce has no algorithm {algorithm!r}")


def reduce_scatter_plan(topo: Topology, algorithm: str, n: int, itemsize: int) -> Plan:
    """Input of ``n`` = count x p elements; rank r ends with the reduced chunk r."""
    p = topo.size
    if p == 1:
        return _plan("reduce_scatter", "local", "one rank", [], n, itemsize)
    if algorithm != "ring":
        raise CommInputError("algorithm", f"reduce_scatter has no algorithm {algorithm!r}")
    order = ring_order(topo)
    count = n // p
    chunk = [(order[i] * count, (order[i] + 1) * count) for i in range(p)]
    steps = _ring_reduce_scatter(order, chunk)
    return _plan("reduce_scatter", "ring", f"ring {order}", steps, n, itemsize)


def all_gather_plan(topo: Topology, algorithm: str, n: int, itemsize: int) -> Plan:
    """Output of ``n`` = count x p elements; rank r contributes chunk r."""
    p = topo.size
    if p == 1:
        return _plan("all_gather", "local", "one rank", [], n, itemsize)
    if algorithm != "ring":
        raise CommInputError("algorithm", f"all_gather has no algorithm {algorithm!r}")
    order = ring_order(topo)
    count = n // p
    chunk = [(order[i] * count, (order[i] + 1) * count) for i in range(p)]
    steps = _ring_all_gather(order, chunk)
    return _plan("all_gather", "ring", f"ring {order}", steps, n, itemsize)


def broadcast_plan(topo: Topology, algorithm: str, n: int, itemsize: int, root: int) -> Plan:
    p = topo.size
    if p == 1:
        return _plan("broadcast", "local", "one rank", [], n, itemsize)
    order = ring_order(topo)
    order.remove(root)
    members = [root, *order]
    if algorithm == "tree":
        steps = _binomial_broadcast(members, 0, n)
        return _plan("broadcast", "tree", f"binomial tree from {root}", steps, n, itemsize)
    if algorithm == "pipeline":
        segments = max(1, min(PIPELINE_MAX_SEGMENTS, n * itemsize // PIPELINE_SEGMENT_BYTES))
        steps = _pipeline_broadcast(members, n, segments)
        detail = f"chain {members} in {segments} segments"
        return _plan("broadcast", "pipeline", detail, steps, n, itemsize)
    raise CommInputError("algorithm", f"broadcast has no algorithm {algorithm!r}")


def in_rounds(plan: Plan, round_elements: int, max_rounds: int = 64) -> Plan:
    """The same collective as several rounds, each the whole plan over a part of each range.

    NCCL runs its ring over the buffer in chunks rather than in one pass; so does this.
    Round ``r`` moves the r-th part of every range through every step, so a partial sum is
    sent on within a step of a round-sized part (still in cache) instead of waiting behind
    the whole previous chunk on the same link. That is only the same collective when every
    two ranges the plan moves are identical or disjoint (ring plans, trees, the pipeline;
    not the hierarchical plan, whose leaders' chunks lie inside the groups' whole range):
    otherwise, or when one round covers the longest range, the plan is returned as it is.
    The virtual time stays the logical plan's (:func:`plan_seconds`): rounds are how this
    host moves the data, not a different algorithm on the modelled links.
    """
    ranges = sorted({(t.lo, t.hi) for step in plan.steps for t in step})
    if not ranges or round_elements <= 0:
        return plan
    longest = max(hi - lo for lo, hi in ranges)
    rounds = min(max_rounds, -(-longest // round_elements))
    if rounds <= 1 or any(a[1] > b[0] for a, b in itertools.pairwise(ranges)):
        return plan
    steps: list[Step] = []
    for r in range(rounds):
        for step in plan.steps:
            part = []
            for t in step:
                b = bounds(t.hi - t.lo, rounds)
                part.append(Transfer(t.src, t.dst, t.lo + b[r], t.lo + b[r + 1], t.reduce))
            steps.append(_nonempty(part))
    return _plan(plan.kind, plan.algorithm, plan.detail, steps, plan.elements, plan.itemsize)


CANDIDATES: Final[dict[str, tuple[str, ...]]] = {
    "all_reduce": ("ring", "tree", "hierarchical"),
    "reduce_scatter": ("ring",),
    "all_gather": ("ring",),
    "broadcast": ("tree", "pipeline"),
}


def plan_steps_seconds(topo: Topology, plan: Plan) -> float:
    """Alpha-beta time of the plan's steps: each step lasts as long as its slowest transfer."""
    total = 0.0
    for step in plan.steps:
        total += max(topo.link(t.src, t.dst).seconds((t.hi - t.lo) * plan.itemsize) for t in step)
    return total


def plan_seconds(topo: Topology, plan: Plan) -> float:
    """Virtual time of the collective: the native part inside each rank, then the plan's steps."""
    inside = max(
        topo.intra_rank_seconds(plan.kind, r, plan.elements * plan.itemsize)
        for r in range(topo.size)
    )
    return inside + plan_steps_seconds(topo, plan)


def build(
    topo: Topology, kind: CollectiveKind, algorithm: str, n: int, itemsize: int, root: int = 0
) -> Plan:
    if kind == "all_reduce":
        return all_reduce_plan(topo, algorithm, n, itemsize)
    if kind == "reduce_scatter":
        return reduce_scatter_plan(topo, algorithm, n, itemsize)
    if kind == "all_gather":
        return all_gather_plan(topo, algorithm, n, itemsize)
    return broadcast_plan(topo, algorithm, n, itemsize, root)


def choose(
    topo: Topology,
    kind: CollectiveKind,
    n: int,
    itemsize: int,
    *,
    root: int = 0,
    algorithm: str | None = None,
) -> Choice:
    """The fastest algorithm for this message on this topology (or the one asked for)."""
    names: tuple[str, ...]
    if topo.size == 1:
        names = ("local",)
    elif algorithm is not None:
        if algorithm not in CANDIDATES[kind]:
            raise CommInputError(
                "algorithm", f"{kind} runs {', '.join(CANDIDATES[kind])}; got {algorithm!r}"
            )
        names = (algorithm,)
    else:
        names = CANDIDATES[kind]
        if kind == "all_reduce" and all(len(g) == 1 for g in topo.groups):
            # One rank per family: hierarchical would be the flat ring over the same ranks.
            names = ("ring", "tree")
    priced = []
    for name in names:
        plan = build(topo, kind, name, n, itemsize, root)
        priced.append((plan, plan_seconds(topo, plan)))
    best, seconds = min(priced, key=lambda ps: ps[1])
    return Choice(best, seconds, tuple((p.algorithm, s) for p, s in priced))
