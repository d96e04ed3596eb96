"""Every public RPC, called through the gateway against the real services, succeeds."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest

from gateway.routing import GATEWAY_SERVICE, PUBLIC_BACKENDS
from pocgrid.adapt.onnx_import import validate_onnx
from pocgrid.samples import cnn
from pocgrid.tensors import from_array
from pocgrid.v1 import (
    adapter_pb2,
    adapter_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    evaluator_pb2,
    evaluator_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from tests.conftest import wait_for
from tests.integration.public_mesh import start_public_mesh

pytestmark = pytest.mark.integration
AUTH = (("authorization", "Bearer walk-key"),)
CNN = cnn().SerializeToString()
CNN_ID = validate_onnx(CNN).model_id
MINI_CONFIG = json.dumps(
    {
        "num_hidden_layers": 2,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "vocab_size": 1000,
        "max_position_embeddings": 2048,
    }
).encode()


async def test_every_public_rpc_through_the_gateway(common, closer):
    mesh = await start_public_mesh(common, closer, "walk-key=walker,walk-admin=ops:admin")
    gw = mesh.gateway

    ch = grpc.aio.insecure_channel(gw.address)
    registry = registry_pb2_grpc.RegistryServiceStub(ch)
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(ch)
    metering = metering_pb2_grpc.MeteringServiceStub(ch)
    adapt = adapter_pb2_grpc.AdapterServiceStub(ch)
    evals = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
    gateway = gateway_pb2_grpc.GatewayServiceStub(ch)
    admin = admin_pb2_grpc.AdminServiceStub(ch)
    admin_auth = (("authorization", "Bearer walk-admin"),)
    made_key: dict[str, str] = {}
    job: dict[str, str] = {}
    evaluation: dict[str, str] = {}

    async def start_evaluation() -> Any:
        resp = await evals.StartEvaluation(
            evaluator_pb2.StartEvaluationRequest(
                scenario="image-classification", chips=["mtt-s4000"], requests=200
            ),
            metadata=AUTH,
        )
        evaluation["id"] = resp.evaluation.evaluation_id
        return resp

    async def watch_evaluation() -> Any:
        updates = [
            u
            async for u in evals.WatchEvaluation(
                evaluator_pb2.WatchEvaluationRequest(evaluation_id=evaluation["id"]),
                metadata=AUTH,
                timeout=60,
            )
        ]
        return updates[-1]

    async def submit() -> Any:
        resp = await scheduler.SubmitJob(
            scheduler_pb2.SubmitJobRequest(
                spec=scheduler_pb2.JobSpec(
                    model="Qwen2.5-7B",
                    devices=1,
                    precision=common_pb2.PRECISION_BF16,
                    kind=scheduler_pb2.JOB_KIND_EVALUATION,
                )
            ),
            metadata=AUTH,
        )
        job["id"] = resp.job.job_id
        return resp

    async def complete() -> Any:
        # An evaluation job ends when its caller says so: wait for it to hold its device.
        held = await scheduler.SubmitJob(
            scheduler_pb2.SubmitJobRequest(
                spec=scheduler_pb2.JobSpec(
                    model="Qwen2.5-7B",
                    chip="mtt-s4000",
                    devices=1,
                    precision=common_pb2.PRECISION_FP16,
                    kind=scheduler_pb2.JOB_KIND_EVALUATION,
                )
            ),
            metadata=AUTH,
        )

        async def running() -> bool:
            got = await scheduler.GetJob(
                scheduler_pb2.GetJobRequest(job_id=held.job.job_id), metadata=AUTH
            )
            return got.job.state == scheduler_pb2.JOB_STATE_RUNNING

        await wait_for(running, within=20, what="evaluation job running")
        return await scheduler.CompleteJob(
            scheduler_pb2.CompleteJobRequest(job_id=held.job.job_id), metadata=AUTH
        )

    async def correct() -> Any:
        # Routed and implemented: metering itself answers that there is no such usage.
        try:
            await metering.CorrectUsage(
                metering_pb2.CorrectUsageRequest(
                    correction_id="walk", corrects="no-usage", meter="samples", delta=1
                ),
                metadata=(("authorization", "Bearer walk-admin"),),
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
        return None

    async def create_key() -> Any:
        resp = await admin.CreateKey(
            admin_pb2.CreateKeyRequest(tenant="walkers"), metadata=admin_auth
        )
        made_key["id"] = resp.key.key_id
        return resp

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "AdminService/CreateTenant": lambda: admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="walkers", guaranteed_devices=1),
            metadata=admin_auth,
        ),
        "AdminService/GetTenant": lambda: admin.GetTenant(
            admin_pb2.GetTenantRequest(name="walkers"), metadata=admin_auth
        ),
        "AdminService/ListTenants": lambda: admin.ListTenants(
            admin_pb2.ListTenantsRequest(), metadata=admin_auth
        ),
        "AdminService/UpdateTenant": lambda: admin.UpdateTenant(
            admin_pb2.UpdateTenantRequest(name="walkers", burst=10), metadata=admin_auth
        ),
        "AdminService/CreateKey": create_key,
        "AdminService/ListKeys": lambda: admin.ListKeys(
            admin_pb2.ListKeysRequest(), metadata=admin_auth
        ),
        "AdminService/RevokeKey": lambda: admin.RevokeKey(
            admin_pb2.RevokeKeyRequest(key_id=made_key["id"]), metadata=admin_auth
        ),
        "AdminService/ListAuditEvents": lambda: admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(), metadata=admin_auth
        ),
        "RegistryService/ListChips": lambda: registry.ListChips(
            registry_pb2.ListChipsRequest(), metadata=AUTH
        ),
        "RegistryService/GetChip": lambda: registry.GetChip(
            registry_pb2.GetChipRequest(name="mtt-s4000"), metadata=AUTH
        ),
        "RegistryService/ListModels": lambda: registry.ListModels(
            registry_pb2.ListModelsRequest(kind="llm"), metadata=AUTH
        ),
        "RegistryService/GetModel": lambda: registry.GetModel(
            registry_pb2.GetModelRequest(name="Llama-3.1-8B"), metadata=AUTH
        ),
        "RegistryService/ListNodes": lambda: registry.ListNodes(
            registry_pb2.ListNodesRequest(), metadata=AUTH
        ),
        "RegistryService/GetNode": lambda: registry.GetNode(
            registry_pb2.GetNodeRequest(node_id="walk-node"), metadata=AUTH
        ),
        "SchedulerService/SubmitJob": submit,
        "SchedulerService/GetJob": lambda: scheduler.GetJob(
            scheduler_pb2.GetJobRequest(job_id=job["id"]), metadata=AUTH
        ),
        "SchedulerService/ListJobs": lambda: scheduler.ListJobs(
            scheduler_pb2.ListJobsRequest(), metadata=AUTH
        ),
        "SchedulerService/CancelJob": lambda: scheduler.CancelJob(
            scheduler_pb2.CancelJobRequest(job_id=job["id"], reason="walk"), metadata=AUTH
        ),
        "SchedulerService/CompleteJob": complete,
        "SchedulerService/GetQueue": lambda: scheduler.GetQueue(
            scheduler_pb2.GetQueueRequest(), metadata=AUTH
        ),
        "SchedulerService/GetPool": lambda: scheduler.GetPool(
            scheduler_pb2.GetPoolRequest(), metadata=AUTH
        ),
        "MeteringService/ListUsage": lambda: metering.ListUsage(
            metering_pb2.ListUsageRequest(), metadata=AUTH
        ),
        "MeteringService/GetUsageSummary": lambda: metering.GetUsageSummary(
            metering_pb2.GetUsageSummaryRequest(), metadata=AUTH
        ),
        "MeteringService/QueryUsage": lambda: metering.QueryUsage(
            metering_pb2.QueryUsageRequest(group_by=["chip"]), metadata=AUTH
        ),
        "MeteringService/GetInvoice": lambda: metering.GetInvoice(
            metering_pb2.GetInvoiceRequest(), metadata=AUTH
        ),
        "MeteringService/ListInvoices": lambda: metering.ListInvoices(
            metering_pb2.ListInvoicesRequest(), metadata=AUTH
        ),
        "MeteringService/CorrectUsage": correct,
        "MeteringService/GetPriceBook": lambda: metering.GetPriceBook(
            metering_pb2.GetPriceBookRequest(chip="mtt-s4000"), metadata=AUTH
        ),
        "AdapterService/CheckFit": lambda: adapt.CheckFit(
            adapter_pb2.CheckFitRequest(
                model="Qwen2.5-7B", chip="mtt-s4000", precision=common_pb2.PRECISION_FP16, devices=1
            ),
            metadata=AUTH,
        ),
        "AdapterService/ImportOnnxModel": lambda: adapt.ImportOnnxModel(
            adapter_pb2.ImportOnnxModelRequest(name="cnn", onnx=CNN), metadata=AUTH
        ),
        "AdapterService/ImportLlmConfig": lambda: adapt.ImportLlmConfig(
            adapter_pb2.ImportLlmConfigRequest(name="mini", config_json=MINI_CONFIG),
            metadata=AUTH,
        ),
        "AdapterService/GetImportedModel": lambda: adapt.GetImportedModel(
            adapter_pb2.GetImportedModelRequest(model_id=CNN_ID), metadata=AUTH
        ),
        "AdapterService/ListImportedModels": lambda: adapt.ListImportedModels(
            adapter_pb2.ListImportedModelsRequest(), metadata=AUTH
        ),
        "AdapterService/GetCoverage": lambda: adapt.GetCoverage(
            adapter_pb2.GetCoverageRequest(model=CNN_ID, chip="mtt-s4000"), metadata=AUTH
        ),
        "AdapterService/Estimate": lambda: adapt.Estimate(
            adapter_pb2.EstimateRequest(model="Qwen2.5-7B", chip="mtt-s4000"), metadata=AUTH
        ),
        "EvaluatorService/ListScenarios": lambda: evals.ListScenarios(
            evaluator_pb2.ListScenariosRequest(), metadata=AUTH
        ),
        "EvaluatorService/GetScenario": lambda: evals.GetScenario(
            evaluator_pb2.GetScenarioRequest(name="llm-chat"), metadata=AUTH
        ),
        "EvaluatorService/CreateScenario": lambda: evals.CreateScenario(
            evaluator_pb2.CreateScenarioRequest(
                scenario=evaluator_pb2.Scenario(
                    name="walk-vision",
                    kind="samples",
                    title="walk",
                    models=["YOLOv8n"],
                    default_mode=evaluator_pb2.EVALUATION_MODE_OFFLINE,
                )
            ),
            metadata=AUTH,
        ),
        "EvaluatorService/ImportSampleSet": lambda: evals.ImportSampleSet(
            evaluator_pb2.ImportSampleSetRequest(
                name="walk-samples",
                inputs=[from_array("x", np.zeros((2, 4), np.float32))],
                labels=[0, 1],
                output="y",
            ),
            metadata=AUTH,
        ),
        "EvaluatorService/StartEvaluation": start_evaluation,
        "EvaluatorService/WatchEvaluation": watch_evaluation,
        "EvaluatorService/GetEvaluation": lambda: evals.GetEvaluation(
            evaluator_pb2.GetEvaluationRequest(evaluation_id=evaluation["id"]), metadata=AUTH
        ),
        "EvaluatorService/ListEvaluations": lambda: evals.ListEvaluations(
            evaluator_pb2.ListEvaluationsRequest(), metadata=AUTH
        ),
        "GatewayService/WhoAmI": lambda: gateway.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=AUTH),
        "GatewayService/CheckServices": lambda: gateway.CheckServices(
            gateway_pb2.CheckServicesRequest(), metadata=AUTH
        ),
    }
    every = {f"{s.name}/{m.name}" for s in (*PUBLIC_BACKENDS, GATEWAY_SERVICE) for m in s.methods}
    assert set(calls) == every, "a public RPC has no call in this walk"

    results = {name: await call() for name, call in calls.items()}
    await ch.close()
    assert results["RegistryService/GetNode"].node.devices[0].device_id == "musa:0"
    assert results["SchedulerService/GetJob"].job.tenant == "walker"
    assert results["SchedulerService/CancelJob"].job.state == scheduler_pb2.JOB_STATE_CANCELLED
    assert results["SchedulerService/CompleteJob"].job.state == scheduler_pb2.JOB_STATE_SUCCEEDED
    assert len(results["SchedulerService/GetPool"].devices) == 2
    assert results["AdapterService/CheckFit"].fits
    watched = results["EvaluatorService/WatchEvaluation"].evaluation
    assert watched.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, watched.error
    assert watched.results[0].runnable and watched.results[0].chip == "mtt-s4000"
    assert results["EvaluatorService/GetEvaluation"].evaluation.tenant == "walker"
    assert results["EvaluatorService/CreateScenario"].scenario.owner == "walker"
    assert results["EvaluatorService/ImportSampleSet"].sample_set.count == 2
    assert len(results["AdapterService/ListImportedModels"].models) == 2
    assert results["AdapterService/Estimate"].best_by_throughput.output_tokens_per_s > 0
    assert results["GatewayService/WhoAmI"].tenant == "walker"
    assert results["MeteringService/GetInvoice"].invoice.tenant == "walker"
    assert results["MeteringService/CorrectUsage"] == grpc.StatusCode.NOT_FOUND
    assert all(s.healthy for s in results["GatewayService/CheckServices"].services)
    assert len(results["GatewayService/CheckServices"].services) == 6
    assert results["AdminService/RevokeKey"].key.HasField("revoked_at")
    assert results["AdminService/GetTenant"].tenant.guaranteed_devices == 1
    assert [k.tenant for k in results["AdminService/ListKeys"].keys] == ["walkers"]
    assert {e.action for e in results["AdminService/ListAuditEvents"].events} >= {
        "tenant.create",
        "key.revoke",
    }
