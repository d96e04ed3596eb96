"""The job x chip speed matrix (``Demand.speed``), from the performance model.

Two sources, one shape (speed relative to a reference chip, work per second per device):

- ``relative_speeds``: measured or estimated throughputs per chip type (the adapter's
  tokens/s per device for an LLM job, from ``pocgrid.perf``), divided by the reference's.
- ``roofline_speeds``: a job known only by its arithmetic intensity (FLOPs per byte of memory
  traffic), timed on each chip by the performance model's roofline with its achieved ceilings
  (``EfficiencyData.ceilings``: measured or spec-derived GEMM rate and memory bandwidth) and
  its calibrated overlap exponent. A compute-bound job (high intensity) runs as the chips'
  FLOP rates compare, a memory-bound one as their bandwidths do: the reason the best chip
  differs between jobs, which is what heterogeneity-aware scheduling exploits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from pocgrid.catalog import Chip
from pocgrid.perf import default_efficiency
from pocgrid.perf.roofline import combine_terms

FloatArray = NDArray[np.float64]

_SIXTEEN_BIT = ("fp16", "bf16")


def relative_speeds(throughput: Mapping[str, float], reference: str) -> dict[str, float]:
    """Each chip's throughput over the reference chip's (ValueError without a positive one)."""
    ref = throughput.get(reference)
    if ref is None or not ref > 0:
        raise ValueError(f"reference chip {reference}: no positive throughput")
    return {chip: t / ref for chip, t in throughput.items() if t > 0}


def _unit_times(intensity: FloatArray, chip: Chip) -> FloatArray:
    """Seconds per byte of traffic (with ``intensity`` FLOPs per byte) on ``chip``."""
    eff = default_efficiency()
    precision = next((p for p in _SIXTEEN_BIT if chip.peak(p) is not None), None)
    if precision is None:
        raise ValueError(f"chip {chip.name}: no 16-bit peak in the catalogue")
    ceilings = eff.ceilings(chip, precision)
    compute = intensity / ceilings.gemm.rate
    memory = np.full_like(intensity, 1.0 / ceilings.memory.rate)
    times: FloatArray = combine_terms(
        compute, memory, np.zeros_like(intensity), eff.params.overlap_exponent
    )
    return times


def roofline_speeds(
    intensity: Sequence[float] | FloatArray, chips: Sequence[Chip], reference: Chip
) -> dict[str, FloatArray]:
    """Chip slug -> each job's speed on it relative to ``reference`` (one entry per job)."""
    x = np.asarray(intensity, dtype=np.float64)
    if x.size and not (x > 0).all():
        raise ValueError("arithmetic intensity must be > 0")
    ref = _unit_times(x, reference)
    return {chip.name: ref / _unit_times(x, chip) for chip in chips}
