"""Fitting the model's global parameters to the reference rows.

Only six global parameters are fitted (``CALIBRATED``); every per-chip factor comes from
FlagPerf measurements or fleet defaults and is never fitted to a reference row. The fit
minimises the mean squared log error of the predictions with a deterministic Nelder-Mead
search that starts from the middle of each parameter's plausible range, so a parameter the
fitted rows say nothing about stays at that neutral value (this keeps held-out checks honest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from pocgrid.perf.efficiency import EfficiencyData, PerfParams, default_efficiency
from pocgrid.perf.roofline import FloatArray
from tools.perf.reference import ReferenceRow, predict_row


@dataclass(frozen=True, slots=True)
class ParamRange:
    low: float
    high: float
    log_scale: bool
    """Search in log space (times spanning decades)."""

    def value(self, z: float) -> float:
        # A logistic map keeps every trial inside the range without constrained search.
        s = 1.0 / (1.0 + math.exp(-z))
        if self.log_scale:
            return math.exp(math.log(self.low) + s * (math.log(self.high) - math.log(self.low)))
        return self.low + s * (self.high - self.low)


CALIBRATED: Final[dict[str, ParamRange]] = {
    "layer_overhead_s": ParamRange(1e-6, 1e-3, log_scale=True),
    "collective_latency_s": ParamRange(1e-6, 1e-3, log_scale=True),
    "low_precision_compute_factor": ParamRange(0.3, 1.0, log_scale=False),
    "default_memory_efficiency": ParamRange(0.5, 0.95, log_scale=False),
    "overlap_exponent": ParamRange(1.0, 16.0, log_scale=True),
    "gqa_kv_reread": ParamRange(0.0, 1.0, log_scale=False),
}
"""Fitted parameters and the ranges a physically plausible value lies in."""

MAX_EVALUATIONS: Final = 1500
TOLERANCE: Final = 1e-10


@dataclass(frozen=True, slots=True)
class FitResult:
    params: PerfParams
    values: dict[str, float]
    loss: float
    evaluations: int


def log_loss(rows: Sequence[ReferenceRow], params: PerfParams, efficiency: EfficiencyData) -> float:
    """Mean squared log ratio predicted/measured: symmetric in over/under-prediction."""
    errs = [math.log(predict_row(r, params=params, efficiency=efficiency) / r.value) for r in rows]
    return float(np.mean(np.square(errs)))


def fit(
    rows: Sequence[ReferenceRow],
    *,
    efficiency: EfficiencyData | None = None,
    names: Sequence[str] = tuple(CALIBRATED),
) -> FitResult:
    """Fit ``names`` (a subset of CALIBRATED) on ``rows``; other parameters stay as shipped."""
    if not rows:
        raise ValueError("rows: need at least one reference row to fit")
    eff = default_efficiency() if efficiency is None else efficiency
    base = eff.params
    ranges = [CALIBRATED[n] for n in names]

    def to_params(z: FloatArray) -> PerfParams:
        values = {n: r.value(float(zi)) for n, r, zi in zip(names, ranges, z, strict=True)}
        return base.with_values(**values)

    evaluations = 0

    def objective(z: FloatArray) -> float:
        nonlocal evaluations
        evaluations += 1
        return log_loss(rows, to_params(z), eff)

    best, loss = nelder_mead(objective, np.zeros(len(names)))
    params = to_params(best)
    return FitResult(
        params=params,
        values={n: getattr(params, n) for n in names},
        loss=loss,
        evaluations=evaluations,
    )


def nelder_mead(
    f: Callable[[FloatArray], float],
    x0: FloatArray,
    *,
    step: float = 1.0,
    max_evaluations: int = MAX_EVALUATIONS,
    tolerance: float = TOLERANCE,
) -> tuple[FloatArray, float]:
    """Plain Nelder-Mead (reflection 1, expansion 2, contraction and shrink 1/2).

    Deterministic for a given start, which the bench relies on to print the same figures on
    every run; numpy only, as scipy is not a dependency of the project.
    """
    n = x0.shape[0]
    simplex = [x0.astype(np.float64)]
    for k in range(n):
        vertex = x0.astype(np.float64).copy()
        vertex[k] += step
        simplex.append(vertex)
    values = [f(v) for v in simplex]
    used = len(values)
    while used < max_evaluations:
        order = np.argsort(values, kind="stable")
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if values[-1] - values[0] <= tolerance:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        worst = simplex[-1]
        reflected = centroid + (centroid - worst)
        f_r = f(reflected)
        used += 1
        if f_r < values[0]:
            expanded = centroid + 2.0 * (centroid - worst)
            f_e = f(expanded)
            used += 1
            simplex[-1], values[-1] = (expanded, f_e) if f_e < f_r else (reflected, f_r)
        elif f_r < values[-2]:
            simplex[-1], values[-1] = reflected, f_r
        else:
            contracted = centroid + 0.5 * (worst - centroid)
            f_c = f(contracted)
            used += 1
            if f_c < values[-1]:
                simplex[-1], values[-1] = contracted, f_c
            else:
                for i in range(1, n + 1):
                    simplex[i] = simplex[0] + 0.5 * (simplex[i] - simplex[0])
                    values[i] = f(simplex[i])
                    used += 1
    i_best = int(np.argmin(values))
    return simplex[i_best], values[i_best]
