"""Per-operator roofline: ``t = ||(flops/C, bytes/M, comm/N)||_k + overhead``.

The three terms are combined by a p-norm with exponent ``k`` (``overlap_exponent``). As
``k -> inf`` it is the classic roofline ``max(...)``: compute, memory traffic and communication
overlap perfectly and the slowest alone sets the time. Real kernels overlap them imperfectly,
worst near the ridge point where the terms are equal (a 128-row GEMM is neither compute- nor
bandwidth-saturated); a finite ``k`` charges for that and changes nothing where one term
dominates. ``k = 1`` would be no overlap at all (the sum). ``k`` is a calibrated global
parameter (docs/perf_model.md).

An :class:`OpTable` holds, for a fixed deployment, every operator's FLOPs, memory bytes and
communication bytes as *linear* functions of a small work-feature vector (tokens in the step,
attended context, ...). Evaluating a step is then one small matrix product and a p-norm, so
the static predictor and the serving simulator can price thousands of steps without a Python
loop over operators. The same table answers "which term bound it" (the largest term) for
reporting.
"""

from __future__ import annotations

import math
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


MAX_FINITE_OVERLAP_EXPONENT = 32.0
"""Above this use ``inf``: seconds to the 32nd power stay inside float64 for any step time
between 1e-9 s and 1e9 s, so the p-norm needs no rescaling on the simulator's hot path."""


def check_overlap_exponent(k: float) -> None:
    if not (k == math.inf or 1.0 <= k <= MAX_FINITE_OVERLAP_EXPONENT):
        raise ValueError(
            f"overlap_exponent must be in [1, {MAX_FINITE_OVERLAP_EXPONENT:g}] or inf, got {k}"
        )


def combine_terms(
    compute: FloatArray, memory: FloatArray, comm: FloatArray, overlap_exponent: float
) -> FloatArray:
    """An operator's time from its three roofline terms (arrays of one shape)."""
    if math.isinf(overlap_exponent):
        return np.maximum(np.maximum(compute, memory), comm)
    k = overlap_exponent
    total: FloatArray = (compute**k + memory**k + comm**k) ** (1.0 / k)
    return total


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
    overlap_exponent: float = math.inf,
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
    check_overlap_exponent(overlap_exponent)
    c, m, n = (np.array([t], dtype=np.float64) for t in terms)
    seconds = float(combine_terms(c, m, n, overlap_exponent)[0])
    return OpTime(name, seconds + overhead_s, bound)


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
        "_inv_terms",
        "_total_overhead_s",
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
        "overlap_exponent",
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
        overlap_exponent: float = math.inf,
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
        check_overlap_exponent(overlap_exponent)
        self.overlap_exponent = overlap_exponent
        # Pre-divided and stacked (compute rows, then memory, then link) so a step is one
        # matrix product and the combine: this is the serving simulator's inner loop.
        self._inv_terms = np.vstack(
            [
                (flops.T / compute_flops_per_s).T,
                (bytes_moved.T / memory_bytes_per_s).T,
                (comm_bytes.T / link_bytes_per_s).T,
            ]
        )
        self._total_overhead_s = float(op_overhead_s.sum()) + fixed_overhead_s

    def op_seconds(self, x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Compute, memory and communication time per operator: arrays (ops,) or (ops, steps)."""
        terms = self._inv_terms @ x
        ops = len(self.names)
        return terms[:ops], terms[ops : 2 * ops], terms[2 * ops :]

    def seconds(self, x: FloatArray) -> float:
        """Time of one step with feature vector ``x`` (the fast path: the same sum as
        :meth:`evaluate`, without attributing it to bounds)."""
        terms = self._inv_terms @ x
        ops = len(self.names)
        k = self.overlap_exponent
        if math.isinf(k):
            worst = np.maximum(np.maximum(terms[:ops], terms[ops : 2 * ops]), terms[2 * ops :])
            return float(worst.sum()) + self._total_overhead_s
        np.power(terms, k, out=terms)
        per_op = terms[:ops] + terms[ops : 2 * ops] + terms[2 * ops :]
        return float(np.power(per_op, 1.0 / k, out=per_op).sum()) + self._total_overhead_s

    @property
    def total_overhead_s(self) -> float:
        return self._total_overhead_s

    def evaluate(self, x: FloatArray) -> StepTimes:
        """Times of many steps at once; ``x`` has shape (features, steps)."""
        if x.ndim != 2 or x.shape[0] != len(self.features):
            raise ValueError(f"features must have shape ({len(self.features)}, steps)")
        c, m, n = self.op_seconds(x)
        worst = np.maximum(np.maximum(c, m), n)
        op = combine_terms(c, m, n, self.overlap_exponent)
        # An operator's whole time goes to its largest term; ties go to compute, then memory
        # (the order of _BOUND_ORDER).
        is_compute = c >= worst
        is_memory = ~is_compute & (m >= worst)
        is_comm = ~is_compute & ~is_memory
        overhead = np.full(x.shape[1], self.total_overhead_s)
        by_bound: dict[Bound, FloatArray] = {
            Bound.COMPUTE: (op * is_compute).sum(axis=0),
            Bound.MEMORY: (op * is_memory).sum(axis=0),
            Bound.COMMUNICATION: (op * is_comm).sum(axis=0),
            Bound.OVERHEAD: overhead,
        }
        return StepTimes(seconds=op.sum(axis=0) + overhead, by_bound=by_bound)

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
                overlap_exponent=self.overlap_exponent,
                name=name,
            )
            out.append(t)
        return out
