"""Serving deployments place their replicas one by one (issue 9 item 1): a job starts once its
min_replicas fit, later replicas are added as room frees, one that waits for its minimum does
not hold room from the jobs behind it, and a replica on a lost node is placed again while the
others keep serving."""

from __future__ import annotations

import pytest

from pocgrid.v1 import scheduler_pb2
from tests.conftest import wait_for
from tests.integration.test_placement import (
    ACME,
    EVALUATION,
    QUEUED,
    RUNNING,
    _get,
    _spec,
    _submit,
    _wait_state,
    mesh,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.integration

SERVING = scheduler_pb2.JOB_KIND_SERVING


def _serving(replicas: int, min_replicas: int = 0) -> scheduler_pb2.JobSpec:
    spec = _spec(kind=SERVING, replicas=replicas, min_replicas=min_replicas)
    spec.ClearField("batch")
    return spec


def _replicas(job: scheduler_pb2.Job) -> list[tuple[int, str]]:
    return sorted((a.replica, a.node_id) for a in job.assignments)


async def test_a_deployment_starts_with_its_minimum_and_adds_replicas_as_room_frees(
    mesh,  # noqa: F811
):
    await mesh.agent("npu-a", devices=2, speed=0.0)
    await mesh.agent("npu-b", devices=1, speed=0.0)
    stub = await mesh.start_scheduler()
    holder = await _submit(stub, _spec(kind=EVALUATION))
    await _wait_state(stub, holder.job_id, RUNNING)
    job = await _submit(stub, _serving(3, min_replicas=2))
    assert job.spec.min_replicas == 2
    running = await _wait_state(stub, job.job_id, RUNNING)
    # Two of three fit: it runs on them, each replica on a node of its own choosing.
    assert [r for r, _ in _replicas(running)] == [0, 1]
    assert {n for _, n in _replicas(running)} == {"npu-a", "npu-b"}
    assert "(2 of 3 replicas)" in running.state_reason
    await stub.CompleteJob(scheduler_pb2.CompleteJobRequest(job_id=holder.job_id), metadata=ACME)

    async def full() -> bool:
        return len((await _get(stub, job.job_id)).assignments) == 3

    await wait_for(full, within=15, what="the third replica added")
    now = await _get(stub, job.job_id)
    assert now.state == RUNNING and now.attempt == 1
    assert [r for r, _ in _replicas(now)] == [0, 1, 2]
    assert "(3 of 3 replicas)" in now.state_reason


async def test_a_deployment_short_of_its_minimum_waits_without_holding_room(mesh):  # noqa: F811
    await mesh.agent("npu-a", devices=2, speed=0.0)
    await mesh.agent("npu-b", devices=1, speed=0.0)
    stub = await mesh.start_scheduler()
    holder = await _submit(stub, _spec(kind=EVALUATION))
    await _wait_state(stub, holder.job_id, RUNNING)
    whole = await _submit(stub, _serving(3))  # min_replicas 0: all three
    assert whole.spec.min_replicas == 3

    async def short() -> bool:
        return (await _get(stub, whole.job_id)).pending_reason == "WaitingForGang"

    await wait_for(short, within=10, what="the deployment waiting for its minimum")
    waiting = await _get(stub, whole.job_id)
    assert waiting.state == QUEUED and not waiting.assignments
    assert "2 of the 3 replicas it needs to start fit now" in waiting.state_reason
    # The two devices it could not use are not held for it: a later job gets one at once.
    later = await _submit(stub, _spec(kind=EVALUATION))
    await _wait_state(stub, later.job_id, RUNNING)
    assert (await _get(stub, whole.job_id)).state == QUEUED


async def test_a_lost_replica_is_placed_again_while_the_others_keep_serving(mesh):  # noqa: F811
    await mesh.agent("npu-a", devices=1, speed=0.0)
    doomed = await mesh.agent("npu-b", devices=1, speed=0.0)
    stub = await mesh.start_scheduler()
    job = await _submit(stub, _serving(2, min_replicas=1))
    running = await _wait_state(stub, job.job_id, RUNNING)
    assert _replicas(running) == [(0, "npu-a"), (1, "npu-b")]
    await doomed.stop()

    async def dropped() -> bool:
        return _replicas(await _get(stub, job.job_id)) == [(0, "npu-a")]

    await wait_for(dropped, within=20, what="the lost replica released")
    now = await _get(stub, job.job_id)
    assert now.state == RUNNING and now.attempt == 1, now
    assert "1 replica(s) released, 1 of 2 serving" in now.state_reason
    await mesh.agent("npu-c", devices=1, speed=0.0)

    async def again() -> bool:
        return _replicas(await _get(stub, job.job_id)) == [(0, "npu-a"), (1, "npu-c")]

    await wait_for(again, within=20, what="the replica placed again")
    assert (await _get(stub, job.job_id)).attempt == 1
