"""The roofline core: which term binds, and the vectorised table agrees with the scalar form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.perf.llm import FEATURES, LlmDeployment
from pocgrid.perf.roofline import Bound, OpTime, op_time


def test_op_time_picks_the_slowest_term_and_adds_overhead() -> None:
    def time(flops: float, bytes_moved: float, comm: float, overhead: float = 0.0) -> OpTime:
        return op_time(
            flops=flops,
            bytes_moved=bytes_moved,
            comm_bytes=comm,
            compute_flops_per_s=100.0,
            memory_bytes_per_s=10.0,
            link_bytes_per_s=1.0,
            overhead_s=overhead,
        )

    compute = time(1000.0, 50.0, 0.0)
    assert compute.bound is Bound.COMPUTE and compute.seconds == pytest.approx(10.0)
    memory = time(100.0, 50.0, 0.0, overhead=0.5)
    assert memory.bound is Bound.MEMORY and memory.seconds == pytest.approx(5.5)
    comm = time(0.0, 0.0, 7.0)
    assert comm.bound is Bound.COMMUNICATION and comm.seconds == pytest.approx(7.0)
    idle = time(0.0, 0.0, 0.0, overhead=1e-3)
    assert idle.bound is Bound.OVERHEAD and idle.seconds == pytest.approx(1e-3)


def test_overlap_exponent_spans_sum_to_max() -> None:
    def op(k: float) -> OpTime:
        return op_time(
            flops=300.0,
            bytes_moved=40.0,
            comm_bytes=0.0,
            compute_flops_per_s=100.0,
            memory_bytes_per_s=10.0,
            link_bytes_per_s=1.0,
            overlap_exponent=k,
        )

    assert op(math.inf).seconds == pytest.approx(4.0)  # the plain roofline: max(3, 4)
    assert op(1.0).seconds == pytest.approx(7.0)  # no overlap: 3 + 4
    assert op(2.0).seconds == pytest.approx(5.0)  # sqrt(3^2 + 4^2)
    assert 4.0 < op(8.0).seconds < op(2.0).seconds
    # The bound is still the largest term, whatever the overlap.
    assert op(1.0).bound is Bound.MEMORY
    for bad in (0.5, 100.0, math.nan):
        with pytest.raises(ValueError, match="overlap_exponent"):
            op(bad)


@pytest.fixture(scope="module")
def deployment() -> LlmDeployment:
    cat = default_catalog()
    return LlmDeployment(cat.chip("a100-80gb-sxm"), cat.model("Llama-2-70B"), "fp16", 4)


def test_vectorised_evaluation_matches_scalar_and_breakdown(deployment: LlmDeployment) -> None:
    rng = np.random.default_rng(7)
    table = deployment.op_table
    xs = rng.uniform(0, 5000, size=(len(FEATURES), 32))
    xs[0] = 1.0
    many = table.evaluate(xs)
    for j in range(xs.shape[1]):
        one = table.seconds(xs[:, j])
        assert many.seconds[j] == pytest.approx(one, rel=1e-12)
        parts = table.breakdown(xs[:, j])
        assert sum(p.seconds for p in parts) + table.fixed_overhead_s == pytest.approx(one)
    by_bound_total = sum(v for v in many.by_bound.values())
    np.testing.assert_allclose(by_bound_total, many.seconds, rtol=1e-12)


def test_big_prefill_is_compute_bound_and_small_decode_is_not(
    deployment: LlmDeployment,
) -> None:
    table = deployment.op_table
    prefill = table.evaluate(deployment.prefill_features(8, 2048)[:, None])
    assert prefill.dominant_bound() is Bound.COMPUTE
    decode = table.evaluate(deployment.decode_features(1, np.array([2048.0])))
    assert decode.dominant_bound() is not Bound.COMPUTE
