"""Model import, coverage and plans through the gateway: hostile uploads, tenants, the cache."""

from __future__ import annotations

import json

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.samples import cnn, einsum
from pocgrid.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2
from services.adapter.config import AdapterConfig
from services.adapter.service import AdapterServer
from tests.unit.adapt.test_import import LLAMA, nested_if_model

pytestmark = pytest.mark.integration

ACME = (("authorization", "Bearer acme-key"),)
GLOBEX = (("authorization", "Bearer globex-key"),)
LIMIT = 200_000


async def _mesh(common, closer, **config):
    adapter = AdapterServer(common, AdapterConfig(**config))
    await adapter.start()
    closer.append(adapter)
    gw = GatewayServer(
        common,
        GatewayConfig(api_keys="acme-key=acme,globex-key=globex", adapter_addr=adapter.address),
    )
    await gw.start()
    closer.append(gw)
    return adapter, gw


def _hostile() -> dict[str, tuple[bytes, str]]:
    good = cnn().SerializeToString()
    return {
        "truncated": (good[: len(good) // 2], "truncated"),
        "wrong magic": (b"PK\x03\x04" + good, "wrong magic"),
        "nested thousands deep": (nested_if_model(3000), "nested"),
        "enormous tensor": (_enormous(), "declares shape"),
        "too large": (good + b"\x00" * LIMIT, "exceeds the limit"),
    }


def _enormous() -> bytes:
    from onnx import TensorProto, helper

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20, 1 << 10])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[t],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


async def test_hostile_uploads_are_invalid_argument_and_the_service_keeps_serving(common, closer):
    _, gw = await _mesh(common, closer, adapter_max_model_bytes=LIMIT)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = adapter_pb2_grpc.AdapterServiceStub(ch)
        for what, (data, needle) in _hostile().items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ImportOnnxModel(
                    adapter_pb2.ImportOnnxModelRequest(name=what, onnx=data), metadata=ACME
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert "onnx" in err.value.details() and needle in err.value.details(), (
                what,
                err.value.details(),
            )
        # Still serving, and nothing was stored.
        listed = await stub.ListImportedModels(
            adapter_pb2.ListImportedModelsRequest(), metadata=ACME
        )
        assert not listed.models
        ok = await stub.ImportOnnxModel(
            adapter_pb2.ImportOnnxModelRequest(name="cnn", onnx=cnn().SerializeToString()),
            metadata=ACME,
        )
        assert ok.created and ok.model.kind == "onnx" and ok.model.operators["Conv"] >= 1
        bad_cfg = json.dumps({**LLAMA, "num_key_value_heads": 5}).encode()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ImportLlmConfig(
                adapter_pb2.ImportLlmConfigRequest(config_json=bad_cfg), metadata=ACME
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "num_key_value_heads" in err.value.details()


async def test_imported_models_belong_to_their_tenant(common, closer):
    _, gw = await _mesh(common, closer)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = adapter_pb2_grpc.AdapterServiceStub(ch)
        data = einsum().SerializeToString()
        first = await stub.ImportOnnxModel(
            adapter_pb2.ImportOnnxModelRequest(name="e", onnx=data), metadata=ACME
        )
        again = await stub.ImportOnnxModel(
            adapter_pb2.ImportOnnxModelRequest(name="e", onnx=data), metadata=ACME
        )
        assert first.created and not again.created
        assert again.model.model_id == first.model.model_id  # content-addressed
        llm = await stub.ImportLlmConfig(
            adapter_pb2.ImportLlmConfigRequest(
                name="my-llama", config_json=json.dumps(LLAMA).encode()
            ),
            metadata=ACME,
        )
        assert llm.model.kind == "llm" and llm.model.params_b == pytest.approx(8.03, abs=0.01)
        model_id = first.model.model_id
        for call, request in (
            (stub.GetImportedModel, adapter_pb2.GetImportedModelRequest(model_id=model_id)),
            (stub.GetCoverage, adapter_pb2.GetCoverageRequest(model=model_id, chip="kunlun-r200")),
            (stub.Estimate, adapter_pb2.EstimateRequest(model=model_id, chip="kunlun-r200")),
            (
                stub.Estimate,
                adapter_pb2.EstimateRequest(model=llm.model.model_id, chip="h100-80gb-sxm"),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=GLOBEX)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        theirs = await stub.ListImportedModels(
            adapter_pb2.ListImportedModelsRequest(), metadata=GLOBEX
        )
        assert not theirs.models
        mine = await stub.ListImportedModels(adapter_pb2.ListImportedModelsRequest(), metadata=ACME)
        assert {m.model_id for m in mine.models} == {model_id, llm.model.model_id}
        # The owner can use both: coverage of the graph node by node, and plans.
        cov = await stub.GetCoverage(
            adapter_pb2.GetCoverageRequest(model=model_id, chip="kunlun-r200"), metadata=ACME
        )
        einsum_op = next(o for o in cov.operators if o.op == "Einsum")
        assert (einsum_op.status, einsum_op.method) == ("supplemented", "host") and einsum_op.gap
        est = await stub.Estimate(
            adapter_pb2.EstimateRequest(model=model_id, chip="kunlun-r200"), metadata=ACME
        )
        assert est.verdict == adapter_pb2.ADAPT_VERDICT_RUNS_WITH_SUPPLEMENTATION
        assert est.samples_per_s > 0
        passes = {p.name: p for p in est.passes}
        assert passes["operator_fusion"].measured and passes["operator_fusion"].gain > 0
        assert passes["int8_ptq"].measured and "accuracy" not in passes["int8_ptq"].name
        assert "max output error" in passes["int8_ptq"].reason
        plan = await stub.Estimate(
            adapter_pb2.EstimateRequest(
                model=llm.model.model_id, chip="h100-80gb-sxm", slo_tpot_ms=50
            ),
            metadata=ACME,
        )
        assert plan.best_by_throughput.tpot_p99_ms <= 50


async def test_estimate_is_stored_and_served_again(common, closer):
    adapter, gw = await _mesh(common, closer)
    request = adapter_pb2.EstimateRequest(
        model="Llama-2-70B",
        chip="h100-80gb-sxm",
        devices=8,
        precision=common_pb2.PRECISION_FP8,
    )
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = adapter_pb2_grpc.AdapterServiceStub(ch)
        first = await stub.Estimate(request, metadata=ACME)
        second = await stub.Estimate(request, metadata=GLOBEX)
        assert not first.cached and second.cached
        best = first.best_by_throughput
        assert best.precision == "fp8" and best.devices == 8 and best.tp * best.replicas == 8
        assert second.best_by_throughput == best
        assert first.pareto and first.explanation and first.passes
        assert first.simulated.requests > 0 and first.simulated.tpot_p99_ms > 0
        other = await stub.Estimate(
            adapter_pb2.EstimateRequest(model="Llama-2-70B", chip="h100-80gb-sxm", devices=4),
            metadata=ACME,
        )
        assert not other.cached
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Estimate(
                adapter_pb2.EstimateRequest(model="Llama-2-70B", chip="h100-80gb-sxm", devices=99),
                metadata=ACME,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "devices" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Estimate(
                adapter_pb2.EstimateRequest(model="nope", chip="h100-80gb-sxm"), metadata=ACME
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The stored plans outlive the process.
    await adapter.stop()
    restarted, gw2 = await _mesh(common, closer)
    async with grpc.aio.insecure_channel(gw2.address) as ch:
        again = await adapter_pb2_grpc.AdapterServiceStub(ch).Estimate(request, metadata=ACME)
        assert again.cached and again.best_by_throughput == best
    assert restarted is not adapter
