"""Automatic optimization of an LLM deployment: precision, TP x PP x DP, concurrency, prefill chunk.

For a model, a chip type, a device budget and an SLO, every combination of

- precision: what the chip supports (16-bit by default; fp8/int8 weights when quantization is
  allowed or asked for),
- tensor-parallel degree ``tp`` (a power of two dividing the heads, at most one node's 8) x
  pipeline stages ``pp`` (across nodes, when one node's TP cannot hold the model or it pays) x
  data-parallel replicas,
- max concurrent sequences per replica (vLLM's ``max_num_seqs``, capped by the KV cache),
- prefill chunk size (``max_num_batched_tokens``),
- the software passes that apply (:mod:`pocgrid.adapt.passes`),

is priced by the one performance model: the closed-form steady state of continuous batching
with chunked prefill (:func:`pocgrid.perf.closed_form.chunked_steady_state`, speculative
decoding as :class:`pocgrid.perf.static_batch.SpecDecoding`), on the deployment with the costs
of operator supplementation added (:mod:`pocgrid.adapt.supplemented_cost`). Every pass's gain
is reported on every chip, applied or not. A single plan is then replayed in the serving
simulator. Every choice is explained in the plan; the Pareto frontier of throughput per device
against tokens/s per user lists the non-dominated configurations.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

import numpy as np

from pocgrid.adapt import passes as P
from pocgrid.adapt.coverage import Coverage, Method
from pocgrid.adapt.hostlink import host_link
from pocgrid.adapt.signatures import operator_signature
from pocgrid.adapt.supplemented_cost import SupplementedDeployment
from pocgrid.catalog import Chip, Model
from pocgrid.perf.closed_form import SteadyGrid, chunked_steady_state, replica_capacity
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.serving import ServingConfig, Workload, simulate

Verdict = Literal[
    "runs_natively", "runs_with_supplementation", "needs_devices", "does_not_fit", "unsupported"
]
SIXTEEN_BIT: Final = ("bf16", "fp16")
QUANTIZED: Final = ("fp8", "int8")
#: Tensor parallelism stays inside one node's scale-up domain (8 devices on every emulatable
#: chip's boards); pipeline stages go across nodes, up to 8 nodes of 8 (``MAX_DEVICES``).
TP_CHOICES: Final = (1, 2, 4, 8)
PP_CHOICES: Final = (1, 2, 4, 8)
MAX_DEVICES: Final = 64
BATCH_CHOICES: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CHUNK_CHOICES: Final = (512, 1024, 2048, 4096, 8192)
#: A pass is applied when it raises the objective by at least this much.
MIN_GAIN: Final = 1.02
#: Largest acceptance length a request may give (tokens per verification).
MAX_SPEC_ACCEPTANCE: Final = 8.0


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
    """Mean tokens emitted per verification (the model's MTP module where it has one and
    ``a <= modules + 1``, else a draft model); None: not applied (MTP models still draft with
    their module at the published acceptance)."""
    prefix_hit_rate: float = 0.0
    """Share of prompt tokens found in the prefix cache; 0: prefix caching not applied (its
    gain is still reported at ``passes.DEFAULT_PREFIX_HIT_RATE``)."""
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
            1.0 <= self.spec_acceptance <= MAX_SPEC_ACCEPTANCE
        ):
            raise PerfInputError(
                "spec_acceptance", f"must be in [1, {MAX_SPEC_ACCEPTANCE:g}] tokens per step"
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
    pp: int = 1
    """Pipeline stages of a replica (each ``tp`` devices)."""

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.replicas

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
            "pp": self.pp,
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
    """Modelled ratio on this chip, with the pass over without it, at the plan's precision and
    parallelism (throughput per device for LLMs, samples/s otherwise); None when the pass
    cannot run on the chip or no configuration without it meets the SLO (``reason`` says)."""
    reason: str
    measured: bool = False
    """A figure of this pass was measured on this machine (``measured_gain``,
    ``accuracy_delta``)."""
    accuracy_delta: float | None = None
    """Measured output error of a lossy pass (largest error relative to the output's range)."""
    measured_gain: float | None = None
    """Speed-up measured on this machine's CPU (ONNX graphs)."""
    assumption: str = ""
    """What the modelled gain assumes (acceptance length, hit rate), with its source."""

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "applied": self.applied,
            "gain": self.gain,
            "reason": self.reason,
            "measured": self.measured,
            "accuracy_delta": self.accuracy_delta,
            "measured_gain": self.measured_gain,
            "assumption": self.assumption,
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
        " performance model; supplementation costs, pipeline hand-offs and pass assumptions"
        " are estimates"
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
            "pp": None if best is None else best.pp,
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
            "pass_gains": {p.name: p.gain for p in self.passes},
            "explanation": list(self.explanation),
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "configurations_evaluated": self.evaluated,
            "simulated": None if self.simulated is None else self.simulated.to_dict(),
            "basis": self.basis,
        }


