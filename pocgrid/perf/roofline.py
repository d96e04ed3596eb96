"""Per-operator roofline: ``t = max(flops/C, bytes/M, comm/N) + overhead``.

An :class:`OpTable` holds, for a fixed deployment, every operator's FLOPs, memory bytes and
communication bytes as *linear* functions of a small work-feature vector (tokens in the step,
attended context, ...). Evaluating a step is then three small matrix products and a max, so
the static predictor and the serving simulator can price thousands of steps without a Python
loop over operators. The same table answers "which term bound it" for reporting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


class Bound(StrEnum):
    """Which roofline term set an operator's (or a step's) time."""

    COMPUTE = "compute"
    MEMORY = "memory"
    COMMUNICATION = "communication"
    OVERHEAD = "overhead"
    """Fixed per-step costs (kernel launches, collective latency) exceeded every roofline term."""


_BOUND_ORDER: tuple[Bound, ...] = (Bound.COMPUTE, Bound.MEMORY, Bound.COMMUNICATION)


@dataclass(frozen=True, slots=True)
class OpTime:
    """One operator's time and the term that bound it."""

    name: str
    seconds: float
    bound: Bound


def op_time(
    *,
    flops: float,
    bytes_moved: float,
    comm_bytes: float,
    compute_flops_per_s: float,
    memory_bytes_per_s: float,
    link_bytes_per_s: float,
    overhead_s: float = 0.0,
    name: str = "op",
) -> OpTime:
    """The roofline time of a single operator (scalar form of :meth:`OpTable.evaluate`)."""
    terms = (
        flops / compute_flops_per_s if flops else 0.0,
        bytes_moved / memory_bytes_per_s if bytes_moved else 0.0,
        comm_bytes / link_bytes_per_s if comm_bytes else 0.0,
    )
    worst = max(range(3), key=lambda i: terms[i])
    bound = _BOUND_ORDER[worst] if terms[worst] > 0.0 else Bound.OVERHEAD
    return OpTime(name, terms[worst] + overhead_s, bound)


@dataclass(frozen=True, slots=True)
class StepTimes:
    """Evaluation of an :class:`OpTable` over one or more steps (columns)."""

    seconds: FloatArray
    """Total time per step, shape (steps,)."""
    by_bound: dict[Bound, FloatArray]
    """Time per step attributed to each bound (operators summed by the term that bound them;
    fixed overheads under OVERHEAD)."""

    def dominant_bound(self) -> Bound:
        """The bound that accounts for most of the time over all evaluated steps."""
        totals = {bound: float(t.sum()) for bound, t in self.by_bound.items()}
        return max(totals, key=lambda b: totals[b])


class OpTable:
    """Operators of one deployment as linear functions of a feature vector.

    Row ``i`` of ``flops``/``bytes_moved``/``comm_bytes`` holds operator ``i``'s coefficients
    (per device, summed over the layers the operator appears in); ``ceilings`` gives each
    operator its own compute rate (GEMMs run at the weight precision, attention at 16 bits),
    memory rate and link rate.
    """

    __slots__ = (
        "_inv_compute",
        "_inv_link",
        "_inv_memory",
        "bytes_moved",
        "comm_bytes",
        "compute_flops_per_s",
        "features",
        "fixed_overhead_s",
        "flops",
        "link_bytes_per_s",
        "memory_bytes_per_s",
        "names",
        "op_overhead_s",
    )

    def __init__(
        self,
        *,
        names: Sequence[str],
        features: Sequence[str],
        flops: FloatArray,
        bytes_moved: FloatArray,
        comm_bytes: FloatArray,
        compute_flops_per_s: FloatArray,
        memory_bytes_per_s: FloatArray,
        link_bytes_per_s: FloatArray,
        op_overhead_s: FloatArray,
        fixed_overhead_s: float,
    ) -> None:
        shape = (len(names), len(features))
        for label, matrix in (("flops", flops), ("bytes", bytes_moved), ("comm", comm_bytes)):
            if matrix.shape != shape:
                raise ValueError(f"{label} matrix has shape {matrix.shape}, expected {shape}")
        for label, vec in (
            ("compute", compute_flops_per_s),
            ("memory", memory_bytes_per_s),
            ("link", link_bytes_per_s),
        ):
            if vec.shape != (len(names),) or not np.all(vec > 0):
                raise ValueError(f"{label} ceilings must be positive, one per operator")
        self.names = tuple(names)
        self.features = tuple(features)
        self.flops = flops
        self.bytes_moved = bytes_moved
        self.comm_bytes = comm_bytes
        self.compute_flops_per_s = compute_flops_per_s
        self.memory_bytes_per_s = memory_bytes_per_s
        self.link_bytes_per_s = link_bytes_per_s
        self.op_overhead_s = op_overhead_s
        self.fixed_overhead_s = fixed_overhead_s
        # Pre-divided so evaluation is matmul + max only (the simulator's inner loop).
        self._inv_compute = (flops.T / compute_flops_per_s).T
        self._inv_memory = (bytes_moved.T / memory_bytes_per_s).T
        self._inv_link = (comm_bytes.T / link_bytes_per_s).T

    def op_seconds(self, x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Compute, memory and communication time per operator: arrays (ops,) or (ops, steps)."""
        return self._inv_compute @ x, self._inv_memory @ x, self._inv_link @ x

    def seconds(self, x: FloatArray) -> float:
        """Time of one step with feature vector ``x`` (the fast path)."""
        c, m, n = self.op_seconds(x)
        return float(np.maximum(np.maximum(c, m), n).sum()) + self.total_overhead_s

    @property
    def total_overhead_s(self) -> float:
        return float(self.op_overhead_s.sum()) + self.fixed_overhead_s

    def evaluate(self, x: FloatArray) -> StepTimes:
        """Times of many steps at once; ``x`` has shape (features, steps)."""
        if x.ndim != 2 or x.shape[0] != len(self.features):
            raise ValueError(f"features must have shape ({len(self.features)}, steps)")
        c, m, n = self.op_seconds(x)
        best = np.maximum(np.maximum(c, m), n)
        # Ties go to compute, then memory (the order of _BOUND_ORDER).
        is_compute = c >= best
        is_memory = ~is_compute & (m >= best)
        is_comm = ~is_compute & ~is_memory
        overhead = np.full(x.shape[1], self.total_overhead_s)
        by_bound: dict[Bound, FloatArray] = {
            Bound.COMPUTE: (best * is_compute).sum(axis=0),
            Bound.MEMORY: (best * is_memory).sum(axis=0),
            Bound.COMMUNICATION: (best * is_comm).sum(axis=0),
            Bound.OVERHEAD: overhead,
        }
        return StepTimes(seconds=best.sum(axis=0) + overhead, by_bound=by_bound)

    def breakdown(self, x: FloatArray) -> list[OpTime]:
        """Per-operator times for one step, for reports and tests."""
        c, m, n = self.op_seconds(x)
        out: list[OpTime] = []
        for i, name in enumerate(self.names):
            t = op_time(
                flops=float(c[i]),
                bytes_moved=float(m[i]),
                comm_bytes=float(n[i]),
                compute_flops_per_s=1.0,
                memory_bytes_per_s=1.0,
                link_bytes_per_s=1.0,
                overhead_s=float(self.op_overhead_s[i]),
                name=name,
            )
            out.append(t)
        return out
