"""The closed-form steady state the planner searches, against the rest of the performance model."""

from __future__ import annotations

import numpy as np
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.perf import LlmDeployment, ServingConfig, Workload, kv_cache_blocks, simulate
from pocgrid.perf.closed_form import chunked_steady_state, replica_capacity
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.static_batch import SpecDecoding

CAT = default_catalog()


def _dep(model: str = "Llama-3.1-8B", chip: str = "h100-80gb-sxm", tp: int = 1) -> LlmDeployment:
    return LlmDeployment(CAT.find_chip(chip), CAT.find_model(model), "bf16", tp)


def test_acceptance_one_is_the_plain_model_bit_for_bit() -> None:
    dep = _dep()
    plain = chunked_steady_state(dep, [1, 16, 256], [512, 8192], 1024, 256)
    spec = chunked_steady_state(dep, [1, 16, 256], [512, 8192], 1024, 256, spec=SpecDecoding(1.0))
    for field in ("tokens_per_s", "ttft_s", "tpot_s", "sustained"):
        assert np.array_equal(getattr(plain, field), getattr(spec, field)), field


@pytest.mark.parametrize("spec", [None, SpecDecoding(2.0, draft_tokens=2, draft_cost=0.05)])
def test_closed_form_agrees_with_the_simulator(spec: SpecDecoding | None) -> None:
    # A saturated replica: every request queued, the engine at its sequence limit.
    dep = _dep()
    batch, chunk, n = 64, 2048, 640
    grid = chunked_steady_state(dep, [batch], [chunk], 1024, 256, spec=spec)
    config = ServingConfig(
        max_num_seqs=batch, max_num_batched_tokens=chunk, reserve_kv_at_admission=True
    )
    sim = simulate(dep, Workload.offline(n, 1024, 256), config, spec).summary()
    ratio = float(grid.tokens_per_s[0, 0]) / sim.output_tokens_per_s
    assert 0.8 < ratio < 1.25, ratio


def test_speculation_gain_matches_the_simulated_gain() -> None:
    dep = _dep()
    spec = SpecDecoding(2.5, draft_tokens=3, draft_cost=0.05)
    config = ServingConfig(
        max_num_seqs=32, max_num_batched_tokens=2048, reserve_kv_at_admission=True
    )
    work = Workload.offline(320, 1024, 512)
    sim_gain = (
        simulate(dep, work, config, spec).summary().output_tokens_per_s
        / simulate(dep, work, config).summary().output_tokens_per_s
    )
    plain = chunked_steady_state(dep, [32], [2048], 1024, 512)
    faster = chunked_steady_state(dep, [32], [2048], 1024, 512, spec=spec)
    gain = float(faster.tokens_per_s[0, 0] / plain.tokens_per_s[0, 0])
    assert gain > 1.3 and abs(gain / sim_gain - 1) < 0.15, (gain, sim_gain)


def test_prefix_hits_speed_up_prefill_heavy_work_and_keep_the_attention() -> None:
    dep = _dep()
    rates = [
        float(
            chunked_steady_state(dep, [64], [2048], 4096, 64, prefix_hit_rate=h).tokens_per_s[0, 0]
        )
        for h in (0.0, 0.5, 0.9)
    ]
    assert rates[0] < rates[1] < rates[2]
    # The cached head is still attended: a 90 % hit is slower than a prompt 10 % as long.
    short = float(chunked_steady_state(dep, [64], [2048], 410, 64).tokens_per_s[0, 0])
    assert rates[2] < short
    with pytest.raises(PerfInputError, match="prefix_hit_rate"):
        chunked_steady_state(dep, [1], [512], 1024, 64, prefix_hit_rate=1.0)


def test_pipeline_stages_hold_more_and_one_stage_is_the_kv_cache_sizing() -> None:
    dep = _dep("Llama-3.1-70B", tp=8)
    config = ServingConfig(max_num_seqs=1, max_num_batched_tokens=512)
    assert replica_capacity(dep, config, 2048) == kv_cache_blocks(dep, config) // (2048 // 16)
    assert replica_capacity(dep, config, 2048, pp=2) > 2 * replica_capacity(dep, config, 2048)
    one = chunked_steady_state(dep, [64], [2048], 1024, 256)
    two = chunked_steady_state(dep, [64], [2048], 1024, 256, pp=2)
    # Two stages run two micro-batches at once: more tokens per replica, each token slower.
    assert two.tokens_per_s[0, 0] > one.tokens_per_s[0, 0]
    assert two.tpot_s[0, 0] > one.tpot_s[0, 0] * 0.5
    with pytest.raises(PerfInputError, match="pp"):
        chunked_steady_state(dep, [1], [512], 1024, 64, pp=0)