# -- precisions ------------------------------------------------------------------------------


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


# -- the search --------------------------------------------------------------------------------


def _tp_choices(model: Model, devices: int) -> list[int]:
    heads = model.arch.num_attention_heads if model.arch is not None else 1
    return [t for t in TP_CHOICES if t <= devices and heads % t == 0]


def _layouts(model: Model, devices: int, pipeline: bool) -> list[tuple[int, int]]:
    """(tp, pp) a replica can take within ``devices``, fewest devices first. Pipeline stages
    are only for a model one node's tensor parallelism cannot hold: each stage is then a
    whole node's widest TP, and the stages hand activations over the network."""
    layers = model.arch.num_layers if model.arch is not None else 1
    tps = _tp_choices(model, min(devices, TP_CHOICES[-1]))
    if not pipeline:
        return [(tp, 1) for tp in tps]
    widest = max(_tp_choices(model, TP_CHOICES[-1]))
    return [(widest, pp) for pp in PP_CHOICES[1:] if widest * pp <= devices and pp <= layers]


#: The KV-cache sizing a plan uses (vLLM's allocation: 90 % of memory, a 512-token chunk).
_CAPACITY_CONFIG: Final = ServingConfig(max_num_seqs=1, max_num_batched_tokens=CHUNK_CHOICES[0])


def _capacity(dep: LlmDeployment, req: PlanRequest, pp: int) -> int:
    """Sequences of full length one replica's KV cache holds (0: the model does not fit)."""
    return replica_capacity(dep, _CAPACITY_CONFIG, req.input_len + req.output_len, pp)


class _Deployments:
    """Deployments built once per (precision, kv bytes, tp, fusion state)."""

    def __init__(
        self,
        chip: Chip,
        model: Model,
        supplemented: Mapping[str, Method],
        host: Mapping[str, int],
        fusable: Collection[str],
    ) -> None:
        self.chip, self.model = chip, model
        self.supplemented, self.host = dict(supplemented), host
        self.link = host_link(chip)
        #: Fused operators of the model's graph that a rewrite prices.
        self.fusable = tuple(op for op in P.FUSABLE_OPS if op in fusable)
        self.native_fused = tuple(op for op in self.fusable if op not in self.supplemented)
        self._cache: dict[tuple[str, float | None, int, str], LlmDeployment] = {}

    def get(
        self, precision: str, kv_bytes: float | None, tp: int, fusion: str = "runtime"
    ) -> LlmDeployment:
        """``fusion``: ``runtime`` (fused where the runtime has the kernel), ``none`` (every
        fusable operator as primitives), ``all`` (every one fused)."""
        key = (precision, kv_bytes, tp, fusion)
        dep = self._cache.get(key)
        if dep is None:
            sup = dict(self.supplemented)
            if fusion == "none":
                sup.update({op: "rewrite" for op in self.fusable if op not in sup})
            elif fusion == "all":
                for op in self.fusable:
                    if sup.get(op) == "rewrite":
                        del sup[op]
            dep = SupplementedDeployment(
                self.chip,
                self.model,
                precision,
                tp,
                supplemented=sup,
                host_counts=self.host,
                host_link=self.link,
                kv_bytes=None if kv_bytes is None else int(kv_bytes),
            )
            self._cache[key] = dep
        return dep


