"""Every collective of the unified communication library gives numpy's exact result across
four agent processes of three vendors (``JoinCommunicator`` with ``collectives`` work), from
1 element to 64 MiB and on an odd rank count; two communicators at once on the same agents do
not mix their data.

Each rank makes its input itself (``pocgrid.comm.patterns.pattern``) and answers digests of its
outputs; the expectation here is numpy's, computed from the same patterns.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from pocgrid.comm import get_unique_id
from pocgrid.comm.patterns import pattern
from pocgrid.v1 import agent_pb2, agent_pb2_grpc
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel
from tests.integration.agent_processes import agent_processes, sqlite_common
from tests.unit.comm.rank_jobs import expected_reduce

pytestmark = pytest.mark.integration

TENANT = (("x-pocgrid-tenant", "acme"),)
#: Four agent processes, three vendor families (HCCL, CNCL, NCCL); one device each.
CHIPS = ("ascend-910b2", "mlu370-x8", "a100-80gb-sxm", "ascend-910b2")
LIBRARIES = ("HCCL", "CNCL", "NCCL", "HCCL")
MB64 = 16 << 20  # float32 elements
LEASE = RegistryConfig(lease_ttl_ms=3000, heartbeat_interval_ms=300, lease_check_interval_ms=100)


@pytest.fixture
async def addresses(
    tmp_path: Path, nats_server, mesh_keys: Path, closer
) -> AsyncIterator[list[str]]:
    common = sqlite_common(tmp_path / "data", nats_server.url, mesh_keys)
    reg = RegistryServer(common, LEASE)
    await reg.start()
    closer.append(reg)
    specs = [(chip, 1, f"{chip}-{i}") for i, chip in enumerate(CHIPS)]
    async with agent_processes(common, reg.address, specs) as (found, _procs):
        yield found


def _sha(x: npt.NDArray[Any]) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def expected(
    p: int, r: int, sizes: Sequence[int], dtype: str, ops: Sequence[str], seed: int
) -> list[tuple[str, str, int, str]]:
    """What rank r of p must answer, in its order: (collective, op, size, sha256)."""
    out = []
    for n in sizes:
        for op in ops:
            out.append(("all_reduce", op, n, _sha(expected_reduce(p, n, dtype, op, seed))))
        total = max(p, n - n % p)
        chunk = total // p
        full = expected_reduce(p, total, dtype, "sum", seed)
        out.append(("reduce_scatter", "sum", n, _sha(full[r * chunk : (r + 1) * chunk])))
        gathered = np.concatenate([pattern(k, chunk, dtype, seed) for k in range(p)])
        out.append(("all_gather", "", n, _sha(gathered)))
        for root in sorted({0, p - 1}):
            out.append(("broadcast", f"root={root}", n, _sha(pattern(root, n, dtype, seed))))
        if p > 1:
            out.append(("send_recv", "", n, _sha(pattern((r - 1) % p, n, dtype, seed))))
        out.append(("barrier", "", n, ""))
    return out


async def _join(address: str, request: agent_pb2.JoinCommunicatorRequest):
    async with service_channel(address, identity="evaluator") as ch:
        return await agent_pb2_grpc.AgentServiceStub(ch).JoinCommunicator(
            request, metadata=TENANT, timeout=300
        )


async def run_check(
    addresses: Sequence[str],
    sizes: Sequence[int],
    dtype: str = "float32",
    ops: Sequence[str] = (),
    seed: int = 0,
) -> list[agent_pb2.JoinCommunicatorResponse]:
    """One communicator, rank r on addresses[r]; every rank's digests checked against numpy."""
    uid = get_unique_id().encode()
    p = len(addresses)
    check = agent_pb2.CollectivesCheck(sizes=sizes, dtype=dtype, ops=ops, seed=seed)
    answers = await asyncio.gather(
        *(
            _join(
                a,
                agent_pb2.JoinCommunicatorRequest(
                    unique_id=uid,
                    nranks=p,
                    rank=r,
                    job_id="check",
                    timeout_s=120,
                    collectives=check,
                ),
            )
            for r, a in enumerate(addresses)
        )
    )
    takes = ops or [o for o in ("sum", "max", "min", "avg") if o != "avg" or "float" in dtype]
    for r, answer in enumerate(answers):
        got = [(d.collective, d.op, d.size, d.sha256) for d in answer.collectives.digests]
        want = expected(p, r, sizes, dtype, takes, seed)
        assert [g[:3] for g in got] == [w[:3] for w in want]
        wrong = [g[:3] for g, w in zip(got, want, strict=True) if g != w]
        assert wrong == [], f"rank {r} ({answer.collective_library}): {wrong[:5]}"
        assert all(d.algorithm for d in answer.collectives.digests)
        assert answer.usage_id.startswith("usage:")
    return answers


async def test_every_collective_is_exact_across_four_agent_processes_of_three_vendors(
    addresses: list[str],
) -> None:
    answers = await run_check(addresses, [1, 2, 7, 1000, 65537])
    assert [a.collective_library for a in answers] == list(LIBRARIES)
    # Four processes on one host: large payloads go through shared-memory lanes.
    assert answers[0].transports[1:] == ["shm", "shm", "shm"]
    # The library chooses by size and topology (two ranks share the Ascend family):
    # more than one all-reduce algorithm over these sizes.
    chosen = {d.algorithm for d in answers[0].collectives.digests if d.collective == "all_reduce"}
    assert len(chosen) >= 2 and chosen <= {"ring", "tree", "hierarchical"}, chosen
    await run_check(addresses, [3, 4099], dtype="int64")
    # 64 MiB of float32: every collective once (all-reduce with sum), in rounds.
    big = await run_check(addresses, [MB64], ops=["sum"])
    assert all(d.count for d in big[0].collectives.digests if d.collective != "barrier")


async def test_an_odd_rank_count_of_agents_is_exact(addresses: list[str]) -> None:
    await run_check(addresses[:3], [1, 5, 4099], dtype="float64")


async def test_two_communicators_on_the_same_agents_do_not_mix(addresses: list[str]) -> None:
    """At once, on the same four agents, ranks reversed in the second, different data."""
    sizes = [1, 999, 300_001]
    await asyncio.gather(
        run_check(addresses, sizes, ops=["sum"], seed=1),
        run_check(list(reversed(addresses)), sizes, ops=["sum", "max"], seed=2),
    )


async def test_a_bad_collectives_request_names_its_field(addresses: list[str]) -> None:
    uid = get_unique_id().encode()
    for check, field in (
        (agent_pb2.CollectivesCheck(), "collectives.sizes (count)"),
        (agent_pb2.CollectivesCheck(sizes=[0]), "collectives.sizes"),
        (agent_pb2.CollectivesCheck(sizes=[MB64 + 1]), "collectives.sizes"),
        (agent_pb2.CollectivesCheck(sizes=[1], dtype="bf16"), "collectives.dtype"),
        (agent_pb2.CollectivesCheck(sizes=[1], dtype="int32", ops=["avg"]), "collectives.ops"),
        (agent_pb2.CollectivesCheck(sizes=[1], ops=["sum", "sum"]), "collectives.ops"),
        (agent_pb2.CollectivesCheck(sizes=[1], seed=-1), "collectives.seed"),
    ):
        request = agent_pb2.JoinCommunicatorRequest(
            unique_id=uid, nranks=1, rank=0, collectives=check
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _join(addresses[0], request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{field}:" in (err.value.details() or ""), err.value.details()
