"""The public reference measurements (shared/data/reference) and how to predict each row.

Used by calibration and the validation bench only; nothing on a prediction path reads them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.perf.efficiency import EfficiencyData, PerfParams
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.static_batch import predict_static
from tools.shared_data import shared_path

ENV_REFERENCE_DIR: Final = "POCGRID_REFERENCE_DIR"
STATIC_BATCH_FILE: Final = "llm_static_batch.csv"

METRIC_THROUGHPUT: Final = "output_tokens_per_s_per_device"
METRIC_TTFT: Final = "first_token_latency_ms"


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """One row of llm_static_batch.csv."""

    index: int
    """1-based row number in the CSV (header excluded)."""
    chip: str
    devices: int
    model: str
    precision: str
    batch: int
    tp: int
    input_len: int
    output_len: int
    metric: str
    value: float
    source: str

    @property
    def label(self) -> str:
        return f"{self.chip} {self.model} {self.precision} b{self.batch} tp{self.tp}"


def reference_dir() -> Path:
    """``$POCGRID_REFERENCE_DIR`` or ``shared/data/reference`` (``tools.shared_data``)."""
    env = os.environ.get(ENV_REFERENCE_DIR)
    if env:
        return Path(env)
    return shared_path("data", "reference")


def load_static_rows(path: Path | None = None) -> list[ReferenceRow]:
    file = (reference_dir() / STATIC_BATCH_FILE) if path is None else path
    rows: list[ReferenceRow] = []
    with file.open(newline="", encoding="utf-8") as handle:
        for i, raw in enumerate(csv.DictReader(handle), start=1):
            rows.append(
                ReferenceRow(
                    index=i,
                    chip=raw["chip"],
                    devices=int(raw["devices"]),
                    model=raw["model"],
                    precision=raw["precision"],
                    batch=int(raw["batch"]),
                    tp=int(raw["tp"]),
                    input_len=int(raw["input_len"]),
                    output_len=int(raw["output_len"]),
                    metric=raw["metric"],
                    value=float(raw["value"]),
                    source=raw["source"],
                )
            )
    return rows


def predict_row(
    row: ReferenceRow,
    *,
    params: PerfParams | None = None,
    efficiency: EfficiencyData | None = None,
    catalog: Catalog | None = None,
) -> float:
    """The model's value for ``row``'s metric, from the row's inputs only."""
    cat = default_catalog() if catalog is None else catalog
    deployment = LlmDeployment(
        cat.find_chip(row.chip),
        cat.model(row.model),
        row.precision,
        row.tp,
        params=params,
        efficiency=efficiency,
    )
    replicas = row.devices // row.tp
    result = predict_static(deployment, row.batch // replicas, row.input_len, row.output_len)
    if row.metric == METRIC_THROUGHPUT:
        tokens_per_s = result.output_tokens_per_s
        if tokens_per_s is None:
            raise ValueError(f"row {row.index}: model says it does not fit ({row.label})")
        return tokens_per_s * replicas / row.devices
    if row.metric == METRIC_TTFT:
        if result.ttft_s is None:
            raise ValueError(f"row {row.index}: model says it does not fit ({row.label})")
        return result.ttft_s * 1e3
    raise ValueError(f"row {row.index}: unknown metric {row.metric!r}")


def relative_errors(
    rows: Sequence[ReferenceRow],
    *,
    params: PerfParams | None = None,
    efficiency: EfficiencyData | None = None,
) -> list[float]:
    """(predicted - measured) / measured per row."""
    return [
        (predict_row(r, params=params, efficiency=efficiency) - r.value) / r.value for r in rows
    ]