def _kv_format(chip: Chip) -> str | None:
    """The one-byte KV format the attention kernels can use: fp8 where the chip has it."""
    for kv in ("fp8", "int8"):
        if chip.peak(kv) is not None:
            return kv
    return None


def _kv_options(chip: Chip, precision: str, req: PlanRequest) -> list[tuple[str, int | None]]:
    opts: list[tuple[str, int | None]] = [(precision, None)]
    if precision in QUANTIZED or not req.allow_quantized:
        return opts
    kv = _kv_format(chip)
    if kv is not None:
        opts.append((kv, 1))
    return opts


@dataclass(frozen=True, slots=True)
class _Setting:
    """What one grid of the search holds fixed."""

    precision: str
    kv_name: str
    kv_bytes: int | None
    tp: int
    pp: int
    replicas: int
    spec: P.SpecMethod | None
    prefix_hit_rate: float
    fusion: str = "runtime"


def _grid_arrays(
    deps: _Deployments, s: _Setting, req: PlanRequest
) -> tuple[SteadyGrid, list[int], bool] | None:
    """The closed form over one setting's (concurrency, chunk) grid; None when nothing fits."""
    dep = deps.get(s.precision, s.kv_bytes, s.tp, s.fusion)
    capacity = _capacity(dep, req, s.pp)
    if capacity < max(1, s.pp):
        return None
    batches = [b for b in BATCH_CHOICES if s.pp <= b <= capacity]
    limited = capacity < BATCH_CHOICES[-1] and capacity not in batches
    if limited:
        batches.append(capacity)
    grid = chunked_steady_state(
        dep,
        batches,
        CHUNK_CHOICES,
        req.input_len,
        req.output_len,
        prefix_hit_rate=s.prefix_hit_rate,
        spec=None if s.spec is None else s.spec.spec,
        pp=s.pp,
    )
    return grid, batches, limited


def _grid(
    deps: _Deployments, s: _Setting, req: PlanRequest, extra: Sequence[str] = ()
) -> list[Candidate]:
    """Every (concurrency, chunk) candidate of one setting, through the closed form."""
    found = _grid_arrays(deps, s, req)
    if found is None:
        return []
    grid, batches, limited = found
    capacity = batches[-1]
    names = list(extra)
    if (s.precision in QUANTIZED and s.kv_bytes is None) or s.kv_bytes == 1:
        names.append(f"kv_cache_{s.kv_name}")
    if s.spec is not None:
        names.append(s.spec.pass_name)
    if s.prefix_hit_rate > 0:
        names.append("prefix_caching")
    passes = tuple(names)
    out: list[Candidate] = []
    ttfts, tpots = (grid.ttft_s * 1e3).tolist(), (grid.tpot_s * 1e3).tolist()
    tokens, sustained = grid.tokens_per_s.tolist(), grid.sustained.tolist()
    for i, b in enumerate(batches):
        for j, chunk in enumerate(CHUNK_CHOICES):
            ttft, tpot = ttfts[i][j], tpots[i][j]
            out.append(
                Candidate(
                    precision=s.precision,
                    kv_cache=s.kv_name,
                    tp=s.tp,
                    pp=s.pp,
                    replicas=s.replicas,
                    max_num_seqs=max(1, math.floor(sustained[i][j])),
                    prefill_chunk=chunk,
                    passes=passes,
                    output_tokens_per_s=tokens[i][j] * s.replicas,
                    tokens_per_s_per_user=1e3 / tpot,
                    ttft_p99_ms=ttft,
                    tpot_p99_ms=tpot,
                    slo_violation=req.slo.violation(ttft, tpot),
                    kv_limited=limited and b == capacity,
                )
            )
    return out


