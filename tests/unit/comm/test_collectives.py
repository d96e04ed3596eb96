"""Every collective across real processes of different vendors gives numpy's exact result."""

from __future__ import annotations

import pytest

from pocgrid.comm.launch import RankSpec, run_ranks
from pocgrid.comm.transport import SHM_ENV

JOBS = "tests.unit.comm.rank_jobs"
MIXED_4 = [
    RankSpec("ascend-910b2", 8),
    RankSpec("a100-80gb-sxm", 8),
    RankSpec("ascend-910b2", 8),
    RankSpec("mlu370-x8", 4),
]
MB64 = 64 * 1024 * 1024 // 4
BIG_KINDS = ["all_reduce", "reduce_scatter", "all_gather", "broadcast"]


def _ok(outcomes):
    for o in outcomes:
        assert o.ok, f"rank {o.rank}: {o.error_type}: {o.error}"
    return [o.value for o in outcomes]


def test_four_ranks_three_vendors_sizes_up_to_64mb() -> None:
    values = _ok(
        run_ranks(
            f"{JOBS}:check_collectives",
            MIXED_4,
            kwargs={"sizes": [1, 2, 5, 1000, 65537], "big": MB64, "big_kinds": BIG_KINDS},
            comm_timeout_s=60,
            timeout_s=400,
        )
    )
    for v in values:
        assert v["failures"] == []
        assert v["transports"] == ["shm"]  # one host: large payloads through shared memory
    algos = set(values[0]["algorithms"])
    assert {"all_reduce:ring", "all_reduce:tree", "all_reduce:hierarchical"} <= algos
    assert {"reduce_scatter:ring", "all_gather:ring", "broadcast:pipeline"} <= algos


@pytest.mark.parametrize(("nranks", "transport"), [(3, "shm"), (5, "shm"), (3, "tcp"), (4, "tcp")])
def test_odd_rank_counts(nranks: int, transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Odd rank counts, over shared-memory lanes (same host) and over TCP alone (lanes off,
    as between hosts): the same exact results on both paths."""
    if transport == "tcp":
        monkeypatch.setenv(SHM_ENV, "0")  # the rank processes inherit it
    chips = ["rtx-4090", "bi-v100", "mtt-s4000", "bi-v100", "rtx-4090"]
    specs = [RankSpec(c) for c in chips[:nranks]]
    values = _ok(
        run_ranks(
            f"{JOBS}:check_collectives",
            specs,
            # 12 MB: several rounds of 2 MiB per chunk even on 5 ranks.
            kwargs={"sizes": [1, 3, 7, 4099], "big": 3 << 20, "big_kinds": BIG_KINDS},
            timeout_s=240,
        )
    )
    for v in values:
        assert v["failures"] == []
        assert v["transports"] == [transport]
