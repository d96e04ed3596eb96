"""Performance model: per-operator roofline with calibrated efficiency factors.

Entry points:

- :func:`check_fit` — the one memory-fit model (the adapter's CheckFit answers with it);
- :func:`predict` — one deployment (chip x devices, model, precision, batch, lengths) in the
  ``offline`` (static batch) or ``server`` (continuous batching, Poisson arrivals) scenario;
- :class:`LlmDeployment` + :func:`predict_static` — static-batch costs of one replica;
- :class:`LlmDeployment` + :func:`simulate` — the vLLM-like serving simulator on a virtual
  clock, with per-request TTFT/TPOT/latency and per-token timestamps.

See docs/perf_model.md for the equations, calibration and validation.
"""

from pocgrid.perf.efficiency import (
    Ceiling,
    ChipCeilings,
    EfficiencyData,
    PerfParams,
    default_efficiency,
    default_params,
)
from pocgrid.perf.errors import PerfInputError, UnknownNameInput, UnsupportedInput
from pocgrid.perf.fit import FIT_BATCH, FIT_INPUT_LEN, FIT_OUTPUT_LEN, FitCheck, check_fit
from pocgrid.perf.llm import LlmDeployment, MemoryFit, TransformerShape
from pocgrid.perf.predict import SCENARIOS, Prediction, predict
from pocgrid.perf.roofline import Bound, OpTable, OpTime, op_time
from pocgrid.perf.serving import (
    Percentiles,
    ServingConfig,
    ServingSummary,
    SimResult,
    Workload,
    kv_cache_blocks,
    simulate,
)
from pocgrid.perf.static_batch import StaticBatchResult, predict_static, static_memory_fit

__all__ = [
    "FIT_BATCH",
    "FIT_INPUT_LEN",
    "FIT_OUTPUT_LEN",
    "SCENARIOS",
    "Bound",
    "Ceiling",
    "ChipCeilings",
    "EfficiencyData",
    "FitCheck",
    "LlmDeployment",
    "MemoryFit",
    "OpTable",
    "OpTime",
    "Percentiles",
    "PerfInputError",
    "PerfParams",
    "Prediction",
    "ServingConfig",
    "ServingSummary",
    "SimResult",
    "StaticBatchResult",
    "TransformerShape",
    "UnknownNameInput",
    "UnsupportedInput",
    "Workload",
    "check_fit",
    "default_efficiency",
    "default_params",
    "kv_cache_blocks",
    "op_time",
    "predict",
    "predict_static",
    "simulate",
    "static_memory_fit",
]