def _search(
    deps: _Deployments,
    precisions: Sequence[str],
    layouts: Sequence[tuple[int, int]],
    devices: int,
    req: PlanRequest,
    specs: Sequence[P.SpecMethod | None],
    extra: Sequence[str],
) -> tuple[list[Candidate], int]:
    out: list[Candidate] = []
    evaluated = 0
    for precision in precisions:
        for kv_name, kv_bytes in _kv_options(deps.chip, precision, req):
            for tp, pp in layouts:
                for spec in specs:
                    s = _Setting(
                        precision,
                        kv_name,
                        kv_bytes,
                        tp,
                        pp,
                        devices // (tp * pp),
                        spec,
                        req.prefix_hit_rate,
                    )
                    cands = _grid(deps, s, req, extra)
                    evaluated += len(cands)
                    out += cands
    return _dedupe(out), evaluated


def _dedupe(cands: Iterable[Candidate]) -> list[Candidate]:
    seen: dict[tuple[object, ...], Candidate] = {}
    for c in cands:
        key = (c.precision, c.kv_cache, c.tp, c.pp, c.max_num_seqs, c.prefill_chunk, c.passes)
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


def _best(cands: Sequence[Candidate]) -> Candidate | None:
    ok = [c for c in cands if c.meets_slo]
    if not ok:
        return None
    return max(ok, key=lambda c: (c.output_tokens_per_s_per_device, c.tokens_per_s_per_user))


def _min_layout(
    deps: _Deployments, precisions: Sequence[str], req: PlanRequest
) -> tuple[int, int] | None:
    """The (tp, pp) of fewest devices that holds the weights and one full sequence."""
    for tp, pp in _layouts(deps.model, MAX_DEVICES, False) + _layouts(
        deps.model, MAX_DEVICES, True
    ):
        for precision in precisions:
            for _, kv_bytes in _kv_options(deps.chip, precision, req):
                if _capacity(deps.get(precision, kv_bytes, tp), req, pp) >= pp:
                    return tp, pp
    return None


def _spec_options(model: Model, req: PlanRequest) -> list[P.SpecMethod | None]:
    """Speculative decoding in the main search: the request's, else the model's MTP module
    (weighed against none), else none."""
    if req.spec_acceptance is not None:
        asked = P.mtp_method(model, req.spec_acceptance) or P.draft_method(req.spec_acceptance)
        return [asked]
    mtp = P.mtp_method(model)
    return [None] if mtp is None else [None, mtp]


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
    signature = operator_signature(model) or {}
    deps = _Deployments(chip, model, supplemented, host, set(signature))
    layout = _min_layout(deps, precisions, req)
    if layout is None:
        return _no_plan(
            model,
            chip,
            req,
            coverage,
            "does_not_fit",
            f"{model.name} does not fit {MAX_DEVICES} x {chip.name} ({PP_CHOICES[-1]} pipeline"
            f" stages of {TP_CHOICES[-1]}-way tensor parallel) at {'/'.join(precisions)} with"
            f" one {req.input_len + req.output_len}-token sequence",
            lines,
        )
    needed = layout[0] * layout[1]
    devices = req.devices if req.devices is not None else needed
    if devices < needed:
        return _no_plan(
            model,
            chip,
            req,
            coverage,
            "needs_devices",
            f"needs {needed} x {chip.name} ({_layout_text(*layout)}) to hold the weights and"
            f" one sequence's KV cache; the budget is {devices}",
            lines,
            devices_needed=needed,
        )
    pipeline = layout[1] > 1
    layouts = [(t, p) for t, p in _layouts(model, devices, pipeline) if t * p >= needed]
    lines.append(
        f"devices {devices}: "
        + (
            "the budget"
            if req.devices is not None
            else "the fewest that hold the weights and a KV cache"
        )
        + f"; replica layouts searched {', '.join(_layout_text(t, p) for t, p in layouts)}"
        f" (tp divides the {model.arch.num_attention_heads} heads within one"
        f" {TP_CHOICES[-1]}-device node"
        + (
            f"; one node's tensor parallelism cannot hold {model.name}, so pipeline stages"
            " of a whole node each, across nodes"
            if pipeline
            else ""
        )
        + f"; at least {needed} devices to fit), the rest data-parallel replicas"
    )
    fused = ("operator_fusion",) if deps.native_fused else ()
    cands, evaluated = _search(
        deps, precisions, layouts, devices, req, _spec_options(model, req), fused
    )
    best = _best(cands)
    passes = _passes(deps, req, best, cands)
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
    lines += [
        f"pass {p.name}: " + ("applied" if p.applied else "not applied") + f" ({p.reason})"
        for p in passes
        if p.applied
    ]
    verdict: Verdict
    if best.devices > 1 and req.devices is None:
        verdict = "needs_devices"
        reason = f"needs {best.devices} x {chip.name}" + (
            f" ({_layout_text(best.tp, best.pp)})" if best.pp > 1 else ""
        )
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


