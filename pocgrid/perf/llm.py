"""Decoder-only transformer cost model built from a catalogue ``LlmArch``.

A :class:`LlmDeployment` (chip, model, precision, tensor-parallel degree) turns the model's
shapes into an :class:`~pocgrid.perf.roofline.OpTable` whose operators are linear in a small
step-feature vector (see ``F_*``). Prefill, decode and mixed continuous-batching steps are
all priced by the same table, so the static predictor and the serving simulator agree.

Conventions: FLOPs count a multiply-add as 2; weight, KV-cache and activation bytes follow
the precision (fp8/int8 quantise weights and the KV cache, activations stay 16-bit); all
quantities are per device after tensor-parallel sharding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np

from pocgrid.catalog import PRECISION_BYTES, PRECISIONS, Chip, LlmArch, Model
from pocgrid.perf.collective import bus_factor
from pocgrid.perf.efficiency import (
    GIB_BYTES,
    LOW_PRECISIONS,
    ChipCeilings,
    EfficiencyData,
    PerfParams,
    default_efficiency,
)
from pocgrid.perf.errors import PerfInputError, UnsupportedInput
from pocgrid.perf.roofline import FloatArray, OpTable

QUANTIZED: Final[dict[str, str]] = {
    "w8a8": "8-bit weights and activations (SmoothQuant-style int8 GEMMs), 16-bit KV cache",
    "w4a16": "4-bit weights in groups with a 16-bit scale each (GPTQ/AWQ), 16-bit GEMMs "
    "after in-kernel dequantisation, 16-bit KV cache",
}
"""Quantised-weight schemes the cost model accepts where a precision is."""
PERF_PRECISIONS: Final = (*PRECISIONS, *QUANTIZED)
"""The catalogue's precisions and the quantised-weight schemes."""
DEFAULT_GROUP_SIZE: Final = 128
"""Weights per 16-bit scale in w4a16 (GPTQ's and AWQ's usual group)."""
SCALE_BYTES: Final = 2.0

# Step features: every operator's FLOPs and bytes are linear in these (per device).
F_CONST: Final = 0
F_TOKENS: Final = 1
"""Tokens processed this step (rows of every GEMM): decode tokens + prefill chunk tokens."""
F_LOGITS: Final = 2
"""Sequences that emit a token this step (rows of the LM head)."""
F_DEC_CTX: Final = 3
"""Sum over decode sequences of the context each attends (cached tokens + the new one)."""
F_DEC_CTX_WIN: Final = 4
"""Same, capped at the sliding window (used by sliding-window layers)."""
F_PRE_PAIRS: Final = 5
"""Sum over prefill tokens of the keys each attends (causal): query-key pairs."""
F_PRE_PAIRS_WIN: Final = 6
F_PRE_TOKENS: Final = 7
"""Prefill tokens (their q/k/v/o move through attention)."""
F_PRE_CTX_READ: Final = 8
"""Cached tokens re-read by prefill chunks that continue an earlier chunk."""
F_EXPERTS: Final = 9
"""Expected distinct routed experts one MoE layer loads this step."""
FEATURES: Final = (
    "const",
    "tokens",
    "logits",
    "decode_ctx",
    "decode_ctx_window",
    "prefill_pairs",
    "prefill_pairs_window",
    "prefill_tokens",
    "prefill_ctx_read",
    "experts_loaded",
)

# Working set of one layer per token in a forward pass: residual, normed input, attention
# output and FFN intermediates; activations are reused layer to layer.
_ACTIVATION_HIDDEN_COPIES: Final = 4
_LOGIT_BYTES: Final = 4  # logits are materialised in fp32 for sampling


@dataclass(frozen=True, slots=True)
class MoeShape:
    """Routed-expert FFN of one MoE layer."""

    experts: int
    experts_per_token: int
    expert_weights: float
    """Elements of one routed expert (gate/up/down)."""
    shared_weights: float
    """Elements always active per MoE layer: shared experts and the router."""
    shared_experts: int
    width: int
    """Intermediate size of one expert."""

    def experts_loaded(self, tokens: float) -> float:
        """Expected distinct experts ``tokens`` routed tokens touch (uniform routing)."""
        if tokens <= 0:
            return 0.0
        miss = 1.0 - self.experts_per_token / self.experts
        return self.experts * (1.0 - math.pow(miss, tokens))


