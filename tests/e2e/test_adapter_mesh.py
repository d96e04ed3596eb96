"""Issue 8's "must show" list from a fresh `pocgrid up` mesh, as a user reaches it: the gateway,
two tenants' API keys, the public AdapterService (plans, passes, imports, tenancy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from pocgrid import precision
from pocgrid.client import Client
from pocgrid.samples import cnn
from pocgrid.v1 import adapter_pb2
from tests.integration.test_adapter_import import _hostile

pytestmark = pytest.mark.e2e

PASSES = {
    "operator_fusion",
    "kv_cache_fp8",
    "speculative_decoding_mtp",
    "speculative_decoding",
    "prefix_caching",
}
#: The hostile cases' "too large" needs the limit they were built for.
LIMIT = 200_000


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocgrid.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_adapter_through_a_fresh_mesh(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "POCGRID_HOME": str(tmp_path / "home"),
        "POCGRID_API_KEYS": "a-key=tenant-a,b-key=tenant-b",
        "POCGRID_ADAPTER_MAX_MODEL_BYTES": str(LIMIT),
    }
    env.pop("POCGRID_GATEWAY", None)
    env.pop("POCGRID_API_KEY", None)
    up = _cli(env, "up", "--detach", "--json", "--chips", "h100-80gb-sxm,kunlun-r200")
    assert up.returncode == 0, up.stderr
    gateway = json.loads(up.stdout)["gateway"]
    try:
        with Client(gateway, api_key="a-key") as a, Client(gateway, api_key="b-key") as b:
            # Llama-2-70B on 8 H100 at fp8: the planner picks the parallelism and the batch.
            est = a.adapter.Estimate(
                adapter_pb2.EstimateRequest(
                    model="Llama-2-70B",
                    chip="h100-80gb-sxm",
                    devices=8,
                    precision=precision.PRECISION_BY_NAME["fp8"],
                )
            )
            best = est.best_by_throughput
            assert best.precision == "fp8" and best.devices == 8
            assert best.tp * max(1, best.pp) * best.replicas == 8 and best.max_num_seqs > 1
            assert best.output_tokens_per_s > 0 and est.simulated.output_tokens_per_s > 0
            passes = {p.name: p for p in est.passes}
            assert set(passes) == PASSES
            assert passes["operator_fusion"].applied and passes["kv_cache_fp8"].applied
            for name in ("operator_fusion", "kv_cache_fp8", "speculative_decoding"):
                assert passes[name].gain > 0, passes[name]
            assert "Leviathan" in passes["speculative_decoding"].assumption
            # No bf16 on the Kunlun R200: fp16, with the reason.
            k = a.adapter.Estimate(
                adapter_pb2.EstimateRequest(model="Qwen2.5-7B", chip="kunlun-r200")
            )
            assert k.best_by_throughput.precision == "fp16"
            assert any("no bf16" in line for line in k.explanation), list(k.explanation)
            # A chip whose runtime lacks the fused Attention: supplemented, named in the plan.
            mi = a.adapter.Estimate(
                adapter_pb2.EstimateRequest(model="Llama-3.1-8B", chip="mi300x")
            )
            assert mi.verdict == adapter_pb2.ADAPT_VERDICT_RUNS_WITH_SUPPLEMENTATION
            assert any(o.op == "Attention" and o.status == "supplemented" for o in mi.operators)

            # Hostile uploads: INVALID_ARGUMENT naming what is wrong; the service keeps serving.
            for what, (data, needle) in _hostile().items():
                with pytest.raises(grpc.RpcError) as err:
                    a.adapter.ImportOnnxModel(
                        adapter_pb2.ImportOnnxModelRequest(name=what, onnx=data)
                    )
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
                assert needle in (err.value.details() or ""), (what, err.value.details())
            imported = a.adapter.ImportOnnxModel(
                adapter_pb2.ImportOnnxModelRequest(name="cnn", onnx=cnn().SerializeToString())
            ).model
            # The quantized ONNX model's measured accuracy delta is in its plan.
            q = a.adapter.Estimate(
                adapter_pb2.EstimateRequest(
                    model=imported.model_id, chip="ascend-910b", allow_quantized=True
                )
            )
            by_name = {p.name: p for p in q.passes}
            int8 = by_name["int8_ptq"]
            assert int8.measured and int8.accuracy_delta > 0 and "arg-max" in int8.reason
            assert by_name["operator_fusion"].measured_gain > 0

            # Tenant B can neither read nor use tenant A's model, nor see it listed.
            mid = imported.model_id
            with pytest.raises(grpc.RpcError) as err:
                b.adapter.GetImportedModel(adapter_pb2.GetImportedModelRequest(model_id=mid))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                b.adapter.Estimate(adapter_pb2.EstimateRequest(model=mid, chip="ascend-910b"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                b.adapter.GetCoverage(adapter_pb2.GetCoverageRequest(model=mid, chip="ascend-910b"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert not b.adapter.ListImportedModels(adapter_pb2.ListImportedModelsRequest()).models
            assert [m.model_id for m in a.adapter.ListImportedModels(
                adapter_pb2.ListImportedModelsRequest()
            ).models] == [imported.model_id]  # fmt: skip
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0, down.stderr
