"""Serving modes, steady state, saturation, profiles, speculative decoding, quantised weights."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.perf import PerfInputError, UnknownNameInput, UnsupportedInput, predict
from pocgrid.perf.efficiency import CURRENT_PROFILE, STATIC_PROFILE, default_efficiency
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.predict import serving_config
from pocgrid.perf.serving import (
    Workload,
    request_concurrency,
    simulate,
    steady_state,
    steady_state_min_requests,
)
from pocgrid.perf.static_batch import SpecDecoding, predict_static

CHIP, MODEL = "a100-80gb-sxm", "Llama-3.1-8B"


def test_every_prediction_names_its_profile() -> None:
    static = predict(CHIP, 1, MODEL, "fp16", 8, 128, 16)
    assert static.profile == STATIC_PROFILE and static.to_dict()["profile"] == STATIC_PROFILE
    served = predict(CHIP, 1, MODEL, "fp16", 8, 128, 16, "poisson", qps=1.0, requests=60)
    assert served.profile == CURRENT_PROFILE
    ascend = predict("ascend-910b", 1, MODEL, "fp16", 8, 128, 16, "poisson", qps=1.0, requests=60)
    assert ascend.profile == "mindie-ascend"
    assert "ASSUMED" in str(ascend.profile_detail["basis"])
    named = predict(CHIP, 1, MODEL, "fp16", 8, 128, 16, profile=CURRENT_PROFILE)
    assert named.profile == CURRENT_PROFILE
    with pytest.raises(UnknownNameInput, match=r"^profile: no profile 'vllm-9'"):
        predict(CHIP, 1, MODEL, "fp16", 8, 128, 16, profile="vllm-9")


def test_static_profile_is_the_global_parameter_set() -> None:
    eff = default_efficiency()
    assert eff.profile(STATIC_PROFILE).params == eff.params
    for profile in eff.profiles.values():
        assert profile.basis and profile.stack and profile.version


def test_max_throughput_is_steady_once_past_the_stated_minimum() -> None:
    first = predict(CHIP, 1, MODEL, "fp16", 256, 128, 256, "max_throughput")
    assert first.requests == steady_state_min_requests(256)
    assert first.steady_state is not None and first.steady_state["reached"] is True
    doubled = predict(
        CHIP, 1, MODEL, "fp16", 256, 128, 256, "max_throughput", requests=2 * first.requests
    )
    assert first.output_tokens_per_s is not None and doubled.output_tokens_per_s is not None
    assert doubled.output_tokens_per_s == pytest.approx(first.output_tokens_per_s, rel=0.02)


def test_max_throughput_fed_too_few_requests_is_extended_and_says_so() -> None:
    p = predict(CHIP, 8, MODEL, "fp16", 256, 128, 128, "max_throughput", tp=1, requests=1500)
    assert p.requests_asked == 1500
    assert p.requests == 8 * steady_state_min_requests(256)
    assert p.steady_state is not None and p.steady_state["reached"] is True
    # Simulated as asked, the run never leaves warm-up: the window says so.
    d = LlmDeployment(default_catalog().chip(CHIP), default_catalog().model(MODEL), "fp16", 1)
    config = serving_config(default_efficiency().profile(CURRENT_PROFILE), 256)
    short = simulate(d, Workload.offline(1500 // 8, 128, 128), config)
    assert not steady_state(short, concurrency=256).reached


def test_overloaded_poisson_says_saturated_and_the_sustainable_rate() -> None:
    capacity = predict(CHIP, 1, MODEL, "fp16", 64, 256, 64, "max_throughput")
    p = predict(CHIP, 1, MODEL, "fp16", 64, 256, 64, "poisson", qps=1000.0, requests=400)
    assert p.saturated is True
    assert p.sustainable_qps == pytest.approx(capacity.sustainable_qps, rel=1e-9)
    assert p.ttft_ms is None and p.tpot_ms is None  # no latency for a growing queue
    assert p.steady_state is not None and p.steady_state["reached"] is False
    assert "saturated" in str(p.steady_state["reason"])
    light = predict(CHIP, 1, MODEL, "fp16", 64, 256, 64, "poisson", qps=2.0, requests=400)
    assert light.saturated is False and light.steady_state is not None
    assert light.steady_state["reached"] is True and light.ttft_ms is not None


def _littles_law(mode: str, **kwargs: object) -> None:
    d = LlmDeployment(default_catalog().chip(CHIP), default_catalog().model(MODEL), "fp16", 1)
    config = serving_config(default_efficiency().profile(CURRENT_PROFILE), 64)
    if mode == "max_throughput":
        w = Workload.offline(400, 256, 64)
    elif mode == "poisson":
        w = Workload.poisson(400, 4.0, 256, 64, seed=1)
    else:
        w = Workload.closed_loop(400, 16, 256, 64)
    r = simulate(d, w, config)
    s = r.summary()
    # Whole run: L = lambda W exactly (the in-flight integral is the sum of latencies).
    assert s.mean_in_flight == pytest.approx(s.requests_per_s * s.latency_s.mean, rel=1e-9)
    # Steady-state window: L = lambda W within the window's edge effects.
    ss = steady_state(r, concurrency=kwargs.get("concurrency"), open_loop=mode != "concurrency")  # type: ignore[arg-type]
    assert ss.reached, ss.reason
    if mode == "max_throughput":
        return  # everything arrives at t=0: the window is not a stationary process
    assert ss.mean_in_flight == pytest.approx(ss.requests_per_s * ss.latency_s.mean, rel=0.1)
    if mode == "concurrency":
        assert ss.mean_in_flight == pytest.approx(16, rel=0.02)


@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [
        ("max_throughput", {"concurrency": 64}),
        ("poisson", {}),
        ("concurrency", {"concurrency": 16}),
    ],
)
def test_littles_law_holds_in_every_serving_mode(mode: str, kwargs: dict[str, object]) -> None:
    _littles_law(mode, **kwargs)


def test_littles_law_holds_for_a_static_batch() -> None:
    p = predict(CHIP, 1, MODEL, "fp16", 32, 256, 64)
    assert p.output_tokens_per_s is not None and p.ttft_ms is not None and p.tpot_ms is not None
    latency_s = (p.ttft_ms + 63 * p.tpot_ms) / 1e3  # every request ends with the batch
    requests_per_s = p.output_tokens_per_s / 64
    assert requests_per_s * latency_s == pytest.approx(32, rel=1e-9)


def test_fixed_concurrency_keeps_that_many_requests_in_flight() -> None:
    p = predict(CHIP, 2, MODEL, "fp16", 64, 256, 64, "concurrency", tp=1, concurrency=16)
    assert p.steady_state is not None and p.steady_state["reached"] is True
    assert p.concurrency == 16 and p.saturated is None
    with pytest.raises(PerfInputError, match=r"^concurrency: is required"):
        predict(CHIP, 1, MODEL, "fp16", 64, 256, 64, "concurrency")


def test_tp_auto_tries_every_degree_and_keeps_the_fastest() -> None:
    p = predict(CHIP, 4, MODEL, "fp16", 64, 256, 64, tp="auto")
    assert p.tp_candidates is not None
    assert [c["tp"] for c in p.tp_candidates] == [1, 2, 4]
    best = max(float(c["output_tokens_per_s"] or 0) for c in p.tp_candidates)  # type: ignore[arg-type]
    assert p.output_tokens_per_s == best


@pytest.mark.parametrize("model", ["Llama-3.1-8B", "Mixtral-8x7B-v0.1", "Gemma-2-9B"])
def test_speculative_decoding_at_acceptance_one_is_the_plain_model(model: str) -> None:
    cat = default_catalog()
    d = LlmDeployment(cat.chip("h100-80gb-sxm"), cat.model(model), "bf16", 2)
    plain = predict_static(d, 16, 700, 300)
    spec = predict_static(d, 16, 700, 300, SpecDecoding(1.0))
    assert spec == plain  # bit for bit: same steps, same features


def test_speculative_decoding_costs_and_gains() -> None:
    cat = default_catalog()
    d = LlmDeployment(cat.chip("h100-80gb-sxm"), cat.model("Llama-3.1-8B"), "bf16", 1)
    plain = predict_static(d, 4, 1000, 257)
    wasted = predict_static(d, 4, 1000, 257, SpecDecoding(1.0, draft_tokens=3))
    good = predict_static(d, 4, 1000, 257, SpecDecoding(3.0, draft_tokens=4, draft_cost=0.05))
    assert plain.tpot_s is not None and wasted.tpot_s is not None and good.tpot_s is not None
    assert wasted.tpot_s > plain.tpot_s  # verifying drafts nobody accepts is pure cost
    # Memory-bound decode at batch 4: three tokens per pass for a little more than one pass.
    assert plain.tpot_s / 3 < good.tpot_s < plain.tpot_s / 2
    with pytest.raises(PerfInputError, match=r"^acceptance_length: must be <= draft_tokens"):
        SpecDecoding(3.0, draft_tokens=1)


@pytest.mark.parametrize("chunked", [True, False])
def test_speculative_lone_request_in_the_simulator_matches_the_static_model(
    chunked: bool,
) -> None:
    cat = default_catalog()
    d = LlmDeployment(cat.chip("h100-80gb-sxm"), cat.model("Llama-3.1-8B"), "bf16", 1)
    spec = SpecDecoding(2.5, draft_tokens=3, draft_cost=0.05)
    config = replace(
        serving_config(default_efficiency().profile(CURRENT_PROFILE), 8), chunked_prefill=chunked
    )
    r = simulate(d, Workload.offline(1, 1000, 301), config, spec)
    static = predict_static(d, 1, 1000, 301, spec)
    assert static.ttft_s is not None and static.tpot_s is not None
    assert r.ttft_s[0] == pytest.approx(static.ttft_s, rel=1e-9)
    assert r.tpot_s[0] == pytest.approx(static.tpot_s, rel=1e-9)
    assert float(r.step_tokens.sum()) == pytest.approx(301)
    plain = simulate(d, Workload.offline(1, 1000, 301), config, SpecDecoding(1.0))
    again = simulate(d, Workload.offline(1, 1000, 301), config)
    np.testing.assert_array_equal(plain.step_end_s, again.step_end_s)
    lazy = replace(config, reserve_kv_at_admission=False)
    with pytest.raises(UnsupportedInput, match=r"^acceptance_length: .*reserve"):
        simulate(d, Workload.offline(1, 1000, 301), lazy, spec)


def test_speculative_decoding_in_serving_modes() -> None:
    plain = predict(CHIP, 1, MODEL, "fp16", 64, 256, 128, "poisson", qps=2.0, requests=200)
    spec = predict(
        CHIP, 1, MODEL, "fp16", 64, 256, 128, "poisson", qps=2.0, requests=200,
        spec=SpecDecoding(2.0, draft_tokens=3),
    )  # fmt: skip
    assert plain.tpot_ms is not None and spec.tpot_ms is not None
    assert spec.tpot_ms < 0.8 * plain.tpot_ms


def test_quantised_weights_shrink_memory_and_use_the_right_ceiling() -> None:
    cat = default_catalog()
    chip, model = cat.chip("h100-80gb-sxm"), cat.model("Llama-3.1-70B")
    fp16 = LlmDeployment(chip, model, "fp16", 2)
    w4 = LlmDeployment(chip, model, "w4a16", 2, group_size=128)
    w4g32 = LlmDeployment(chip, model, "w4a16", 2, group_size=32)
    w8 = LlmDeployment(chip, model, "w8a8", 2)
    ratio = w4.weights_bytes_device() / fp16.weights_bytes_device()
    assert 0.25 < ratio < 0.27  # 4 bits + a 16-bit scale per 128 weights; 16-bit LM head
    assert w4g32.weights_bytes_device() > w4.weights_bytes_device()
    assert w4.ceilings.gemm.rate == fp16.ceilings.gemm.rate  # dequantised into 16-bit GEMMs
    assert w8.ceilings.gemm.rate == LlmDeployment(chip, model, "int8", 2).ceilings.gemm.rate
    assert w4.kv_bytes_per_token_device() == fp16.kv_bytes_per_token_device()
    # Decode is memory-bound at small batch: a quarter of the weight bytes is much faster.
    slow, fast = predict_static(fp16, 8, 128, 64), predict_static(w4, 8, 128, 64)
    assert fast.tpot_s is not None and slow.tpot_s is not None
    assert fast.tpot_s < 0.6 * slow.tpot_s
    assert not math.isnan(fast.tpot_s) and np.isfinite(fast.tpot_s)


def test_request_concurrency_is_the_kv_limit_or_the_sequence_limit() -> None:
    cat = default_catalog()
    d = LlmDeployment(cat.chip(CHIP), cat.model(MODEL), "fp16", 1)
    config = serving_config(default_efficiency().profile(CURRENT_PROFILE), None)
    assert request_concurrency(d, config, 64, 64) == config.max_num_seqs
    long = request_concurrency(d, config, 2048, 2048)
    assert 50 < long < config.max_num_seqs
