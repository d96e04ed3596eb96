"""Measured accuracy through real agents: the committed real models run by agents of two
vendors at two precisions each, through RunTask, and the figures equal a direct onnxruntime
run with the same precision emulation on the same batches."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.v1 import agent_pb2_grpc
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.agent.work.numerics import OnnxRunner
from services.evaluator.accuracy import (
    fp32_reference,
    measure_accuracy,
    measure_chip_accuracy,
    plan_batches,
    predictions,
)
from services.evaluator.realmodels import RealModel, load_real_model
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration
TENANT = (("x-pocgrid-tenant", "acme"),)


async def _agents(common, closer, chips: list[str]) -> dict[str, AgentServer]:
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    out = {}
    for chip in chips:
        agent = AgentServer(
            common,
            AgentConfig(chip=chip, devices=1, node_id=f"{chip}-acc", registry_addr=reg.address),
        )
        await agent.start()
        closer.append(agent)
        out[chip] = agent
    return out


def _direct(real: RealModel, precision: str, max_batch: int) -> float:
    """The agent's precision emulation run here, on the batches measure_accuracy sends."""
    import onnx

    runner = OnnxRunner()
    model = onnx.load_model_from_string(real.model)
    session = runner.session(model, real.model, precision)
    ref = fp32_reference(real.model, real.samples)
    parts = plan_batches(
        real.samples.count,
        real.samples.row_bytes(),
        ref.output_row_bytes,
        len(real.model),
        max_batch=max_batch,
    )
    logits = np.concatenate(
        [runner.run(session, real.samples.rows(p), precision)[real.samples.output] for p in parts]
    )
    return float(np.mean(predictions(logits) == real.samples.labels))


@pytest.mark.parametrize("name", ["digits-mlp", "speech-commands-cnn"])
async def test_two_vendors_two_precisions_match_direct_emulation(common, closer, name) -> None:
    real = load_real_model(name)
    runs = {"ascend-910b2": ("fp16", "int8"), "mtt-s5000": ("bf16", "fp8")}
    agents = await _agents(common, closer, list(runs))
    reference = fp32_reference(real.model, real.samples)
    max_batch = 64  # several batches per run, so the batching is exercised
    for chip, precisions in runs.items():
        async with service_channel(agents[chip].address, identity="scheduler") as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)

            def call(request, stub=stub):
                return stub.RunTask(request, metadata=TENANT, timeout=120)

            for precision in precisions:
                got = await measure_accuracy(
                    call,
                    real.model,
                    real.samples,
                    chip=chip,
                    precision=precision,
                    reference=reference,
                    task_prefix="itest",
                    max_batch=max_batch,
                )
                assert got.chip == chip and got.precision == precision
                assert got.samples == real.samples.count
                assert got.batches == -(-real.samples.count // max_batch)
                assert got.accuracy == pytest.approx(_direct(real, precision, max_batch))
                assert got.reference_accuracy == pytest.approx(reference.accuracy)
                assert got.reference_accuracy == pytest.approx(real.card.fp32_accuracy, abs=0.01)
                assert got.agreement is not None and 0.5 < got.agreement <= 1.0
                assert precision in got.numerics and "onnxruntime" in got.numerics
                assert got.busy_device_seconds > 0
                # A retry reuses the task ids: the agent answers from its cache, same figures.
                again = await measure_accuracy(
                    call,
                    real.model,
                    real.samples,
                    chip=chip,
                    precision=precision,
                    reference=reference,
                    task_prefix="itest",
                    max_batch=max_batch,
                )
                assert again == got


async def test_every_supported_precision_and_a_refused_one(common, closer) -> None:
    real = load_real_model("typo-corrector")
    catalog = default_catalog()
    chip = catalog.chip("ascend-310p")  # fp16 and int8 only: no fp32 on this chip
    agents = await _agents(common, closer, [chip.name])
    async with service_channel(agents[chip.name].address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)

        def call(request):
            return stub.RunTask(request, metadata=TENANT, timeout=120)

        results = await measure_chip_accuracy(
            call, real.model, real.samples, chip=chip, catalog=catalog, task_prefix="all"
        )
        assert [r.precision for r in results] == list(catalog.precisions(chip))
        assert all(r.measured and r.reason == "" for r in results)
        assert all((r.accuracy or 0.0) > 0.5 for r in results)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await measure_accuracy(call, real.model, real.samples, chip=chip.name, precision="fp32")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "fp32 is not supported by ascend-310p" in (err.value.details() or "")


async def test_a_precision_the_agent_cannot_time_is_reported_with_its_reason(
    common, closer
) -> None:
    real = load_real_model("digits-mlp")
    catalog = default_catalog()
    chip = catalog.chip("mtt-s5000")  # runs fp32, but no source gives its fp32 peak
    agents = await _agents(common, closer, [chip.name])
    async with service_channel(agents[chip.name].address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)

        def call(request):
            return stub.RunTask(request, metadata=TENANT, timeout=120)

        fp32, fp16 = await measure_chip_accuracy(
            call,
            real.model,
            real.samples,
            chip=chip,
            catalog=catalog,
            precisions=["fp32", "fp16"],
        )
    assert not fp32.measured and fp32.accuracy is None
    assert fp32.reason.startswith("FAILED_PRECONDITION: ")
    assert "no published fp32 peak" in fp32.reason
    assert fp16.measured and fp16.reason == ""
