"""Static-batch prediction: one batch prefilled together, then decoded in lockstep.

This is what TensorRT-LLM's ``gptSessionBenchmark`` measures (the reference rows): the
prefill of the whole batch yields the first token (TTFT), then ``output_len - 1`` decode
steps yield the rest. No scheduler, no queueing.
"""

from __future__ import annotations

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


def predict_static(
    deployment: LlmDeployment, batch: int, input_len: int, output_len: int
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
        # Step k (1-based) decodes with input_len + k - 1 tokens already cached.
        cached = input_len + np.arange(output_len - 1, dtype=np.float64)
        decode = table.evaluate(deployment.decode_features(batch, cached))
        decode_s = float(decode.seconds.sum())
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
