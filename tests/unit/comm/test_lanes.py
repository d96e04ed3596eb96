"""Shared-memory lanes: frames through the slots in order, flow control, refusals, the set-up
that leaves nothing behind in /dev/shm, and which reductions are fused into the next slot."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from pocgrid.comm import plans
from pocgrid.comm.communicator import Communicator, _fusable
from pocgrid.comm.errors import CommProtocolError, CommTimeoutError
from pocgrid.comm.topology import RankInfo, Topology
from pocgrid.comm.transport import (
    KIND_COLLECTIVE,
    LANE_MIN_BYTES,
    SHM_ENV,
    Connection,
    Lane,
    get_unique_id,
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
TOKEN = b"t" * 16
SLOT = 256 << 10


def _pair(slots: int, *, lane_b_to_a: bool = True, timeout_s: float = 5.0):
    """Connections a <-> b over loopback TCP; a sends to b through a lane of ``slots``."""
    listener = socket.create_server(("127.0.0.1", 0))
    sa = socket.create_connection(listener.getsockname())
    sb, _ = listener.accept()
    listener.close()
    out = Lane.create("test", slots, SLOT)
    assert out is not None
    back = Lane.open(out.path, slots, SLOT)
    assert back is not None
    out.unlink()
    a = Connection(sa, token=TOKEN, peer=1, describe_peer="b", timeout_s=timeout_s, out_lane=out)
    b = Connection(
        sb,
        token=TOKEN,
        peer=0,
        describe_peer="a",
        timeout_s=timeout_s,
        in_lane=back if lane_b_to_a else None,
    )
    return a, b


@pytest.fixture
def pair() -> Iterator[tuple[Connection, Connection]]:
    a, b = _pair(2)
    yield a, b
    a.close()
    b.close()


def _payload(n: int, seed: int) -> memoryview:
    return memoryview(np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8).data)


def test_large_payloads_go_through_slots_small_ones_inline(pair) -> None:
    a, b = pair
    sizes = [LANE_MIN_BYTES, 10, SLOT, SLOT + 1]  # lane, inline, lane, too big: inline
    items = [a.send(KIND_COLLECTIVE, 7, 0, _payload(n, n), part) for part, n in enumerate(sizes)]
    for part, n in enumerate(sizes):
        b.expect(KIND_COLLECTIVE, 7, 0, n, "test", part)
        slot = b.take()
        assert (slot is not None) == (LANE_MIN_BYTES <= n <= SLOT)
        got = bytearray(n)
        b.recv_into(memoryview(got), "test")
        assert bytes(got) == bytes(_payload(n, n))
    for item in items:
        a.wait_sent(item, "test")
    assert a.transport == "shm out/tcp in" and b.transport == "tcp out/shm in"


def test_the_sender_waits_for_a_free_slot(pair) -> None:
    a, b = pair
    items = [a.send(KIND_COLLECTIVE, 1, 0, _payload(SLOT, k), k) for k in range(3)]
    a.wait_sent(items[0], "test")
    a.wait_sent(items[1], "test")
    # Two slots, none consumed: the third frame cannot be written yet.
    assert not items[2].done.wait(0.3)
    b.expect(KIND_COLLECTIVE, 1, 0, SLOT, "test", 0)
    first = bytearray(SLOT)
    b.recv_into(memoryview(first), "test")  # frees slot 0
    a.wait_sent(items[2], "test")
    for k in (1, 2):
        b.expect(KIND_COLLECTIVE, 1, 0, SLOT, "test", k)
        got = bytearray(SLOT)
        b.recv_into(memoryview(got), "test")
        assert bytes(got) == bytes(_payload(SLOT, k))
    assert bytes(first) == bytes(_payload(SLOT, 0))


def test_a_claimed_slot_is_written_in_place_and_keeps_frame_order(pair) -> None:
    a, b = pair
    first = a.send(KIND_COLLECTIVE, 2, 0, _payload(SLOT, 1), 0)
    dst = a.claim(SLOT)
    assert dst is not None
    dst[...] = 5
    second = a.send_claimed(2, 0, SLOT, 1)
    for part, want in ((0, bytes(_payload(SLOT, 1))), (1, bytes([5]) * SLOT)):
        b.expect(KIND_COLLECTIVE, 2, 0, SLOT, "test", part)
        got = bytearray(SLOT)
        b.recv_into(memoryview(got), "test")
        assert bytes(got) == want
    a.wait_sent(first, "test")
    a.wait_sent(second, "test")
    # Both slots now hold frames not yet consumed: claim says so and does not wait.
    a.send(KIND_COLLECTIVE, 3, 0, _payload(SLOT, 2), 0)
    a.send(KIND_COLLECTIVE, 3, 0, _payload(SLOT, 3), 1)
    assert a.claim(SLOT) is None


def test_a_full_lane_times_out_the_sender() -> None:
    a, b = _pair(1, timeout_s=0.5)
    try:
        a.send(KIND_COLLECTIVE, 1, 0, _payload(SLOT, 0), 0)
        late = a.send(KIND_COLLECTIVE, 1, 0, _payload(SLOT, 1), 1)
        assert late.done.wait(5.0)
        assert isinstance(late.error, CommTimeoutError)
        assert "lane stayed full for 0.5 s" in str(late.error)
    finally:
        a.close()
        b.close()


def test_a_lane_frame_without_a_lane_is_a_protocol_error() -> None:
    a, b = _pair(2, lane_b_to_a=False)
    try:
        a.send(KIND_COLLECTIVE, 1, 0, _payload(SLOT, 0), 0)
        with pytest.raises(CommProtocolError, match="no lane"):
            b.expect(KIND_COLLECTIVE, 1, 0, SLOT, "test", 0)
    finally:
        a.close()
        b.close()


def _join_two(env_off: bool, monkeypatch: pytest.MonkeyPatch) -> list[Communicator]:
    if env_off:
        monkeypatch.setenv(SHM_ENV, "0")
    uid = get_unique_id()
    comms: list[Communicator | None] = [None, None]

    def join(r: int) -> None:
        comms[r] = Communicator.init_rank(uid, 2, r, chip="rtx-4090", timeout_s=10)

    threads = [threading.Thread(target=join, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert comms[0] is not None and comms[1] is not None
    return [comms[0], comms[1]]


@pytest.mark.parametrize("env_off", [False, True])
def test_set_up_leaves_no_file_and_lanes_can_be_turned_off(
    env_off: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    comms = _join_two(env_off, monkeypatch)
    try:
        want = "tcp" if env_off else "shm"
        assert comms[0].transports == {1: want} and comms[1].transports == {0: want}
        label = comms[0].uid.label
        assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"pgcx-{label}")]
        x = np.arange(1 << 20, dtype=np.float32)
        results: list[np.ndarray] = []

        def reduce(c: Communicator) -> None:
            results.append(c.all_reduce(x * (c.rank + 1)).output)

        t = threading.Thread(target=reduce, args=(comms[1],))
        t.start()
        reduce(comms[0])
        t.join()
        for got in results:
            np.testing.assert_array_equal(got, x * 3)
    finally:
        for c in comms:
            c.close()


def _mine(kind: str, algorithm: str, rank: int, n: int):
    topo = Topology(
        [
            RankInfo(0, "ascend-910b2", 8, "n0"),
            RankInfo(1, "ascend-910b2", 8, "n0"),
            RankInfo(2, "a100-80gb-sxm", 8, "n1"),
            RankInfo(3, "a100-80gb-sxm", 8, "n1"),
        ]
    )
    plan = plans.in_rounds(plans.build(topo, kind, algorithm, n, 4), (2 << 20) // 4)  # type: ignore[arg-type]
    return plan, plan.transfers_of(rank)


def test_only_pass_through_partial_sums_are_fused() -> None:
    n = 4 * (8 << 20) // 4  # 32 MB: 4 chunks of 4 rounds
    plan, mine = _mine("reduce_scatter", "ring", 1, n)
    count = n // 4
    fused = _fusable(plan, mine, (count, 2 * count))
    reduced = [(i, t.lo, t.hi) for i, _, recvs in mine for t in recvs if t.reduce]
    # Of the 3 reduced receives of each round, the last (this rank's own chunk) stays.
    assert len(reduced) == 3 * 4 and len(fused) == 2 * 4
    assert all(not (count <= lo < 2 * count) for _, lo, _ in fused)
    # all-reduce: the reduce-scatter phase's partial sums, overwritten by the all-gather.
    plan, mine = _mine("all_reduce", "ring", 1, n)
    fused = _fusable(plan, mine, None)
    reduced = [(i, t.lo, t.hi) for i, _, recvs in mine for t in recvs if t.reduce]
    assert len(reduced) == 3 * 4 and len(fused) == 2 * 4
    # Hierarchical ranges nest (no rounds): nothing is fused.
    plan, mine = _mine("all_reduce", "hierarchical", 1, n)
    assert _fusable(plan, mine, None) == frozenset()
