"""A tenant's own ONNX model with its labelled samples, end to end through the gateway:
import the graph (AdapterService), import the samples (ImportSampleSet), create a scenario over
both, evaluate it on two chips: the graph is timed on each chip, and its accuracy is measured
per chip and precision through the agents' RunTask against the fp32 CPU reference. Bad models
and sample sets are INVALID_ARGUMENT naming the field; another tenant can use neither.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.tensors import from_array
from pocgrid.v1 import (
    adapter_pb2,
    adapter_pb2_grpc,
    evaluator_pb2,
    evaluator_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from services.adapter.config import AdapterConfig
from services.adapter.service import AdapterServer
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.evaluator.accuracy import fp32_reference
from services.evaluator.config import EvaluatorConfig
from services.evaluator.realmodels import load_real_model
from services.evaluator.service import EvaluatorServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import SchedulerServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration
A = (("authorization", "Bearer key-a"),)
B = (("authorization", "Bearer key-b"),)
CHIPS = ("a100-80gb-sxm", "ascend-910b2")


@pytest.fixture
async def gateway(common, closer, waiter) -> str:
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    for chip in CHIPS:
        agent = AgentServer(
            common,
            AgentConfig(chip=chip, devices=1, node_id=f"{chip}-u", registry_addr=reg.address),
        )
        await agent.start()
        closer.append(agent)
    adapter = AdapterServer(common, AdapterConfig())
    await adapter.start()
    closer.append(adapter)
    # The scheduler places every run, as in the mesh `pocgrid up` starts.
    sched = SchedulerServer(common, SchedulerConfig(registry_addr=reg.address))
    await sched.start()
    closer.append(sched)
    ev = EvaluatorServer(
        common,
        EvaluatorConfig(
            registry_addr=reg.address,
            scheduler_addr=sched.address,
            adapter_addr=adapter.address,
        ),
    )
    await ev.start()
    closer.append(ev)
    gw = GatewayServer(
        common,
        GatewayConfig(
            api_keys="key-a=tenant-a,key-b=tenant-b",
            registry_addr=reg.address,
            evaluator_addr=ev.address,
            adapter_addr=adapter.address,
        ),
    )
    await gw.start()
    closer.append(gw)

    async def registered() -> bool:
        async with service_channel(reg.address) as ch:
            nodes = await registry_pb2_grpc.RegistryServiceStub(ch).ListNodes(
                registry_pb2.ListNodesRequest(state=registry_pb2.NODE_STATE_READY)
            )
        return len(nodes.nodes) == len(CHIPS)

    await waiter(registered, what="agents registered")
    return gw.address


def _samples_request(real, **changes) -> evaluator_pb2.ImportSampleSetRequest:
    request = evaluator_pb2.ImportSampleSetRequest(
        name="my digits",
        inputs=[from_array(n, a) for n, a in real.samples.inputs.items()],
        labels=real.samples.labels.tolist(),
        output=real.samples.output,
    )
    for key, value in changes.items():
        if key == "labels":
            del request.labels[:]
            request.labels.extend(value)
        elif key == "inputs":
            del request.inputs[:]
            request.inputs.extend(value)
        else:
            setattr(request, key, value)
    return request


def _scenario(model_id: str, sample_set: str, **changes) -> evaluator_pb2.Scenario:
    s = evaluator_pb2.Scenario(
        name="my-digits",
        kind="samples",
        title="My digit reader",
        onnx_model_hash=model_id,
        sample_set=sample_set,
        default_mode=evaluator_pb2.EVALUATION_MODE_SERVER,
        default_qps=200.0,
        default_requests=400,
        default_precision="fp16",
        default_slo=evaluator_pb2.Slo(p99_latency_ms=50, min_accuracy_ratio=0.99),
    )
    for key, value in changes.items():
        if isinstance(value, list):
            getattr(s, key).extend(value)
        else:
            setattr(s, key, value)
    return s


async def _run(stub, request, metadata=A) -> evaluator_pb2.Evaluation:
    started = (await stub.StartEvaluation(request, metadata=metadata)).evaluation
    last = None
    async for update in stub.WatchEvaluation(
        evaluator_pb2.WatchEvaluationRequest(evaluation_id=started.evaluation_id),
        metadata=metadata,
        timeout=180,
    ):
        last = update.evaluation
    assert last is not None
    return last


async def test_imported_onnx_model_is_evaluated_with_real_accuracy_per_chip(gateway):
    real = load_real_model("digits-mlp")
    reference = fp32_reference(real.model, real.samples)
    async with grpc.aio.insecure_channel(gateway) as ch:
        adapter = adapter_pb2_grpc.AdapterServiceStub(ch)
        evaluator = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        imported = (
            await adapter.ImportOnnxModel(
                adapter_pb2.ImportOnnxModelRequest(name="digits", onnx=real.model), metadata=A
            )
        ).model
        got = await adapter.GetImportedModel(
            adapter_pb2.GetImportedModelRequest(model_id=imported.model_id, include_content=True),
            metadata=A,
        )
        assert got.content == real.model
        sample_set = (
            await evaluator.ImportSampleSet(_samples_request(real), metadata=A)
        ).sample_set
        assert sample_set.count == real.samples.count and sample_set.inputs == ["image"]
        again = await evaluator.ImportSampleSet(_samples_request(real), metadata=A)
        assert not again.created and again.sample_set.sample_set_id == sample_set.sample_set_id
        created = (
            await evaluator.CreateScenario(
                evaluator_pb2.CreateScenarioRequest(
                    scenario=_scenario(imported.model_id, sample_set.sample_set_id)
                ),
                metadata=A,
            )
        ).scenario
        assert created.labelled_samples == real.samples.count and created.owner == "tenant-a"
        e = await _run(
            evaluator,
            evaluator_pb2.StartEvaluationRequest(scenario="my-digits", chips=list(CHIPS), seed=1),
        )
        assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
        by = {r.chip: r for r in e.results}
        assert set(by) == set(CHIPS)
        for r in by.values():
            assert r.runnable, r.reason
            assert r.model == imported.model_id and r.precision in ("fp16", "bf16")
            # Placed through the scheduler: a job held the devices the run was served on.
            assert r.placement == "scheduler" and r.job_id, r.reason
            assert r.request_throughput > 0 and r.e2el_ms.p99 > 0 and r.mfu > 0
            # Real numerics on the chip's agent: a measured share, near the fp32 reference.
            assert r.HasField("accuracy"), r.accuracy_note
            assert abs(r.accuracy - reference.accuracy) <= 0.01
            assert f"{reference.accuracy:.4f}" in r.accuracy_note
            assert sample_set.sample_set_id in r.accuracy_note
        # The other tenant sees neither the scenario, the model nor the samples.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await evaluator.StartEvaluation(
                evaluator_pb2.StartEvaluationRequest(scenario="my-digits"), metadata=B
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await evaluator.CreateScenario(
                evaluator_pb2.CreateScenarioRequest(
                    scenario=_scenario(imported.model_id, sample_set.sample_set_id)
                ),
                metadata=B,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("scenario.onnx_model_hash:")


@pytest.mark.parametrize(
    ("samples", "field"),
    [
        ({"labels": []}, "labels"),
        ({"labels": [-1] * 359}, "labels"),
        ({"output": ""}, "output"),
        ({"labels": [0, 1, 2]}, "inputs[0].shape"),
        (
            {"inputs": [from_array("image", np.full((359, 1, 8, 8), np.nan, np.float32))]},
            "inputs[0].data",
        ),
    ],
)
async def test_bad_sample_set_is_invalid_argument_naming_the_field(gateway, samples, field):
    real = load_real_model("digits-mlp")
    async with grpc.aio.insecure_channel(gateway) as ch:
        evaluator = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await evaluator.ImportSampleSet(_samples_request(real, **samples), metadata=A)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


async def test_samples_that_do_not_fit_the_model_are_refused_by_field(gateway):
    digits = load_real_model("digits-mlp")
    speech = load_real_model("speech-commands-cnn")
    async with grpc.aio.insecure_channel(gateway) as ch:
        adapter = adapter_pb2_grpc.AdapterServiceStub(ch)
        evaluator = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        model_id = (
            await adapter.ImportOnnxModel(
                adapter_pb2.ImportOnnxModelRequest(name="digits", onnx=digits.model), metadata=A
            )
        ).model.model_id

        async def create(scenario) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await evaluator.CreateScenario(
                    evaluator_pb2.CreateScenarioRequest(scenario=scenario), metadata=A
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return err.value

        async def samples(real, **changes) -> str:
            response = await evaluator.ImportSampleSet(
                _samples_request(real, **changes), metadata=A
            )
            return response.sample_set.sample_set_id

        # Speech clips for a digit classifier: not the graph's inputs (40 of them: one message).
        clips = [from_array(n, a[:40].copy()) for n, a in speech.samples.inputs.items()]
        wrong = await samples(speech, inputs=clips, labels=speech.samples.labels[:40].tolist())
        err = await create(_scenario(model_id, wrong))
        assert err.details().startswith("scenario.sample_set:") and "graph inputs" in err.details()
        # 4x8 images: the graph fixes them at 8x8.
        narrow = from_array("image", digits.samples.inputs["image"][:, :, :4, :].copy())
        err = await create(_scenario(model_id, await samples(digits, inputs=[narrow])))
        assert err.details().startswith("scenario.sample_set:") and "fixes it at 8" in err.details()
        # Labels beyond the output's 10 classes.
        big = await samples(digits, labels=[12] * digits.samples.count)
        err = await create(_scenario(model_id, big))
        assert err.details().startswith("scenario.sample_set:") and "10 classes" in err.details()
        # An output the graph does not have.
        err = await create(_scenario(model_id, await samples(digits, output="probs")))
        assert err.details().startswith("scenario.sample_set:")
        good = await samples(digits)
        err = await create(_scenario("onnx-0000000000000000", good))
        assert err.details().startswith("scenario.onnx_model_hash:")
        err = await create(_scenario(model_id, "samples-0000000000000000"))
        assert err.details().startswith("scenario.sample_set:")
        err = await create(
            _scenario(model_id, good, models=["ResNet-50 (torchvision IMAGENET1K_V1)"])
        )
        assert err.details().startswith("scenario.models:")
        err = await create(_scenario(model_id, "", kind="samples"))
        assert err.details().startswith("scenario.sample_set:")
