"""Automatic optimization of an LLM deployment: precision, TP x DP, concurrency, prefill chunk.

For a model, a chip type, a device budget and an SLO, every combination of

- precision: what the chip supports (16-bit by default; fp8/int8 weights when quantization is
  allowed or asked for),
- tensor-parallel degree ``tp`` (a power of two dividing the heads) x data-parallel replicas,
- max concurrent sequences per replica (vLLM's ``max_num_seqs``, capped by the KV cache),
- prefill chunk size (``max_num_batched_tokens``),
- the software passes that apply (KV cache in fp8/int8, speculative decoding, prefix caching),

is priced by the one performance model (:mod:`pocgrid.perf`, with the costs of operator
supplementation added, :mod:`pocgrid.adapt.supplemented_cost`) in a closed-form steady state of
continuous batching with chunked prefill:

- each engine step decodes ``b`` sequences (at the mean context ``input + output / 2``) and
  prefills the prompt tokens that keep the batch full, ``P = input * b / output`` on average;
- a step that carries a whole chunk ``C`` is the slow step: TPOT p99 is its time, and a
  prompt needs ``ceil(input / C)`` of them, which bounds TTFT p99;
- when ``C < P`` the prefill cannot keep up and the sustained concurrency drops to
  ``C * output / input``.

This is an estimate of the steady state below saturation, not a simulation: the serving
simulator (``pocgrid perf predict --scenario server``) replays arrivals for a chosen plan.
Every choice is explained in the plan; the Pareto frontier of throughput per device against
tokens/s per user lists the non-dominated configurations.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

import numpy as np

from pocgrid.adapt.coverage import Coverage, Method
from pocgrid.adapt.hostlink import host_link
from pocgrid.adapt.supplemented_cost import SupplementedDeployment
from pocgrid.catalog import Chip, Model
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.llm import (
    F_CONST,
    F_EXPERTS,
    F_LOGITS,
    F_PRE_PAIRS,
    F_PRE_PAIRS_WIN,
    F_PRE_TOKENS,
    F_TOKENS,
    LlmDeployment,
    window_sum,
)
from pocgrid.perf.serving import ServingConfig, Workload, kv_cache_blocks, simulate

Verdict = Literal[
    "runs_natively", "runs_with_supplementation", "needs_devices", "does_not_fit", "unsupported"
]
SIXTEEN_BIT: Final = ("bf16", "fp16")
QUANTIZED: Final = ("fp8", "int8")
#: Tensor parallelism stays inside one node's scale-up domain (8 devices on every emulatable
#: chip's boards); beyond it a model would need pipeline parallelism, which is not modelled.
TP_CHOICES: Final = (1, 2, 4, 8)
MAX_DEVICES: Final = 64
BATCH_CHOICES: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CHUNK_CHOICES: Final = (512, 1024, 2048, 4096, 8192)
#: A pass is applied when it raises the objective by at least this much.
MIN_GAIN: Final = 1.02
#: Draft tokens proposed per verify step when speculative decoding is on.
SPEC_DRAFT_TOKENS: Final = 3


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_ms: float | None = None
    """p99 time to first token bound."""
    tpot_ms: float | None = None
    """p99 time per output token bound."""
    latency_ms: float | None = None
    """Latency bound of one batch, for models that are not LLMs."""

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "latency_ms"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise PerfInputError(f"slo.{name}", "must be a positive number of milliseconds")

    def violation(self, ttft_ms: float, tpot_ms: float) -> str:
        out = []
        if self.ttft_ms is not None and ttft_ms > self.ttft_ms:
            out.append(f"TTFT p99 {ttft_ms:.0f} ms > {self.ttft_ms:.0f} ms")
        if self.tpot_ms is not None and tpot_ms > self.tpot_ms:
            out.append(f"TPOT p99 {tpot_ms:.1f} ms > {self.tpot_ms:.1f} ms")
        return "; ".join(out)

    def to_dict(self) -> dict[str, float | None]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "latency_ms": self.latency_ms}


@dataclass(frozen=True, slots=True)
class PlanRequest:
    devices: int | None = None
    """Device budget; None: the fewest devices that hold the model (one replica)."""
    precision: str | None = None
    """Weight precision asked for; None: the planner chooses."""
    slo: Slo = field(default_factory=Slo)
    input_len: int = 1024
    output_len: int = 256
    allow_quantized: bool = False
    """Let the planner choose fp8/int8 weights and a quantized KV cache (lossy, accuracy not
    measured for LLMs without weights)."""
    spec_acceptance: float | None = None
    """Mean tokens accepted per verify step (draft model or multi-token prediction); None: off."""
    prefix_hit_rate: float = 0.0
    """Share of prompt tokens found in the prefix cache."""
    price_per_device_hour: float | None = None

    def __post_init__(self) -> None:
        if self.devices is not None and not 1 <= self.devices <= MAX_DEVICES:
            raise PerfInputError("devices", f"must be in [1, {MAX_DEVICES}]")
        for name in ("input_len", "output_len"):
            if getattr(self, name) < 1:
                raise PerfInputError(name, "must be >= 1")
        if not 0.0 <= self.prefix_hit_rate < 1.0:
            raise PerfInputError("prefix_hit_rate", "must be in [0, 1)")
        if self.spec_acceptance is not None and not (
            1.0 <= self.spec_acceptance <= SPEC_DRAFT_TOKENS + 1
        ):
            raise PerfInputError(
                "spec_acceptance", f"must be in [1, {SPEC_DRAFT_TOKENS + 1}] tokens per step"
            )
        if self.price_per_device_hour is not None and not self.price_per_device_hour > 0:
            raise PerfInputError("price_per_device_hour", "must be > 0")

    def cache_key(self) -> str:
        return repr(
            (
                self.devices,
                self.precision,
                self.slo.ttft_ms,
                self.slo.tpot_ms,
                self.slo.latency_ms,
                self.input_len,
                self.output_len,
                self.allow_quantized,
                self.spec_acceptance,
                self.prefix_hit_rate,
                self.price_per_device_hour,
            )
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    precision: str
    kv_cache: str
    tp: int
    replicas: int
    max_num_seqs: int
    prefill_chunk: int
    passes: tuple[str, ...]
    output_tokens_per_s: float
    """Whole deployment (all replicas)."""
    tokens_per_s_per_user: float
    ttft_p99_ms: float
    tpot_p99_ms: float
    slo_violation: str
    kv_limited: bool
    """Concurrency was capped by the KV cache rather than by the choice list."""

    @property
    def devices(self) -> int:
        return self.tp * self.replicas

    @property
    def output_tokens_per_s_per_device(self) -> float:
        return self.output_tokens_per_s / self.devices

    @property
    def meets_slo(self) -> bool:
        return not self.slo_violation

    def device_hours_per_million_tokens(self) -> float:
        return self.devices / (self.output_tokens_per_s * 3600.0) * 1e6

    def to_dict(self, price: float | None = None) -> dict[str, object]:
        dh = self.device_hours_per_million_tokens()
        return {
            "precision": self.precision,
            "kv_cache": self.kv_cache,
            "devices": self.devices,
            "tp": self.tp,
            "replicas": self.replicas,
            "max_num_seqs": self.max_num_seqs,
            "prefill_chunk": self.prefill_chunk,
            "passes": list(self.passes),
            "output_tokens_per_s": self.output_tokens_per_s,
            "output_tokens_per_s_per_device": self.output_tokens_per_s_per_device,
            "tokens_per_s_per_user": self.tokens_per_s_per_user,
            "ttft_p99_ms": self.ttft_p99_ms,
            "tpot_p99_ms": self.tpot_p99_ms,
            "meets_slo": self.meets_slo,
            "slo_violation": self.slo_violation or None,
            "device_hours_per_million_tokens": dh,
            "cost_per_million_tokens": None if price is None else dh * price,
        }


@dataclass(frozen=True, slots=True)
class PassResult:
    name: str
    applied: bool
    gain: float | None
    """Modelled throughput-per-device ratio with the pass over without it, at the best plan
    (measured on this machine where ``measured``)."""
    reason: str
    measured: bool = False
    accuracy_delta: float | None = None
    """Measured output error of a lossy pass (largest error relative to the output's range)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "applied": self.applied,
            "gain": self.gain,
            "reason": self.reason,
            "measured": self.measured,
            "accuracy_delta": self.accuracy_delta,
        }


