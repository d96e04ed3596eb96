"""A rank that dies or stalls makes the others fail clearly within the timeout; two
communicators on the same processes keep their data apart."""

from __future__ import annotations

from pocgrid.comm.launch import RankSpec, run_ranks
from pocgrid.comm.transport import get_unique_id

JOBS = "tests.unit.comm.rank_jobs"
SPECS = [
    RankSpec("ascend-910b2"),
    RankSpec("a100-80gb-sxm"),
    RankSpec("ascend-910b2"),
    RankSpec("a100-80gb-sxm"),
]


def test_rank_that_dies_mid_collective_fails_the_others_within_timeout() -> None:
    timeout = 5.0
    outcomes = run_ranks(
        f"{JOBS}:die_mid_collective",
        SPECS,
        kwargs={"victim": 2, "n": 4 * 1024 * 1024, "delay_s": 0.3},
        comm_timeout_s=timeout,
        timeout_s=120,
    )
    assert outcomes[2].exitcode == 17
    for o in outcomes:
        if o.rank == 2:
            continue
        assert o.ok, o.error
        err, after = o.value["error"], o.value["after_s"]
        assert err, f"rank {o.rank} did not notice"
        # Fails fast (closed socket or a peer's abort), never waits out the timeout.
        assert after < timeout, (after, err)
        assert err.startswith(("PeerLostError", "CommAbortedError")), err
        assert "rank 2" in err or "aborted" in err, err
        assert "all_reduce" in err


def test_stalled_rank_times_out_the_others() -> None:
    timeout = 2.0
    outcomes = run_ranks(
        f"{JOBS}:stall_mid_collective",
        SPECS[:3],
        kwargs={"victim": 1},
        comm_timeout_s=timeout,
        timeout_s=120,
    )
    for o in outcomes:
        assert o.ok, o.error
        if o.rank == 1:
            continue
        err, after = o.value["error"], o.value["after_s"]
        assert err.startswith(("CommTimeoutError", "CommAbortedError")), err
        assert after < timeout * 3, after


def test_two_communicators_on_the_same_processes_do_not_mix() -> None:
    uid_b = get_unique_id().encode()
    outcomes = run_ranks(
        f"{JOBS}:two_communicators",
        SPECS,
        kwargs={"uid_b": uid_b, "rounds": 12},
        timeout_s=120,
    )
    for o in outcomes:
        assert o.ok, o.error
        assert o.value["failures"] == []
