"""Closed-form steady state of continuous batching with chunked prefill, for many settings at once.

The serving simulator (:mod:`pocgrid.perf.serving`) replays arrivals step by step; a planner
that prices thousands of (concurrency, prefill chunk) settings per deployment needs the steady
state directly. In it:

- each engine step decodes ``s`` sequences at the mean context ``input + output / 2`` and
  prefills the prompt tokens that keep the batch full, ``P = prompt * s / steps_per_request``;
- a step that carries a whole chunk ``C`` is the slow step: TPOT p99 is its time (divided by
  the tokens a step emits), and a prompt needs ``ceil(prompt / C)`` of them, which with one
  more slow step bounds TTFT p99;
- when ``C < P`` the prefill cannot keep up and the sustained concurrency drops to
  ``C * steps_per_request / prompt``.

Speculative decoding is the performance model's :class:`~pocgrid.perf.static_batch.SpecDecoding`
priced exactly as the static predictor and the simulator price it (``decode_features`` with the
drafted tokens, plus ``draft_cost`` plain decode steps per drafted token); a step emits
``acceptance_length`` tokens per sequence. Prefix caching at hit rate ``h`` prefills only the
uncached ``(1 - h)`` tail of each prompt, whose queries still attend to the cached head (read
once per chunk); the cache keeps every sequence's whole context (shared prefix blocks are not
deduplicated: conservative on memory).

Pipeline parallelism over ``pp`` stages (each ``tp`` devices, ``1/pp`` of the layers) keeps
``pp`` micro-batches in flight: a tick is one stage's share of a step over a micro-batch of
``s / pp`` sequences plus the hand-off of its activations over the inter-node link; a token
takes ``pp`` ticks. The stage split is taken as even (the LM head's stage is not singled out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from pocgrid.perf.efficiency import GIB_BYTES
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.llm import (
    F_CONST,
    F_EXPERTS,
    F_LOGITS,
    F_PRE_CTX_READ,
    F_PRE_PAIRS,
    F_PRE_PAIRS_WIN,
    F_PRE_TOKENS,
    F_TOKENS,
    FEATURES,
    LlmDeployment,
    window_sum,
)
from pocgrid.perf.roofline import FloatArray, OpTable, combine_terms
from pocgrid.perf.serving import ServingConfig, kv_cache_blocks
from pocgrid.perf.static_batch import SpecDecoding

#: Inter-node bandwidth per device for pipeline hand-offs (bytes/s, one direction) and the
#: latency of one hand-off: a 200 Gb/s RDMA NIC per device at 80 %, 10 us. An *estimate*: the
#: catalogue has no scale-out network figures.
PP_LINK_BYTES_PER_S: Final = 200e9 / 8 * 0.8
PP_HANDOFF_S: Final = 10e-6


@dataclass(frozen=True, slots=True)
class SteadyGrid:
    """One replica's steady state for every (concurrency, chunk) pair; arrays (batches, chunks)."""

    batches: tuple[int, ...]
    chunks: tuple[int, ...]
    tokens_per_s: FloatArray
    """Output tokens per second of the replica."""
    ttft_s: FloatArray
    """TTFT p99 bound: ``ceil(prompt / chunk) + 1`` slow steps."""
    tpot_s: FloatArray
    """TPOT p99 bound: the slow step over the tokens a step emits."""
    sustained: FloatArray
    """Sequences in flight the prefill keeps up with (<= the batch)."""


def step_seconds(table: OpTable, x: FloatArray) -> FloatArray:
    """Times of the steps in the columns of ``x`` (no bound attribution)."""
    c, m, n = table.op_seconds(x)
    out: FloatArray = combine_terms(c, m, n, table.overlap_exponent).sum(axis=0)
    return out + table.total_overhead_s


def _experts(dep: LlmDeployment, tokens: FloatArray) -> FloatArray:
    moe = dep.shape.moe
    if moe is None:
        return np.zeros_like(tokens)
    miss = 1.0 - moe.experts_per_token / moe.experts
    out: FloatArray = moe.experts * (1.0 - np.power(miss, np.maximum(tokens, 0.0)))
    return out


def validate(input_len: int, output_len: int, prefix_hit_rate: float, pp: int) -> None:
    if input_len < 1:
        raise PerfInputError("input_len", "must be >= 1")
    if output_len < 1:
        raise PerfInputError("output_len", "must be >= 1")
    if not 0.0 <= prefix_hit_rate < 1.0:
        raise PerfInputError("prefix_hit_rate", "must be in [0, 1)")
    if pp < 1:
        raise PerfInputError("pp", "must be >= 1")


