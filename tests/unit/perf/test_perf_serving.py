"""The continuous-batching simulator: Little's law, determinism, tokens, preemption."""

from __future__ import annotations

import numpy as np
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.perf import PerfInputError, UnsupportedInput
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.serving import ServingConfig, SimResult, Workload, simulate
from pocgrid.perf.static_batch import predict_static


def deploy(chip: str, model: str, precision: str, tp: int) -> LlmDeployment:
    cat = default_catalog()
    return LlmDeployment(cat.chip(chip), cat.model(model), precision, tp)


@pytest.fixture(scope="module")
def a100_8b() -> LlmDeployment:
    return deploy("a100-80gb-sxm", "Llama-3.1-8B", "bf16", 1)


def server_run(d: LlmDeployment, seed: int, qps: float = 6.0) -> SimResult:
    return simulate(d, Workload.poisson(3000, qps, 512, 128, seed), ServingConfig())


def test_littles_law_holds_in_server_mode(a100_8b: LlmDeployment) -> None:
    s = server_run(a100_8b, seed=11).summary()
    assert s.mean_in_flight > 1.0  # a real queueing system, not a trivial one
    assert s.mean_in_flight / s.requests_per_s == pytest.approx(s.latency_s.mean, rel=0.02)
    # The engine's own occupancy can never exceed what is in flight.
    assert 0 < s.mean_running <= s.mean_in_flight + 1e-9


def test_littles_law_holds_for_a_steady_state_window(a100_8b: LlmDeployment) -> None:
    r = server_run(a100_8b, seed=5)
    arrival, finish = r.workload.arrival_s, r.finish_s
    t0, t1 = 100.0, 400.0
    # Time-weighted in-flight count over [t0, t1], sampled on a fine grid.
    grid = np.linspace(t0, t1, 30_001)
    counts = np.searchsorted(np.sort(arrival), grid, side="right") - np.searchsorted(
        np.sort(finish), grid, side="right"
    )
    mean_in_flight = float(counts.mean())
    done = (finish >= t0) & (finish < t1)
    rate = float(done.sum()) / (t1 - t0)
    assert mean_in_flight / rate == pytest.approx(float(r.latency_s[done].mean()), rel=0.05)


def test_same_seed_same_run_and_different_seed_differs(a100_8b: LlmDeployment) -> None:
    a, b, c = server_run(a100_8b, 1), server_run(a100_8b, 1), server_run(a100_8b, 2)
    np.testing.assert_array_equal(a.finish_s, b.finish_s)
    np.testing.assert_array_equal(a.step_end_s, b.step_end_s)
    assert a.summary() == b.summary()
    assert not np.array_equal(a.finish_s, c.finish_s)


def test_every_request_streams_its_tokens_in_order(a100_8b: LlmDeployment) -> None:
    r = server_run(a100_8b, seed=3)
    for i in range(0, r.workload.size, 97):
        times = r.token_times(i)
        assert times.shape == (128,)
        assert np.all(np.diff(times) > 0)
        assert times[0] == r.first_token_s[i] and times[-1] == r.finish_s[i]
        assert times[0] > r.workload.arrival_s[i]
        assert r.ttft_s[i] == times[0] - r.workload.arrival_s[i]
        assert r.latency_s[i] == times[-1] - r.workload.arrival_s[i]
        assert r.tpot_s[i] == pytest.approx(float(np.diff(times).mean()))


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize(
    ("model", "input_len", "output_len"),
    [("Llama-3.1-8B", 1000, 50), ("Gemma-2-9B", 4000, 300), ("Mistral-7B-v0.1", 4090, 40)],
)
def test_lone_request_matches_the_static_model(
    model: str, input_len: int, output_len: int, chunked: bool
) -> None:
    # Same operator table, so one request alone must cost what the static model says, including
    # decode steps that cross the sliding window.
    d = deploy("a100-80gb-sxm", model, "bf16", 1)
    config = ServingConfig(chunked_prefill=chunked)
    r = simulate(d, Workload.offline(1, input_len, output_len), config)
    static = predict_static(d, 1, input_len, output_len)
    assert static.ttft_s is not None and static.tpot_s is not None
    assert r.ttft_s[0] == pytest.approx(static.ttft_s, rel=1e-9)
    assert r.tpot_s[0] == pytest.approx(static.tpot_s, rel=1e-9)