@dataclass(frozen=True, slots=True)
class TransformerShape:
    """Sizes of a decoder-only transformer that the cost model needs."""

    name: str
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    attention_type: str
    gated_ffn: bool
    total_params: float
    """Parameters (elements) from the catalogue, the authority for weight memory."""
    attn_weights: float
    """Projection elements per layer (q, k, v, o; MLA's low-rank factors)."""
    attn_io_width: int
    """Activation width the projections read/write per token, before TP sharding."""
    dense_ffn_layers: int
    ffn_width: int
    moe: MoeShape | None
    moe_layers: int
    kv_elems_per_layer: int
    """KV-cache elements per token per layer for the whole model (MLA: latent + rope key)."""
    kv_shards_with_tp: bool
    """GQA/MHA shard KV heads across TP ranks; MLA's latent cache is replicated on each."""
    prefill_qk_dim: int
    prefill_v_dim: int
    decode_qk_dim: int
    """MLA decodes with absorbed weights: scores over the 576-wide latent, not 192-wide heads."""
    decode_v_dim: int
    sliding_window: int | None
    window_layers: int
    """Layers that attend only to the last ``sliding_window`` tokens."""

    @property
    def global_layers(self) -> int:
        return self.num_layers - self.window_layers

    @property
    def ffn_weights(self) -> float:
        return (3 if self.gated_ffn else 2) * self.hidden * self.ffn_width

    @property
    def lm_head_weights(self) -> float:
        return float(self.vocab * self.hidden)

    def shape_params(self) -> float:
        """Parameters implied by the shapes (input embedding + layers + LM head)."""
        moe = 0.0
        if self.moe is not None:
            moe = self.moe_layers * (
                self.moe.experts * self.moe.expert_weights + self.moe.shared_weights
            )
        return (
            2 * self.lm_head_weights
            + self.num_layers * self.attn_weights
            + self.dense_ffn_layers * self.ffn_weights
            + moe
        )

    def kv_cache_bytes_per_token(self, precision: str) -> float:
        """Whole-model KV bytes per cached token (no window cap; not divided by TP)."""
        return self.num_layers * self.kv_elems_per_layer * PRECISION_BYTES[precision]

    @classmethod
    def from_model(cls, model: Model) -> TransformerShape:
        arch = model.arch
        if arch is None:
            raise UnsupportedInput(
                "model", f"{model.name} is a {model.kind} model; the LLM cost model needs an LLM"
            )
        return _shape_from_arch(model.name, model.params_b, arch)


def _shape_from_arch(name: str, params_b: float, a: LlmArch) -> TransformerShape:
    h, heads = a.hidden_size, a.num_attention_heads
    gated = "glu" in a.activation.lower()
    mats = 3 if gated else 2
    mla = a.kv_lora_rank is not None and a.qk_rope_head_dim is not None
    if mla:
        kv_lora = a.kv_lora_rank or 0
        rope = a.qk_rope_head_dim or 0
        nope = a.qk_nope_head_dim if a.qk_nope_head_dim is not None else a.head_dim - rope
        v_dim = a.v_head_dim if a.v_head_dim is not None else nope
        qk = nope + rope
        q_proj = h * a.q_lora_rank + a.q_lora_rank * heads * qk if a.q_lora_rank else h * heads * qk
        attn_weights = float(
            q_proj + h * (kv_lora + rope) + kv_lora * heads * (nope + v_dim) + heads * v_dim * h
        )
        attn_io = heads * qk + (kv_lora + rope) + heads * (nope + v_dim) + heads * v_dim
        kv_elems = kv_lora + rope
        pre_qk, pre_v, dec_qk, dec_v = qk, v_dim, kv_lora + rope, kv_lora
    else:
        hd, kvh = a.head_dim, a.num_kv_heads
        attn_weights = float(h * hd * (heads + 2 * kvh) + heads * hd * h)
        attn_io = hd * (heads + 2 * kvh) + heads * hd
        kv_elems = 2 * kvh * hd
        pre_qk = pre_v = dec_qk = dec_v = hd
    moe: MoeShape | None = None
    moe_layers = 0
    if a.num_experts is not None:
        if not a.experts_per_token or not a.moe_intermediate_size:
            raise UnsupportedInput(
                "model", f"{name}: MoE needs experts_per_token and moe_intermediate_size"
            )
        expert = float(mats * h * a.moe_intermediate_size)
        shared = a.num_shared_experts or 0
        moe = MoeShape(
            experts=a.num_experts,
            experts_per_token=a.experts_per_token,
            expert_weights=expert,
            shared_weights=shared * expert + h * a.num_experts,
            shared_experts=shared,
            width=a.moe_intermediate_size,
        )
        moe_layers = a.num_layers - (a.first_k_dense_replace or 0)
    window_layers = 0
    if a.sliding_window is not None:
        pattern = a.sliding_window_pattern
        # pattern N: every Nth layer is global, the rest slide; None: all layers slide.
        window_layers = a.num_layers if pattern is None else a.num_layers - a.num_layers // pattern
    return TransformerShape(
        name=name,
        num_layers=a.num_layers,
        hidden=h,
        heads=heads,
        kv_heads=a.num_kv_heads,
        head_dim=a.head_dim,
        vocab=a.vocab_size,
        attention_type=a.attention_type,
        gated_ffn=gated,
        total_params=params_b * 1e9,
        attn_weights=attn_weights,
        attn_io_width=attn_io,
        dense_ffn_layers=a.num_layers - moe_layers,
        ffn_width=a.intermediate_size,
        moe=moe,
        moe_layers=moe_layers,
        kv_elems_per_layer=kv_elems,
        kv_shards_with_tp=not mla,
        prefill_qk_dim=pre_qk,
        prefill_v_dim=pre_v,
        decode_qk_dim=dec_qk,
        decode_v_dim=dec_v,
        sliding_window=a.sliding_window,
        window_layers=window_layers,
    )


