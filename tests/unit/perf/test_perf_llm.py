"""Transformer shapes: KV-cache sizes (GQA, MLA, sliding window), MoE, weights, TP sharding."""

from __future__ import annotations

import numpy as np
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.perf.efficiency import default_efficiency
from pocgrid.perf.llm import (
    F_TOKENS,
    LlmDeployment,
    TransformerShape,
    window_sum,
)


def shape(name: str) -> TransformerShape:
    return TransformerShape.from_model(default_catalog().model(name))


def deploy(chip: str, model: str, precision: str, tp: int) -> LlmDeployment:
    cat = default_catalog()
    return LlmDeployment(cat.chip(chip), cat.model(model), precision, tp)


def test_gqa_kv_bytes_per_token() -> None:
    # NOTES: Llama-3.1-8B BF16 = 2 x 32 layers x 8 KV heads x 128 x 2 B = 128 KiB per token.
    assert shape("Llama-3.1-8B").kv_cache_bytes_per_token("bf16") == 131_072
    # MHA: Llama-2-7B keeps all 32 heads.
    assert shape("Llama-2-7B").kv_cache_bytes_per_token("fp16") == 2 * 32 * 32 * 128 * 2
    assert shape("Llama-2-7B").kv_cache_bytes_per_token("fp8") == 2 * 32 * 32 * 128


def test_mla_kv_is_latent_plus_rope_key() -> None:
    ds = shape("DeepSeek-V3")
    assert ds.kv_elems_per_layer == 512 + 64
    assert ds.kv_cache_bytes_per_token("bf16") == 61 * 576 * 2
    assert ds.kv_cache_bytes_per_token("fp8") == 61 * 576
    # The latent cache is replicated on every TP rank, not split by heads.
    d8 = deploy("h200-141gb-sxm", "DeepSeek-V3", "fp8", 8)
    assert d8.kv_bytes_per_token_device() == 61 * 576


def test_gqa_kv_is_sharded_then_replicated_beyond_kv_heads() -> None:
    full = shape("Llama-3.1-70B").kv_cache_bytes_per_token("bf16")
    assert deploy("h100-80gb-sxm", "Llama-3.1-70B", "bf16", 4).kv_bytes_per_token_device() == (
        full / 4
    )
    # 8 KV heads: tp=16 still keeps one whole KV head per rank.
    tp8 = deploy("h100-80gb-sxm", "Llama-3.1-70B", "bf16", 8).kv_bytes_per_token_device()
    tp16 = deploy("h100-80gb-sxm", "Llama-3.1-70B", "bf16", 16).kv_bytes_per_token_device()
    assert tp16 == tp8 == full / 8


def test_sliding_window_caps_the_cache_of_sliding_layers_only() -> None:
    mistral = deploy("a100-80gb-sxm", "Mistral-7B-v0.1", "bf16", 1)
    per_token = mistral.kv_bytes_per_token_device()
    assert mistral.kv_bytes_for_sequence(1000) == pytest.approx(1000 * per_token)
    assert mistral.kv_bytes_for_sequence(10_000) == pytest.approx(4096 * per_token)
    gemma = deploy("a100-80gb-sxm", "Gemma-2-9B", "bf16", 1)
    assert gemma.shape.window_layers == 21 and gemma.shape.global_layers == 21
    per_layer = gemma.kv_bytes_per_token_device() / 42
    assert gemma.kv_bytes_for_sequence(8192) == pytest.approx(per_layer * (21 * 8192 + 21 * 4096))


def test_window_sum_matches_brute_force() -> None:
    for lo, hi, w in [(1, 10, None), (1, 10, 4), (3, 3, 5), (6, 9, 5), (5, 12, 5), (2, 1, 3)]:
        expect = sum(p if w is None else min(p, w) for p in range(lo, hi + 1))
        assert window_sum(lo, hi, w) == expect


def test_shapes_reproduce_catalogue_parameter_counts() -> None:
    # Tied-embedding models count their embedding once; the shapes count input and LM head.
    tied = {"Gemma-2-9B", "MiniCPM-2B-sft-bf16"}
    for model in default_catalog().models:
        if model.arch is None:
            continue
        s = TransformerShape.from_model(model)
        expected = model.params_b * 1e9 + (s.lm_head_weights if model.name in tied else 0.0)
        assert s.shape_params() == pytest.approx(expected, rel=0.01), model.name


def test_moe_weights_all_resident_but_flops_follow_active_experts() -> None:
    d = deploy("h200-141gb-sxm", "Mixtral-8x7B-v0.1", "bf16", 1)
    assert d.weights_bytes_device() == pytest.approx(46.7e9 * 2, rel=0.001)
    table = d.op_table
    per_token_flops = float(table.flops[:, F_TOKENS].sum())
    # Linear layers do 2 FLOPs per active parameter (embedding lookup and LM head excluded).
    active_linear = 12.88e9 - 2 * 32000 * 4096
    assert per_token_flops == pytest.approx(2 * active_linear, rel=0.01)
    moe = d.shape.moe
    assert moe is not None
    assert moe.experts_loaded(1) == pytest.approx(2.0)
    assert moe.experts_loaded(10_000) == pytest.approx(8.0)
    ds = shape("DeepSeek-V3")
    assert ds.moe is not None and ds.moe_layers == 58 and ds.dense_ffn_layers == 3


def test_decode_costs_grow_with_context_and_batch() -> None:
    d = deploy("ascend-910b2", "Qwen2.5-7B", "bf16", 1)
    short, long_ = d.op_table.evaluate(d.decode_features(32, np.array([128.0, 8192.0]))).seconds
    assert long_ > short
    small = d.op_table.seconds(d.decode_features(1, np.array([1024.0]))[:, 0])
    big = d.op_table.seconds(d.decode_features(256, np.array([1024.0]))[:, 0])
    assert small < big < 256 * small


def test_decode_kv_read_factor_charges_grouped_query_rereads() -> None:
    cat = default_catalog()
    chip = cat.chip("h100-80gb-sxm")
    reread = default_efficiency().params.gqa_kv_reread
    mha = LlmDeployment(chip, cat.model("Llama-2-7B"), "fp16", 1)
    assert mha.decode_kv_read_factor == 1.0
    gqa = LlmDeployment(chip, cat.model("Llama-2-70B"), "fp16", 4)  # 64 query, 8 KV heads
    assert gqa.decode_kv_read_factor == pytest.approx(1 + reread * 7)
    # Past 8 ranks each keeps one whole KV head for its 4 query heads.
    wide = LlmDeployment(chip, cat.model("Llama-2-70B"), "fp16", 16)
    assert wide.decode_kv_read_factor == pytest.approx(1 + reread * 3)
    mla = LlmDeployment(cat.chip("h200-141gb-sxm"), cat.model("DeepSeek-V3"), "fp8", 8)
    assert mla.decode_kv_read_factor == 1.0
    none = LlmDeployment(
        chip,
        cat.model("Llama-2-70B"),
        "fp16",
        4,
        params=default_efficiency().params.with_values(gqa_kv_reread=0.0),
    )
    assert none.decode_kv_read_factor == 1.0
    step = np.array([2048.0])
    slower = gqa.op_table.seconds(gqa.decode_features(64, step)[:, 0])
    faster = none.op_table.seconds(none.decode_features(64, step)[:, 0])
    assert slower > faster
