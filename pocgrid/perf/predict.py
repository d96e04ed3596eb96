"""The prediction entry point used by the agent, adapter, scheduler, evaluator and CLI."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Final

from pocgrid.catalog import (
    PRECISIONS,
    Catalog,
    Chip,
    Model,
    UnknownChipError,
    UnknownModelError,
    default_catalog,
)
from pocgrid.perf.efficiency import GIB_BYTES
from pocgrid.perf.errors import PerfInputError, UnknownNameInput
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.roofline import Bound
from pocgrid.perf.serving import ServingConfig, Workload, kv_cache_blocks, simulate
from pocgrid.perf.static_batch import predict_static

SCENARIOS: Final = ("offline", "server")
DEFAULT_SERVER_REQUESTS: Final = 1000


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a deployment would do; throughput is for the whole deployment.

    ``offline`` is a static batch (the whole batch prefilled, then decoded in lockstep, as
    TensorRT-LLM's benchmark runs it); ``server`` is the continuous-batching simulator under
    Poisson arrivals, where ``batch`` caps the sequences each replica runs at once and the
    latencies are medians over the simulated requests.
    """

    chip: str
    model: str
    precision: str
    devices: int
    tp: int
    batch: int
    input_len: int
    output_len: int
    scenario: str
    fits: bool
    why_not_fits: str | None
    memory_gib: float
    """Memory needed per device, GiB."""
    memory_available_gib: float
    output_tokens_per_s: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    prefill_bound: Bound | None
    decode_bound: Bound | None
    qps: float | None = None
    seed: int = 0
    efficiency: dict[str, str] = field(default_factory=dict)
    """Status of each ceiling used: gemm/attention/memory/link -> measured/spec-derived/..."""
    server: dict[str, object] | None = None
    """Serving-simulator summary (percentiles, request rate, preemptions) in server mode."""

    @property
    def replicas(self) -> int:
        return self.devices // self.tp

    @property
    def output_tokens_per_s_per_device(self) -> float | None:
        if self.output_tokens_per_s is None:
            return None
        return self.output_tokens_per_s / self.devices

    def to_dict(self) -> dict[str, object]:
        return {
            "chip": self.chip,
            "model": self.model,
            "precision": self.precision,
            "devices": self.devices,
            "tp": self.tp,
            "replicas": self.replicas,
            "batch": self.batch,
            "input_len": self.input_len,
            "output_len": self.output_len,
            "scenario": self.scenario,
            "qps": self.qps,
            "seed": self.seed,
            "fits": self.fits,
            "why_not_fits": self.why_not_fits,
            "memory_gib": self.memory_gib,
            "memory_available_gib": self.memory_available_gib,
            "output_tokens_per_s": self.output_tokens_per_s,
            "output_tokens_per_s_per_device": self.output_tokens_per_s_per_device,
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "prefill_bound": None if self.prefill_bound is None else str(self.prefill_bound),
            "decode_bound": None if self.decode_bound is None else str(self.decode_bound),
            "efficiency": dict(self.efficiency),
            "server": self.server,
        }


def resolve_chip(name: str, catalog: Catalog | None = None) -> Chip:
    cat = default_catalog() if catalog is None else catalog
    try:
        return cat.find_chip(name)
    except UnknownChipError as exc:
        raise UnknownNameInput("chip", str(exc)) from None


def resolve_model(name: str, catalog: Catalog | None = None) -> Model:
    cat = default_catalog() if catalog is None else catalog
    try:
        return cat.find_model(name)
    except UnknownModelError as exc:
        raise UnknownNameInput("model", str(exc)) from None


