"""Evaluation modes over real gRPC: an industry pack, find-peak, a concurrency sweep, progress.

The same small mesh as ``test_evaluations`` (registry, agents, evaluator, gateway on free ports).
"""

from __future__ import annotations

import grpc
import pytest

from pocgrid.v1 import evaluator_pb2, evaluator_pb2_grpc
from tests.integration.test_evaluations import A, _run, mesh  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


async def test_pack_runs_every_component_with_its_own_slo(mesh):  # noqa: F811
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        pack = (
            await stub.GetScenario(
                evaluator_pb2.GetScenarioRequest(name="manufacturing"), metadata=A
            )
        ).scenario
        e = await _run(
            stub,
            evaluator_pb2.StartEvaluationRequest(
                scenario="manufacturing", chips=["a100-80gb-sxm", "ascend-910b2"], requests=600
            ),
        )
        assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
        assert e.scenario_kind == "pack"
        by = {(r.scenario, r.chip): r for r in e.results}
        components = {c.scenario: c for c in pack.components}
        assert {s for s, _ in by} == set(components)
        assert len(e.results) == 2 * len(components)
        for (scenario, _chip), r in by.items():
            share = components[scenario].share
            assert r.requests == max(1, round(600 * share))
        # The pack's own bound replaced the scenario's (inspection at 30 ms, not 15 ms).
        inspection = by[("image-classification", "a100-80gb-sxm")]
        bound = components["image-classification"].slo.p99_latency_ms
        assert bound == 30
        assert inspection.slo_met == (inspection.e2el_ms.p99 <= bound)
        assert e.recommendation.summary
        assert e.progress.runs_done == e.progress.runs_total == len(e.results)


async def test_find_peak_reports_the_highest_rate_meeting_the_slo(mesh):  # noqa: F811
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        e = await _run(
            stub,
            evaluator_pb2.StartEvaluationRequest(
                scenario="llm-chat",
                chips=["ascend-910b2"],
                mode=evaluator_pb2.EVALUATION_MODE_FIND_PEAK,
                requests=300,
                slo=evaluator_pb2.SloOverride(ttft_p99_ms=1000, tpot_p99_ms=40),
            ),
        )
        assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
        r = e.results[0]
        assert r.runnable and r.curve and r.HasField("peak_qps")
        passing = [p.qps for p in r.curve if p.slo_met and p.steady]
        failing = [p.qps for p in r.curve if not (p.slo_met and p.steady)]
        assert passing and r.peak_qps == pytest.approx(max(passing), rel=0.05)
        # Bisection: every failing rate is above the peak.
        assert all(q > max(passing) for q in failing)


async def test_sweep_draws_throughput_against_interactivity(mesh):  # noqa: F811
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        e = await _run(
            stub,
            evaluator_pb2.StartEvaluationRequest(
                scenario="llm-chat",
                chips=["a100-80gb-sxm"],
                mode=evaluator_pb2.EVALUATION_MODE_SWEEP,
                sweep_concurrency=[1, 4, 16, 64],
                requests=200,
            ),
        )
        assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
        curve = e.results[0].curve
        assert [p.concurrency for p in curve] == [1, 4, 16, 64]
        throughput = [p.output_tokens_per_s for p in curve]
        per_user = [p.output_tokens_per_s_per_user for p in curve]
        # More clients: more tokens per second in all, fewer for each user.
        assert throughput == sorted(throughput) and per_user == sorted(per_user, reverse=True)


async def test_watch_streams_progress_until_the_end(mesh):  # noqa: F811
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        started = (
            await stub.StartEvaluation(
                evaluator_pb2.StartEvaluationRequest(scenario="llm-chat", requests=200),
                metadata=A,
            )
        ).evaluation
        seen = []
        async for update in stub.WatchEvaluation(
            evaluator_pb2.WatchEvaluationRequest(evaluation_id=started.evaluation_id),
            metadata=A,
            timeout=120,
        ):
            seen.append((update.evaluation.state, update.evaluation.progress.runs_done))
        assert seen[-1][0] == evaluator_pb2.EVALUATION_STATE_SUCCEEDED
        done = [d for _, d in seen]
        assert done == sorted(done) and done[-1] == 3 and len(seen) >= 3
