"""The ``--json`` shape the issue names, key by key, on a real evaluation: ``{"results": [...],
"recommendation": {...}}``, each result with its figures, latency summaries as
``{mean, median, p90, p99}``, and ``reason`` exactly where a chip cannot run the scenario.

The same small mesh as ``test_evaluations`` (a 14B model: the 24 GiB RTX 4090 cannot hold it).
"""

from __future__ import annotations

import grpc
import pytest

from pocgrid.evaluation import evaluation_to_dict
from pocgrid.v1 import evaluator_pb2, evaluator_pb2_grpc
from tests.integration.test_evaluations import _run, mesh  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

RESULT_KEYS = (
    "chip",
    "devices",
    "precision",
    "profile",
    "request_throughput",
    "output_tokens_per_s",
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2el_ms",
    "goodput",
    "accuracy",
    "cost",
    "energy_wh",
    "slo_met",
    "verdict",
    "reason",
)
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")


async def test_json_has_every_key_the_issue_names(mesh):  # noqa: F811
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        e = await _run(
            evaluator_pb2_grpc.EvaluatorServiceStub(ch),
            evaluator_pb2.StartEvaluationRequest(
                scenario="llm-chat", model="Qwen2.5-14B", requests=200, seed=2
            ),
        )
    assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
    doc = evaluation_to_dict(e)
    assert isinstance(doc["results"], list) and isinstance(doc["recommendation"], dict)
    for key in ("cheapest", "fastest", "best_domestic", "summary"):
        assert key in doc["recommendation"]
    by = {r["chip"]: r for r in doc["results"]}
    assert set(by) == {"a100-80gb-sxm", "ascend-910b2", "rtx-4090"}
    for chip, r in by.items():
        missing = [k for k in RESULT_KEYS if k not in r]
        assert not missing, f"{chip}: {missing}"
        assert r["verdict"] in ("VALID", "INVALID")
        assert isinstance(r["slo_met"], bool)
    for chip in ("a100-80gb-sxm", "ascend-910b2"):
        r = by[chip]
        assert r["reason"] is None and r["devices"] == 1 and r["profile"]
        for name in LATENCIES:
            summary = r[name]
            assert set(summary) == {"mean", "median", "p90", "p99"}, name
            assert 0 < summary["median"] <= summary["p90"] <= summary["p99"], name
        assert r["request_throughput"] > 0 and r["output_tokens_per_s"] > 0
        assert 0 <= r["goodput"] <= r["request_throughput"] + 1e-9
        # No weights of a 14B LLM here: accuracy is null, and the note says it was not measured.
        assert r["accuracy"] is None and r["accuracy_note"].startswith("not measured")
        assert r["energy_wh"] is None or r["energy_wh"] > 0
    small = by["rtx-4090"]
    assert isinstance(small["reason"], str) and "GiB" in small["reason"]
    assert small["verdict"] == "INVALID" and small["request_throughput"] is None