@dataclass(frozen=True, slots=True)
class SimulatedCheck:
    """The best plan replayed by the continuous-batching simulator under Poisson arrivals at
    ``load`` of the throughput the steady state predicts, per replica."""

    requests: int
    requests_per_s: float
    """Whole deployment."""
    load: float
    output_tokens_per_s: float
    ttft_p99_ms: float
    tpot_p99_ms: float
    preemptions: int
    meets_slo: bool
    note: str

    def to_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "requests_per_s": self.requests_per_s,
            "load": self.load,
            "output_tokens_per_s": self.output_tokens_per_s,
            "ttft_p99_ms": self.ttft_p99_ms,
            "tpot_p99_ms": self.tpot_p99_ms,
            "preemptions": self.preemptions,
            "meets_slo": self.meets_slo,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    chip: str
    verdict: Verdict
    reason: str
    request: PlanRequest
    coverage: Coverage | None
    best_by_throughput: Candidate | None
    best_by_cost: Candidate | None
    pareto: tuple[Candidate, ...]
    passes: tuple[PassResult, ...]
    explanation: tuple[str, ...]
    devices_needed: int | None
    evaluated: int = 0
    simulated: SimulatedCheck | None = None
    """The best plan replayed in the serving simulator (single plans, not the matrix)."""
    basis: str = (
        "steady-state estimate of continuous batching with chunked prefill on the pocgrid"
        " performance model; supplementation costs are estimates"
    )

    @property
    def best(self) -> Candidate | None:
        return self.best_by_throughput

    def to_dict(self) -> dict[str, object]:
        price = self.request.price_per_device_hour
        best = self.best
        return {
            "model": self.model,
            "chip": self.chip,
            "verdict": self.verdict,
            "reason": self.reason,
            "precision": None if best is None else best.precision,
            "devices": None if best is None else best.devices,
            "tp": None if best is None else best.tp,
            "replicas": None if best is None else best.replicas,
            "max_num_seqs": None if best is None else best.max_num_seqs,
            "prefill_chunk": None if best is None else best.prefill_chunk,
            "passes": [] if best is None else list(best.passes),
            "output_tokens_per_s": None if best is None else best.output_tokens_per_s,
            "devices_needed": self.devices_needed,
            "slo": self.request.slo.to_dict(),
            "input_len": self.request.input_len,
            "output_len": self.request.output_len,
            "best_by_throughput": None if best is None else best.to_dict(price),
            "best_by_cost": None if self.best_by_cost is None else self.best_by_cost.to_dict(price),
            "pareto": [c.to_dict(price) for c in self.pareto],
            "passes_considered": [p.to_dict() for p in self.passes],
            "explanation": list(self.explanation),
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "configurations_evaluated": self.evaluated,
            "simulated": None if self.simulated is None else self.simulated.to_dict(),
            "basis": self.basis,
        }


