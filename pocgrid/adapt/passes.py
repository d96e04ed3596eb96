"""The software acceleration passes an LLM plan weighs, and the assumptions their gains rest on.

Every plan reports every pass's modelled gain on its chip, applied or not: the ratio of the
best throughput per device with the pass over without it, at the plan's precision and
parallelism, with concurrency and prefill chunk chosen again under the same SLO. A pass whose
gain depends on the workload (acceptance of drafted tokens, prefix hits) is priced at the
default assumption below unless the request gives its own; it is *applied* only where the
plan can know it holds:

- ``operator_fusion``: the fused Attention / RotaryEmbedding / RMSNormalization (LayerNorm,
  Gelu) kernels against the same graph run as primitives (the rewrites of
  :mod:`pocgrid.adapt.rewrites`, priced by :mod:`pocgrid.adapt.supplemented_cost`). Applied
  wherever the runtime has the fused kernel; lossless.
- ``kv_cache_fp8`` / ``kv_cache_int8``: one byte per cached element instead of the weights'.
  Lossy: applied only when quantization is allowed or quantized weights are asked for (their
  KV cache follows them).
- ``speculative_decoding_mtp``: the checkpoint's own multi-token-prediction module drafts.
  Applied when the model ships one and it gains: verification keeps the output distribution.
- ``speculative_decoding``: a separate small draft model. Applied only when the request gives
  an acceptance length: it needs a draft of the same tokenizer, and its acceptance is a
  property of the workload.
- ``prefix_caching``: applied only when the request gives a hit rate (a property of the
  workload: shared system prompts, multi-turn history).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pocgrid.catalog import Model
from pocgrid.perf.static_batch import SpecDecoding

#: Per-token acceptance of a small draft model's tokens, and the tokens it drafts per step.
#: Leviathan et al., "Fast Inference from Transformers via Speculative Decoding" (ICML 2023,
#: arXiv:2211.17192), measure alpha between about 0.5 and 0.9 for small drafts of T5-XXL,
#: GPT-like and LaMDA targets (their Table 3); 0.7 is taken as a middle value, and 4 drafts as
#: the length production stacks commonly run (an assumption).
DRAFT_ACCEPTANCE_RATE: Final = 0.7
DRAFT_TOKENS: Final = 4
#: Time of one drafted token as a share of the target's plain decode step: a draft model about
#: 1/20 of the target (an assumption; the performance model's docs give 0.05-0.1).
DRAFT_COST: Final = 0.05


def expected_tokens_per_step(alpha: float, drafts: int) -> float:
    """Leviathan et al.'s expected tokens per verification: (1 - a^(k+1)) / (1 - a)."""
    return (1.0 - alpha ** (drafts + 1)) / (1.0 - alpha)


DRAFT_ACCEPTANCE_LENGTH: Final = round(
    expected_tokens_per_step(DRAFT_ACCEPTANCE_RATE, DRAFT_TOKENS), 2
)
#: Models whose checkpoint ships multi-token-prediction modules (``num_nextn_predict_layers``
#: in their config.json: 1 for DeepSeek-V3 and DeepSeek-R1).
MTP_MODULES: Final[Mapping[str, int]] = {"DeepSeek-V3": 1, "DeepSeek-R1": 1}
#: DeepSeek-V3 Technical Report (arXiv:2412.19437, section 5.4.3): the second token's
#: acceptance "ranges between 85% and 90%", about 1.8x tokens per second; the low end is used.
MTP_ACCEPTANCE_LENGTH: Final = 1.85
#: One MTP module is one transformer block plus the shared output head: priced as this many of
#: the model's layers per drafted token (an estimate).
MTP_DRAFT_LAYERS: Final = 2.0
#: Share of prompt tokens found in the prefix cache when the request gives none: a chat service
#: with a shared system prompt and multi-turn history (an assumption; it is entirely a property
#: of the workload, so the plan applies prefix caching only at a hit rate it is given).
DEFAULT_PREFIX_HIT_RATE: Final = 0.5
#: Fused operators whose primitive rewrites the cost model prices (what fusion saves).
FUSABLE_OPS: Final = (
    "Attention",
    "RotaryEmbedding",
    "RMSNormalization",
    "LayerNormalization",
    "Gelu",
)


@dataclass(frozen=True, slots=True)
class SpecMethod:
    """How a model drafts: its own MTP module or a separate draft model."""

    pass_name: str
    spec: SpecDecoding
    assumption: str


def mtp_method(model: Model, acceptance: float | None = None) -> SpecMethod | None:
    """The model's own MTP drafting, or None when its checkpoint has no MTP module."""
    modules = MTP_MODULES.get(model.name)
    if modules is None or model.arch is None:
        return None
    a = MTP_ACCEPTANCE_LENGTH if acceptance is None else acceptance
    if a > modules + 1:
        return None
    cost = MTP_DRAFT_LAYERS / model.arch.num_layers
    return SpecMethod(
        "speculative_decoding_mtp",
        SpecDecoding(a, draft_tokens=modules, draft_cost=cost),
        f"{modules} MTP module(s) drafting, {a:g} tokens per verification"
        + (
            " (DeepSeek-V3 report: 85-90 % second-token acceptance)"
            if acceptance is None
            else " (as asked)"
        )
        + f"; drafting costs {MTP_DRAFT_LAYERS:g} of {model.arch.num_layers} layers per token",
    )


def draft_method(acceptance: float | None = None) -> SpecMethod:
    """A separate draft model at ``acceptance`` tokens per verification (default: the
    assumption above)."""
    a = DRAFT_ACCEPTANCE_LENGTH if acceptance is None else acceptance
    drafts = max(DRAFT_TOKENS, -int(-(a - 1.0) // 1))
    basis = (
        f"alpha {DRAFT_ACCEPTANCE_RATE} over {DRAFT_TOKENS} drafts (Leviathan et al. 2023)"
        if acceptance is None
        else "as asked"
    )
    return SpecMethod(
        "speculative_decoding",
        SpecDecoding(a, draft_tokens=drafts, draft_cost=DRAFT_COST),
        f"a draft model, {a:g} tokens per verification of {drafts} drafts ({basis}); each"
        f" drafted token costs {DRAFT_COST:g} of a decode step",
    )
