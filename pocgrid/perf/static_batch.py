"""Static-batch prediction: one batch prefilled together, then decoded in lockstep.

This is what TensorRT-LLM's ``gptSessionBenchmark`` measures (the reference rows): the
prefill of the whole batch yields the first token (TTFT), then ``output_len - 1`` decode
steps yield the rest. No scheduler, no queueing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.llm import LlmDeployment, MemoryFit
from pocgrid.perf.roofline import Bound


@dataclass(frozen=True, slots=True)
class StaticBatchResult:
    """Prediction for one replica running a static batch (times in seconds)."""

    batch: int
    input_len: int
    output_len: int
    memory: MemoryFit
    ttft_s: float | None
    """Prefill of the whole batch; None when the deployment does not fit."""
    tpot_s: float | None
    """Mean decode step time; None when it does not fit or output_len is 1."""
    total_s: float | None
    prefill_bound: Bound
    decode_bound: Bound | None

    @property
    def fits(self) -> bool:
        return self.memory.fits

    @property
    def output_tokens_per_s(self) -> float | None:
        """Output tokens per second of this replica."""
        if self.total_s is None:
            return None
        return self.batch * self.output_len / self.total_s


def validate_lengths(batch: int, input_len: int, output_len: int) -> None:
    if batch < 1:
        raise PerfInputError("batch", "must be >= 1")
    if input_len < 1:
        raise PerfInputError("input_len", "must be >= 1")
    if output_len < 1:
        raise PerfInputError("output_len", "must be >= 1")


def static_memory_fit(
    deployment: LlmDeployment, batch: int, input_len: int, output_len: int
) -> MemoryFit:
    """Per-device memory of a static batch: every sequence's KV cache at its full length, and
    the prefill of the whole batch as the activation peak. The one fit model: ``predict`` and
    ``pocgrid.perf.check_fit`` (the adapter's CheckFit) both price memory with it."""
    kv = batch * deployment.kv_bytes_for_sequence(input_len + output_len)
    return deployment.memory_fit(kv_cache_bytes=kv, max_tokens=batch * input_len, max_logits=batch)


@dataclass(frozen=True, slots=True)
class SpecDecoding:
    """Speculative decoding: a draft proposes ``draft_tokens`` tokens, the model verifies them
    in one pass, and on average ``acceptance_length`` tokens per sequence come out of each
    verification (the accepted drafts plus the one the model adds itself)."""

    acceptance_length: float
    """Mean tokens emitted per verification step, 1 <= a <= draft_tokens + 1 (EAGLE, MTP and
    Medusa papers report it for their draft length)."""
    draft_tokens: int | None = None
    """Tokens drafted per step, k; default ceil(a) - 1, the fewest that can reach ``a``."""
    draft_cost: float = 0.0
    """Time to draft one token, as a share of the model's own plain decode step at the same
    batch and context (0.05-0.1 for a small draft model; 0 when the draft heads' cost is
    negligible)."""

    def __post_init__(self) -> None:
        if not (self.acceptance_length >= 1.0 and math.isfinite(self.acceptance_length)):
            raise PerfInputError("acceptance_length", "must be a number >= 1")
        if self.draft_tokens is not None and self.draft_tokens < 0:
            raise PerfInputError("draft_tokens", "must be >= 0")
        if self.acceptance_length > self.drafted + 1:
            raise PerfInputError("acceptance_length", "must be <= draft_tokens + 1")
        if not (self.draft_cost >= 0.0 and math.isfinite(self.draft_cost)):
            raise PerfInputError("draft_cost", "must be >= 0")

    @property
    def drafted(self) -> int:
        if self.draft_tokens is not None:
            return self.draft_tokens
        return max(0, math.ceil(self.acceptance_length) - 1)


def predict_static(
    deployment: LlmDeployment,
    batch: int,
    input_len: int,
    output_len: int,
    spec: SpecDecoding | None = None,
) -> StaticBatchResult:
    """Price a static batch on one replica of ``deployment``."""
    validate_lengths(batch, input_len, output_len)
    table = deployment.op_table
    memory = static_memory_fit(deployment, batch, input_len, output_len)
    prefill = table.evaluate(deployment.prefill_features(batch, input_len)[:, None])
    prefill_bound = prefill.dominant_bound()
    decode_bound: Bound | None = None
    decode_s = 0.0
    if output_len > 1:
        accept = 1.0 if spec is None else spec.acceptance_length
        drafted = 0 if spec is None else spec.drafted
        # Verification step j (0-based) starts with input_len + accept * j tokens cached and
        # emits ``accept`` tokens per sequence on average: ceil((out - 1) / accept) steps.
        steps = math.ceil((output_len - 1) / accept)
        cached = input_len + accept * np.arange(steps, dtype=np.float64)
        decode = table.evaluate(deployment.decode_features(batch, cached, drafted))
        decode_s = float(decode.seconds.sum())
        if spec is not None and drafted and spec.draft_cost:
            plain = table.evaluate(deployment.decode_features(batch, cached))
            decode_s += spec.draft_cost * drafted * float(plain.seconds.sum())
        decode_bound = decode.dominant_bound()
    if not memory.fits:
        return StaticBatchResult(
            batch, input_len, output_len, memory, None, None, None, prefill_bound, decode_bound
        )
    ttft = float(prefill.seconds[0])
    tpot = decode_s / (output_len - 1) if output_len > 1 else None
    return StaticBatchResult(
        batch=batch,
        input_len=input_len,
        output_len=output_len,
        memory=memory,
        ttft_s=ttft,
        tpot_s=tpot,
        total_s=ttft + decode_s,
        prefill_bound=prefill_bound,
        decode_bound=decode_bound,
    )