def predict(
    chip: str,
    devices: int,
    model: str,
    precision: str,
    batch: int,
    input_len: int,
    output_len: int,
    scenario: str = "offline",
    qps: float | None = None,
    seed: int = 0,
    *,
    tp: int | None = None,
    requests: int | None = None,
    serving: ServingConfig | None = None,
    catalog: Catalog | None = None,
) -> Prediction:
    """Predict ``model`` on ``devices`` devices of ``chip``.

    ``tp`` defaults to ``devices`` (one tensor-parallel replica); with a smaller ``tp`` the
    devices form ``devices // tp`` data-parallel replicas that split the batch (offline) or
    the arrivals (server). Raises a ``PerfInputError`` (a ``ValueError``) naming the field and
    the rule for bad input; a deployment that does not fit is a result with ``fits=False``.
    """
    _check_int("devices", devices, 1)
    tp_ = devices if tp is None else tp
    _check_int("tp", tp_, 1)
    if devices % tp_:
        raise PerfInputError("tp", f"must divide devices ({devices}), got {tp_}")
    _check_int("batch", batch, 1)
    _check_int("input_len", input_len, 1)
    _check_int("output_len", output_len, 1)
    if precision not in PRECISIONS:
        raise PerfInputError("precision", f"must be one of {', '.join(PRECISIONS)}")
    if scenario not in SCENARIOS:
        raise PerfInputError("scenario", f"must be one of {', '.join(SCENARIOS)}")
    if scenario == "server":
        if qps is None:
            raise PerfInputError("qps", "is required when scenario is server")
        if isinstance(qps, bool) or not isinstance(qps, int | float):
            raise PerfInputError("qps", "must be a number")
        if not (qps > 0 and math.isfinite(qps)):
            raise PerfInputError("qps", "must be > 0")
    elif qps is not None:
        raise PerfInputError("qps", "is only valid with scenario server")
    _check_int("seed", seed, 0)
    if requests is not None:
        _check_int("requests", requests, 1)
    replicas = devices // tp_
    if scenario == "offline" and batch % replicas:
        raise PerfInputError(
            "batch", f"must be divisible by the {replicas} replicas (devices / tp), got {batch}"
        )

    cat = default_catalog() if catalog is None else catalog
    chip_ = resolve_chip(chip, cat)
    model_ = resolve_model(model, cat)
    deployment = LlmDeployment(
        chip_, model_, precision, tp_, memory_gib=cat.device_memory_gib(chip_)
    )
    c = deployment.ceilings
    efficiency: dict[str, str] = {
        "gemm": c.gemm.status,
        "attention": c.attention.status,
        "memory": c.memory.status,
        "link": c.link.status,
    }
    # Inputs echoed in every result; the outcome fields are filled in below.
    template = Prediction(
        chip=chip_.name,
        model=model_.name,
        precision=precision,
        devices=devices,
        tp=tp_,
        batch=batch,
        input_len=input_len,
        output_len=output_len,
        scenario=scenario,
        qps=qps,
        seed=seed,
        efficiency=efficiency,
        fits=False,
        why_not_fits=None,
        memory_gib=0.0,
        memory_available_gib=deployment.memory_gib,
        output_tokens_per_s=None,
        ttft_ms=None,
        tpot_ms=None,
        prefill_bound=None,
        decode_bound=None,
    )
    if scenario == "offline":
        static = predict_static(deployment, batch // replicas, input_len, output_len)
        tokens_per_s = static.output_tokens_per_s
        return replace(
            template,
            fits=static.fits,
            why_not_fits=static.memory.why_not(),
            memory_gib=static.memory.needed_gib,
            memory_available_gib=static.memory.available_gib,
            output_tokens_per_s=None if tokens_per_s is None else tokens_per_s * replicas,
            ttft_ms=None if static.ttft_s is None else static.ttft_s * 1e3,
            tpot_ms=None if static.tpot_s is None else static.tpot_s * 1e3,
            # Like the server scenario: a deployment that cannot run has no bound either.
            prefill_bound=static.prefill_bound if static.fits else None,
            decode_bound=static.decode_bound if static.fits else None,
        )
    return _predict_server(deployment, template, float(qps or 0.0), replicas, requests, serving)


def _predict_server(
    deployment: LlmDeployment,
    template: Prediction,
    qps: float,
    replicas: int,
    requests: int | None,
    serving: ServingConfig | None,
) -> Prediction:
    batch, input_len, output_len = template.batch, template.input_len, template.output_len
    base = ServingConfig() if serving is None else serving
    config = ServingConfig(
        max_num_seqs=batch,
        max_num_batched_tokens=max(base.max_num_batched_tokens, batch),
        block_size=base.block_size,
        chunked_prefill=base.chunked_prefill,
        gpu_memory_utilization=base.gpu_memory_utilization,
    )
    # A one-request fit check: weights, activations, reserve and one full sequence's KV.
    fit = deployment.memory_fit(
        kv_cache_bytes=deployment.kv_bytes_per_token_device() * (input_len + output_len),
        max_tokens=config.max_num_batched_tokens,
        max_logits=config.max_num_seqs,
    )
    blocks = kv_cache_blocks(deployment, config)
    needed_blocks = -(-(input_len + output_len) // config.block_size)
    if not fit.fits or blocks < needed_blocks:
        why = fit.why_not() or (
            f"the KV cache left after weights holds {blocks} blocks of {config.block_size}"
            f" tokens; one request needs {needed_blocks}"
        )
        return replace(
            template,
            fits=False,
            why_not_fits=why,
            memory_gib=fit.needed_gib,
            memory_available_gib=fit.available_gib,
            output_tokens_per_s=None,
            ttft_ms=None,
            tpot_ms=None,
            prefill_bound=None,
            decode_bound=None,
        )
    n = DEFAULT_SERVER_REQUESTS if requests is None else requests
    # Poisson arrivals split evenly over replicas stay Poisson at qps / replicas.
    per_replica = max(1, math.ceil(n / replicas))
    workload = Workload.poisson(per_replica, qps / replicas, input_len, output_len, template.seed)
    result = simulate(deployment, workload, config)
    summary = result.summary()
    # Bounds at the concurrency the engine actually sustained.
    typical_batch = max(1, min(batch, round(summary.mean_running)))
    static = predict_static(deployment, typical_batch, input_len, output_len)
    used_gb = (
        fit.weights_gib
        + fit.activations_gib
        + fit.reserve_gib
        + result.peak_kv_blocks
        * config.block_size
        * deployment.kv_bytes_per_token_device()
        / GIB_BYTES
    )
    return replace(
        template,
        fits=True,
        why_not_fits=None,
        memory_gib=used_gb,
        memory_available_gib=fit.available_gib,
        output_tokens_per_s=summary.output_tokens_per_s * replicas,
        ttft_ms=summary.ttft_s.p50 * 1e3,
        tpot_ms=summary.tpot_s.p50 * 1e3 if output_len > 1 else None,
        prefill_bound=static.prefill_bound,
        decode_bound=static.decode_bound,
        server=summary.to_dict(),
    )


def _check_int(field_name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PerfInputError(field_name, "must be an integer")
    if value < minimum:
        raise PerfInputError(field_name, f"must be >= {minimum}")
