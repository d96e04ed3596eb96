"""The text-to-image scenario over real gRPC: images per second, latency per image, the price of
a thousand images, energy, the SLO, and the AIGC pack that mixes it in.

The same small mesh as ``test_evaluations`` (registry, agents, metering, evaluator, gateway).
"""

from __future__ import annotations

import grpc
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.evaluation import evaluation_to_dict
from pocgrid.perf.diffusion import image_batch_time
from pocgrid.perf.efficiency import default_efficiency
from pocgrid.v1 import evaluator_pb2, evaluator_pb2_grpc
from tests.integration.test_evaluations import A, _run, mesh  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
SD = "Stable-Diffusion-v1.5"
TWO = ["a100-80gb-sxm", "ascend-910b2"]


async def test_text_to_image_reports_images_per_second_cost_and_energy(mesh):  # noqa: F811
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        scenario = (
            await stub.GetScenario(
                evaluator_pb2.GetScenarioRequest(name="text-to-image"), metadata=A
            )
        ).scenario
        assert scenario.kind == "samples" and scenario.default_model == SD
        assert scenario.passes_per_sample == 50 and scenario.default_slo.p99_latency_ms == 20000
        e = await _run(
            stub,
            evaluator_pb2.StartEvaluationRequest(scenario="text-to-image", chips=TWO, seed=3),
        )
    assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
    by = {r.chip: r for r in e.results}
    assert set(by) == set(TWO)
    for r in by.values():
        assert r.runnable and r.model == SD and r.devices == 1, r.reason
        assert r.request_throughput > 0 and r.e2el_ms.p99 >= r.e2el_ms.median > 1000
        # An image is the first and last output: no token figures.
        assert r.ttft_ms.median == r.e2el_ms.median and r.output_tokens_per_s == 0
        assert r.slo_met == (r.e2el_ms.p99 <= 20000)
        assert r.HasField("cost") and r.cost.per_thousand_samples > 0
        assert r.cost.per_thousand_samples == pytest.approx(
            r.cost.price_per_device_hour * r.devices / (r.request_throughput * 3600) * 1000
        )
        # Energy where the catalogue has the chip's TDP (the A100's 400 W; not the 910B2's).
        if r.chip == "a100-80gb-sxm":
            assert r.energy_wh == pytest.approx(400 * r.duration_s / 3600)
        else:
            assert not r.HasField("energy_wh") and r.energy_note
        assert 0 < r.mfu < 1
        assert not r.HasField("accuracy") and r.accuracy_note.startswith("not measured")
    shaped = evaluation_to_dict(e)["results"][0]
    assert shaped["cost"]["per_thousand_samples"] > 0


async def test_single_stream_latency_is_the_pipeline_and_steps_scale_it(mesh):  # noqa: F811
    """One image at a time: each request's latency is the perf model's batch of one (text
    encoder + 50 UNet steps + VAE decoder) plus the front end; half the steps, less time."""
    catalog = default_catalog()
    model = catalog.model(SD)
    chip = catalog.chip("ascend-910b2")
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        e = await _run(
            stub,
            evaluator_pb2.StartEvaluationRequest(
                scenario="text-to-image",
                chips=["ascend-910b2"],
                mode=evaluator_pb2.EVALUATION_MODE_SINGLE_STREAM,
                requests=60,
            ),
        )
        assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
        r = e.results[0]
        expected = image_batch_time(model, chip, r.precision, 1, 50).seconds
        overhead = default_efficiency().params.request_overhead_s
        assert r.e2el_ms.median == pytest.approx((expected + overhead) * 1e3, rel=1e-6)
        fast = evaluator_pb2.Scenario()
        fast.CopyFrom(
            (
                await stub.GetScenario(
                    evaluator_pb2.GetScenarioRequest(name="text-to-image"), metadata=A
                )
            ).scenario
        )
        fast.name, fast.owner, fast.passes_per_sample = "quick-images", "", 25
        await stub.CreateScenario(evaluator_pb2.CreateScenarioRequest(scenario=fast), metadata=A)
        quick = await _run(
            stub,
            evaluator_pb2.StartEvaluationRequest(
                scenario="quick-images",
                chips=["ascend-910b2"],
                mode=evaluator_pb2.EVALUATION_MODE_SINGLE_STREAM,
                requests=60,
            ),
        )
    q = quick.results[0]
    assert q.runnable, q.reason
    want = image_batch_time(model, chip, q.precision, 1, 25).seconds
    assert q.e2el_ms.median == pytest.approx((want + overhead) * 1e3, rel=1e-6)
    assert q.e2el_ms.median < 0.6 * r.e2el_ms.median
    assert q.mfu == pytest.approx(r.mfu, rel=0.15)


async def test_aigc_pack_mixes_text_to_image_with_its_own_bound(mesh):  # noqa: F811
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        pack = (
            await stub.GetScenario(evaluator_pb2.GetScenarioRequest(name="aigc"), metadata=A)
        ).scenario
        component = next(c for c in pack.components if c.scenario == "text-to-image")
        assert component.slo.p99_latency_ms == 10000
        e = await _run(
            stub,
            evaluator_pb2.StartEvaluationRequest(scenario="aigc", chips=["a100-80gb-sxm"]),
        )
    assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
    images = next(r for r in e.results if r.scenario == "text-to-image")
    assert images.runnable and images.model == SD
    assert images.slo_met == (images.e2el_ms.p99 <= 10000)
    assert {r.scenario for r in e.results} == {c.scenario for c in pack.components}
