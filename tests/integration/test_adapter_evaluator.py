"""Adapter (fit check) and evaluator (scenario catalogue) over real gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2, evaluator_pb2, evaluator_pb2_grpc
from services.adapter.config import AdapterConfig
from services.adapter.service import AdapterServer
from services.evaluator.config import EvaluatorConfig
from services.evaluator.scenarios import ScenarioDataError, load_scenarios
from services.evaluator.service import EvaluatorServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration

FP16 = common_pb2.PRECISION_FP16
SCENARIOS_FILE = Path(__file__).resolve().parents[2] / "services/evaluator/data/scenarios.json"


async def _check(common, closer, **fields) -> adapter_pb2.CheckFitResponse:
    server = AdapterServer(common, AdapterConfig())
    await server.start()
    closer.append(server)
    async with service_channel(server.address) as ch:
        return await adapter_pb2_grpc.AdapterServiceStub(ch).CheckFit(
            adapter_pb2.CheckFitRequest(**fields)
        )


async def test_70b_does_not_fit_one_32gb_device(common, closer):
    resp = await _check(
        common, closer, model="Llama-3.1-70B", chip="kunlun-r200", precision=FP16, devices=1
    )
    assert not resp.fits and resp.precision_supported
    # 70.55 B parameters x 2 bytes = 131.4 GiB.
    assert resp.weights_gib_per_device == pytest.approx(131.41, abs=0.01)
    assert resp.memory_gib_per_device == 32.0
    assert resp.reserve_gib_per_device == 1.0
    assert resp.kv_cache_gib_per_device > 0 and resp.activations_gib_per_device > 0
    needed = (
        resp.weights_gib_per_device
        + resp.kv_cache_gib_per_device
        + resp.activations_gib_per_device
        + resp.reserve_gib_per_device
    )
    assert resp.headroom_gib_per_device == pytest.approx(32.0 - needed)
    assert "needs 133.2 GiB per device but the chip has 32.0 GiB" in resp.reason
    # 5 devices would hold the weights, but tensor parallel must divide the 64 heads.
    assert "8 devices would hold it" in resp.reason


async def test_8b_fits_an_a100_and_tensor_parallel_splits_weights(common, closer):
    resp = await _check(
        common,
        closer,
        model="Llama-3.1-8B",
        chip="a100-80gb-sxm",
        precision=common_pb2.PRECISION_BF16,
        devices=1,
    )
    assert resp.fits and resp.precision_supported and resp.reason == ""
    assert resp.weights_gib_per_device == pytest.approx(14.96, abs=0.01)
    assert 60 < resp.headroom_gib_per_device < 80 - 14.96 - 1
    split = await _check(
        common, closer, model="Llama-3.1-70B", chip="kunlun-r200", precision=FP16, devices=8
    )
    assert split.fits
    assert split.weights_gib_per_device == pytest.approx(131.41 / 8, abs=0.01)


async def test_workload_sizes_the_kv_cache(common, closer):
    fields = {"model": "Llama-3.1-8B", "chip": "a100-80gb-sxm", "precision": FP16, "devices": 1}
    default = await _check(common, closer, **fields)
    # 128 sequences of 4096 + 4096 tokens: 128 x 8192 x 128 KiB = 128 GiB of KV cache.
    big = await _check(common, closer, **fields, batch=128, input_len=4096, output_len=4096)
    assert default.fits and not big.fits
    assert big.kv_cache_gib_per_device == pytest.approx(128.0)
    assert big.weights_gib_per_device == default.weights_gib_per_device


async def test_unsupported_precision(common, closer):
    # The A100 has no fp8 tensor cores; its runtime does not run fp8.
    resp = await _check(
        common,
        closer,
        model="Llama-3.1-8B",
        chip="a100-80gb-sxm",
        precision=common_pb2.PRECISION_FP8,
        devices=1,
    )
    assert not resp.fits and not resp.precision_supported
    assert resp.headroom_gib_per_device > 0  # the memory alone would fit
    assert "a100-80gb-sxm does not run fp8" in resp.reason and "bf16" in resp.reason


async def test_chip_without_memory_size_cannot_be_checked(common, closer):
    resp = await _check(
        common, closer, model="Qwen2.5-7B", chip="enflame-i20", precision=FP16, devices=1
    )
    assert not resp.fits and resp.memory_gib_per_device == 0
    assert "no memory size for enflame-i20" in resp.reason


async def test_memory_is_what_the_agent_emulates(common, closer):
    # MLU590 memory is cnmon's 96 GiB (the Cambricon vendor file, carried into the chip table by
    # the catalogue supplement), which the agent emulates, so the fit uses it too.
    resp = await _check(
        common, closer, model="Qwen2.5-7B", chip="mlu590", precision=FP16, devices=1
    )
    assert resp.memory_gib_per_device == 96.0
    assert resp.fits, resp.reason


@pytest.mark.parametrize(
    ("fields", "code", "start"),
    [
        (
            {"model": "GPT-9", "chip": "a100-80gb-sxm", "precision": FP16, "devices": 1},
            "NOT_FOUND",
            "model 'GPT-9' not found",
        ),
        (
            {"model": "Llama-3.1-8B", "chip": "z9000", "precision": FP16, "devices": 1},
            "NOT_FOUND",
            "chip 'z9000' not found",
        ),
        (
            {"model": "Llama-3.1-8B", "chip": "a100-80gb-sxm", "precision": FP16, "devices": 0},
            "INVALID_ARGUMENT",
            "devices: ",
        ),
        (
            {"model": "Llama-3.1-8B", "chip": "a100-80gb-sxm", "precision": FP16, "devices": 65},
            "INVALID_ARGUMENT",
            "devices: ",
        ),
        (
            {"model": "Llama-3.1-8B", "chip": "a100-80gb-sxm", "devices": 1},
            "INVALID_ARGUMENT",
            "precision: must be set",
        ),
        ({"chip": "a100-80gb-sxm", "precision": FP16, "devices": 1}, "INVALID_ARGUMENT", "model: "),
        (
            {
                "model": "Llama-3.1-8B",
                "chip": "a100-80gb-sxm",
                "precision": FP16,
                "devices": 1,
                "batch": -1,
            },
            "INVALID_ARGUMENT",
            "batch: ",
        ),
    ],
)
async def test_check_fit_rejects_bad_input(common, closer, fields, code, start):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _check(common, closer, **fields)
    assert err.value.code().name == code
    assert err.value.details().startswith(start)


# -- evaluator --------------------------------------------------------------------------------


def test_every_scenario_model_is_in_the_catalogue():
    catalog = default_catalog()
    names = {m.name for m in catalog.models}
    document = json.loads(SCENARIOS_FILE.read_text(encoding="utf-8"))
    for scenario in document["scenarios"]:
        missing = [m for m in scenario["models"] if m not in names]
        assert not missing, f"{scenario['name']}: {missing}"
    # The loader checks the same on start, so a bad file never serves.
    assert len(load_scenarios(catalog)) == len(document["scenarios"]) + len(document["packs"])


def test_loader_rejects_unknown_models(tmp_path):
    document = json.loads(SCENARIOS_FILE.read_text(encoding="utf-8"))
    document["scenarios"][0]["models"].append("GPT-9")
    bad = tmp_path / "scenarios.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(ScenarioDataError, match=r"scenarios\[0\]\.models\[\d+\]: 'GPT-9'"):
        load_scenarios(default_catalog(), bad)


async def test_list_and_get_scenarios(common, closer):
    server = EvaluatorServer(common, EvaluatorConfig())
    await server.start()
    closer.append(server)
    async with service_channel(server.address) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        scenarios = (await stub.ListScenarios(evaluator_pb2.ListScenariosRequest())).scenarios
        names = [s.name for s in scenarios]
        for expected in (
            "llm-chat",
            "llm-summarize",
            "llm-reasoning",
            "llm-offline-batch",
            "asr",
            "image-classification",
            "object-detection",
            "text-correction",
            "embedding",
        ):
            assert expected in names
        for s in scenarios:
            assert s.default_slo.source
            if s.kind == "pack":
                assert s.components and s.field
            elif s.kind == "training":
                # hybrid-training trains its own MLP across the chips: no catalogue model.
                assert s.HasField("training") and not s.models and s.accuracy_metric
            else:
                assert s.models and s.load_scenarios and s.accuracy_metric and s.default_model
        fields = {s.field for s in scenarios if s.kind == "pack"}
        assert fields == {
            "finance",
            "manufacturing",
            "aigc",
            "government",
            "medical",
            "embodied",
            "transportation",
        }
        chat = (await stub.GetScenario(evaluator_pb2.GetScenarioRequest(name="llm-chat"))).scenario
        assert evaluator_pb2.LOAD_SCENARIO_SERVER in chat.load_scenarios
        assert chat.default_slo.p99_ttft_ms == 2000 and chat.default_slo.p99_tpot_ms == 200
        assert "Qwen2.5-7B" in chat.models and "Llama-3.1-8B" in chat.models
        speech = (await stub.GetScenario(evaluator_pb2.GetScenarioRequest(name="asr"))).scenario
        assert set(speech.models) == {"Whisper-small", "Whisper-large-v3"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetScenario(evaluator_pb2.GetScenarioRequest(name="video-analytics"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "video-analytics" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetScenario(evaluator_pb2.GetScenarioRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("name")
