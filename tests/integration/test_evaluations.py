"""Evaluations end to end over real gRPC: registry, agents, evaluator, gateway, on free ports.

Checks the issue's promises: the same seed gives the same figures; an unrunnable chip is
reported with its reason; goodput counts the requests meeting every SLO; a bad scenario is
INVALID_ARGUMENT naming the field; tenant B cannot read tenant A's evaluations; progress streams.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.evaluation import evaluation_to_dict
from pocgrid.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    evaluator_pb2,
    evaluator_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.evaluator.config import EvaluatorConfig
from services.evaluator.metrics import per_request
from services.evaluator.service import EvaluatorServer
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import SchedulerServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration
KEY_A, KEY_B = "key-a", "key-b"
A = (("authorization", f"Bearer {KEY_A}"),)
B = (("authorization", f"Bearer {KEY_B}"),)
#: Two chips that hold a 14B model on one device, and one node (a single 24 GiB RTX 4090)
#: that cannot.
CHIPS = ("a100-80gb-sxm", "ascend-910b2", "rtx-4090")
DEVICES = {"rtx-4090": 1}


class Mesh:
    def __init__(self, gateway: str, registry: str, agents: dict[str, AgentServer]) -> None:
        self.gateway = gateway
        self.registry = registry
        self.agents = agents


@pytest.fixture
async def mesh(common, closer, waiter) -> Mesh:
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    agents = {}
    for chip in CHIPS:
        agent = AgentServer(
            common,
            AgentConfig(
                chip=chip,
                devices=DEVICES.get(chip, 2),
                node_id=f"{chip}-t",
                registry_addr=reg.address,
            ),
        )
        await agent.start()
        closer.append(agent)
        agents[chip] = agent
    meter = MeteringServer(common, MeteringConfig())
    await meter.start()
    closer.append(meter)
    # Runs are placed through the scheduler, as in every mesh the project starts.
    sched = SchedulerServer(
        common, SchedulerConfig(registry_addr=reg.address, placement_interval_ms=100)
    )
    await sched.start()
    closer.append(sched)
    ev = EvaluatorServer(
        common,
        EvaluatorConfig(
            registry_addr=reg.address, scheduler_addr=sched.address, metering_addr=meter.address
        ),
    )
    await ev.start()
    closer.append(ev)
    gw = GatewayServer(
        common,
        GatewayConfig(
            api_keys=f"{KEY_A}=tenant-a,{KEY_B}=tenant-b",
            registry_addr=reg.address,
            evaluator_addr=ev.address,
            metering_addr=meter.address,
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
    return Mesh(gw.address, reg.address, agents)


async def _run(stub, request, metadata=A) -> evaluator_pb2.Evaluation:
    started = (await stub.StartEvaluation(request, metadata=metadata)).evaluation
    assert started.state == evaluator_pb2.EVALUATION_STATE_QUEUED and started.evaluation_id
    last = None
    async for update in stub.WatchEvaluation(
        evaluator_pb2.WatchEvaluationRequest(evaluation_id=started.evaluation_id),
        metadata=metadata,
        timeout=120,
    ):
        last = update.evaluation
    assert last is not None
    return last


def _figures(e: evaluator_pb2.Evaluation) -> list[dict]:
    out = []
    for r in evaluation_to_dict(e)["results"]:
        r = dict(r)
        r.pop("node_id")
        r.pop("job_id")
        out.append(r)
    return out


CHAT = evaluator_pb2.StartEvaluationRequest(
    scenario="llm-chat", model="Qwen2.5-14B", requests=300, seed=7, qps=2.0
)


async def test_same_seed_same_figures_and_unrunnable_chip_reported(mesh):
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        first = await _run(stub, CHAT)
        second = await _run(stub, CHAT)
        assert first.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, first.error
        assert first.evaluation_id != second.evaluation_id
        assert _figures(first) == _figures(second)
        results = {r.chip: r for r in first.results}
        assert set(results) == set(CHIPS)
        small = results["rtx-4090"]
        # Reported, not dropped: the reason names the memory that is missing.
        assert not small.runnable and "GiB" in small.reason
        assert small.verdict == evaluator_pb2.VERDICT_INVALID
        for chip in ("a100-80gb-sxm", "ascend-910b2"):
            r = results[chip]
            assert r.placement == "scheduler" and r.job_id.startswith("job-"), r
            assert r.runnable and r.devices == 1 and r.profile
            assert r.measured_requests > 50 and r.request_throughput > 0
            assert r.ttft_ms.p99 >= r.ttft_ms.median > 0
            assert r.tpot_ms.median > 0 and r.itl_ms.median > 0 and r.e2el_ms.p99 > 0
            # No weights of a 14B LLM here: accuracy is reported as not measured.
            assert not r.HasField("accuracy") and r.accuracy_note.startswith("not measured")
        assert first.progress.runs_done == len(CHIPS)
        # Cost from metering's price book in force: the devices' busy hour and the memory they
        # hold, over the measured output tokens.
        async with grpc.aio.insecure_channel(mesh.gateway) as gch:
            book = (
                await metering_pb2_grpc.MeteringServiceStub(gch).GetPriceBook(
                    metering_pb2.GetPriceBookRequest(chip="ascend-910b2"), metadata=A
                )
            ).book
        card = next(c for c in book.cards if c.chip == "ascend-910b2")
        r = results["ascend-910b2"]
        assert r.HasField("cost") and r.cost.currency == book.currency
        assert book.version in r.cost.price_source
        assert r.cost.price_per_device_hour > float(card.busy_device_hour)
        assert r.cost.per_million_tokens == pytest.approx(
            r.cost.price_per_device_hour * r.devices / (r.output_tokens_per_s * 3600) * 1e6
        )
        assert first.recommendation.cheapest in ("a100-80gb-sxm", "ascend-910b2")
        other_seed = await _run(
            stub, evaluator_pb2.StartEvaluationRequest(**{**_fields(CHAT), "seed": 8})
        )
        assert _figures(other_seed) != _figures(first)


def _fields(request) -> dict:
    return {f.name: v for f, v in request.ListFields()}


async def test_tpot_and_goodput_per_request(mesh):
    """TPOT = (E2EL - TTFT) / (output tokens - 1) per request, from the agent's own timings,
    and goodput counts exactly the measured requests that met every bound."""
    agent = mesh.agents["a100-80gb-sxm"]
    rng = np.random.default_rng(3)
    n = 200
    arrivals = np.cumsum(rng.exponential(0.25, n))
    ins = rng.integers(64, 2048, n)
    outs = rng.integers(1, 300, n)
    async with service_channel(agent.address, identity="scheduler") as ch:
        served = await agent_pb2_grpc.AgentServiceStub(ch).ServeRequests(
            agent_pb2.ServeRequestsRequest(
                run_id="tpot-check",
                precision=common_pb2.PRECISION_BF16,
                arrival_s=arrivals.tolist(),
                input_len=ins.tolist(),
                output_len=outs.tolist(),
                llm=agent_pb2.LlmServing(model="Qwen2.5-7B"),
            ),
            metadata=(("x-pocgrid-tenant", "tenant-a"),),
        )
    ttft, tpot, e2el = per_request(served, outs)
    for i in range(n):
        if outs[i] > 1:
            assert tpot[i] == pytest.approx((e2el[i] - ttft[i]) / (outs[i] - 1))
        else:
            assert np.isnan(tpot[i])
    from services.evaluator.metrics import Bounds, compute

    bound_ttft = float(np.quantile(ttft, 0.6))
    bound_tpot = float(np.nanquantile(tpot, 0.7))
    run = compute(served, ins, outs, Bounds(ttft_p99_ms=bound_ttft, tpot_p99_ms=bound_tpot))
    by_hand = 0
    for i in run.measured:
        ok_ttft = ttft[i] <= bound_ttft
        ok_tpot = outs[i] == 1 or tpot[i] <= bound_tpot
        by_hand += int(ok_ttft and ok_tpot)
    assert 0 < by_hand < run.measured.size
    assert run.goodput == pytest.approx(by_hand / run.span_s)
    assert run.request_throughput == pytest.approx(run.measured.size / run.span_s)
    assert not run.slo_met


async def test_tenant_b_cannot_read_tenant_a(mesh):
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        request = evaluator_pb2.StartEvaluationRequest(
            scenario="image-classification", chips=["a100-80gb-sxm"], requests=400, seed=1
        )
        evaluation = await _run(stub, request)
        assert evaluation.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, evaluation.error
        r = evaluation.results[0]
        assert r.runnable and r.kind == "samples" and r.e2el_ms.p99 > 0
        # Accuracy measured through the agent's RunTask: the project's digits classifier on
        # its held-out samples at the run's precision, beside the fp32 CPU reference.
        assert r.HasField("accuracy") and 0.9 < r.accuracy <= 1.0
        assert "digits-mlp" in r.accuracy_note and r.precision in r.accuracy_note
        eid = evaluation.evaluation_id
        for call in (
            stub.GetEvaluation(evaluator_pb2.GetEvaluationRequest(evaluation_id=eid), metadata=B),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.WatchEvaluation(
                evaluator_pb2.WatchEvaluationRequest(evaluation_id=eid), metadata=B
            ):
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        mine = await stub.ListEvaluations(evaluator_pb2.ListEvaluationsRequest(), metadata=A)
        theirs = await stub.ListEvaluations(evaluator_pb2.ListEvaluationsRequest(), metadata=B)
        assert [e.evaluation_id for e in mine.evaluations] == [eid]
        assert list(theirs.evaluations) == []
        got = await stub.GetEvaluation(
            evaluator_pb2.GetEvaluationRequest(evaluation_id=eid), metadata=A
        )
        assert got.evaluation.results == evaluation.results


def _bad_scenario(**changes) -> evaluator_pb2.Scenario:
    s = evaluator_pb2.Scenario(
        name="my-chat",
        kind="llm",
        title="My chat",
        models=["Qwen2.5-7B"],
        default_model="Qwen2.5-7B",
        input_len=evaluator_pb2.LengthDistribution(kind="fixed", mean=256, min=1, max=512),
        output_len=evaluator_pb2.LengthDistribution(kind="uniform", min=16, max=128),
        default_mode=evaluator_pb2.EVALUATION_MODE_SERVER,
        default_qps=1.0,
        default_requests=200,
        default_slo=evaluator_pb2.Slo(p99_ttft_ms=3000),
    )
    for path, value in changes.items():
        target = s
        *parents, leaf = path.split("__")
        for p in parents:
            target = getattr(target, p)
        if isinstance(value, list):
            del getattr(target, leaf)[:]
            getattr(target, leaf).extend(value)
        else:
            setattr(target, leaf, value)
    return s


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "Bad Name"}, "scenario.name"),
        ({"kind": "video"}, "scenario.kind"),
        ({"models": ["GPT-5"]}, "scenario.models[0]"),
        ({"models": ["ResNet-50 (torchvision IMAGENET1K_V1)"]}, "scenario.models[0]"),
        ({"input_len__max": 0}, "scenario.input_len.max"),
        ({"output_len__kind": "zipf"}, "scenario.output_len.kind"),
        ({"default_qps": 0.0}, "scenario.default_qps"),
        ({"default_slo__p99_ttft_ms": -1.0}, "scenario.default_slo.p99_ttft_ms"),
        ({"default_model": "Qwen2.5-72B"}, "scenario.default_model"),
        # Training scenarios run numpy on the evaluator's host: built-in only.
        ({"kind": "training"}, "scenario.kind"),
    ],
)
async def test_bad_scenario_is_invalid_argument_naming_the_field(mesh, changes, field):
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateScenario(
                evaluator_pb2.CreateScenarioRequest(scenario=_bad_scenario(**changes)), metadata=A
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field + ":"), err.value.details()


async def test_user_scenario_runs_for_its_tenant_only(mesh):
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        created = await stub.CreateScenario(
            evaluator_pb2.CreateScenarioRequest(scenario=_bad_scenario()), metadata=A
        )
        assert created.scenario.owner == "tenant-a"
        names_b = [
            s.name
            for s in (
                await stub.ListScenarios(evaluator_pb2.ListScenariosRequest(), metadata=B)
            ).scenarios
        ]
        assert "my-chat" not in names_b and "llm-chat" in names_b
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartEvaluation(
                evaluator_pb2.StartEvaluationRequest(scenario="my-chat"), metadata=B
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        e = await _run(
            stub,
            evaluator_pb2.StartEvaluationRequest(scenario="my-chat", chips=["ascend-910b2"]),
        )
        assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
        assert e.results[0].runnable and e.results[0].requests == 200


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"scenario": ""}, "scenario"),
        ({"scenario": "llm-chat", "model": "ResNet-50 (torchvision IMAGENET1K_V1)"}, "model"),
        ({"scenario": "llm-chat", "chips": ["no-such-chip"]}, "chips[0]"),
        ({"scenario": "llm-chat", "qps": -1.0}, "qps"),
        ({"scenario": "llm-chat", "requests": 10**7}, "requests"),
        ({"scenario": "finance", "model": "Qwen2.5-7B"}, "model"),
        ({"scenario": "hybrid-training", "model": "Qwen2.5-7B"}, "model"),
    ],
)
async def test_bad_start_is_invalid_argument(mesh, fields, field):
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartEvaluation(evaluator_pb2.StartEvaluationRequest(**fields), metadata=A)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field + ":"), err.value.details()


async def test_hybrid_training_across_chip_types(mesh):
    """hybrid-training runs one data-parallel job across the chips asked for (each with its
    node's devices): the proportional split's virtual step beats the equal split's, and both
    splits' losses equal a single-process run's; a chip with no node is reported, not run."""
    request = evaluator_pb2.StartEvaluationRequest(
        scenario="hybrid-training", chips=["a100-80gb-sxm", "rtx-4090", "mlu370-x8"], seed=3
    )
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        started = (await stub.StartEvaluation(request, metadata=A)).evaluation
        e = started
        async for update in stub.WatchEvaluation(
            evaluator_pb2.WatchEvaluationRequest(evaluation_id=started.evaluation_id),
            metadata=A,
            timeout=600,
        ):
            e = update.evaluation
    assert e.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, e.error
    assert e.scenario_kind == "training" and e.model == "mlp-64-512-10"
    rows = {r.chip: r for r in e.results}
    assert not rows["mlu370-x8"].runnable and "no READY node" in rows["mlu370-x8"].reason
    t = e.training
    assert list(t.chips) == ["a100-80gb-sxm", "rtx-4090"]
    assert list(t.devices) == [2, DEVICES["rtx-4090"]]
    for chip, devices in zip(t.chips, t.devices, strict=True):
        r = rows[chip]
        assert r.runnable and r.devices == devices and r.node_id == f"{chip}-t"
        assert r.verdict == evaluator_pb2.VERDICT_VALID, list(r.verdict_reasons)
    splits = {s.split: s for s in t.splits}
    prop, equal = splits["proportional"], splits["equal"]
    assert sum(prop.batch) == sum(equal.batch) == t.spec.batch
    # The faster chips (two A100s against one RTX 4090) take the larger share.
    assert prop.batch[0] > prop.batch[1] and equal.batch[0] == equal.batch[1]
    assert prop.step_ms < equal.step_ms
    assert prop.scaling_efficiency > equal.scaling_efficiency
    assert t.proportional_speedup == pytest.approx(equal.step_ms / prop.step_ms)
    ref = np.array(t.single_process_losses)
    assert len(ref) == t.spec.steps and ref[-1] < ref[0]
    for s in (prop, equal):
        assert np.allclose(s.losses, ref, rtol=1e-10, atol=1e-12)
        assert s.max_loss_deviation < 1e-9
        assert s.step_ms == pytest.approx(max(s.compute_ms) + s.all_reduce_ms)
    assert "proportional" in e.recommendation.summary
    # The ranks ran inside the agents: each one's device streams carry its vendor library's
    # gradient all-reduces and the steps' compute.
    for chip, library in (("a100-80gb-sxm", "NCCL"), ("rtx-4090", "NCCL")):
        labels = [w.label for w in mesh.agents[chip].runtime.streams[0].history]
        assert sum(f"{library} all_reduce" in x for x in labels) == 2 * t.spec.steps, labels[-4:]
        assert any("(compute)" in x for x in labels)
    assert not [w for w in mesh.agents["ascend-910b2"].runtime.streams[0].history]
    data = evaluation_to_dict(e)
    assert data["training"]["splits"][0]["split"] == "proportional"
