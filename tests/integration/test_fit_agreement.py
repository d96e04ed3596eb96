"""One memory-fit model: the adapter's CheckFit RPC and pocgrid.perf give the same answer.

A real adapter server on port 0 is asked over gRPC; the same (model, chip, devices, precision,
workload) goes to ``pocgrid.perf.check_fit`` and, where the performance model can price the
deployment, to ``pocgrid.perf.predict`` (offline, one tensor-parallel replica over the devices,
as ``pocgrid perf predict`` runs it).
"""

from __future__ import annotations

import itertools

import pytest

from pocgrid import precision as precision_names
from pocgrid.catalog import default_catalog
from pocgrid.perf import (
    FIT_BATCH,
    FIT_INPUT_LEN,
    FIT_OUTPUT_LEN,
    PerfInputError,
    UnsupportedInput,
    check_fit,
    predict,
)
from pocgrid.v1 import adapter_pb2, adapter_pb2_grpc
from services.adapter.config import AdapterConfig
from services.adapter.service import AdapterServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration

MODELS = ("Qwen2.5-72B", "Llama-3.1-8B", "Llama-3.1-70B", "Mixtral-8x7B-v0.1", "ResNet-50")
CHIPS = ("ascend-910b2", "a100-80gb-sxm", "kunlun-r200", "mtt-s4000", "h100-80gb-sxm")
DEVICES = (1, 2, 3, 4, 8)
PRECISIONS = ("bf16", "fp16", "fp8", "int8")
WORKLOADS = ((0, 0, 0), (8, 2048, 512))
"""(batch, input_len, output_len); zeros ask CheckFit for its defaults."""


def _predicted_fit(chip: str, model: str, prec: str, devices: int, workload: tuple[int, int, int]):
    """``predict``'s fit answer, or the error it raises instead."""
    batch, input_len, output_len = workload
    try:
        return predict(
            chip,
            devices,
            model,
            prec,
            batch or FIT_BATCH,
            input_len or FIT_INPUT_LEN,
            output_len or FIT_OUTPUT_LEN,
        ).fits
    except PerfInputError as exc:
        return exc


async def test_check_fit_rpc_agrees_with_the_performance_model(common, closer):
    catalog = default_catalog()
    server = AdapterServer(common, AdapterConfig())
    await server.start()
    closer.append(server)
    cases = list(itertools.product(MODELS, CHIPS, DEVICES, PRECISIONS, WORKLOADS))
    priced = 0
    async with service_channel(server.address) as channel:
        stub = adapter_pb2_grpc.AdapterServiceStub(channel)
        for model_name, chip_name, devices, prec, workload in cases:
            batch, input_len, output_len = workload
            resp = await stub.CheckFit(
                adapter_pb2.CheckFitRequest(
                    model=model_name,
                    chip=chip_name,
                    precision=precision_names.to_proto(prec),
                    devices=devices,
                    batch=batch,
                    input_len=input_len,
                    output_len=output_len,
                )
            )
            case = f"{model_name} {prec} on {devices} x {chip_name}, workload {workload}"
            fit = check_fit(
                catalog.chip(chip_name),
                catalog.find_model(model_name),
                prec,
                devices,
                batch=batch or FIT_BATCH,
                input_len=input_len or FIT_INPUT_LEN,
                output_len=output_len or FIT_OUTPUT_LEN,
            )
            assert resp.fits == fit.fits, case
            assert resp.precision_supported == fit.precision_supported, case
            assert resp.reason == fit.reason, case
            if fit.memory is not None:
                assert resp.weights_gib_per_device == pytest.approx(fit.memory.weights_gib), case
                assert resp.headroom_gib_per_device == pytest.approx(fit.headroom_gib), case

            if catalog.find_model(model_name).arch is None:
                continue  # predict prices decoder LLMs only
            predicted = _predicted_fit(chip_name, model_name, prec, devices, workload)
            if isinstance(predicted, UnsupportedInput):
                # No published peak at this precision: predict cannot price speed. The fit
                # still answers, and says no where the chip's runtime lacks the precision.
                assert fit.precision_supported or not resp.fits, case
                continue
            if isinstance(predicted, PerfInputError):
                # The devices cannot split the model (tp must divide the heads): no fit.
                assert predicted.field == "tp", case
                assert not resp.fits and "cannot split" in resp.reason, case
                continue
            priced += 1
            if fit.precision_supported:
                assert resp.fits == predicted, case
            else:
                assert not resp.fits, case
    # The grid must exercise the priced path on both sides of the line, not only the errors.
    assert priced > 100


async def test_the_reported_disagreement_is_gone(common, closer):
    """Qwen2.5-72B bf16 on 3 x ascend-910b2: CheckFit said it fits, perf predict said no."""
    server = AdapterServer(common, AdapterConfig())
    await server.start()
    closer.append(server)
    async with service_channel(server.address) as channel:
        resp = await adapter_pb2_grpc.AdapterServiceStub(channel).CheckFit(
            adapter_pb2.CheckFitRequest(
                model="Qwen2.5-72B",
                chip="ascend-910b2",
                precision=precision_names.to_proto("bf16"),
                devices=3,
            )
        )
    assert not resp.fits
    assert "3 devices cannot split Qwen2.5-72B" in resp.reason
    assert "4 devices would hold it" in resp.reason
    with pytest.raises(PerfInputError, match="tp: must divide the 64 attention heads"):
        predict("ascend-910b2", 3, "Qwen2.5-72B", "bf16", 1, FIT_INPUT_LEN, FIT_OUTPUT_LEN)
    four = predict("ascend-910b2", 4, "Qwen2.5-72B", "bf16", 1, FIT_INPUT_LEN, FIT_OUTPUT_LEN)
    assert four.fits
