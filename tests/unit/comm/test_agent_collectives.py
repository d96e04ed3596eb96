"""Agents run collectives on their vendor runtime: memory charged, virtual time on streams."""

from __future__ import annotations

from pocgrid.comm.launch import RankSpec, run_ranks


def test_agent_collectives_charge_memory_and_streams_and_report_vendor_oom() -> None:
    specs = [RankSpec("ascend-910b2", 2), RankSpec("a100-80gb-sxm", 2), RankSpec("mlu370-x8", 1)]
    outcomes = run_ranks(
        "tests.unit.comm.rank_jobs:agent_collectives",
        specs,
        kwargs={"starve": 2},
        comm_timeout_s=20,
        timeout_s=120,
    )
    for o in outcomes:
        assert o.ok, o.error
    values = [o.value for o in outcomes]
    assert [v["library"] for v in values] == ["HCCL", "NCCL", "CNCL"]
    for v in values:
        assert v["sum"] == 6.0
        assert v["busy_s"] >= v["virtual_s"] > 0
        assert v["labels"][0].startswith(v["library"] + " all_reduce")
        assert v["freed"]
    starved = values[2]["second"]
    assert starved.startswith("DeviceOutOfMemory"), starved
    for v in values[:2]:
        assert v["second"].startswith("CommAbortedError"), v["second"]
        assert "CNCL all_reduce" in v["second"]