# -- steady state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Point:
    tokens_per_s: float
    """One replica."""
    step_s: float
    ttft_s: float
    tpot_s: float
    batch: int


def _mixed_step(
    dep: LlmDeployment, batch: float, ctx: float, prefill_tokens: float, prompt: int
) -> float:
    """One engine step: ``batch`` decodes at context ``ctx`` plus ``prefill_tokens`` of prompts
    of ``prompt`` tokens (each chunk attends to half a prompt on average)."""
    x = dep.decode_features(max(1, round(batch)), np.array([ctx]))[:, 0]
    if batch != round(batch):
        x = x * (batch / max(1, round(batch)))
        x[F_CONST] = 1.0
    if prefill_tokens > 0:
        x[F_TOKENS] += prefill_tokens
        x[F_PRE_TOKENS] += prefill_tokens
        pairs_per_token = window_sum(1, prompt, None) / prompt
        x[F_PRE_PAIRS] += prefill_tokens * pairs_per_token
        x[F_PRE_PAIRS_WIN] += prefill_tokens * (
            window_sum(1, prompt, dep.shape.sliding_window) / prompt
        )
        x[F_LOGITS] += prefill_tokens / prompt
    x[F_EXPERTS] = dep.experts_loaded(float(x[F_TOKENS]))
    return dep.op_table.seconds(x)


def _steady_state(
    dep: LlmDeployment,
    batch: int,
    chunk: int,
    input_len: int,
    output_len: int,
    prefix_hit_rate: float,
    spec_acceptance: float | None,
) -> _Point:
    prompt = max(1, math.ceil(input_len * (1.0 - prefix_hit_rate)))
    # Tokens each sequence gains per step and tokens a verify step processes per sequence.
    per_step = 1.0 if spec_acceptance is None else spec_acceptance
    width = 1.0 if spec_acceptance is None else SPEC_DRAFT_TOKENS + 1.0
    steps_per_request = output_len / per_step
    need = prompt * batch / steps_per_request
    sustained = float(batch) if need <= chunk else chunk * steps_per_request / prompt
    ctx = input_len + output_len / 2.0
    prefill = prompt * sustained / steps_per_request
    step = _mixed_step(dep, sustained * width, ctx, prefill, prompt)
    if spec_acceptance is not None:
        # Drafting: multi-token prediction heads cost about one layer per draft token.
        step += SPEC_DRAFT_TOKENS * step / max(1, dep.shape.num_layers)
    slow = _mixed_step(dep, sustained * width, ctx, float(min(chunk, prompt)), prompt)
    chunks = math.ceil(prompt / chunk)
    return _Point(
        tokens_per_s=sustained * per_step / step,
        step_s=step,
        ttft_s=(chunks + 1) * slow,
        tpot_s=slow / per_step,
        batch=max(1, math.floor(sustained)),
    )


