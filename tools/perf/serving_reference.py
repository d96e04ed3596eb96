"""The current-stack serving reference (shared/data/reference/llm_serving.csv) and its fit.

Each row is predicted from its inputs only, through the same entry point a user calls
(``pocgrid.perf.predict``) under the profile being calibrated: ``max_throughput`` rows as a
max-throughput run (every request queued at t=0), ``poisson_qps`` rows as a Poisson run of the
row's request count, whose mean TTFT / TPOT over all requests is what the source reports.
Nothing here is on a prediction path.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.perf.efficiency import (
    CURRENT_PROFILE,
    EfficiencyData,
    PerfParams,
    StackProfile,
    default_efficiency,
)
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.predict import predict, serving_config
from pocgrid.perf.roofline import FloatArray
from pocgrid.perf.serving import Workload, simulate
from tools.perf.calibrate import nelder_mead

SERVING_FILE: Final = "llm_serving.csv"
POISSON_REQUESTS: Final = 500
"""The online-serving table's runs used 500 requests (its caption)."""

CALIBRATED_SERVING: Final[dict[str, tuple[float, float, bool]]] = {
    "layer_overhead_s": (1e-6, 1e-3, True),
    "low_precision_compute_factor": (0.3, 1.0, False),
    "overlap_exponent": (1.0, 16.0, True),
    "gqa_kv_reread": (0.0, 1.0, False),
    "moe_gemm_efficiency": (0.3, 1.0, False),
    "request_overhead_s": (1e-4, 3e-2, True),
}
"""Parameters of the current-stack profile fitted on llm_serving.csv: (low, high, log)."""


@dataclass(frozen=True, slots=True)
class ServingRow:
    index: int
    chip: str
    devices: int
    tp: int
    model: str
    precision: str
    scenario: str
    qps: float | None
    input_len: int
    output_len: int
    metric: str
    value: float
    source: str

    @property
    def label(self) -> str:
        lengths = f"{self.input_len}/{self.output_len}"
        return f"{self.chip} {self.model} {self.precision} tp{self.tp} {lengths}"


def load_serving_rows(path: Path) -> list[ServingRow]:
    rows: list[ServingRow] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for i, raw in enumerate(csv.DictReader(handle), start=1):
            rows.append(
                ServingRow(
                    index=i,
                    chip=raw["chip"],
                    devices=int(raw["devices"]),
                    tp=int(raw["tp"]),
                    model=raw["model"],
                    precision=raw["precision"],
                    scenario=raw["scenario"],
                    qps=float(raw["qps"]) if raw["qps"] else None,
                    input_len=int(raw["input_len"]),
                    output_len=int(raw["output_len"]),
                    metric=raw["metric"],
                    value=float(raw["value"]),
                    source=raw["source"],
                )
            )
    return rows


def profile_with(profile: StackProfile, params: PerfParams) -> StackProfile:
    return replace(profile, params=params)


def predict_rows(
    rows: Sequence[ServingRow],
    efficiency: EfficiencyData | None = None,
    profile: str = CURRENT_PROFILE,
    *,
    catalog: Catalog | None = None,
    poisson_requests: int = POISSON_REQUESTS,
) -> list[float]:
    """The model's value for each row's metric (one Poisson run serves its TTFT and TPOT)."""
    eff = default_efficiency() if efficiency is None else efficiency
    cat = default_catalog() if catalog is None else catalog
    stack = eff.profile(profile)
    cache: dict[tuple[object, ...], tuple[float, float]] = {}
    out: list[float] = []
    for row in rows:
        if row.scenario == "max_throughput":
            p = predict(
                row.chip, row.devices, row.model, row.precision, None, row.input_len,
                row.output_len, "max_throughput", tp=row.tp, profile=profile,
                efficiency=eff, catalog=cat,
            )  # fmt: skip
            if p.output_tokens_per_s is None:
                raise ValueError(f"row {row.index}: model says it does not fit ({row.label})")
            out.append(p.output_tokens_per_s)
            continue
        if row.scenario != "poisson_qps" or row.qps is None:
            raise ValueError(f"row {row.index}: unknown scenario {row.scenario!r}")
        key = (row.chip, row.model, row.precision, row.tp, row.qps, row.input_len, row.output_len)
        if key not in cache:
            d = LlmDeployment(
                cat.find_chip(row.chip), cat.find_model(row.model), row.precision, row.tp,
                params=stack.params, efficiency=eff,
            )  # fmt: skip
            replicas = row.devices // row.tp
            w = Workload.poisson(
                math.ceil(poisson_requests / replicas), row.qps / replicas, row.input_len,
                row.output_len, 0,
            )  # fmt: skip
            s = simulate(d, w, serving_config(stack, None)).summary()
            cache[key] = (s.ttft_s.mean * 1e3, s.tpot_s.mean * 1e3)
        ttft, tpot = cache[key]
        if row.metric == "ttft_mean_ms":
            out.append(ttft)
        elif row.metric == "tpot_mean_ms":
            out.append(tpot)
        else:
            raise ValueError(f"row {row.index}: unknown metric {row.metric!r}")
    return out


def relative_errors(
    rows: Sequence[ServingRow],
    efficiency: EfficiencyData,
    profile: str = CURRENT_PROFILE,
    *,
    poisson_requests: int = POISSON_REQUESTS,
) -> list[float]:
    """(predicted - measured) / measured per row."""
    preds = predict_rows(rows, efficiency, profile, poisson_requests=poisson_requests)
    return [(p - r.value) / r.value for p, r in zip(preds, rows, strict=True)]


@dataclass(frozen=True, slots=True)
class ServingFit:
    params: PerfParams
    values: dict[str, float]
    loss: float
    evaluations: int


def fit_serving(
    rows: Sequence[ServingRow],
    *,
    efficiency: EfficiencyData | None = None,
    profile: str = CURRENT_PROFILE,
    names: Sequence[str] = tuple(CALIBRATED_SERVING),
    max_evaluations: int = 400,
    poisson_requests: int = POISSON_REQUESTS,
) -> ServingFit:
    """Fit ``names`` of ``profile`` on ``rows`` (mean squared log error, Nelder-Mead from the
    middle of every range, as the static calibration does)."""
    eff = default_efficiency() if efficiency is None else efficiency
    stack = eff.profile(profile)
    base = stack.params

    def value(name: str, z: float) -> float:
        low, high, log = CALIBRATED_SERVING[name]
        s = 1.0 / (1.0 + math.exp(-z))
        if log:
            return math.exp(math.log(low) + s * (math.log(high) - math.log(low)))
        return low + s * (high - low)

    def to_params(z: FloatArray) -> PerfParams:
        return base.with_values(**{n: value(n, float(zi)) for n, zi in zip(names, z, strict=True)})

    evaluations = 0

    def objective(z: FloatArray) -> float:
        nonlocal evaluations
        evaluations += 1
        trial = eff.with_profile(profile_with(stack, to_params(z)))
        preds = predict_rows(rows, trial, profile, poisson_requests=poisson_requests)
        errs = [math.log(p / r.value) for p, r in zip(preds, rows, strict=True)]
        return float(np.mean(np.square(errs)))

    best, loss = nelder_mead(objective, np.zeros(len(names)), max_evaluations=max_evaluations)
    params = to_params(best)
    return ServingFit(params, {n: getattr(params, n) for n in names}, loss, evaluations)
