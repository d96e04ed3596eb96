"""Load generation, the batching server, and the recommendation, without servers."""

from __future__ import annotations

import numpy as np
import pytest

from pocgrid.perf.batching import simulate_batches
from pocgrid.perf.serving import Workload, steady_state
from pocgrid.v1 import evaluator_pb2
from services.evaluator import loadgen
from services.evaluator.recommend import recommend

LOGNORMAL = evaluator_pb2.LengthDistribution(kind="lognormal", mean=500, std=300, min=16, max=4000)
UNIFORM = evaluator_pb2.LengthDistribution(kind="uniform", min=10, max=20)


def test_same_seed_same_requests_and_sizes_independent_of_rate():
    a = loadgen.request_list("server", 2000, 5, input_len=LOGNORMAL, output_len=UNIFORM, qps=4)
    b = loadgen.request_list("server", 2000, 5, input_len=LOGNORMAL, output_len=UNIFORM, qps=4)
    c = loadgen.request_list("server", 2000, 5, input_len=LOGNORMAL, output_len=UNIFORM, qps=8)
    d = loadgen.request_list("server", 2000, 6, input_len=LOGNORMAL, output_len=UNIFORM, qps=4)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.input_len, b.input_len)
    assert np.array_equal(a.input_len, c.input_len) and not np.array_equal(a.arrival_s, c.arrival_s)
    assert not np.array_equal(a.arrival_s, d.arrival_s)
    assert a.input_len.min() >= 16 and a.input_len.max() <= 4000
    assert abs(a.input_len.mean() - 500) < 30
    assert set(np.unique(a.output_len)) <= set(range(10, 21))


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_gaps_keep_the_rate_and_change_the_spread(burstiness):
    rng = np.random.default_rng(0)
    t = loadgen.arrivals(50_000, 10.0, burstiness, rng)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)
    # A gamma of shape k has coefficient of variation 1 / sqrt(k) (vLLM's --burstiness).
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.05)


def test_closed_loop_modes():
    single = loadgen.request_list("single-stream", 10, 0, input_len=None, output_len=None)
    assert single.concurrency == 1 and np.all(single.arrival_s == 0)
    assert np.all(single.input_len == 1)
    conc = loadgen.request_list(
        "concurrency", 10, 0, input_len=None, output_len=None, concurrency=4
    )
    assert conc.concurrency == 4


def test_batching_server_batches_what_is_queued():
    # A batch of b takes 1 + 0.1 b seconds; 8 requests at t = 0, at most 4 per batch.
    times = [1 + 0.1 * b for b in range(1, 5)]
    result = simulate_batches(Workload.offline(8, 1, 1), times)
    assert result.finish_s.tolist() == pytest.approx([1.4] * 4 + [2.8] * 4)
    # Closed loop of 2 clients: each next request is sent when one finishes.
    closed = simulate_batches(Workload.closed_loop(4, 2, 1, 1), times)
    assert closed.workload.arrival_s.tolist() == pytest.approx([0, 0, 1.2, 1.2])
    assert closed.finish_s.tolist() == pytest.approx([1.2, 1.2, 2.4, 2.4])


def test_batching_server_saturates_visibly():
    # 1 s per sample, no batching gain, 2 requests/s offered: the queue grows.
    w = Workload.poisson(400, 2.0, 1, 1, seed=1)
    result = simulate_batches(w, [1.0])
    window = steady_state(result)
    assert window.saturated and not window.reached


def _result(chip, *, domestic, cost=None, e2el=100.0, ok=True, runnable=True):
    r = evaluator_pb2.ChipResult(
        chip=chip,
        domestic=domestic,
        scenario="s",
        devices=1,
        mode="server",
        runnable=runnable,
        slo_met=ok,
        verdict=evaluator_pb2.VERDICT_VALID if ok else evaluator_pb2.VERDICT_INVALID,
    )
    r.e2el_ms.median = e2el
    if cost is not None:
        r.cost.per_million_tokens = cost
        r.cost.currency = "CNY"
    if not ok:
        r.slo_violations.append("TTFT p99 3000 ms > 2000 ms")
    return r


def test_recommendation_picks_cheapest_fastest_and_domestic():
    results = [
        _result("a", domestic=False, cost=10, e2el=50),
        _result("b", domestic=True, cost=8, e2el=90),
        _result("c", domestic=True, cost=5, e2el=200, ok=False),
        _result("d", domestic=True, cost=9, e2el=70),
    ]
    rec = recommend(results, {"s": 1.0})
    assert rec.cheapest == "b" and rec.fastest == "a" and rec.best_domestic == "b"
    assert "c" in rec.summary and "SLO missed" in rec.summary


def test_no_chip_meets_the_slo():
    rec = recommend([_result("a", domestic=True, ok=False)], {"s": 1.0})
    assert not rec.cheapest and not rec.fastest and not rec.best_domestic
    assert rec.summary.startswith("No chip type met the SLO")
