"""Every policy of the library through the live scheduler, and peak shaving live.

One pool for the policies, chosen so that each places the same two jobs somewhere different
(node ids sort as the registry lists them, which is the pool's order):

    a-kunlun  kunlun-r200 x1   slow (0.51 s a step), dear for its speed
    b-npu     ascend-910b2 x2  the fastest allowed chip type (0.20 s a step)
    c-npu     ascend-910b2 x1
    d-npu     ascend-910b2 x3
    e-mlu     mlu370-x8 x1     slow (0.44 s) but the cheapest per step (default price book)

Job 1 asks for one ascend-910b2 (node choice: fifo the first node, binpack the fullest that
fits, spread the emptiest); job 2, batch work allowed on all three chip types (chip choice: the
speed-blind policies take the first chip type in pool order, hetero the fastest, cost the
cheapest run of the job's work, so cost only differs from hetero when it has prices).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pocgrid.v1 import scheduler_pb2
from tests.conftest import wait_for
from tests.integration.test_placement import (
    EVALUATION,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    _events_until,
    _get,
    _job_event_reasons,
    _spec,
    _submit,
    _wait_state,
    mesh,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.integration

NPU = "ascend-910b2"
ANY3 = ["kunlun-r200", NPU, "mlu370-x8"]
#: (node of job 1, node of job 2) per policy.
EXPECTED = {
    "fifo": ("b-npu", "a-kunlun"),
    "binpack": ("c-npu", "a-kunlun"),
    "spread": ("d-npu", "a-kunlun"),
    "hetero": ("c-npu", "b-npu"),
    "cost": ("c-npu", "e-mlu"),
}


async def _placed_on(url: str, job: scheduler_pb2.Job) -> str:
    """The reason of the job's first RUNNING event: the policy, the chip and the devices."""
    await _events_until(url, job.job_id, f"job/{job.job_id}/1/running")
    return dict(await _job_event_reasons(url, job.job_id))[f"job/{job.job_id}/1/running"]


@pytest.mark.parametrize("policy", list(EXPECTED))
async def test_each_policy_places_through_the_live_scheduler(mesh, nats_server, policy):  # noqa: F811
    await mesh.agent("a-kunlun", devices=1, speed=0.0, chip="kunlun-r200")
    await mesh.agent("b-npu", devices=2, speed=0.0)
    await mesh.agent("c-npu", devices=1, speed=0.0)
    await mesh.agent("d-npu", devices=3, speed=0.0)
    await mesh.agent("e-mlu", devices=1, speed=0.0, chip="mlu370-x8")
    stub = await mesh.start_scheduler(scheduler_policy=policy)
    first = await _submit(stub, _spec(kind=EVALUATION))
    first = await _wait_state(stub, first.job_id, RUNNING)
    second = await _submit(stub, _spec(chip="", allowed_chips=ANY3))
    await _wait_state(stub, second.job_id, SUCCEEDED)
    one, two = EXPECTED[policy]
    assert [a.node_id for a in first.assignments] == [one]
    reason = await _placed_on(nats_server.url, second)
    assert reason.startswith(f"placed by {policy} on "), reason
    assert reason.endswith(f": {two}[0]"), reason


def _tariff(tmp_path: Path, now_period: str, caps: dict[str, float]) -> str:
    """A tariff whose current hour and the next are ``now_period`` (so the test does not
    straddle a change of period), the other period from two hours on."""
    other = "valley" if now_period == "peak" else "peak"
    hour = datetime.now(UTC).hour
    doc = {
        "hours": {str(hour): now_period, str((hour + 2) % 24): other},
        "multipliers": {"peak": "1.5", "valley": "0.5"},
        "cap_devices": caps,
    }
    path = tmp_path / "tariff.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def _deadline(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return ts


async def test_deferrable_work_waits_under_the_peak_cap_and_starts_when_under_it(
    mesh,  # noqa: F811
    tmp_path,
):
    """Peak hour, cap 1 busy device, three idle devices: firm work is not shaved, deferrable
    work waits although devices are idle, work whose deadline cannot wait starts at once, and
    the held job starts when the load drops under the cap."""
    await mesh.agent("npu-a", devices=3, speed=0.0)
    stub = await mesh.start_scheduler(
        scheduler_tariff_file=_tariff(tmp_path, "peak", {"peak": 1, "valley": 3})
    )
    firm = await _submit(stub, _spec(kind=EVALUATION))
    await _wait_state(stub, firm.job_id, RUNNING)
    held = await _submit(stub, _spec(deadline=_deadline(6 * 3600)))

    async def deferred() -> bool:
        return (await _get(stub, held.job_id)).pending_reason == "Deferred"

    await wait_for(deferred, within=10, what="the deferrable job held")
    now = await _get(stub, held.job_id)
    assert now.state == QUEUED and "load cap of 1 busy devices" in now.state_reason, now
    # About 10 s of work due in 5 s: waiting would miss the deadline, so it starts now.
    urgent = await _submit(
        stub,
        _spec(deadline=_deadline(5), batch=scheduler_pb2.BatchWork(steps=50)),
    )
    await _wait_state(stub, urgent.job_id, SUCCEEDED)
    assert (await _get(stub, held.job_id)).state == QUEUED
    await stub.CompleteJob(
        scheduler_pb2.CompleteJobRequest(job_id=firm.job_id),
        metadata=(("x-pocgrid-tenant", "acme"),),
    )
    done = await _wait_state(stub, held.job_id, SUCCEEDED)
    assert done.attempt == 1 and done.steps_done == 3


async def test_deferrable_work_fills_the_valley_at_once(mesh, tmp_path):  # noqa: F811
    await mesh.agent("npu-a", devices=3, speed=0.0)
    stub = await mesh.start_scheduler(
        scheduler_tariff_file=_tariff(tmp_path, "valley", {"peak": 0, "valley": 3})
    )
    firm = await _submit(stub, _spec(kind=EVALUATION))
    await _wait_state(stub, firm.job_id, RUNNING)
    held = await _submit(stub, _spec(deadline=_deadline(6 * 3600)))
    done = await _wait_state(stub, held.job_id, SUCCEEDED)
    assert (
        "placed by fifo+shaping"
        in (
            dict(await _job_event_reasons(mesh.common.nats_url, held.job_id))[
                f"job/{held.job_id}/1/running"
            ]
        )
    )
    assert done.steps_done == 3
