"""Tenant B cannot read, cancel or be billed for tenant A's anything: every public RPC that
takes an id, enumerated from the contract's descriptors, is called by B with A's ids.

Each string field of every public request is classified below: a reference to a tenant's
resource (``REFERENCES``, filled with A's value), a reference to what every tenant shares
(the chip and model catalogue, the pool's nodes: ``SHARED``), or a plain value (``PLAIN``). A new
RPC or field that is none of these fails the test until someone says which it is, so a new
RPC is tried by default. B's call must then fail (not INTERNAL/UNKNOWN), or succeed with none
of A's ids, names or tenant in the answer; afterwards A's job, evaluation and scenario are as A
left them and B has been billed for nothing.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from gateway.routing import PUBLIC_BACKENDS, method_path
from pocgrid.v1 import (
    adapter_pb2,
    adapter_pb2_grpc,
    common_pb2,
    evaluator_pb2,
    evaluator_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from tests.conftest import wait_for
from tests.integration.public_mesh import start_public_mesh

pytestmark = pytest.mark.integration

KEYS = "key-a=tenant-a,key-b=tenant-b"
A = (("authorization", "Bearer key-a"),)
B = (("authorization", "Bearer key-b"),)
CHIP = "mtt-s4000"
IDEMPOTENCY = "a-private-idempotency-key"
SCENARIO = "a-private-scenario"
LLM = json.dumps(
    {
        "num_hidden_layers": 2,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "vocab_size": 1234,
        "max_position_embeddings": 2048,
    }
).encode()

#: Field name -> which of A's resources it names (a key of the ``owned`` dict built below).
REFERENCES = {
    "job_id": "job",
    "evaluation_id": "evaluation",
    "model_id": "model",
    "model": "model",
    "invoice_id": "invoice",
    "corrects": "usage",
    "tenant": "tenant",
    "idempotency_key": "idempotency",
    "scenario": "scenario",
    "name": "scenario",
}
#: RPC -> its fields that name what every tenant shares, or name a new object of the caller.
SHARED = {
    "RegistryService/GetChip": {"name"},  # the public chip catalogue
    "RegistryService/GetModel": {"name"},  # the public model catalogue
    "RegistryService/GetNode": {"node_id"},  # the pool is shared; its addresses are not shown
    "AdapterService/ImportOnnxModel": {"name"},  # the caller names its new model
    "AdapterService/ImportLlmConfig": {"name"},
    "EvaluatorService/ImportSampleSet": {"name"},  # the caller names its new sample set
    # AdminService refuses every non-admin key, whatever its fields name (its tenant fields,
    # tried with A's tenant above, are refused the same way).
    "AdminService/CreateKey": {"description"},
    "AdminService/RevokeKey": {"key_id"},
    "AdminService/ListAuditEvents": {
        "actor_tenant",
        "action",
        "resource_type",
        "resource_id",
        "page_token",
    },
}
#: Fields that name no tenant's resource, wherever they appear.
PLAIN = {
    "chip",
    "vendor_family",
    "kind",
    "reason",
    "period",
    "meter",
    "correction_id",
    "group_by",
    "window_size",
    "chips",
    "output",  # a graph output's name (ImportSampleSet)
}
#: Enough of a request that B's call is refused for A's id, not for a missing field.
BASE: dict[str, dict[str, Any]] = {
    "SchedulerService/SubmitJob": {
        "spec": {
            "model": "Qwen2.5-7B",
            "devices": 1,
            "precision": common_pb2.PRECISION_BF16,
            "kind": scheduler_pb2.JOB_KIND_EVALUATION,
        }
    },
    "AdapterService/CheckFit": {
        "model": "Qwen2.5-7B",
        "chip": CHIP,
        "precision": common_pb2.PRECISION_FP16,
        "devices": 1,
    },
    "AdapterService/GetCoverage": {"model": "Qwen2.5-7B", "chip": CHIP},
    "AdapterService/Estimate": {"model": "Qwen2.5-7B", "chip": CHIP},
    "EvaluatorService/StartEvaluation": {
        "scenario": "image-classification",
        "chips": [CHIP],
        "requests": 50,
    },
    "MeteringService/CorrectUsage": {"correction_id": "b-try", "meter": "samples", "delta": 1},
}


def _string_fields(method: MethodDescriptor) -> list[FieldDescriptor]:
    return [
        f
        for f in method.input_type.fields
        if f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated
    ]


def _tries(method: MethodDescriptor) -> list[str]:
    """The fields of ``method``'s request that name a tenant's resource."""
    name = f"{method.containing_service.name}/{method.name}"
    shared = SHARED.get(name, set())
    fields = []
    for field in _string_fields(method):
        if field.name in shared or field.name in PLAIN:
            continue
        assert field.name in REFERENCES, (
            f"{name}.{field.name}: say whether it names a tenant's resource (REFERENCES), a "
            "shared one (SHARED) or nothing (PLAIN) in tests/integration/test_tenant_isolation.py"
        )
        fields.append(field.name)
    return fields


async def _call(channel: grpc.aio.Channel, method: MethodDescriptor, request: Any) -> Any:
    response_type = message_factory.GetMessageClass(method.output_type)
    path = method_path(method)
    if method.server_streaming:
        call = channel.unary_stream(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return [item async for item in call(request, metadata=B, timeout=30)]
    unary = channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return await unary(request, metadata=B, timeout=30)


async def test_tenant_b_cannot_read_cancel_or_be_billed_for_tenant_a(common, closer):
    mesh = await start_public_mesh(common, closer, KEYS, chip=CHIP)
    ch = grpc.aio.insecure_channel(mesh.gateway.address)
    closer.append(type("Closing", (), {"stop": staticmethod(ch.close)})())
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(ch)
    evaluator = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
    adapter = adapter_pb2_grpc.AdapterServiceStub(ch)
    metering = metering_pb2_grpc.MeteringServiceStub(ch)

    # -- A's things ---------------------------------------------------------------------
    job = (
        await scheduler.SubmitJob(
            scheduler_pb2.SubmitJobRequest(
                spec=scheduler_pb2.JobSpec(**BASE["SchedulerService/SubmitJob"]["spec"]),
                idempotency_key=IDEMPOTENCY,
            ),
            metadata=A,
        )
    ).job
    await evaluator.CreateScenario(
        evaluator_pb2.CreateScenarioRequest(
            scenario=evaluator_pb2.Scenario(
                name=SCENARIO,
                kind="samples",
                title="A's own",
                models=["YOLOv8n"],
                default_mode=evaluator_pb2.EVALUATION_MODE_OFFLINE,
            )
        ),
        metadata=A,
    )
    model = (
        await adapter.ImportLlmConfig(
            adapter_pb2.ImportLlmConfigRequest(name="a-private-llm", config_json=LLM), metadata=A
        )
    ).model
    evaluation = (
        await evaluator.StartEvaluation(
            evaluator_pb2.StartEvaluationRequest(
                scenario=SCENARIO, chips=[CHIP], requests=100, idempotency_key=IDEMPOTENCY
            ),
            metadata=A,
        )
    ).evaluation

    async def finished() -> bool:
        got = await evaluator.GetEvaluation(
            evaluator_pb2.GetEvaluationRequest(evaluation_id=evaluation.evaluation_id), metadata=A
        )
        return got.evaluation.state in (
            evaluator_pb2.EVALUATION_STATE_SUCCEEDED,
            evaluator_pb2.EVALUATION_STATE_FAILED,
        )

    await wait_for(finished, within=60, what="A's evaluation to finish")

    async def billed() -> bool:
        usage = await metering.ListUsage(metering_pb2.ListUsageRequest(), metadata=A)
        return bool(usage.records)

    await wait_for(billed, within=20, what="A's usage metered")
    usage = (await metering.ListUsage(metering_pb2.ListUsageRequest(), metadata=A)).records
    invoice = (await metering.GetInvoice(metering_pb2.GetInvoiceRequest(), metadata=A)).invoice
    owned = {
        "job": job.job_id,
        "evaluation": evaluation.evaluation_id,
        "model": model.model_id,
        "invoice": invoice.invoice_id,
        "usage": usage[0].usage_id,
        "tenant": "tenant-a",
        "idempotency": IDEMPOTENCY,
        "scenario": SCENARIO,
    }
    # What B must never read: A's ids and names (the idempotency key is B's to reuse).
    secrets = {v for k, v in owned.items() if k != "idempotency"} | {"a-private-llm"}

    # -- B tries every id-taking public RPC with A's ids --------------------------------
    tried: list[str] = []
    for service in PUBLIC_BACKENDS:
        for method in service.methods:
            name = f"{service.name}/{method.name}"
            request_type = message_factory.GetMessageClass(method.input_type)
            for field in _tries(method):
                request = request_type()
                base = BASE.get(name, {})
                for key, value in base.items():
                    if isinstance(value, dict):
                        getattr(request, key).CopyFrom(getattr(request, key).__class__(**value))
                    elif isinstance(value, list):
                        getattr(request, key).extend(value)
                    else:
                        setattr(request, key, value)
                setattr(request, field, owned[REFERENCES[field]])
                try:
                    response = await _call(ch, method, request)
                except grpc.aio.AioRpcError as err:
                    assert err.code() not in (
                        grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN,
                        grpc.StatusCode.UNAVAILABLE,
                    ), (name, field, err.details())
                    leaked = {s for s in secrets if s in (err.details() or "")}
                    # A NOT_FOUND may name the id B itself sent; nothing else of A's.
                    leaked.discard(owned[REFERENCES[field]])
                    assert not leaked, (name, field, leaked)
                else:
                    items = response if isinstance(response, list) else [response]
                    body = b"".join(item.SerializeToString() for item in items)
                    leaked = {s for s in secrets if s.encode() in body}
                    assert not leaked, (name, field, leaked)
                tried.append(f"{name}.{field}")
    # Every RPC that takes an id was tried (the list is the descriptors', not this test's).
    assert {"SchedulerService/CancelJob.job_id", "MeteringService/GetInvoice.tenant"} <= set(tried)
    assert len(tried) >= 15, tried

    # -- A's things are as A left them, and B was billed for nothing ---------------------
    still = (await scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id), metadata=A)).job
    assert still.state not in (
        scheduler_pb2.JOB_STATE_CANCELLED,
        scheduler_pb2.JOB_STATE_SUCCEEDED,
    ), scheduler_pb2.JobState.Name(still.state)
    again = await evaluator.GetScenario(evaluator_pb2.GetScenarioRequest(name=SCENARIO), metadata=A)
    assert again.scenario.owner == "tenant-a"
    after = (await metering.ListUsage(metering_pb2.ListUsageRequest(), metadata=A)).records
    assert {r.usage_id for r in usage} <= {r.usage_id for r in after}
    assert all(r.tenant == "tenant-a" for r in after)
    b_usage = (await metering.ListUsage(metering_pb2.ListUsageRequest(), metadata=B)).records
    assert all(r.tenant == "tenant-b" for r in b_usage)
    assert not {r.job_id for r in b_usage} & {r.job_id for r in after}
