"""Wall time of the continuous-batching simulator for 10,000 requests (median of 3 runs).

The simulator must price each engine step in closed form so that an evaluation of 10,000
requests on an 8-device tensor-parallel deployment takes at most about 2 s of host time.
Run from the repository root:

    .venv/bin/python -m bench.serving_simulator
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from pocgrid.catalog import default_catalog
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.serving import ServingConfig, SimResult, Workload, simulate

REQUESTS = 10_000
RUNS = 3


@dataclass(frozen=True)
class Case:
    label: str
    chip: str
    model: str
    precision: str
    tp: int
    input_len: int
    output_len: int
    qps: float | None = None
    """None = offline (all requests at t=0)."""
    config: ServingConfig = field(default_factory=ServingConfig)


CASES = (
    Case("offline, chunked prefill", "a100-80gb-sxm", "Llama-2-70B", "fp16", 8, 512, 256),
    Case("server 5 req/s", "ascend-910b2", "Qwen2.5-72B", "bf16", 8, 1024, 256, qps=5.0),
    Case("offline, long outputs", "h100-80gb-sxm", "Llama-3.1-8B", "fp8", 8, 128, 1024),
    Case(
        "server 4 req/s, no chunking (V0)",
        "h200-141gb-sxm",
        "DeepSeek-V3",
        "fp8",
        8,
        1024,
        512,
        qps=4.0,
        config=ServingConfig(max_num_seqs=128, chunked_prefill=False),
    ),
    Case("offline, KV cache full: preemption", "rtx-4090", "Llama-2-70B", "fp16", 8, 512, 512),
)


def run_case(case: Case) -> tuple[float, SimResult]:
    cat = default_catalog()
    deployment = LlmDeployment(cat.chip(case.chip), cat.model(case.model), case.precision, case.tp)
    if case.qps is None:
        workload = Workload.offline(REQUESTS, case.input_len, case.output_len)
    else:
        workload = Workload.poisson(REQUESTS, case.qps, case.input_len, case.output_len, seed=0)
    times: list[float] = []
    result: SimResult | None = None
    for _ in range(RUNS):
        start = time.perf_counter()
        result = simulate(deployment, workload, case.config)
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result


def main() -> int:
    print(f"{REQUESTS:,} requests per case, wall time = median of {RUNS} runs\n")
    for case in CASES:
        wall, result = run_case(case)
        s = result.summary()
        print(
            f"{case.model} {case.precision} on {case.tp}x {case.chip} "
            f"({case.input_len}/{case.output_len}, {case.label})"
        )
        print(
            f"  wall {wall:.3f} s for {s.steps:,} steps | virtual {s.duration_s:,.0f} s | "
            f"{s.output_tokens_per_s:,.0f} out tok/s, {s.requests_per_s:.2f} req/s | "
            f"TTFT p50/p99 {s.ttft_s.p50 * 1e3:,.0f}/{s.ttft_s.p99 * 1e3:,.0f} ms | "
            f"TPOT p50 {s.tpot_s.p50 * 1e3:.1f} ms | in-flight {s.mean_in_flight:.1f} | "
            f"preemptions {s.preemptions} | KV blocks {s.kv_cache_blocks:,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
