"""Communicator ranks inside agents (``JoinCommunicator``): agent processes of three vendors
train one model together, gradients reduced by the unified communication library between the
agent processes; a SIGKILLed agent fails the others' calls within seconds, naming it; only the
scheduler and the evaluator may make an agent join; bad requests name their field.

Two agents run as processes of their own (``python -m services.agent``), one in this process
(its rank runs in a worker thread of the agent while the test's event loop serves it), all
registered with a real registry. The communicator's unique id is made here: this process hosts
its bootstrap root, as the evaluator's does.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from pocgrid.comm import get_unique_id
from pocgrid.comm.training import MlpConfig, train_single
from pocgrid.v1 import agent_pb2, agent_pb2_grpc
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.core.config import CommonConfig
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel, wait_for
from tests.integration.agent_processes import agent_processes, sqlite_common

pytestmark = pytest.mark.integration

TENANT = (("x-pocgrid-tenant", "acme"),)
Request = agent_pb2.JoinCommunicatorRequest
#: (chip, devices): three vendor families, three collective libraries.
PROCESSES = (("ascend-910b2", 2), ("mlu370-x8", 1))
IN_PROCESS = ("a100-80gb-sxm", 2)
LIBRARIES = ("HCCL", "CNCL", "NCCL")
LEASE = RegistryConfig(
    lease_ttl_ms=3000,  # room for event-loop stalls of a loaded CI machine
    heartbeat_interval_ms=300,
    lease_check_interval_ms=100,
    heartbeat_flush_interval_ms=100,
)


@dataclass
class Agents:
    """Rank r runs on addresses[r]; procs[r] is its process (None: this process's agent)."""

    addresses: list[str]
    procs: list[asyncio.subprocess.Process | None]
    local: AgentServer


@pytest.fixture
def plain_common(tmp_path: Path, nats_server, mesh_keys: Path) -> CommonConfig:
    return sqlite_common(tmp_path / "data", nats_server.url, mesh_keys)


@pytest.fixture
async def agents(plain_common: CommonConfig, closer) -> AsyncIterator[Agents]:
    reg = RegistryServer(plain_common, LEASE)
    await reg.start()
    closer.append(reg)
    specs = [(chip, devices, f"{chip}-p") for chip, devices in PROCESSES]
    async with agent_processes(plain_common, reg.address, specs) as (addresses, procs):
        chip, devices = IN_PROCESS
        local = AgentServer(
            plain_common,
            AgentConfig(chip=chip, devices=devices, node_id=f"{chip}-l", registry_addr=reg.address),
        )
        await local.start()
        closer.append(local)
        yield Agents([*addresses, local.address], [*procs, None], local)


def _job(cfg: MlpConfig, split: str = "proportional") -> agent_pb2.TrainingJob:
    return agent_pb2.TrainingJob(
        inputs=cfg.inputs,
        hidden=cfg.hidden,
        classes=cfg.classes,
        samples=cfg.samples,
        batch=cfg.batch,
        steps=cfg.steps,
        lr=cfg.lr,
        seed=cfg.seed,
        split=split,
    )


async def _join(
    address: str,
    request: agent_pb2.JoinCommunicatorRequest,
    identity: str = "evaluator",
    metadata: tuple[tuple[str, str], ...] = TENANT,
) -> agent_pb2.JoinCommunicatorResponse:
    async with service_channel(address, identity=identity) as ch:
        response: agent_pb2.JoinCommunicatorResponse = await agent_pb2_grpc.AgentServiceStub(
            ch
        ).JoinCommunicator(request, metadata=metadata, timeout=300)
    return response


def _requests(
    nranks: int, job: agent_pb2.TrainingJob, timeout_s: float = 0.0
) -> list[agent_pb2.JoinCommunicatorRequest]:
    uid = get_unique_id().encode()
    return [
        agent_pb2.JoinCommunicatorRequest(
            unique_id=uid,
            nranks=nranks,
            rank=r,
            job_id="train-1",
            timeout_s=timeout_s,
            training=job,
        )
        for r in range(nranks)
    ]


async def _memory_used(address: str) -> int:
    async with service_channel(address, identity="evaluator") as ch:
        info = await agent_pb2_grpc.AgentServiceStub(ch).GetNodeInfo(agent_pb2.GetNodeInfoRequest())
    return sum(d.memory_used_bytes for d in info.devices)


async def test_training_ranks_run_inside_agents_of_three_vendors(agents: Agents) -> None:
    cfg = MlpConfig(steps=6, seed=5)
    requests = _requests(3, _job(cfg))
    answers = await asyncio.gather(
        *(_join(a, r) for a, r in zip(agents.addresses, requests, strict=True))
    )
    reference = np.array(train_single(cfg))
    assert reference[-1] < reference[0]
    first = answers[0].training
    for rank, answer in enumerate(answers):
        t = answer.training
        assert answer.rank == rank and answer.nranks == 3
        assert answer.collective_library == LIBRARIES[rank]
        # The same losses on every rank, equal to one process's run of the same steps.
        assert list(t.losses) == list(first.losses)
        assert np.allclose(t.losses, reference, rtol=1e-10, atol=1e-12)
        assert t.step_s == pytest.approx(max(t.compute_s) + t.all_reduce_s)
        assert answer.virtual_end_s > answer.virtual_start_s
        assert answer.usage_id.startswith("usage:")
        # Three processes on one host: the large payloads would take shared-memory lanes.
        assert answer.transports[rank] == "" and len(answer.transports) == 3
    assert sum(first.batch) == cfg.batch and first.precisions[0] == "bf16"
    # Speeds in proportion: the faster pools (2 x 910B2, 2 x A100) take more than 1 x MLU370.
    assert first.batch[0] > first.batch[1] and first.batch[2] > first.batch[1]
    assert [len(a.device_indexes) for a in answers] == [2, 1, 2]
    # Every collective's buffer was given back to the vendor's device memory.
    for address in agents.addresses:
        assert await _memory_used(address) == 0
    # The local agent's device streams carry the step's compute and the vendor library's call.
    labels = [w.label for w in agents.local.runtime.streams[0].history]
    assert any("NCCL all_reduce" in label for label in labels), labels[-3:]
    assert any("(compute)" in label for label in labels)


async def test_a_sigkilled_agent_fails_the_other_ranks_within_seconds(agents: Agents) -> None:
    # Long enough that the kill lands mid-training (each step is milliseconds).
    cfg = MlpConfig(steps=10_000, batch=64, samples=256, seed=1)
    uid = get_unique_id()
    requests = [
        agent_pb2.JoinCommunicatorRequest(
            unique_id=uid.encode(),
            nranks=3,
            rank=r,
            job_id="doomed",
            timeout_s=20,
            training=_job(cfg),
        )
        for r in range(3)
    ]
    calls = [
        asyncio.ensure_future(_join(a, r)) for a, r in zip(agents.addresses, requests, strict=True)
    ]
    assert uid.joined is not None
    assert await asyncio.to_thread(uid.joined.wait, 90), "the three ranks never joined"
    # Killed once training runs (every peer connection made): the in-process rank has finished
    # an all-reduce, which every rank took part in.
    stream = agents.local.runtime.streams[0]
    await wait_for(
        lambda: any("all_reduce" in w.label for w in stream.history[-4:]),
        within=90,
        every=0.05,
        what="the first all-reduce",
    )
    victim = agents.procs[1]
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await victim.wait()
    results = await asyncio.gather(*calls, return_exceptions=True)
    took = time.monotonic() - killed
    # Well inside the communicator's 20 s timeout: a lost peer is noticed, not waited for.
    assert took < 10, took
    for rank in (0, 2):
        err = results[rank]
        assert isinstance(err, grpc.aio.AioRpcError), err
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (rank, err.details())
        assert "rank 1" in (err.details() or ""), err.details()
    said = " | ".join(r.details() or "" for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert "mlu370-x8" in said and "closed the connection" in said, said
    # The survivors gave their buffers back and take the next job.
    for address in (agents.addresses[0], agents.addresses[2]):
        assert await _memory_used(address) == 0
    again = _requests(2, _job(MlpConfig(steps=2)))
    answers = await asyncio.gather(
        _join(agents.addresses[0], again[0]), _join(agents.addresses[2], again[1])
    )
    assert answers[0].training.losses == answers[1].training.losses


async def _refused(call, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert words in (err.value.details() or ""), err.value.details()


async def test_join_communicator_is_for_work_givers_and_checks_its_request(
    plain_common: CommonConfig, closer
) -> None:
    reg = RegistryServer(plain_common, LEASE)
    await reg.start()
    closer.append(reg)
    agent = AgentServer(
        plain_common,
        AgentConfig(chip="ascend-910b2", devices=2, node_id="npu-c", registry_addr=reg.address),
    )
    await agent.start()
    closer.append(agent)
    good = _requests(1, _job(MlpConfig(steps=2)))[0]
    for identity in ("gateway", "metering", "agent", "registry", "adapter"):
        # An agent acts for no tenant: it asks as itself (a rogue agent pulling another in).
        tenant = () if identity == "agent" else TENANT
        await _refused(
            _join(agent.address, good, identity=identity, metadata=tenant),
            grpc.StatusCode.PERMISSION_DENIED,
            "may be called only by",
        )
    async with service_channel(agent.address, identity="evaluator") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        await _refused(stub.JoinCommunicator(good), grpc.StatusCode.UNAUTHENTICATED, "no tenant")

        def bad(change: Callable[[agent_pb2.JoinCommunicatorRequest], object]) -> Request:
            r = agent_pb2.JoinCommunicatorRequest()
            r.CopyFrom(good)
            change(r)
            return r

        for request, field in (
            (bad(lambda r: setattr(r, "unique_id", "nonsense")), "unique_id"),
            (bad(lambda r: setattr(r, "nranks", 0)), "nranks"),
            (bad(lambda r: setattr(r, "rank", 1)), "rank"),
            (bad(lambda r: setattr(r, "timeout_s", 1e9)), "timeout_s"),
            (bad(lambda r: r.device_indexes.extend([0, 0])), "device_indexes"),
            (bad(lambda r: r.device_indexes.append(5)), "device_indexes"),
            (bad(lambda r: r.ClearField("training")), "work"),
            (bad(lambda r: setattr(r.training, "split", "half")), "training.split"),
            (bad(lambda r: setattr(r.training, "batch", 10**6)), "training.batch"),
            (bad(lambda r: setattr(r.training, "lr", float("nan"))), "training.lr"),
            (bad(lambda r: setattr(r.training, "steps", 0)), "training.steps"),
            (bad(lambda r: setattr(r.training, "inputs", 10**5)), "training.inputs"),
        ):
            await _refused(
                stub.JoinCommunicator(request, metadata=TENANT),
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{field}:",
            )
        # A communicator whose other rank never comes: the deadline, not a hang.
        lonely = _requests(2, _job(MlpConfig(steps=2)), timeout_s=1.0)[0]
        started = time.monotonic()
        await _refused(
            stub.JoinCommunicator(lonely, metadata=TENANT),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "waited 1 s for the other ranks to join",
        )
        assert time.monotonic() - started < 10
        # One rank alone is a communicator too: it trains like one process.
        cfg = MlpConfig(steps=3)
        solo = await stub.JoinCommunicator(
            _requests(1, _job(cfg, "equal"))[0], metadata=TENANT, timeout=120
        )
    assert np.allclose(solo.training.losses, train_single(cfg), rtol=1e-12)
    assert solo.collective_library == "HCCL" and list(solo.device_indexes) == [0, 1]