def test_full_cache_preempts_and_recomputes_without_losing_tokens() -> None:
    d = deploy("rtx-4090", "Llama-2-7B", "fp16", 1)  # 24 GB, MHA: ~1k-token KV per 0.5 GB
    w = Workload.offline(300, 512, 512)
    for chunked in (True, False):
        r = simulate(d, w, ServingConfig(chunked_prefill=chunked))
        s = r.summary()
        assert s.preemptions > 0
        assert r.kv_cache_blocks * 16 < 300 * 1024
        assert all(r.token_times(i).shape == (512,) for i in range(w.size))
        assert np.all(np.isfinite(r.finish_s))


def test_long_prompts_in_small_chunks_under_memory_pressure() -> None:
    d = deploy("rtx-4090", "Llama-2-7B", "fp16", 1)
    w = Workload.poisson(200, 50.0, 3000, 300, 0)
    r = simulate(d, w, ServingConfig(max_num_batched_tokens=1024, max_num_seqs=64))
    assert r.summary().preemptions > 0
    assert all(r.token_times(i).shape == (300,) for i in range(w.size))
    # Chunks of at most 1024 tokens: a 3000-token prompt needs at least 3 steps to prefill.
    assert float(r.ttft_s.min()) >= 3 * float(np.diff(r.step_end_s).min())


def test_offline_throughput_is_capped_by_max_num_seqs(a100_8b: LlmDeployment) -> None:
    w = Workload.offline(512, 256, 128)
    small = simulate(a100_8b, w, ServingConfig(max_num_seqs=8)).summary()
    big = simulate(a100_8b, w, ServingConfig(max_num_seqs=128)).summary()
    assert big.output_tokens_per_s > 4 * small.output_tokens_per_s
    assert small.mean_running <= 8 + 1e-9


def test_sliding_window_and_moe_models_run(a100_8b: LlmDeployment) -> None:
    for d in (
        deploy("a100-80gb-sxm", "Gemma-2-9B", "bf16", 1),
        deploy("h200-141gb-sxm", "Mixtral-8x7B-v0.1", "bf16", 2),
        deploy("h200-141gb-sxm", "DeepSeek-V3", "fp8", 8),
    ):
        r = simulate(d, Workload.poisson(200, 2.0, 6000, 64, 0), ServingConfig())
        assert np.all(r.tpot_s > 0) and np.all(np.isfinite(r.latency_s))


def test_bad_config_and_impossible_requests() -> None:
    with pytest.raises(PerfInputError, match=r"^max_num_seqs: must be >= 1"):
        ServingConfig(max_num_seqs=0)
    with pytest.raises(PerfInputError, match=r"^max_num_batched_tokens: must be >= max_num_seqs"):
        ServingConfig(max_num_seqs=64, max_num_batched_tokens=32)
    with pytest.raises(PerfInputError, match=r"^qps: must be a positive number"):
        Workload.poisson(10, 0.0, 8, 8, 0)
    d = deploy("rtx-4090", "Llama-2-7B", "fp16", 1)
    with pytest.raises(UnsupportedInput, match=r"^input_len: a request of 100000 tokens needs"):
        simulate(d, Workload.offline(1, 99_999, 1), ServingConfig())
    with pytest.raises(PerfInputError, match=r"^max_num_batched_tokens: must be >= 4096"):
        simulate(
            d,
            Workload.offline(1, 4000, 96),
            ServingConfig(max_num_batched_tokens=2048, chunked_prefill=False),
        )
