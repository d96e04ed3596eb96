"""A service's background loops end when it stops, even when one swallows its
cancellation (as Python 3.11's asyncio.wait_for does when a reply and the cancel race)."""

from __future__ import annotations

import asyncio

from services.core.gauges import sample_forever
from services.core.service import cancel_and_reap


async def test_a_swallowed_cancellation_still_ends_the_loop() -> None:
    inside = asyncio.Event()
    samples = 0

    async def sample() -> None:
        nonlocal samples
        samples += 1
        inside.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return  # what a racing wait_for does: the reply wins, the cancel is lost

    task = asyncio.create_task(sample_forever("t", sample, 0.01))
    await inside.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done == {task}, "the sampler kept running after it was cancelled"
    assert task.cancelled()
    assert samples == 1


async def test_a_failing_sample_is_retried_at_the_next_tick() -> None:
    calls = 0
    recovered = asyncio.Event()

    async def sample() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("registry away")
        recovered.set()

    task = asyncio.create_task(sample_forever("t", sample, 0.001))
    await asyncio.wait_for(recovered.wait(), timeout=2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_a_stop_reaps_a_task_that_swallowed_its_cancellation() -> None:
    stubborn = asyncio.Event()

    async def swallow_once() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            stubborn.set()  # lost, as a racing wait_for loses it; the loop goes on
        await asyncio.sleep(10)

    async def well_behaved() -> None:
        await asyncio.sleep(10)

    tasks = [asyncio.create_task(swallow_once()), asyncio.create_task(well_behaved())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_reap(tasks, patience_s=0.05), timeout=2)
    assert stubborn.is_set()
    assert all(t.cancelled() for t in tasks)
