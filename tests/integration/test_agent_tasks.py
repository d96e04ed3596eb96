"""Work on agents: real ONNX numerics, vendor OOM, usage exactly once, token streaming."""

from __future__ import annotations

import itertools
import time

import grpc
import nats
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.api import ConsumerConfig

from pocgrid.samples import cnn, einsum, mlp
from pocgrid.tensors import from_array, to_array
from pocgrid.v1 import agent_pb2, agent_pb2_grpc, common_pb2, events_pb2
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration
TENANT = (("x-pocgrid-tenant", "acme"),)


async def _agent(
    common, closer, chip: str, devices: int = 2, speed_factor: float = 0.0
) -> AgentServer:
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    agent = AgentServer(
        common,
        AgentConfig(
            chip=chip,
            devices=devices,
            node_id=f"{chip}-t",
            registry_addr=reg.address,
            speed_factor=speed_factor,
        ),
    )
    await agent.start()
    closer.append(agent)
    return agent


async def _usage_events(url: str, durable: str = "test-usage") -> list[events_pb2.UsageRecorded]:
    """Every usage event published so far (until one second passes with none)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        "usage.>", durable=durable, stream="POCGRID_USAGE", config=ConsumerConfig(ack_wait=5)
    )
    events = []
    try:
        while True:
            msgs = await sub.fetch(10, timeout=1)
            for msg in msgs:
                events.append(events_pb2.UsageRecorded.FromString(msg.data))
                await msg.ack()
    # nats-py raises a plain asyncio.TimeoutError from an expired pull too (its own TimeoutError
    # is the subclass), as under load; either means no more events.
    except TimeoutError:
        pass
    finally:
        await nc.close()
    return events


def _reference(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize(
    ("chip", "precision", "rtol"),
    [
        ("ascend-910b2", common_pb2.PRECISION_FP16, 2e-2),
        ("bi-v100", common_pb2.PRECISION_BF16, 6e-2),
        ("dcu-k100-ai", common_pb2.PRECISION_FP32, 1e-6),
    ],
)
async def test_onnx_outputs_match_fp32_reference(common, closer, chip, precision, rtol):
    agent = await _agent(common, closer, chip)
    model = cnn()
    x = np.random.default_rng(7).standard_normal((4, 3, 32, 32)).astype(np.float32)
    async with service_channel(agent.address, identity="scheduler") as ch:
        resp = await agent_pb2_grpc.AgentServiceStub(ch).RunTask(
            agent_pb2.RunTaskRequest(
                task_id="cnn-1",
                precision=precision,
                onnx=agent_pb2.OnnxWork(
                    model=model.SerializeToString(), inputs=[from_array("img", x)]
                ),
            ),
            metadata=TENANT,
        )
    out = np.asarray(to_array("out", resp.outputs[0]), dtype=np.float32)
    ref = _reference(model, {"img": x})
    scale = float(np.max(np.abs(ref)))
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * scale)
    if precision != common_pb2.PRECISION_FP32:
        assert not np.array_equal(out, ref), "precision emulation changed nothing"
    assert resp.virtual_end_s > resp.virtual_start_s
    assert resp.samples == 4 and resp.cost.flops > 0 and resp.cost.fused_ops >= 1
    assert "onnxruntime" in resp.numerics


async def test_over_allocation_is_a_vendor_error_and_agent_stays_healthy(common, closer):
    agent = await _agent(common, closer, "kunlun-r200", devices=1)
    free_before = agent.runtime.memory_info(0).free_bytes
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RunTask(
                agent_pb2.RunTaskRequest(
                    task_id="big",
                    precision=common_pb2.PRECISION_FP16,
                    llm_batch=agent_pb2.LlmBatchWork(
                        model="Llama-3.1-70B", batch=1, input_len=128, output_len=16
                    ),
                ),
                metadata=TENANT,
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "XPUERR_NOMEM" in err.value.details()
        assert agent.runtime.memory_info(0).free_bytes == free_before
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        ok = await stub.RunTask(
            agent_pb2.RunTaskRequest(
                task_id="small",
                precision=common_pb2.PRECISION_FP16,
                llm_batch=agent_pb2.LlmBatchWork(
                    model="Qwen2.5-7B", batch=4, input_len=128, output_len=16
                ),
            ),
            metadata=TENANT,
        )
        assert ok.tokens_out == 64 and ok.ttft_ms > 0 and ok.tpot_ms > 0
        assert agent.runtime.memory_info(0).free_bytes == free_before


async def test_unsupported_operator_and_precision_are_refused(common, closer):
    agent = await _agent(common, closer, "kunlun-r200", devices=1)
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 4), np.float32)
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RunTask(
                agent_pb2.RunTaskRequest(
                    task_id="ein",
                    precision=common_pb2.PRECISION_FP16,
                    onnx=agent_pb2.OnnxWork(
                        model=einsum().SerializeToString(),
                        inputs=[from_array("a", a), from_array("b", b)],
                    ),
                ),
                metadata=TENANT,
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Einsum" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RunTask(
                agent_pb2.RunTaskRequest(
                    task_id="bf",
                    precision=common_pb2.PRECISION_BF16,
                    onnx=agent_pb2.OnnxWork(
                        model=mlp().SerializeToString(),
                        inputs=[from_array("x", np.ones((1, 64), np.float32))],
                    ),
                ),
                metadata=TENANT,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("precision")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RunTask(
                agent_pb2.RunTaskRequest(
                    task_id="badx",
                    precision=common_pb2.PRECISION_FP16,
                    onnx=agent_pb2.OnnxWork(
                        model=mlp().SerializeToString(),
                        inputs=[
                            agent_pb2.Tensor(
                                name="x",
                                shape=[1, 64],
                                dtype=agent_pb2.TENSOR_DTYPE_FLOAT32,
                                data=b"123",
                            )
                        ],
                    ),
                ),
                metadata=TENANT,
            )
        assert err.value.details().startswith("onnx.inputs[0].data")


async def test_usage_events_exactly_once_per_unit_of_work(common, closer, nats_server):
    agent = await _agent(common, closer, "mtt-s4000")
    x = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)
    onnx_task = agent_pb2.RunTaskRequest(
        task_id="t-onnx",
        job_id="job-1",
        precision=common_pb2.PRECISION_FP16,
        onnx=agent_pb2.OnnxWork(model=mlp().SerializeToString(), inputs=[from_array("x", x)]),
    )
    llm_task = agent_pb2.RunTaskRequest(
        task_id="t-llm",
        job_id="job-1",
        precision=common_pb2.PRECISION_BF16,
        device_indexes=[0, 1],
        llm_batch=agent_pb2.LlmBatchWork(
            model="Llama-3.1-8B", batch=8, input_len=256, output_len=32
        ),
    )
    before_ns = time.time_ns()
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        first = await stub.RunTask(onnx_task, metadata=TENANT)
        retried = await stub.RunTask(onnx_task, metadata=TENANT)  # a client retry
        assert retried == first
        llm = await stub.RunTask(llm_task, metadata=TENANT)
        tokens = [
            t
            async for t in stub.Generate(
                agent_pb2.GenerateRequest(
                    request_id="g-1",
                    model="Qwen2.5-7B",
                    precision=common_pb2.PRECISION_BF16,
                    input_len=64,
                    max_output_tokens=12,
                    seed=5,
                ),
                metadata=TENANT,
            )
        ]
    assert [t.index for t in tokens] == list(range(12))
    times = [t.virtual_time_s for t in tokens]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert tokens[-1].last and tokens[-1].usage_id

    events = await _usage_events(nats_server.url)
    ids = sorted(e.event_id for e in events)
    assert ids == sorted([first.usage_id, llm.usage_id, tokens[-1].usage_id])
    by_id = {e.event_id: e for e in events}
    assert by_id[first.usage_id].samples == 8 and by_id[first.usage_id].tenant == "acme"
    assert by_id[llm.usage_id].tokens_out == 8 * 32
    assert by_id[llm.usage_id].busy_device_us == round(llm.busy_device_seconds * 1e6)
    assert by_id[tokens[-1].usage_id].tokens_out == 12
    # Event times are wall-clock times (metering bills usage in the window where it ended),
    # not the runtime's virtual clock, which starts at 0 (1970); durations stay virtual.
    after_ns = time.time_ns()
    for event in events:
        assert before_ns <= event.ended_at.ToNanoseconds() <= after_ns, event.event_id
        assert event.started_at.ToNanoseconds() <= event.ended_at.ToNanoseconds()
    llm_event = by_id[llm.usage_id]
    llm_ns = llm_event.ended_at.ToNanoseconds() - llm_event.started_at.ToNanoseconds()
    assert llm_ns * 2 == pytest.approx(llm.busy_device_seconds * 1e9, abs=4_000)  # 2 devices, in us


async def test_two_tenants_with_one_task_id_get_their_own_result_and_usage(
    common, closer, nats_server
):
    agent = await _agent(common, closer, "mtt-s4000")
    rng = np.random.default_rng(11)
    inputs = {
        "acme": rng.standard_normal((2, 64)).astype(np.float32),
        "globex": rng.standard_normal((5, 64)).astype(np.float32),
    }
    model = mlp()
    responses = {}
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for tenant, x in inputs.items():
            responses[tenant] = await stub.RunTask(
                agent_pb2.RunTaskRequest(
                    task_id="shared-id",
                    precision=common_pb2.PRECISION_FP32,
                    onnx=agent_pb2.OnnxWork(
                        model=model.SerializeToString(), inputs=[from_array("x", x)]
                    ),
                ),
                metadata=(("x-pocgrid-tenant", tenant),),
            )
        # A retry by the first tenant still gets its own cached result.
        again = await stub.RunTask(
            agent_pb2.RunTaskRequest(
                task_id="shared-id",
                precision=common_pb2.PRECISION_FP32,
                onnx=agent_pb2.OnnxWork(
                    model=model.SerializeToString(), inputs=[from_array("x", inputs["acme"])]
                ),
            ),
            metadata=(("x-pocgrid-tenant", "acme"),),
        )
    assert again == responses["acme"]
    for tenant, x in inputs.items():
        out = np.asarray(to_array("y", responses[tenant].outputs[0]))
        np.testing.assert_allclose(out, _reference(model, {"x": x}), rtol=1e-5, atol=1e-6)
        assert responses[tenant].samples == len(x)
    assert responses["acme"].usage_id != responses["globex"].usage_id
    events = await _usage_events(nats_server.url)
    assert {(e.event_id, e.tenant, e.samples) for e in events} == {
        (responses["acme"].usage_id, "acme", 2),
        (responses["globex"].usage_id, "globex", 5),
    }


async def test_work_without_a_tenant_is_refused_and_records_nothing(common, closer, nats_server):
    agent = await _agent(common, closer, "mtt-s4000", devices=1)
    free_before = agent.runtime.memory_info(0).free_bytes
    task = agent_pb2.RunTaskRequest(
        task_id="free-lunch",
        precision=common_pb2.PRECISION_BF16,
        llm_batch=agent_pb2.LlmBatchWork(model="Qwen2.5-7B", batch=1, input_len=16, output_len=4),
    )
    gen = agent_pb2.GenerateRequest(
        request_id="free-lunch",
        model="Qwen2.5-7B",
        precision=common_pb2.PRECISION_BF16,
        input_len=16,
        max_output_tokens=4,
    )
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for metadata in ((), (("x-pocgrid-tenant", ""),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RunTask(task, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "x-pocgrid-tenant" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Generate(gen, metadata=metadata):
                    pass
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "x-pocgrid-tenant" in err.value.details()
        # The same work with a tenant runs (the refusal was about the tenant, nothing else).
        ok = await stub.RunTask(task, metadata=TENANT)
        assert ok.tokens_out == 4
    assert agent.runtime.memory_info(0).free_bytes == free_before
    events = await _usage_events(nats_server.url)
    assert [(e.event_id, e.tenant) for e in events] == [(ok.usage_id, "acme")]


@pytest.mark.parametrize(
    ("speed_factor", "tokens"),
    [
        # Paced in real time: the client walks away while the agent waits for the next token.
        (1.0, 2000),
        # Unpaced: the agent is ahead, held by flow control, when the client walks away.
        (0.0, 200_000),
    ],
)
async def test_abandoned_generate_records_the_tokens_produced(
    common, closer, nats_server, waiter, speed_factor, tokens
):
    agent = await _agent(common, closer, "mtt-s4000", devices=1, speed_factor=speed_factor)
    free_before = agent.runtime.memory_info(0).free_bytes
    request = agent_pb2.GenerateRequest(
        request_id="walk-away",
        job_id="job-9",
        model="Qwen2.5-7B",
        precision=common_pb2.PRECISION_BF16,
        input_len=32,
        max_output_tokens=tokens,
    )
    async with service_channel(agent.address, identity="scheduler") as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).Generate(request, metadata=TENANT)
        received = []
        async for token in call:
            received.append(token)
            if len(received) == 3:
                call.cancel()
                break
    assert not any(t.last for t in received)
    polls = itertools.count()
    partial: list[events_pb2.UsageRecorded] = []

    async def recorded() -> bool:
        partial[:] = await _usage_events(nats_server.url, durable=f"poll-{next(polls)}")
        return bool(partial)

    await waiter(recorded, what="the abandoned stream's usage")
    [event] = partial
    assert event.tenant == "acme" and event.job_id == "job-9" and event.tokens_in == 32
    # Produced, not necessarily received: a token may be in flight when the client cancels.
    assert 3 <= event.tokens_out < tokens
    assert "gen-partial" in event.event_id and "acme" in event.event_id
    tpot_s = received[2].virtual_time_s - received[1].virtual_time_s
    first_s = received[0].virtual_time_s
    assert event.busy_device_us / 1e6 == pytest.approx(
        first_s + tpot_s * (event.tokens_out - 1), rel=1e-3
    )
    # Its memory was given back.
    assert agent.runtime.memory_info(0).free_bytes == free_before