def window_sum(lo: float, hi: float, window: int | None) -> float:
    """Sum of ``min(p, window)`` for integer p in [lo, hi] (the attended keys of positions)."""
    if hi < lo:
        return 0.0
    if window is None or hi <= window:
        return (lo + hi) * (hi - lo + 1) / 2
    if lo > window:
        return window * (hi - lo + 1)
    below = (lo + window) * (window - lo + 1) / 2
    return below + window * (hi - window)


@dataclass(frozen=True, slots=True)
class MemoryFit:
    """Memory per device of a deployment, in GiB (2**30 bytes), as the catalogue gives it."""

    weights_gib: float
    kv_cache_gib: float
    activations_gib: float
    reserve_gib: float
    available_gib: float

    @property
    def needed_gib(self) -> float:
        return self.weights_gib + self.kv_cache_gib + self.activations_gib + self.reserve_gib

    @property
    def fits(self) -> bool:
        return self.needed_gib <= self.available_gib

    def why_not(self) -> str | None:
        if self.fits:
            return None
        return (
            f"needs {self.needed_gib:.1f} GiB per device but the chip has"
            f" {self.available_gib:.1f} GiB (weights {self.weights_gib:.1f},"
            f" KV cache {self.kv_cache_gib:.1f},"
            f" activations {self.activations_gib:.1f}, runtime reserve {self.reserve_gib:.1f})"
        )


