"""The ``collectives`` work of ``JoinCommunicator``: every collective of the library, run by
this agent's rank on inputs it makes itself (:func:`pocgrid.comm.patterns.pattern`), answered
as digests of its outputs, so that a caller checks the results of agent processes of several
vendors against numpy without the ranks shipping their data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pocgrid.comm.communicator import REDUCE_OPS, CollectiveResult, ReduceOp
from pocgrid.comm.patterns import DTYPES, pattern
from pocgrid.v1 import agent_pb2
from services.agent.collectives import AgentCollectives
from services.core import validation as v
from services.core.errors import InvalidArgument

MAX_SIZES: Final = 16
MAX_ELEMENTS: Final = 16 << 20
"""64 MiB of float32: the largest message the issue's checks ask for."""


@dataclass(frozen=True, slots=True)
class CollectivesSpec:
    sizes: tuple[int, ...]
    dtype: str
    ops: tuple[ReduceOp, ...]
    seed: int

    @property
    def largest_bytes(self) -> int:
        return max(self.sizes) * np.dtype(self.dtype).itemsize


def check_spec(c: agent_pb2.CollectivesCheck) -> CollectivesSpec:
    """The request's ``collectives``, checked (field and rule on INVALID_ARGUMENT)."""
    v.require_range("collectives.sizes (count)", len(c.sizes), 1, MAX_SIZES)
    for n in c.sizes:
        v.require_range("collectives.sizes", n, 1, MAX_ELEMENTS)
    dtype = c.dtype or "float32"
    if dtype not in DTYPES:
        raise InvalidArgument("collectives.dtype", f"must be one of {', '.join(DTYPES)}")
    takes = tuple(op for op in REDUCE_OPS if op != "avg" or dtype.startswith("float"))
    ops: list[ReduceOp] = []
    for op in c.ops:
        match = [o for o in takes if o == op]
        if not match:
            rule = f"must be among {', '.join(takes)} for {dtype}"
            raise InvalidArgument("collectives.ops", rule)
        if match[0] in ops:
            raise InvalidArgument("collectives.ops", "must not repeat an op")
        ops.append(match[0])
    if c.seed < 0:
        raise InvalidArgument("collectives.seed", "must be >= 0")
    return CollectivesSpec(tuple(c.sizes), dtype, tuple(ops) or takes, c.seed)


def _digest(
    collective: str, op: str, size: int, out: npt.NDArray[Any], algorithm: str, virtual_s: float
) -> agent_pb2.CollectiveDigest:
    return agent_pb2.CollectiveDigest(
        collective=collective,
        op=op,
        size=size,
        algorithm=algorithm,
        sha256=hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest(),
        count=out.size,
        virtual_s=virtual_s,
    )


def _of(collective: str, op: str, size: int, res: CollectiveResult) -> agent_pb2.CollectiveDigest:
    return _digest(collective, op, size, res.output, res.algorithm, res.virtual_s)


def run_checks(coll: AgentCollectives, spec: CollectivesSpec) -> list[agent_pb2.CollectiveDigest]:
    """Every collective at every size, in the same order on every rank (they must match)."""
    p, r, seed, dtype = coll.comm.size, coll.rank, spec.seed, spec.dtype
    out: list[agent_pb2.CollectiveDigest] = []
    for n in spec.sizes:
        for op in spec.ops:
            out.append(_of("all_reduce", op, n, coll.all_reduce(pattern(r, n, dtype, seed), op)))
        # Reduce-scatter reduces n (a multiple of p, one element per rank at least) and
        # all-gather gathers it: n is the largest buffer of each call.
        total = max(p, n - n % p)
        res = coll.reduce_scatter(pattern(r, total, dtype, seed), "sum")
        out.append(_of("reduce_scatter", "sum", n, res))
        res = coll.all_gather(pattern(r, total // p, dtype, seed))
        out.append(_of("all_gather", "", n, res))
        for root in sorted({0, p - 1}):
            buf = pattern(root, n, dtype, seed) if r == root else np.zeros(n, dtype=dtype)
            out.append(_of("broadcast", f"root={root}", n, coll.broadcast(buf, root)))
        if p > 1:
            # Around the ring: even ranks send first, odd ones receive first (no deadlock on
            # an odd rank count: rank p-1 and rank 0 are both even then, and 0 sends first).
            nxt, prv = (r + 1) % p, (r - 1) % p
            got = np.empty(n, dtype=dtype)
            if r % 2 == 0:
                seconds = coll.comm.send(pattern(r, n, dtype, seed), nxt)
                seconds += coll.comm.recv(got, prv)
            else:
                seconds = coll.comm.recv(got, prv)
                seconds += coll.comm.send(pattern(r, n, dtype, seed), nxt)
            out.append(_digest("send_recv", "", n, got, "direct", seconds))
        res = coll.comm.barrier()
        out.append(
            agent_pb2.CollectiveDigest(
                collective="barrier", size=n, algorithm=res.algorithm, virtual_s=res.virtual_s
            )
        )
    return out
