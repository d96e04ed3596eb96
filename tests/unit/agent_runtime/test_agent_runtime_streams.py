"""Virtual-time streams: ordering, overlap, synchronization and determinism."""

from __future__ import annotations

import math

import pytest

from pocgrid.catalog import Catalog
from services.agent.runtime import DeviceHealth, VendorRuntime, create_runtime


@pytest.fixture
def rt(catalog: Catalog) -> VendorRuntime:
    return create_runtime(catalog.chip("ascend-910b2"), 2)


def test_work_on_one_stream_runs_in_order(rt: VendorRuntime) -> None:
    stream = rt.streams[0]
    assert stream.submit(0.5, "matmul") == 0.5
    assert stream.submit(0.25, "softmax") == 0.75
    assert rt.now == 0.0, "submitting is asynchronous: host time does not move"
    assert [(w.label, w.start, w.end) for w in stream.history] == [
        ("matmul", 0.0, 0.5),
        ("softmax", 0.5, 0.75),
    ]


def test_streams_of_a_device_overlap(rt: VendorRuntime) -> None:
    compute = rt.streams[0]
    copy = rt.create_stream(0, "h2d")
    assert compute.submit(1.0, "prefill") == 1.0
    assert copy.submit(0.4, "kv-copy") == 0.4
    assert rt.synchronize(0) == 1.0


def test_synchronize_advances_host_time_and_later_work_starts_from_it(
    rt: VendorRuntime,
) -> None:
    stream = rt.streams[1]
    stream.submit(0.2, "a")
    assert not stream.query()
    assert stream.synchronize() == 0.2
    assert stream.query()
    assert rt.now == 0.2
    # Device 0 was idle; its next work starts at the current host time, not at zero.
    assert rt.streams[0].submit(0.1, "b") == pytest.approx(0.3)


def test_wait_for_orders_work_across_streams(rt: VendorRuntime) -> None:
    producer = rt.streams[0]
    consumer = rt.streams[1]
    producer.submit(0.7, "allreduce")
    consumer.wait_for(producer)
    assert consumer.submit(0.1, "next-layer") == pytest.approx(0.8)


def test_timing_is_deterministic(catalog: Catalog) -> None:
    def run() -> list[tuple[str, int, int]]:
        rt = create_runtime(catalog.chip("mi300x"), 2)
        side = rt.create_stream(1, "side")
        for step in range(1000):
            rt.streams[step % 2].submit(1e-4 * (step % 7 + 1), f"k{step}")
            if step % 10 == 0:
                side.submit(3.3e-5, f"s{step}")
            if step % 97 == 0:
                rt.synchronize()
        rt.synchronize()
        items = [*rt.streams[0].history, *rt.streams[1].history, *side.history]
        return [(w.label, w.start_ns, w.end_ns) for w in items]

    first = run()
    assert first == run()
    assert first[-1][2] > 0


def test_many_small_durations_do_not_drift(rt: VendorRuntime) -> None:
    stream = rt.streams[0]
    for _ in range(10_000):
        stream.submit(0.0001)
    # Integer-nanosecond bookkeeping: exactly one second, no float accumulation error.
    assert stream.synchronize() == 1.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_invalid_durations_are_rejected_without_queueing(rt: VendorRuntime, bad: float) -> None:
    with pytest.raises(ValueError, match="duration_s"):
        rt.streams[0].submit(bad)
    assert rt.streams[0].history == ()


def test_failed_device_rejects_submissions_but_other_devices_run(rt: VendorRuntime) -> None:
    rt.set_health(1, DeviceHealth.FAILED, "heartbeat lost")
    with pytest.raises(Exception, match="heartbeat lost"):
        rt.streams[1].submit(0.1)
    assert rt.streams[1].history == ()
    assert rt.streams[0].submit(0.1) == 0.1
