"""The gauge sampler's loop ends when its service stops, even when a sample swallows the
cancellation (as Python 3.11's asyncio.wait_for does when a reply and the cancel race)."""

from __future__ import annotations

import asyncio

from services.core.gauges import sample_forever


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
