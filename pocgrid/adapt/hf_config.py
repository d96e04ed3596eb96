"""An LLM from an uploaded Hugging Face-style ``config.json``, validated field by field.

Decoder-only GQA/MHA models (Llama, Qwen2/3, Mistral, Mixtral-style MoE, ...) are accepted;
each field is checked for its type and range, and a bad one is refused with
:class:`ConfigImportError` naming the field (``config.hidden_size: must be an integer >= 1``).
The parameter count is computed from the shapes (embeddings, attention, FFN or experts, norms,
LM head unless tied), the way the catalogue builder does for models without a published count.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pocgrid.adapt.model_ids import imported_model_id
from pocgrid.catalog import LlmArch, Model

MAX_CONFIG_BYTES: Final = 256 * 1024
_LIMITS: Final[Mapping[str, int]] = {
    "num_hidden_layers": 1024,
    "hidden_size": 65536,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "intermediate_size": 1 << 20,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 24,
    "head_dim": 4096,
    "num_local_experts": 4096,
    "num_experts": 4096,
    "num_experts_per_tok": 256,
    "moe_intermediate_size": 1 << 20,
    "sliding_window": 1 << 24,
}
_ACTIVATIONS: Final = frozenset({"silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu"})


class ConfigImportError(ValueError):
    """A config.json the adapter cannot accept; the message names the field and the rule."""


@dataclass(frozen=True, slots=True)
class ImportedLlm:
    model: Model
    sha256: str

    @property
    def model_id(self) -> str:
        return imported_model_id("llm", self.sha256)


def _int(cfg: Mapping[str, object], key: str, *, required: bool = True) -> int | None:
    if key not in cfg or cfg[key] is None:
        if required:
            raise ConfigImportError(f"config.{key}: is required")
        return None
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigImportError(f"config.{key}: must be an integer, got {type(value).__name__}")
    limit = _LIMITS.get(key, 1 << 30)
    if not 1 <= value <= limit:
        raise ConfigImportError(f"config.{key}: must be in [1, {limit}], got {value}")
    return value


def parse_config(data: bytes, name: str = "") -> ImportedLlm:
    if not data:
        raise ConfigImportError("config: the file is empty")
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigImportError(f"config: {len(data)} bytes exceeds {MAX_CONFIG_BYTES} bytes")
    try:
        cfg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigImportError(f"config: not JSON text ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigImportError("config: must be a JSON object")
    layers = _int(cfg, "num_hidden_layers")
    hidden = _int(cfg, "hidden_size")
    heads = _int(cfg, "num_attention_heads")
    inter = _int(cfg, "intermediate_size")
    vocab = _int(cfg, "vocab_size")
    max_pos = _int(cfg, "max_position_embeddings")
    assert layers and hidden and heads and inter and vocab and max_pos
    kv = _int(cfg, "num_key_value_heads", required=False) or heads
    if heads % kv:
        raise ConfigImportError(
            f"config.num_key_value_heads: must divide num_attention_heads ({heads}), got {kv}"
        )
    head_dim = _int(cfg, "head_dim", required=False)
    if head_dim is None:
        if hidden % heads:
            raise ConfigImportError(
                f"config.hidden_size: must be a multiple of num_attention_heads ({heads})"
                " when head_dim is not given"
            )
        head_dim = hidden // heads
    act = cfg.get("hidden_act", "silu")
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        raise ConfigImportError(
            f"config.hidden_act: must be one of {', '.join(sorted(_ACTIVATIONS))}, got {act!r}"
        )
    tied = cfg.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise ConfigImportError("config.tie_word_embeddings: must be true or false")
    experts = _int(cfg, "num_local_experts", required=False) or _int(
        cfg, "num_experts", required=False
    )
    per_tok = _int(cfg, "num_experts_per_tok", required=False)
    moe_inter = _int(cfg, "moe_intermediate_size", required=False)
    if experts is not None:
        if per_tok is None:
            raise ConfigImportError("config.num_experts_per_tok: is required for an MoE model")
        if per_tok > experts:
            raise ConfigImportError(
                f"config.num_experts_per_tok: must be <= the {experts} experts, got {per_tok}"
            )
        moe_inter = moe_inter or inter
    window = (
        _int(cfg, "sliding_window", required=False) if cfg.get("use_sliding_window", True) else None
    )
    model_type = cfg.get("model_type", "")
    if not isinstance(model_type, str):
        raise ConfigImportError("config.model_type: must be a string")
    gated = act in ("silu", "swish") or "llama" in model_type or "qwen" in model_type
    mats = 3 if gated else 2
    attn = hidden * head_dim * (heads + 2 * kv) + heads * head_dim * hidden
    if experts is not None:
        assert moe_inter is not None and per_tok is not None
        ffn = experts * mats * hidden * moe_inter + hidden * experts
        active_ffn = per_tok * mats * hidden * moe_inter + hidden * experts
    else:
        ffn = active_ffn = mats * hidden * inter
    embed = vocab * hidden * (1 if tied else 2)
    params = embed + layers * (attn + ffn + 2 * hidden) + hidden
    active = embed + layers * (attn + active_ffn + 2 * hidden) + hidden
    arch = LlmArch(
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=inter if experts is None else (moe_inter or inter),
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        attention_type="MHA" if kv == heads else "GQA",
        activation=f"{act} ({'SwiGLU' if gated else 'MLP'})",
        num_experts=experts,
        experts_per_token=per_tok,
        moe_intermediate_size=moe_inter,
        active_params_b=active / 1e9 if experts is not None else None,
        sliding_window=window,
    )
    sha = hashlib.sha256(data).hexdigest()
    title = name or f"{model_type or 'llm'}-{sha[:8]}"
    model = Model(
        name=title,
        kind="llm",
        task="text-generation",
        params_b=params / 1e9,
        sources=("uploaded config.json",),
        notes="imported from an uploaded config.json; parameters computed from the shapes",
        arch=arch,
        derived_fields=("params_b",),
    )
    return ImportedLlm(model, sha)