# -- the search --------------------------------------------------------------------------------


def supported_precisions(chip: Chip, runtime: Collection[str]) -> list[str]:
    """Precisions the chip's runtime runs and the catalogue has a peak for (to price them)."""
    return [p for p in (*SIXTEEN_BIT, *QUANTIZED) if p in runtime and chip.peak(p) is not None]


def precision_choices(
    chip: Chip, req: PlanRequest, runtime: Collection[str]
) -> tuple[list[str], list[str], str | None]:
    """(precisions to search, explanation lines, why nothing can run)."""
    have = supported_precisions(chip, runtime)
    lines: list[str] = []
    unpriced = [p for p in (*SIXTEEN_BIT, *QUANTIZED) if p in runtime and p not in have]
    if unpriced:
        lines.append(
            f"{chip.name}'s runtime lists {', '.join(unpriced)} but no source gives its peak:"
            " not searched (it cannot be priced)"
        )
    if req.precision is not None:
        if req.precision in have:
            lines.append(f"precision {req.precision}: asked for, and {chip.name} supports it")
            return [req.precision], lines, None
        if req.precision == "bf16":
            alt = [p for p in ("fp16", "int8") if p in have]
            if alt:
                lines.append(
                    f"precision {alt[0]}: bf16 was asked for but {chip.name} has no bf16 peak;"
                    f" {alt[0]} is the nearest it has"
                    + (
                        " (fp16 keeps 16 bits but has a narrower range than bf16: a"
                        " bf16-trained checkpoint can overflow in activations; not measured)"
                        if alt[0] == "fp16"
                        else " (int8 weights: lossy, accuracy not measured)"
                    )
                )
                return [alt[0]], lines, None
        return (
            [],
            lines,
            (
                f"{chip.name} has no {req.precision} (it has {', '.join(have) or 'none of'}"
                f" {'' if have else 'bf16/fp16/fp8/int8'})".rstrip()
            ),
        )
    search: list[str] = [p for p in SIXTEEN_BIT if p in have]
    if "bf16" not in have and "fp16" in have:
        lines.append(
            f"{chip.name} has no bf16: fp16 is searched instead (same size, narrower range:"
            " a bf16-trained checkpoint can overflow in activations; not measured)"
        )
    if req.allow_quantized or not search:
        quant = [p for p in QUANTIZED if p in have]
        if not search and quant:
            lines.append(
                f"{chip.name} has no 16-bit float format: int8/fp8 weights are the only choice"
                " (lossy; accuracy not measured without weights)"
            )
        search += quant
    elif any(p in have for p in QUANTIZED):
        lines.append(
            "fp8/int8 weights not searched as the precision: lossy (allow them with"
            " --allow-quantized or ask with --precision)"
        )
    if not search:
        return [], lines, f"{chip.name} supports none of bf16/fp16/fp8/int8"
    return search, lines, None


def _tp_choices(model: Model, devices: int) -> list[int]:
    heads = model.arch.num_attention_heads if model.arch is not None else 1
    return [t for t in TP_CHOICES if t <= devices and heads % t == 0]