def _layout_text(tp: int, pp: int) -> str:
    return f"tp {tp}" if pp == 1 else f"pp {pp} x tp {tp}"


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
    for tp, pp in sorted({(c.tp, c.pp) for c in cands} - {(best.tp, best.pp)}):
        other = best_of(lambda c, tp=tp, pp=pp: (c.tp, c.pp) == (tp, pp))
        if other is not None:
            lines.append(
                f"{_layout_text(best.tp, best.pp)} x {best.replicas} replicas over"
                f" {_layout_text(tp, pp)} x {other.replicas}: {per_dev:.0f} vs"
                f" {other.output_tokens_per_s_per_device:.0f} tokens/s per device"
            )
        else:
            lines.append(f"{_layout_text(tp, pp)}: no configuration meets the SLO or fits")
    cap = "the KV cache holds no more" if best.kv_limited else "more would break the SLO or gain"
    bigger = [
        c
        for c in cands
        if c.precision == best.precision
        and c.tp == best.tp
        and c.pp == best.pp
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


def _rate(deps: _Deployments, s: _Setting, req: PlanRequest) -> float | None:
    """Best throughput per device of one setting under the SLO (None: none meets it); the
    same choice as :func:`_best` over :func:`_grid`, without building the candidates."""
    found = _grid_arrays(deps, s, req)
    if found is None:
        return None
    grid = found[0]
    ok = np.ones(grid.tokens_per_s.shape, dtype=bool)
    if req.slo.ttft_ms is not None:
        ok &= grid.ttft_s * 1e3 <= req.slo.ttft_ms
    if req.slo.tpot_ms is not None:
        ok &= grid.tpot_s * 1e3 <= req.slo.tpot_ms
    if not ok.any():
        return None
    return float(grid.tokens_per_s[ok].max()) / (s.tp * s.pp)


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den <= 0 else num / den


def _gain_text(gain: float | None, without: float | None) -> str:
    if gain is not None:
        return f"x{gain:.2f} tokens/s per device"
    return "without it no configuration meets the SLO" if without is None else "no gain figure"


def _passes(
    deps: _Deployments, req: PlanRequest, best: Candidate | None, cands: Sequence[Candidate]
) -> list[PassResult]:
    """Every pass's modelled gain at the best plan's precision and parallelism (concurrency
    and chunk chosen again under the SLO), applied or not, and why."""
    model, chip = deps.model, deps.chip
    names = [
        "operator_fusion",
        f"kv_cache_{_kv_format(chip) or 'quantized'}",
        "speculative_decoding_mtp",
        "speculative_decoding",
        "prefix_caching",
    ]
    if best is None:
        why = "no configuration meets the SLO or fits, so no gain is priced"
        return [PassResult(n, False, None, why) for n in names]
    mtp_used = "speculative_decoding_mtp" in best.passes
    draft_used = "speculative_decoding" in best.passes
    spec: P.SpecMethod | None = None
    if mtp_used:
        spec = P.mtp_method(model, req.spec_acceptance)
    elif draft_used:
        spec = P.draft_method(req.spec_acceptance)
    quant_kv = best.precision in QUANTIZED or best.kv_cache != best.precision
    base = _Setting(
        best.precision,
        best.kv_cache,
        1 if best.kv_cache != best.precision else None,
        best.tp,
        best.pp,
        best.replicas,
        spec,
        req.prefix_hit_rate,
    )
    rate = best.output_tokens_per_s_per_device
    out: list[PassResult] = []

    # operator fusion
    if not deps.fusable:
        out.append(
            PassResult(
                "operator_fusion",
                False,
                None,
                "the model's export has no fused operator whose primitive rewrite is priced",
            )
        )
    else:
        unfused = _rate(deps, replace(base, fusion="none"), req)
        have, lack = deps.native_fused, [op for op in deps.fusable if op not in deps.native_fused]
        assumption = (
            "fused kernels read their inputs and write their output once; the primitive graphs"
            " pay the passes of the rewrites (supplemented_cost.py; an upper bound)"
        )
        if not lack:
            gain = _ratio(rate, unfused)
            why = (
                f"the runtime's fused {', '.join(have)} kernels against the same graph run as"
                f" primitives: {_gain_text(gain, unfused)}"
            )
            out.append(PassResult("operator_fusion", True, gain, why, assumption=assumption))
        else:
            full = _rate(deps, replace(base, fusion="all"), req)
            if have:
                gain = _ratio(rate, unfused)
                why = (
                    f"fused {', '.join(have)} ({_gain_text(gain, unfused)} over primitives);"
                    f" the runtime lacks fused {', '.join(lack)}, run as primitives: vendor"
                    f" kernels would gain a further x{_ratio(full, rate) or 1.0:.2f}"
                )
                out.append(PassResult("operator_fusion", True, gain, why, assumption=assumption))
            else:
                gain = _ratio(full, unfused)
                why = (
                    f"the runtime has no fused {', '.join(lack)} kernel: they run as primitives"
                    f" (supplemented); fused kernels would gain {_gain_text(gain, unfused)}"
                )
                out.append(PassResult("operator_fusion", False, gain, why, assumption=assumption))

    # quantized KV cache
    kv = _kv_format(chip)
    lossy = "lossy: accuracy not measured without the weights"
    if quant_kv:
        name = f"kv_cache_{best.kv_cache}"
        without = _rate(deps, replace(base, kv_name="16-bit", kv_bytes=2), req)
        gain = _ratio(rate, without)
        why = (
            "one byte per cached element against two: more sequences fit and decode attention"
            f" reads half; {_gain_text(gain, without)}"
            + (f"; it follows the {best.precision} weights" if best.precision in QUANTIZED else "")
            + f" ({lossy})"
        )
        out.append(PassResult(name, True, gain, why))
    elif kv is None:
        out.append(
            PassResult("kv_cache_quantized", False, None, f"{chip.name} has no fp8 or int8 format")
        )
    else:
        with_ = _rate(deps, replace(base, kv_name=kv, kv_bytes=1), req)
        gain = _ratio(with_, rate)
        why = f"{kv} KV cache would give {_gain_text(gain, rate)}; not applied: " + (
            "it did not raise throughput per device under the SLO"
            if req.allow_quantized
            else f"{lossy}; allow it with --allow-quantized"
        )
        out.append(PassResult(f"kv_cache_{kv}", False, gain, why))

    # speculative decoding: the model's MTP module
    mtp = P.mtp_method(model)
    if mtp is None:
        out.append(
            PassResult(
                "speculative_decoding_mtp",
                False,
                None,
                f"{model.name}'s checkpoint has no multi-token-prediction module",
            )
        )
    elif mtp_used and spec is not None:
        without = _rate(deps, replace(base, spec=None), req)
        gain = _ratio(rate, without)
        why = (
            "the checkpoint's MTP module drafts and the model verifies (the output distribution"
            f" is kept): {_gain_text(gain, without)}"
        )
        out.append(
            PassResult("speculative_decoding_mtp", True, gain, why, assumption=spec.assumption)
        )
    else:
        with_ = _rate(deps, replace(base, spec=mtp), req)
        gain = _ratio(with_, rate)
        why = f"would give {_gain_text(gain, rate)}; not applied: " + (
            "a draft model is applied instead" if draft_used else "it does not gain under the SLO"
        )
        out.append(
            PassResult("speculative_decoding_mtp", False, gain, why, assumption=mtp.assumption)
        )

    # speculative decoding: a draft model
    if draft_used and spec is not None:
        without = _rate(deps, replace(base, spec=None), req)
        gain = _ratio(rate, without)
        out.append(
            PassResult(
                "speculative_decoding",
                True,
                gain,
                f"a draft model at the acceptance asked for: {_gain_text(gain, without)}",
                assumption=spec.assumption,
            )
        )
    else:
        draft = P.draft_method()
        with_ = _rate(deps, replace(base, spec=draft), req)
        gain = _ratio(with_, rate)
        out.append(
            PassResult(
                "speculative_decoding",
                False,
                gain,
                f"would give {_gain_text(gain, rate)}"
                + (" in place of the MTP module" if mtp_used else "")
                + "; not applied: it needs a draft model of the same tokenizer, and its"
                " acceptance is the workload's (give --spec-accept A)",
                assumption=draft.assumption,
            )
        )

    # prefix caching
    if req.prefix_hit_rate > 0:
        without = _rate(deps, replace(base, prefix_hit_rate=0.0), req)
        gain = _ratio(rate, without)
        out.append(
            PassResult(
                "prefix_caching",
                True,
                gain,
                f"{req.prefix_hit_rate:.0%} of prompt tokens served from the prefix cache:"
                f" {_gain_text(gain, without)}",
                assumption=f"hit rate {req.prefix_hit_rate:g} (as asked)",
            )
        )
    else:
        h = P.DEFAULT_PREFIX_HIT_RATE
        with_ = _rate(deps, replace(base, prefix_hit_rate=h), req)
        gain = _ratio(with_, rate)
        out.append(
            PassResult(
                "prefix_caching",
                False,
                gain,
                f"at a {h:.0%} hit rate it would give {_gain_text(gain, rate)}; not applied:"
                " the hit rate is the workload's (give --prefix-hit H)",
                assumption=f"hit rate {h:g}: a chat service with a shared system prompt and"
                " multi-turn history (an assumption)",
            )
        )
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
    Speculative decoding runs in the simulator (with the KV cache reserved at admission, as
    it needs) where the model has no sliding window; prefix caching and pipeline stages are
    not simulated: a plan with stages is not replayed, and one with prefix caching is
    replayed without it, at the load it would carry without it."""
    best, req = plan.best, plan.request
    if best is None:
        return plan
    if best.pp > 1:
        line = "serving simulator: not replayed (it models one tensor-parallel replica, no stages)"
        return replace(plan, explanation=(*plan.explanation, line))
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
    method: P.SpecMethod | None = None
    if "speculative_decoding_mtp" in best.passes:
        method = P.mtp_method(model, req.spec_acceptance)
    elif "speculative_decoding" in best.passes:
        method = P.draft_method(req.spec_acceptance)
    left_out = [p for p in best.passes if p == "prefix_caching"]
    if method is not None and dep.shape.sliding_window is not None:
        left_out.append(method.pass_name)
        method = None
    per_replica = best.output_tokens_per_s / best.replicas
    for p in plan.passes:
        if p.name in left_out and p.applied and p.gain:
            # The simulator cannot apply it: load it at what the plan would do without it.
            per_replica /= p.gain
    qps = SIM_LOAD * per_replica / req.output_len
    # Replicas are identical and split Poisson arrivals evenly: simulate one.
    n = min(SIM_REQUESTS[1], max(SIM_REQUESTS[0], 4 * best.max_num_seqs))
    workload = Workload.poisson(n, qps, req.input_len, req.output_len, seed)
    config = ServingConfig(
        max_num_seqs=best.max_num_seqs,
        max_num_batched_tokens=max(best.prefill_chunk, best.max_num_seqs),
        reserve_kv_at_admission=method is not None,
    )
    summary = simulate(dep, workload, config, None if method is None else method.spec).summary()
    ttft, tpot = summary.ttft_s.p99 * 1e3, summary.tpot_s.p99 * 1e3
    note = f"simulated without {', '.join(left_out)}" if left_out else ""
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
        + (f"; with {method.pass_name}" if method is not None else "")
    )
    return replace(plan, simulated=check, explanation=(*plan.explanation, line))
