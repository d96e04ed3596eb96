"""The prediction entry point used by the agent, adapter, scheduler, evaluator and CLI."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Final

from pocgrid.catalog import (
    Catalog,
    Chip,
    Model,
    UnknownChipError,
    UnknownModelError,
    default_catalog,
)
from pocgrid.perf.efficiency import (
    GIB_BYTES,
    Batching,
    EfficiencyData,
    StackProfile,
    default_efficiency,
)
from pocgrid.perf.errors import PerfInputError, UnknownNameInput
from pocgrid.perf.llm import DEFAULT_GROUP_SIZE, PERF_PRECISIONS, LlmDeployment
from pocgrid.perf.roofline import Bound
from pocgrid.perf.serving import (
    ServingConfig,
    SimResult,
    SteadyState,
    Workload,
    kv_cache_blocks,
    request_concurrency,
    simulate,
    steady_state,
    steady_state_min_requests,
)
from pocgrid.perf.static_batch import SpecDecoding, predict_static

MODES: Final = ("static", "max_throughput", "poisson", "concurrency")
"""static: one batch prefilled together and decoded in lockstep (gptSessionBenchmark);
max_throughput: every request queued at t=0 under continuous batching (MLPerf Offline,
``trtllm-bench throughput``); poisson: Poisson arrivals at ``qps`` (MLPerf Server,
``vllm bench serve --request-rate``); concurrency: a fixed number of clients, each sending its
next request when the last one finishes (``--max-concurrency``)."""
ALIASES: Final = {"offline": "static", "server": "poisson"}
"""The scenario names used before serving modes existed."""
SCENARIOS: Final = (*MODES, *ALIASES)
DEFAULT_SERVER_REQUESTS: Final = 1000


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a deployment would do; throughput is for the whole deployment.

    ``static`` (alias ``offline``) is a static batch; the other modes run the
    continuous-batching simulator, where ``batch`` caps the sequences each replica runs at
    once, the latencies are medians over the requests that finished in the steady-state
    window, and ``steady_state`` says whether there was one. Every prediction names the
    software-stack ``profile`` it assumes.
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
    profile: str = ""
    """Name of the software-stack profile the figures assume."""
    profile_detail: dict[str, object] = field(default_factory=dict)
    qps: float | None = None
    seed: int = 0
    efficiency: dict[str, str] = field(default_factory=dict)
    """Status of each ceiling used: gemm/attention/memory/link -> measured/spec-derived/..."""
    server: dict[str, object] | None = None
    """Serving-simulator summary of the whole run (percentiles, request rate, preemptions)."""
    concurrency: int | None = None
    requests: int | None = None
    """Requests simulated (all replicas), after any extension to the steady-state minimum."""
    requests_asked: int | None = None
    """Requests the caller asked for, when they were too few and the run was extended."""
    steady_state: dict[str, object] | None = None
    saturated: bool | None = None
    """Poisson only: offered load exceeds what the deployment sustains."""
    sustainable_qps: float | None = None
    """Requests/s the whole deployment sustains at these lengths (max-throughput run)."""
    tp_candidates: list[dict[str, object]] | None = None
    """With ``tp="auto"``: every tensor-parallel degree tried and its throughput."""

    @property
    def mode(self) -> str:
        return ALIASES.get(self.scenario, self.scenario)

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
            "mode": self.mode,
            "profile": self.profile,
            "profile_detail": dict(self.profile_detail),
            "qps": self.qps,
            "concurrency": self.concurrency,
            "seed": self.seed,
            "requests": self.requests,
            "requests_asked": self.requests_asked,
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
            "steady_state": self.steady_state,
            "saturated": self.saturated,
            "sustainable_qps": self.sustainable_qps,
            "tp_candidates": self.tp_candidates,
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
    batch: int | None,
    input_len: int,
    output_len: int,
    scenario: str = "offline",
    qps: float | None = None,
    seed: int = 0,
    *,
    tp: int | str | None = None,
    requests: int | None = None,
    serving: ServingConfig | None = None,
    catalog: Catalog | None = None,
    profile: str | None = None,
    concurrency: int | None = None,
    efficiency: EfficiencyData | None = None,
    spec: SpecDecoding | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Prediction:
    """Predict ``model`` on ``devices`` devices of ``chip``.

    ``scenario`` is one of ``MODES`` (or an alias). ``tp`` defaults to ``devices`` (one
    tensor-parallel replica); with a smaller ``tp`` the devices form ``devices // tp``
    data-parallel replicas that split the batch (static), the requests (max_throughput), the
    arrivals (poisson) or the clients (concurrency); ``tp="auto"`` tries every degree that
    divides ``devices`` and keeps the one with the most output tokens/s. ``batch`` is the
    static batch, or the sequences each replica runs at once (None: the profile's default).
    ``profile`` names the software-stack profile (default: the static profile for static
    batches, the chip family's in-flight profile otherwise). Raises a ``PerfInputError`` (a
    ``ValueError``) naming the field and the rule for bad input; a deployment that does not
    fit is a result with ``fits=False``. ``spec`` prices speculative decoding; ``group_size``
    is the quantisation group of ``w4a16`` weights.
    """
    _check_int("devices", devices, 1)
    if scenario not in SCENARIOS:
        raise PerfInputError("scenario", f"must be one of {', '.join(SCENARIOS)}")
    mode = ALIASES.get(scenario, scenario)
    if tp == "auto":
        return _predict_auto_tp(
            chip,
            devices,
            model,
            precision,
            batch,
            input_len,
            output_len,
            scenario,
            qps,
            seed,
            requests=requests,
            serving=serving,
            catalog=catalog,
            profile=profile,
            concurrency=concurrency,
            efficiency=efficiency,
            spec=spec,
            group_size=group_size,
        )
    if isinstance(tp, str):
        raise PerfInputError("tp", "must be an integer or 'auto'")
    tp_ = devices if tp is None else tp
    _check_int("tp", tp_, 1)
    if devices % tp_:
        raise PerfInputError("tp", f"must divide devices ({devices}), got {tp_}")
    if batch is not None:
        _check_int("batch", batch, 1)
    elif mode == "static":
        raise PerfInputError("batch", "is required for a static batch")
    _check_int("input_len", input_len, 1)
    _check_int("output_len", output_len, 1)
    if precision not in PERF_PRECISIONS:
        raise PerfInputError("precision", f"must be one of {', '.join(PERF_PRECISIONS)}")
    if mode == "poisson":
        if qps is None:
            raise PerfInputError("qps", f"is required when scenario is {scenario}")
        if isinstance(qps, bool) or not isinstance(qps, int | float):
            raise PerfInputError("qps", "must be a number")
        if not (qps > 0 and math.isfinite(qps)):
            raise PerfInputError("qps", "must be > 0")
    elif qps is not None:
        raise PerfInputError("qps", "is only valid with scenario poisson (server)")
    replicas = devices // tp_
    if mode == "concurrency":
        if concurrency is None:
            raise PerfInputError("concurrency", "is required when scenario is concurrency")
        _check_int("concurrency", concurrency, 1)
        if concurrency % replicas:
            raise PerfInputError(
                "concurrency", f"must be divisible by the {replicas} replicas (devices / tp)"
            )
    elif concurrency is not None:
        raise PerfInputError("concurrency", "is only valid with scenario concurrency")
    _check_int("seed", seed, 0)
    if requests is not None:
        _check_int("requests", requests, 1)
    if mode == "static" and batch is not None and batch % replicas:
        raise PerfInputError(
            "batch", f"must be divisible by the {replicas} replicas (devices / tp), got {batch}"
        )

    cat = default_catalog() if catalog is None else catalog
    chip_ = resolve_chip(chip, cat)
    model_ = resolve_model(model, cat)
    eff = default_efficiency() if efficiency is None else efficiency
    batching: Batching = "static" if mode == "static" else "in-flight"
    stack = eff.default_profile(chip_.vendor_family, batching) if profile is None else None
    if stack is None:
        assert profile is not None
        stack = eff.profile(profile)
    deployment = LlmDeployment(
        chip_,
        model_,
        precision,
        tp_,
        params=stack.params,
        efficiency=eff,
        group_size=group_size,
        memory_gib=cat.device_memory_gib(chip_),
    )
    c = deployment.ceilings
    efficiency_status: dict[str, str] = {
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
        batch=0 if batch is None else batch,
        input_len=input_len,
        output_len=output_len,
        scenario=scenario,
        profile=stack.name,
        profile_detail=stack.to_dict(),
        qps=qps,
        seed=seed,
        concurrency=concurrency,
        efficiency=efficiency_status,
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
    if mode == "static":
        assert batch is not None
        static = predict_static(deployment, batch // replicas, input_len, output_len, spec)
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
            # Like the serving modes: a deployment that cannot run has no bound either.
            prefill_bound=static.prefill_bound if static.fits else None,
            decode_bound=static.decode_bound if static.fits else None,
        )
    config = serving_config(stack, batch, serving)
    if spec is not None:
        # Under speculation the tokens a step adds vary; the simulator holds each request's
        # whole KV from admission so memory never depends on the acceptance draw.
        config = replace(config, reserve_kv_at_admission=True)
    return _predict_serving(deployment, template, mode, config, replicas, requests, spec)


def serving_config(
    stack: StackProfile, batch: int | None, serving: ServingConfig | None = None
) -> ServingConfig:
    """The engine settings of a run: ``serving`` if given, else the profile's, with ``batch``
    (when given) as the sequence limit."""
    if serving is None:
        values = {k: v for k, v in stack.serving.items() if k in _SERVING_FIELDS}
        base = ServingConfig(**values)  # type: ignore[arg-type]
    else:
        base = serving
    seqs = base.max_num_seqs if batch is None else batch
    return replace(
        base, max_num_seqs=seqs, max_num_batched_tokens=max(base.max_num_batched_tokens, seqs)
    )


_SERVING_FIELDS: Final = frozenset(f.name for f in fields(ServingConfig))


def _predict_serving(
    deployment: LlmDeployment,
    template: Prediction,
    mode: str,
    config: ServingConfig,
    replicas: int,
    requests: int | None,
    spec: SpecDecoding | None = None,
) -> Prediction:
    input_len, output_len = template.input_len, template.output_len
    # A one-request fit check: weights, activations, reserve and one full sequence's KV.
    fit = deployment.memory_fit(
        kv_cache_bytes=deployment.kv_bytes_per_token_device() * (input_len + output_len),
        max_tokens=config.max_num_batched_tokens,
        max_logits=config.max_num_seqs,
    )
    blocks = kv_cache_blocks(deployment, config)
    needed_blocks = -(-(input_len + output_len) // config.block_size)
    template = replace(template, batch=config.max_num_seqs)
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
        )
    capacity = request_concurrency(deployment, config, input_len, output_len)
    per_replica_asked = None if requests is None else math.ceil(requests / replicas)
    clients = None if template.concurrency is None else template.concurrency // replicas
    if mode == "max_throughput":
        target = capacity
    elif mode == "concurrency":
        assert clients is not None
        target = min(clients, capacity)
    else:
        target = 0
    if mode == "poisson":
        per_replica = per_replica_asked or DEFAULT_SERVER_REQUESTS
    else:
        minimum = steady_state_min_requests(target)
        per_replica = max(minimum, per_replica_asked or minimum)
    asked = None
    if per_replica_asked is not None and per_replica > per_replica_asked:
        asked = requests  # too few to fill the batches: extended to the steady-state minimum
    if mode == "max_throughput":
        workload = Workload.offline(per_replica, input_len, output_len)
    elif mode == "concurrency":
        assert clients is not None
        workload = Workload.closed_loop(per_replica, clients, input_len, output_len)
    else:
        # Poisson arrivals split evenly over replicas stay Poisson at qps / replicas.
        qps = float(template.qps or 0.0)
        workload = Workload.poisson(
            per_replica, qps / replicas, input_len, output_len, template.seed
        )
    result = simulate(deployment, workload, config, spec)
    summary = result.summary()
    steady = steady_state(result, concurrency=target or None, open_loop=mode != "concurrency")
    used_gb = (
        fit.weights_gib
        + fit.activations_gib
        + fit.reserve_gib
        + result.peak_kv_blocks
        * config.block_size
        * deployment.kv_bytes_per_token_device()
        / GIB_BYTES
    )
    # Bounds at the concurrency the engine actually sustained.
    typical_batch = max(1, min(config.max_num_seqs, round(summary.mean_running)))
    static = predict_static(deployment, typical_batch, input_len, output_len, spec)
    out = replace(
        template,
        fits=True,
        memory_gib=used_gb,
        memory_available_gib=fit.available_gib,
        prefill_bound=static.prefill_bound,
        decode_bound=static.decode_bound,
        server=summary.to_dict(),
        requests=per_replica * replicas,
        requests_asked=asked,
        steady_state=steady.to_dict(),
    )
    tpot = _p50_ms(steady, "tpot") if output_len > 1 else None
    if mode == "max_throughput":
        # Every request waits behind the whole backlog, so TTFT measures the run's length,
        # not the deployment: it is left out. Throughput is the whole run's, as
        # trtllm-bench reports it (the run is long enough for edges to be < 1 %).
        return replace(
            out,
            output_tokens_per_s=summary.output_tokens_per_s * replicas,
            tpot_ms=tpot,
            sustainable_qps=summary.requests_per_s * replicas,
        )
    if mode == "poisson":
        saturated = steady.saturated
        if saturated or not steady.reached:
            # What the deployment sustains: a max-throughput run at the same lengths.
            cap = _max_throughput_run(deployment, config, input_len, output_len, spec).summary()
            sustainable = cap.requests_per_s * replicas
            saturated = saturated or float(template.qps or 0.0) >= sustainable
            out = replace(out, sustainable_qps=sustainable)
            if saturated:
                reason = (
                    f"saturated: {template.qps:g} req/s offered, {sustainable:.4g} req/s"
                    " sustainable; the queue grows for as long as load is offered"
                )
                return replace(
                    out,
                    saturated=True,
                    output_tokens_per_s=cap.output_tokens_per_s * replicas,
                    steady_state={**steady.to_dict(), "reached": False, "reason": reason},
                )
        out = replace(out, saturated=False)
    return replace(
        out,
        output_tokens_per_s=steady.output_tokens_per_s * replicas
        if steady.reached
        else summary.output_tokens_per_s * replicas,
        ttft_ms=_p50_ms(steady, "ttft"),
        tpot_ms=tpot,
    )


def _p50_ms(steady: SteadyState, what: str) -> float | None:
    p = steady.ttft_s if what == "ttft" else steady.tpot_s
    return None if math.isnan(p.p50) else p.p50 * 1e3


def _max_throughput_run(
    deployment: LlmDeployment,
    config: ServingConfig,
    input_len: int,
    output_len: int,
    spec: SpecDecoding | None = None,
) -> SimResult:
    capacity = request_concurrency(deployment, config, input_len, output_len)
    n = steady_state_min_requests(capacity)
    return simulate(deployment, Workload.offline(n, input_len, output_len), config, spec)


def _predict_auto_tp(
    chip: str,
    devices: int,
    model: str,
    precision: str,
    batch: int | None,
    input_len: int,
    output_len: int,
    scenario: str,
    qps: float | None,
    seed: int,
    **kwargs: object,
) -> Prediction:
    """Every TP degree that divides ``devices`` (and the model's heads and, for a static
    batch, the batch and concurrency), best output tokens/s first; ties go to the smaller."""
    tried: list[Prediction] = []
    for tp in range(1, devices + 1):
        if devices % tp:
            continue
        try:
            p = predict(
                chip,
                devices,
                model,
                precision,
                batch,
                input_len,
                output_len,
                scenario,
                qps,
                seed,
                tp=tp,
                **kwargs,  # type: ignore[arg-type]
            )
        except PerfInputError as exc:
            if exc.field in ("tp", "batch", "concurrency"):
                continue
            raise
        tried.append(p)
    if not tried:
        raise PerfInputError("tp", f"no tensor-parallel degree dividing {devices} is valid")
    best = max(tried, key=lambda p: (p.output_tokens_per_s or 0.0, -p.tp))
    return replace(
        best,
        tp_candidates=[
            {
                "tp": p.tp,
                "fits": p.fits,
                "output_tokens_per_s": p.output_tokens_per_s,
                "saturated": p.saturated,
            }
            for p in tried
        ],
    )


def _check_int(field_name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PerfInputError(field_name, "must be an integer")
    if value < minimum:
        raise PerfInputError(field_name, f"must be >= {minimum}")