def chunked_steady_state(
    dep: LlmDeployment,
    batches: Sequence[int],
    chunks: Sequence[int],
    input_len: int,
    output_len: int,
    *,
    prefix_hit_rate: float = 0.0,
    spec: SpecDecoding | None = None,
    pp: int = 1,
) -> SteadyGrid:
    """The steady state of one replica of ``dep`` (``pp`` pipeline stages of its ``tp``) at
    every concurrency in ``batches`` x every prefill chunk in ``chunks``."""
    validate(input_len, output_len, prefix_hit_rate, pp)
    b = np.asarray(batches, dtype=np.float64)[:, None]
    c = np.asarray(chunks, dtype=np.float64)[None, :]
    prompt = max(1, math.ceil(input_len * (1.0 - prefix_hit_rate)))
    cached_head = input_len - prompt
    accept = 1.0 if spec is None else spec.acceptance_length
    drafted = 0 if spec is None else spec.drafted
    steps_per_request = output_len / accept
    need = prompt * b / steps_per_request
    sustained = np.where(need <= c, b, c * steps_per_request / prompt) * np.ones_like(c)
    ctx = np.array([input_len + output_len / 2.0])
    # Per decoding sequence: a verification step (k drafts + 1) and a plain step, for drafting.
    per_seq = dep.decode_features(1, ctx, drafted)[:, 0].copy()
    plain_seq = dep.decode_features(1, ctx)[:, 0].copy()
    per_seq[F_CONST] = plain_seq[F_CONST] = 0.0
    per_seq[F_EXPERTS] = plain_seq[F_EXPERTS] = 0.0
    # Per prefilled token of a prompt's uncached tail (positions cached_head+1 .. input_len).
    window = dep.shape.sliding_window
    pre_tok = np.zeros(len(FEATURES))
    pre_tok[F_TOKENS] = pre_tok[F_PRE_TOKENS] = 1.0
    pre_tok[F_PRE_PAIRS] = window_sum(cached_head + 1, input_len, None) / prompt
    pre_tok[F_PRE_PAIRS_WIN] = window_sum(cached_head + 1, input_len, window) / prompt
    pre_tok[F_LOGITS] = 1.0 / prompt
    # Each chunk re-reads what is cached before it: the head, then the earlier chunks.
    n_chunks = np.ceil(prompt / c)
    chunk_starts = cached_head * n_chunks + np.minimum(c, prompt) * n_chunks * (n_chunks - 1) / 2
    read_per_token = chunk_starts / prompt

    def features(seqs: FloatArray, pre: FloatArray) -> FloatArray:
        flat_s, flat_p = seqs.ravel(), pre.ravel()
        x = np.outer(per_seq, flat_s) + np.outer(pre_tok, flat_p)
        x[F_PRE_CTX_READ] += (read_per_token * pre).ravel()
        x[F_CONST] = 1.0
        x[F_EXPERTS] = _experts(dep, x[F_TOKENS])
        return x

    table = dep.op_table
    shape = sustained.shape
    prefill = prompt * sustained / steps_per_request
    slow_pre = np.minimum(c, prompt) * np.ones_like(b)
    # With pipeline stages a step is one micro-batch's: 1/pp of the sequences and of the mean
    # prefill, while the slow micro-batch carries a whole chunk.
    # Mean and slow steps in one product (this is the planner's inner loop).
    both = step_seconds(
        table,
        np.hstack([features(sustained / pp, prefill / pp), features(sustained / pp, slow_pre)]),
    )
    mean_t, slow_t = both[: sustained.size].reshape(shape), both[sustained.size :].reshape(shape)
    if drafted and spec is not None and spec.draft_cost:
        xp = np.outer(plain_seq, (sustained / pp).ravel())
        xp[F_CONST] = 1.0
        xp[F_EXPERTS] = _experts(dep, xp[F_TOKENS])
        draft = spec.draft_cost * drafted * step_seconds(table, xp).reshape(shape)
        mean_t, slow_t = mean_t + draft, slow_t + draft
    if pp > 1:
        # A stage runs 1/pp of the layers, then hands the micro-batch's hidden states on.
        act = dep.shape.hidden * dep.act_bytes
        dec_tokens = sustained / pp * per_seq[F_TOKENS]
        hand_mean = PP_HANDOFF_S + act * (dec_tokens + prefill / pp) / PP_LINK_BYTES_PER_S
        hand_slow = PP_HANDOFF_S + act * (dec_tokens + slow_pre) / PP_LINK_BYTES_PER_S
        tick_mean, tick_slow = mean_t / pp + hand_mean, slow_t / pp + hand_slow
        # A micro-batch finishes a step every tick; a token takes pp ticks.
        mean_t, slow_t = tick_mean, pp * tick_slow
        tokens = (sustained / pp) * accept / mean_t
    else:
        tokens = sustained * accept / mean_t
    return SteadyGrid(
        batches=tuple(int(x) for x in batches),
        chunks=tuple(int(x) for x in chunks),
        tokens_per_s=tokens,
        ttft_s=(n_chunks + 1) * slow_t,
        tpot_s=slow_t / accept,
        sustained=sustained,
    )


def replica_capacity(
    dep: LlmDeployment, config: ServingConfig, seq_tokens: int, pp: int = 1
) -> int:
    """Whole sequences of ``seq_tokens`` one replica's KV cache holds (0: the model does not
    fit), as :func:`~pocgrid.perf.serving.kv_cache_blocks` sizes the cache; with ``pp``
    stages each device holds ``1/pp`` of the weights and of every sequence's cache."""
    if pp < 1:
        raise PerfInputError("pp", "must be >= 1")
    per_seq = -(-seq_tokens // config.block_size)
    if pp == 1:
        return kv_cache_blocks(dep, config) // per_seq
    memory = dep.memory_gib * GIB_BYTES
    used = (
        dep.weights_bytes_device() / pp
        + dep.activation_bytes(config.max_num_batched_tokens, config.max_num_seqs)
        + dep.params.runtime_reserve_gib * GIB_BYTES
    )
    if config.kv_cache_free_fraction is not None:
        budget = (memory - used) * config.kv_cache_free_fraction
    else:
        budget = memory * config.gpu_memory_utilization - used
    block_bytes = config.block_size * dep.kv_bytes_per_token_device() / pp
    return max(0, int(budget // block_bytes)) // per_seq