def _fits_one(dep: LlmDeployment, req: PlanRequest) -> int:
    """Sequences of full length one replica's KV cache holds (0: the model does not fit)."""
    config = ServingConfig(max_num_seqs=1, max_num_batched_tokens=CHUNK_CHOICES[0])
    blocks = kv_cache_blocks(dep, config)
    per_seq = -(-(req.input_len + req.output_len) // config.block_size)
    return blocks // per_seq


class _Deployments:
    """Deployments built once per (precision, kv bytes, tp)."""

    def __init__(
        self, chip: Chip, model: Model, supplemented: Mapping[str, Method], host: Mapping[str, int]
    ) -> None:
        self.chip, self.model = chip, model
        self.supplemented, self.host = supplemented, host
        self.link = host_link(chip)
        self._cache: dict[tuple[str, int | None, int], LlmDeployment] = {}

    def get(self, precision: str, kv_bytes: int | None, tp: int) -> LlmDeployment:
        key = (precision, kv_bytes, tp)
        dep = self._cache.get(key)
        if dep is None:
            dep = SupplementedDeployment(
                self.chip,
                self.model,
                precision,
                tp,
                supplemented=self.supplemented,
                host_counts=self.host,
                host_link=self.link,
                kv_bytes=kv_bytes,
            )
            self._cache[key] = dep
        return dep


def _kv_options(chip: Chip, precision: str, req: PlanRequest) -> list[tuple[str, int | None]]:
    opts: list[tuple[str, int | None]] = [(precision, None)]
    if precision in QUANTIZED or not req.allow_quantized:
        return opts
    # A quantized KV cache needs the format in the attention kernels: fp8 where the chip has
    # it, else int8.
    for kv in ("fp8", "int8"):
        if chip.peak(kv) is not None:
            opts.append((kv, 1))
            break
    return opts


def _search(
    deps: _Deployments,
    precisions: Sequence[str],
    tps: Sequence[int],
    devices: int,
    req: PlanRequest,
    *,
    spec: bool,
    prefix: bool,
) -> tuple[list[Candidate], int]:
    out: list[Candidate] = []
    evaluated = 0
    for precision in precisions:
        for kv_name, kv_bytes in _kv_options(deps.chip, precision, req):
            for tp in tps:
                replicas = devices // tp
                dep = deps.get(precision, kv_bytes, tp)
                capacity = _fits_one(dep, req)
                if capacity < 1:
                    continue
                for batch in BATCH_CHOICES:
                    b = min(batch, capacity)
                    for chunk in CHUNK_CHOICES:
                        evaluated += 1
                        p = _steady_state(
                            dep,
                            b,
                            chunk,
                            req.input_len,
                            req.output_len,
                            req.prefix_hit_rate if prefix else 0.0,
                            req.spec_acceptance if spec else None,
                        )
                        passes = []
                        if kv_bytes is not None:
                            passes.append(f"kv_cache_{kv_name}")
                        if spec:
                            passes.append("speculative_decoding")
                        if prefix:
                            passes.append("prefix_caching")
                        ttft, tpot = p.ttft_s * 1e3, p.tpot_s * 1e3
                        out.append(
                            Candidate(
                                precision=precision,
                                kv_cache=kv_name,
                                tp=tp,
                                replicas=replicas,
                                max_num_seqs=p.batch,
                                prefill_chunk=chunk,
                                passes=tuple(passes),
                                output_tokens_per_s=p.tokens_per_s * replicas,
                                tokens_per_s_per_user=1.0 / p.tpot_s,
                                ttft_p99_ms=ttft,
                                tpot_p99_ms=tpot,
                                slo_violation=req.slo.violation(ttft, tpot),
                                kv_limited=b < batch,
                            )
                        )
                    if b < batch:
                        break  # larger batches are capped to the same capacity
    return _dedupe(out), evaluated


def _dedupe(cands: Iterable[Candidate]) -> list[Candidate]:
    seen: dict[tuple[object, ...], Candidate] = {}
    for c in cands:
        key = (c.precision, c.kv_cache, c.tp, c.max_num_seqs, c.prefill_chunk, c.passes)
        seen.setdefault(key, c)
    return list(seen.values())


def pareto_frontier(cands: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both throughput per device and tokens/s per user."""
    pts = sorted(cands, key=lambda c: (-c.tokens_per_s_per_user, -c.output_tokens_per_s_per_device))
    frontier: list[Candidate] = []
    best = -math.inf
    for c in pts:
        if c.output_tokens_per_s_per_device > best * (1 + 1e-9):
            frontier.append(c)
            best = c.output_tokens_per_s_per_device
    return frontier


def _min_devices(deps: _Deployments, precisions: Sequence[str], req: PlanRequest) -> int | None:
    for tp in _tp_choices(deps.model, MAX_DEVICES):
        for precision in precisions:
            for _, kv_bytes in _kv_options(deps.chip, precision, req):
                if _fits_one(deps.get(precision, kv_bytes, tp), req) >= 1:
                    return tp
    return None


def _best(cands: Sequence[Candidate]) -> Candidate | None:
    ok = [c for c in cands if c.meets_slo]
    if not ok:
        return None
    return max(ok, key=lambda c: (c.output_tokens_per_s_per_device, c.tokens_per_s_per_user))


def plan_llm(
    model: Model,
    chip: Chip,
    req: PlanRequest,
    coverage: Coverage | None,
    runtime: Collection[str],
) -> Plan:
    """The best plan of ``model`` (an LLM) on ``chip`` under ``req``; ``runtime`` is the
    precisions the chip's runtime runs (the catalogue's vendor profile)."""
    if model.arch is None:
        raise PerfInputError("model", f"{model.name} is not an LLM")
    lines: list[str] = []
    supplemented: dict[str, Method] = {}
    host: dict[str, int] = {}
    if coverage is not None:
        if coverage.verdict == "unsupported":
            bad = ", ".join(o.op for o in coverage.by_status("unsupported"))
            return _no_plan(model, chip, req, coverage, "unsupported", f"cannot run {bad}")
        for o in coverage.by_status("supplemented"):
            supplemented[o.op] = o.method
            if o.method == "host":
                host[o.op] = o.count
        if supplemented:
            lines.append(
                "supplemented: "
                + ", ".join(f"{op} by {m}" for op, m in sorted(supplemented.items()))
                + " (their extra memory traffic is charged in every estimate)"
            )
    precisions, p_lines, why_not = precision_choices(chip, req, runtime)
    lines += p_lines
    if why_not is not None:
        return _no_plan(model, chip, req, coverage, "unsupported", why_not, lines)
    deps = _Deployments(chip, model, supplemented, host)
    needed = _min_devices(deps, precisions, req)
    if needed is None:
        return _no_plan(
            model,
            chip,
            req,
            coverage,
            "does_not_fit",
            f"{model.name} does not fit {TP_CHOICES[-1]} x {chip.name} (one node, tensor"
            f" parallel) at {'/'.join(precisions)} with one"
            f" {req.input_len + req.output_len}-token sequence; pipeline parallelism across"
            " nodes is not modelled",
            lines,
        )
    devices = req.devices if req.devices is not None else needed
    if devices < needed:
        return _no_plan(
            model,
            chip,
            req,
            coverage,
            "needs_devices",
            f"needs {needed} x {chip.name} to hold the weights and one sequence's KV cache;"
            f" the budget is {devices}",
            lines,
            devices_needed=needed,
        )
    tps = [t for t in _tp_choices(model, devices) if t >= needed]
    lines.append(
        f"devices {devices}: "
        + (
            "the budget"
            if req.devices is not None
            else "the fewest that hold the weights and a KV cache"
        )
        + f"; tensor-parallel degrees searched {tps} (divide the"
        f" {model.arch.num_attention_heads} heads, at least {needed} to fit),"
        " the rest data-parallel replicas"
    )
    use_spec = req.spec_acceptance is not None
    use_prefix = req.prefix_hit_rate > 0
    cands, evaluated = _search(
        deps, precisions, tps, devices, req, spec=use_spec, prefix=use_prefix
    )
    best = _best(cands)
    passes = _passes(deps, precisions, tps, devices, req, best, cands, chip)
    if best is None:
        closest = min(cands, key=lambda c: c.tpot_p99_ms + c.ttft_p99_ms / 100.0)
        return replace(
            _no_plan(
                model,
                chip,
                req,
                coverage,
                "does_not_fit",
                f"no configuration meets the SLO; the closest: {closest.slo_violation}",
                lines,
                devices_needed=needed,
            ),
            pareto=tuple(pareto_frontier(cands)),
            passes=tuple(passes),
            evaluated=evaluated,
        )
    lines += _explain(best, cands, req)
    verdict: Verdict
    if best.devices > 1 and req.devices is None:
        verdict = "needs_devices"
        reason = f"needs {best.devices} x {chip.name}"
    elif supplemented:
        verdict = "runs_with_supplementation"
        reason = "runs with " + ", ".join(sorted(supplemented)) + " supplemented"
    else:
        verdict = "runs_natively"
        reason = ""
    if supplemented and verdict == "needs_devices":
        reason += "; with " + ", ".join(sorted(supplemented)) + " supplemented"
    return Plan(
        model=model.name,
        chip=chip.name,
        verdict=verdict,
        reason=reason,
        request=req,
        coverage=coverage,
        best_by_throughput=best,
        best_by_cost=_best_cost(cands, req, chip),
        pareto=tuple(pareto_frontier(cands)),
        passes=tuple(passes),
        explanation=tuple(lines),
        devices_needed=needed,
        evaluated=evaluated,
    )


def _best_cost(cands: Sequence[Candidate], req: PlanRequest, chip: Chip) -> Candidate | None:
    ok = [c for c in cands if c.meets_slo]
    if not ok:
        return None
    # Device-hours per token; with the chip's power at TDP added when a price is given, the
    # order is the same on one chip type, so ties go to the more interactive plan.
    return min(ok, key=lambda c: (c.device_hours_per_million_tokens(), -c.tokens_per_s_per_user))


def _explain(best: Candidate, cands: Sequence[Candidate], req: PlanRequest) -> list[str]:
    lines = []
    ok = [c for c in cands if c.meets_slo]

    def best_of(pred: object) -> Candidate | None:
        sel = [c for c in ok if pred(c)]  # type: ignore[operator]
        return max(sel, key=lambda c: c.output_tokens_per_s_per_device) if sel else None

    per_dev = best.output_tokens_per_s_per_device
    for p in sorted({c.precision for c in cands} - {best.precision}):
        other = best_of(lambda c, p=p: c.precision == p)
        if other is not None:
            lines.append(
                f"precision {best.precision} over {p}: {per_dev:.0f} vs"
                f" {other.output_tokens_per_s_per_device:.0f} tokens/s per device"
            )
    lines.append(f"precision {best.precision}: the best throughput per device under the SLO")
    for tp in sorted({c.tp for c in cands} - {best.tp}):
        other = best_of(lambda c, tp=tp: c.tp == tp)
        if other is not None:
            lines.append(
                f"tp {best.tp} x {best.replicas} replicas over tp {tp} x {other.replicas}:"
                f" {per_dev:.0f} vs {other.output_tokens_per_s_per_device:.0f} tokens/s per device"
            )
        else:
            lines.append(f"tp {tp}: no configuration meets the SLO or fits")
    cap = "the KV cache holds no more" if best.kv_limited else "more would break the SLO or gain"
    bigger = [
        c
        for c in cands
        if c.precision == best.precision
        and c.tp == best.tp
        and c.kv_cache == best.kv_cache
        and c.max_num_seqs > best.max_num_seqs
    ]
    if bigger and not best.kv_limited:
        worst = min(bigger, key=lambda c: c.max_num_seqs)
        cap = (
            f"{worst.max_num_seqs} would give {worst.output_tokens_per_s_per_device:.0f}"
            f" tokens/s per device" + (f" but {worst.slo_violation}" if worst.slo_violation else "")
        )
    lines.append(f"max concurrent sequences {best.max_num_seqs} per replica: {cap}")
    lines.append(
        f"prefill chunk {best.prefill_chunk} tokens: TTFT p99 {best.ttft_p99_ms:.0f} ms,"
        f" TPOT p99 {best.tpot_p99_ms:.1f} ms"
        + (
            f" (SLO TTFT {req.slo.ttft_ms} ms, TPOT {req.slo.tpot_ms} ms)"
            if req.slo.ttft_ms is not None or req.slo.tpot_ms is not None
            else " (no SLO given)"
        )
    )
    return lines


def _passes(
    deps: _Deployments,
    precisions: Sequence[str],
    tps: Sequence[int],
    devices: int,
    req: PlanRequest,
    best: Candidate | None,
    cands: Sequence[Candidate],
    chip: Chip,
) -> list[PassResult]:
    out: list[PassResult] = []
    base_best = best.output_tokens_per_s_per_device if best is not None else None
    if best is not None and best.kv_cache != best.precision:
        plain = _best([c for c in cands if c.kv_cache == c.precision])
        gain = None if plain is None else base_best / plain.output_tokens_per_s_per_device  # type: ignore[operator]
        out.append(
            PassResult(
                f"kv_cache_{best.kv_cache}",
                True,
                gain,
                "halves KV bytes: more sequences fit and decode attention reads less (lossy,"
                " accuracy not measured)",
            )
        )
    elif req.allow_quantized:
        out.append(
            PassResult(
                "kv_cache_quantized",
                False,
                None,
                "the chip has no fp8/int8 format, or a quantized cache did not raise throughput",
            )
        )
    else:
        out.append(
            PassResult(
                "kv_cache_quantized", False, None, "lossy: needs --allow-quantized to be chosen"
            )
        )
    for name, on, off_reason in (
        (
            "speculative_decoding",
            req.spec_acceptance is not None,
            "no acceptance length given (--spec-accept)",
        ),
        ("prefix_caching", req.prefix_hit_rate > 0, "no prefix hit rate given (--prefix-hit)"),
    ):
        if not on:
            out.append(PassResult(name, False, None, off_reason))
            continue
        without, _ = _search(
            deps,
            precisions,
            tps,
            devices,
            req,
            spec=name != "speculative_decoding" and req.spec_acceptance is not None,
            prefix=name != "prefix_caching" and req.prefix_hit_rate > 0,
        )
        ref = _best(without)
        gain = (
            None
            if ref is None or base_best is None
            else base_best / ref.output_tokens_per_s_per_device
        )
        what = (
            f"{req.spec_acceptance} tokens accepted per verify step of {SPEC_DRAFT_TOKENS}"
            " drafts (multi-token prediction heads, ~1 layer per draft)"
            if name == "speculative_decoding"
            else f"{req.prefix_hit_rate:.0%} of prompt tokens served from the prefix cache"
        )
        out.append(PassResult(name, True, gain, what))
    return out


def _no_plan(
    model: Model,
    chip: Chip,
    req: PlanRequest,
    coverage: Coverage | None,
    verdict: Verdict,
    reason: str,
    lines: Sequence[str] = (),
    *,
    devices_needed: int | None = None,
) -> Plan:
    return Plan(
        model=model.name,
        chip=chip.name,
        verdict=verdict,
        reason=reason,
        request=req,
        coverage=coverage,
        best_by_throughput=None,
        best_by_cost=None,
        pareto=(),
        passes=(),
        explanation=(*lines, reason),
        devices_needed=devices_needed,
    )


#: Requests per simulated replica: four times its concurrency (so it reaches a steady state),
#: within these bounds.
SIM_REQUESTS: Final = (200, 2000)
SIM_LOAD: Final = 0.85


def simulate_plan(model: Model, chip: Chip, plan: Plan, seed: int = 0) -> Plan:
    """``plan`` with its best configuration replayed in the serving simulator (the same
    supplemented deployment), so the steady-state estimate is checked against simulated p99s.
    Speculative decoding and prefix caching are not in the simulator: it runs without them."""
    best, req = plan.best, plan.request
    if best is None:
        return plan
    supplemented: dict[str, Method] = {}
    host: dict[str, int] = {}
    if plan.coverage is not None:
        for o in plan.coverage.by_status("supplemented"):
            supplemented[o.op] = o.method
            if o.method == "host":
                host[o.op] = o.count
    dep = SupplementedDeployment(
        chip,
        model,
        best.precision,
        best.tp,
        supplemented=supplemented,
        host_counts=host,
        host_link=host_link(chip),
        kv_bytes=1 if best.kv_cache != best.precision else None,
    )
    passes = [p for p in best.passes if p in ("speculative_decoding", "prefix_caching")]
    per_replica = best.output_tokens_per_s / best.replicas
    if passes:
        # The simulator cannot apply these: load it at what the plan would do without them.
        per_replica /= max(
            (p.gain or 1.0 for p in plan.passes if p.name in passes and p.applied), default=1.0
        )
    qps = SIM_LOAD * per_replica / req.output_len
    # Replicas are identical and split Poisson arrivals evenly: simulate one.
    n = min(SIM_REQUESTS[1], max(SIM_REQUESTS[0], 4 * best.max_num_seqs))
    workload = Workload.poisson(n, qps, req.input_len, req.output_len, seed)
    config = ServingConfig(
        max_num_seqs=best.max_num_seqs,
        max_num_batched_tokens=max(best.prefill_chunk, best.max_num_seqs),
    )
    summary = simulate(dep, workload, config).summary()
    ttft, tpot = summary.ttft_s.p99 * 1e3, summary.tpot_s.p99 * 1e3
    note = f"simulated without {', '.join(passes)}" if passes else ""
    check = SimulatedCheck(
        requests=n * best.replicas,
        requests_per_s=qps * best.replicas,
        load=SIM_LOAD,
        output_tokens_per_s=summary.output_tokens_per_s * best.replicas,
        ttft_p99_ms=ttft,
        tpot_p99_ms=tpot,
        preemptions=summary.preemptions,
        meets_slo=not req.slo.violation(ttft, tpot),
        note=note,
    )
    line = (
        f"serving simulator, {n} Poisson requests per replica at {SIM_LOAD:.0%} of the planned"
        f" rate: TTFT p99 {ttft:.0f} ms, TPOT p99 {tpot:.1f} ms,"
        f" {check.output_tokens_per_s:.0f} tokens/s"
        + ("" if check.meets_slo else f" ({req.slo.violation(ttft, tpot)})")
        + (f"; {note}" if note else "")
    )
    return replace(plan, simulated=check, explanation=(*plan.explanation, line))