class LlmDeployment:
    """One model served on ``tp`` devices of one chip at one precision (one replica)."""

    def __init__(
        self,
        chip: Chip,
        model: Model,
        precision: str,
        tp: int,
        *,
        params: PerfParams | None = None,
        efficiency: EfficiencyData | None = None,
        memory_gib: float | None = None,
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> None:
        """``memory_gib`` is one device's memory; default the chip table's (``predict`` and
        ``check_fit`` pass ``Catalog.device_memory_gib``, the figure the agent emulates).
        ``group_size`` is the quantisation group of ``w4a16`` weights."""
        if precision not in PERF_PRECISIONS:
            raise PerfInputError("precision", f"must be one of {', '.join(PERF_PRECISIONS)}")
        if group_size < 1:
            raise PerfInputError("group_size", "must be >= 1")
        if tp < 1:
            raise PerfInputError("tp", "must be >= 1")
        self.chip = chip
        self.model = model
        self.shape = TransformerShape.from_model(model)
        if self.shape.heads % tp:
            raise PerfInputError(
                "tp",
                f"must divide the {self.shape.heads} attention heads of {model.name}, got {tp}",
            )
        memory = chip.memory_gib if memory_gib is None else memory_gib
        if memory is None:
            raise UnsupportedInput("chip", f"{chip.name} has no memory size in the catalogue")
        self.memory_gib: float = memory
        self.precision = precision
        self.tp = tp
        eff = default_efficiency() if efficiency is None else efficiency
        self.params = eff.params if params is None else params
        self._efficiency = eff
        self.group_size = group_size
        self.weight_bytes: float
        if precision == "w8a8":
            # int8 GEMMs on int8 weights and activations; the KV cache stays 16-bit.
            gemm_precision = "int8"
            self.weight_bytes, self.kv_bytes = 1.0, 2.0
        elif precision == "w4a16":
            # Weights are stored in 4 bits plus one 16-bit scale per group and dequantised
            # inside the GEMM, which runs at the 16-bit rate.
            gemm_precision = "bf16" if chip.peak("fp16") is None and chip.peak("bf16") else "fp16"
            self.weight_bytes, self.kv_bytes = 0.5 + SCALE_BYTES / group_size, 2.0
        else:
            gemm_precision = precision
            self.weight_bytes = float(PRECISION_BYTES[precision])
            self.kv_bytes = float(PRECISION_BYTES[precision])
        self.gemm_precision = gemm_precision
        self.act_bytes = 4 if precision in ("fp32", "tf32") else 2
        # Quantised deployments keep the LM head in 16 bits (it is accuracy-critical).
        quantized = precision in LOW_PRECISIONS or precision in QUANTIZED
        self.lm_head_bytes = self.act_bytes if quantized else self.weight_bytes

    @cached_property
    def ceilings(self) -> ChipCeilings:
        """Achieved rates at this precision; raises UnsupportedInput when the catalogue lacks a
        number speed needs (a peak at the precision). Memory sizing does not need them."""
        return self._efficiency.ceilings(self.chip, self.gemm_precision, self.params)

    # -- per-device sizes -------------------------------------------------------------------

    @property
    def heads_per_device(self) -> float:
        return self.shape.heads / self.tp

    @property
    def kv_elems_per_layer_device(self) -> float:
        s = self.shape
        if not s.kv_shards_with_tp:
            return float(s.kv_elems_per_layer)
        # With more ranks than KV heads each rank keeps a whole (replicated) KV head.
        kv_heads_dev = math.ceil(s.kv_heads / self.tp)
        return float(s.kv_elems_per_layer * kv_heads_dev / s.kv_heads)

    @property
    def decode_kv_read_factor(self) -> float:
        """How many times decode attention reads each cached KV byte from memory.

        A grouped-query group of ``g`` query heads shares one KV head. A decode kernel that
        runs one query head per thread block reads that KV head once per query head unless the
        cache catches the re-reads; ``gqa_kv_reread`` is the share that misses, so the factor
        is ``1 + gqa_kv_reread * (g - 1)``. MHA (g = 1) reads once. MLA decodes over one latent
        shared by every head, which its kernels load once.
        """
        s = self.shape
        if not s.kv_shards_with_tp:
            return 1.0
        group = self.heads_per_device / math.ceil(s.kv_heads / self.tp)
        return 1.0 + self.params.gqa_kv_reread * max(0.0, group - 1.0)

    def kv_bytes_per_token_device(self) -> float:
        """KV bytes one cached token takes per device over all layers (no window cap)."""
        return self.shape.num_layers * self.kv_elems_per_layer_device * self.kv_bytes

    def kv_bytes_for_sequence(self, tokens: float) -> float:
        """Per-device KV bytes of one sequence of ``tokens`` cached tokens (window-capped)."""
        s = self.shape
        capped = tokens if s.sliding_window is None else min(tokens, s.sliding_window)
        per_layer = self.kv_elems_per_layer_device * self.kv_bytes
        return per_layer * (s.global_layers * tokens + s.window_layers * capped)

    def weights_bytes_device(self) -> float:
        s = self.shape
        body = (s.total_params - s.lm_head_weights) * self.weight_bytes
        return (body + s.lm_head_weights * self.lm_head_bytes) / self.tp

    def activation_bytes(self, max_tokens: float, max_logits: float) -> float:
        """Peak activation memory for a forward of ``max_tokens`` tokens."""
        s = self.shape
        width = s.ffn_width if s.moe is None else max(s.ffn_width, 2 * s.moe.width)
        per_token = (_ACTIVATION_HIDDEN_COPIES * s.hidden + 2 * width / self.tp) * self.act_bytes
        return max_tokens * per_token + max_logits * s.vocab / self.tp * _LOGIT_BYTES

    def memory_fit(
        self, *, kv_cache_bytes: float, max_tokens: float, max_logits: float
    ) -> MemoryFit:
        gb = GIB_BYTES
        return MemoryFit(
            weights_gib=self.weights_bytes_device() / gb,
            kv_cache_gib=kv_cache_bytes / gb,
            activations_gib=self.activation_bytes(max_tokens, max_logits) / gb,
            reserve_gib=self.params.runtime_reserve_gib,
            available_gib=self.memory_gib,
        )

    # -- the operator table -------------------------------------------------------------------

    @cached_property
    def op_table(self) -> OpTable:
        s, tp = self.shape, self.tp
        wb, ab, kvb = self.weight_bytes, self.act_bytes, self.kv_bytes
        n_feat = len(FEATURES)
        names: list[str] = []
        rows_f: list[FloatArray] = []
        rows_b: list[FloatArray] = []
        rows_n: list[FloatArray] = []
        ceil_c: list[float] = []
        overhead: list[float] = []
        gemm_rate = self.ceilings.gemm.rate
        attn_rate = self.ceilings.attention.rate

        def add(name: str, rate: float, *, ovh: float = 0.0) -> tuple[FloatArray, ...]:
            f, b, n = np.zeros(n_feat), np.zeros(n_feat), np.zeros(n_feat)
            names.append(name)
            rows_f.append(f)
            rows_b.append(b)
            rows_n.append(n)
            ceil_c.append(rate)
            overhead.append(ovh)
            return f, b, n

        layers = s.num_layers
        # q/k/v/o projections (MLA: its low-rank factors)
        f, b, _ = add("attention projections", gemm_rate)
        f[F_TOKENS] = layers * 2 * s.attn_weights / tp
        b[F_CONST] = layers * s.attn_weights / tp * wb
        b[F_TOKENS] = layers * (2 * s.hidden + s.attn_io_width / tp) * ab
        ffn_mats_io = (2 if s.gated_ffn else 1) + 1  # gate/up outputs in, down input
        if s.dense_ffn_layers:
            f, b, _ = add("ffn", gemm_rate)
            f[F_TOKENS] = s.dense_ffn_layers * 2 * s.ffn_weights / tp
            b[F_CONST] = s.dense_ffn_layers * s.ffn_weights / tp * wb
            b[F_TOKENS] = s.dense_ffn_layers * (2 * s.hidden + ffn_mats_io * s.ffn_width / tp) * ab
        if s.moe is not None and s.moe_layers:
            moe = s.moe
            f, b, _ = add("moe experts", gemm_rate * self.params.moe_gemm_efficiency)
            active = moe.experts_per_token * moe.expert_weights + moe.shared_weights
            f[F_TOKENS] = s.moe_layers * 2 * active / tp
            b[F_CONST] = s.moe_layers * moe.shared_weights / tp * wb
            b[F_EXPERTS] = s.moe_layers * moe.expert_weights / tp * wb
            per_token = (moe.experts_per_token + moe.shared_experts) * ffn_mats_io * moe.width
            b[F_TOKENS] = s.moe_layers * (2 * s.hidden + per_token / tp) * ab
        # attention itself: decode reads the KV cache, prefill is quadratic in the chunk
        heads_dev = self.heads_per_device
        kv_layer_bytes = self.kv_elems_per_layer_device * kvb
        f, b, _ = add("attention (decode)", attn_rate)
        dec_flops = 2 * heads_dev * (s.decode_qk_dim + s.decode_v_dim)
        f[F_DEC_CTX] = s.global_layers * dec_flops
        f[F_DEC_CTX_WIN] = s.window_layers * dec_flops
        kv_read = kv_layer_bytes * self.decode_kv_read_factor
        b[F_DEC_CTX] = s.global_layers * kv_read
        b[F_DEC_CTX_WIN] = s.window_layers * kv_read
        f, b, _ = add("attention (prefill)", attn_rate)
        pre_flops = 2 * heads_dev * (s.prefill_qk_dim + s.prefill_v_dim)
        f[F_PRE_PAIRS] = s.global_layers * pre_flops
        f[F_PRE_PAIRS_WIN] = s.window_layers * pre_flops
        qkvo = heads_dev * (2 * s.prefill_qk_dim + 2 * s.prefill_v_dim)
        b[F_PRE_TOKENS] = layers * qkvo * ab
        b[F_PRE_CTX_READ] = layers * kv_layer_bytes
        # norms, residual adds, activation function, rotary, KV-cache writes
        _, b, _ = add("elementwise", gemm_rate)
        if s.moe is not None:
            act_io = (s.moe.experts_per_token + s.moe.shared_experts) * ffn_mats_io * s.moe.width
            act_width = (s.dense_ffn_layers * ffn_mats_io * s.ffn_width + s.moe_layers * act_io) / (
                layers
            )
        else:
            act_width = ffn_mats_io * s.ffn_width
        b[F_TOKENS] = (
            layers * (self.params.elementwise_hidden_passes * s.hidden + act_width / tp) * ab
            + layers * kv_layer_bytes
        )
        if tp > 1:
            # Two all-reduces of the hidden state per layer; ring: 2(n-1)/n of the message.
            _, _, n = add(
                "all-reduce", gemm_rate, ovh=2 * layers * self.params.collective_latency_s
            )
            n[F_TOKENS] = 2 * layers * bus_factor("all_reduce", tp) * s.hidden * ab
        f, b, _ = add("lm head", attn_rate if self.lm_head_bytes != wb else gemm_rate)
        f[F_LOGITS] = 2 * s.lm_head_weights / tp
        b[F_CONST] = s.lm_head_weights / tp * self.lm_head_bytes
        b[F_LOGITS] = (s.hidden + s.vocab / tp * _LOGIT_BYTES / ab) * ab
        n_ops = len(names)
        return OpTable(
            names=names,
            features=FEATURES,
            flops=np.array(rows_f),
            bytes_moved=np.array(rows_b),
            comm_bytes=np.array(rows_n),
            compute_flops_per_s=np.array(ceil_c),
            memory_bytes_per_s=np.full(n_ops, self.ceilings.memory.rate),
            link_bytes_per_s=np.full(n_ops, self.ceilings.link.rate),
            op_overhead_s=np.array(overhead),
            fixed_overhead_s=layers * self.params.layer_overhead_s,
            overlap_exponent=self.params.overlap_exponent,
        )

    # -- step features --------------------------------------------------------------------

    def experts_loaded(self, tokens: float) -> float:
        return 0.0 if self.shape.moe is None else self.shape.moe.experts_loaded(tokens)

    def prefill_features(self, batch: int, input_len: int) -> FloatArray:
        """One forward pass over ``batch`` whole prompts of ``input_len`` tokens."""
        x = np.zeros(len(FEATURES))
        tokens = float(batch * input_len)
        x[F_CONST] = 1.0
        x[F_TOKENS] = tokens
        x[F_LOGITS] = batch
        x[F_PRE_PAIRS] = batch * window_sum(1, input_len, None)
        x[F_PRE_PAIRS_WIN] = batch * window_sum(1, input_len, self.shape.sliding_window)
        x[F_PRE_TOKENS] = tokens
        x[F_EXPERTS] = self.experts_loaded(tokens)
        return x

    def decode_features(self, batch: int, cached: FloatArray, draft_tokens: int = 0) -> FloatArray:
        """Decode steps of ``batch`` sequences; column j has ``cached[j]`` tokens in cache.

        With ``draft_tokens`` k > 0 each step is a speculative verification: every sequence
        runs k + 1 query tokens through the model (k drafted + the next one) in one pass.
        The weights and each cached KV byte are still read once; GEMMs, the LM head and the
        extra queries' attention math grow k + 1 fold (the extra queries are priced as
        prefill-like query-key pairs over the cached context).
        """
        steps = cached.shape[0]
        x = np.zeros((len(FEATURES), steps))
        attended = cached + 1.0
        window = self.shape.sliding_window
        per_seq = 1 + draft_tokens
        x[F_CONST] = 1.0
        x[F_TOKENS] = batch * per_seq
        x[F_LOGITS] = batch * per_seq
        x[F_DEC_CTX] = batch * attended
        capped = attended if window is None else np.minimum(attended, window)
        x[F_DEC_CTX_WIN] = batch * capped
        if draft_tokens:
            x[F_PRE_PAIRS] = batch * draft_tokens * attended
            x[F_PRE_PAIRS_WIN] = batch * draft_tokens * capped
            x[F_PRE_TOKENS] = batch * draft_tokens
        x[F_EXPERTS] = self.experts_loaded(batch * per_seq)
        return x
