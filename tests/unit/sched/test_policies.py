"""Every policy on a small pool whose right answer is worked out by hand."""

from __future__ import annotations

import pytest

from pocgrid.sched import WHOLE, Demand, Pool, make_policy
from pocgrid.sched.policies.cost import Cost
from pocgrid.sched.policies.hetero import Hetero


def hand_pool() -> Pool:
    """slow: 2 nodes x 2 devices; fast: 1 node x 4 devices (both 64 GiB)."""
    pool = Pool()
    pool.add_node("s1", "slow", 2, 64.0)
    pool.add_node("s2", "slow", 2, 64.0)
    pool.add_node("f1", "fast", 4, 64.0)
    return pool


def demand(job_id: str, t: float = 0.0, **kw: object) -> Demand:
    kw.setdefault("tenant", "a")
    return Demand(job_id=job_id, submitted_at=t, **kw)  # type: ignore[arg-type]


def test_fifo_takes_pool_order_blind_to_speed() -> None:
    pool = hand_pool()
    d = demand("j", speed={"slow": 0.5, "fast": 2.0})
    (p,) = make_policy("fifo").schedule([d], pool, 0.0).placements
    assert p.chip == "slow" and p.slots[0].node == "s1"


def test_hetero_takes_the_fastest_chip_for_each_job_and_falls_back_when_full() -> None:
    pool = hand_pool()
    compute = demand("c", speed={"slow": 0.5, "fast": 2.0}, devices=4, single_node=True)
    memory = demand("m", t=1, speed={"slow": 1.5, "fast": 1.0})
    dec = Hetero().schedule([compute, memory], pool, 0.0)
    chips = {p.job_id: p.chip for p in dec.placements}
    assert chips == {"c": "fast", "m": "slow"}
    late = demand("late", t=2, speed={"slow": 0.5, "fast": 2.0})
    (p,) = Hetero().schedule([late], pool, 0.0).placements
    assert p.chip == "slow"  # fast is full: the slower chip rather than a wait


def test_hetero_fair_share_alternates_tenants() -> None:
    pool = Pool()
    pool.add_node("n", "c", 4, 64.0)
    many = [demand(f"a{i}", t=i, tenant="a") for i in range(4)]
    few = [demand(f"b{i}", t=10 + i, tenant="b") for i in range(2)]
    dec = Hetero().schedule([*many, *few], pool, 0.0)
    # by arrival alone tenant a would take all 4; fair share gives b two turns
    assert sorted(p.job_id for p in dec.placements) == ["a0", "a1", "b0", "b1"]
    dec = make_policy("fifo").schedule([*many, *few], Pool_with(4), 0.0)
    assert sorted(p.job_id for p in dec.placements) == ["a0", "a1", "a2", "a3"]


def Pool_with(n: int) -> Pool:
    pool = Pool()
    pool.add_node("n", "c", n, 64.0)
    return pool


def test_binpack_fills_the_fullest_node_and_spread_the_emptiest() -> None:
    pool = hand_pool()
    pool.reserve(demand("r", chips=frozenset({"slow"})), _on(pool, "s2", 0), 0.0)
    d = demand("j", chips=frozenset({"slow"}))
    (p,) = make_policy("binpack").schedule([d], pool, 0.0).placements
    assert p.slots[0].node == "s2"  # s2 has one idle left: the fullest that fits
    pool.release("j")
    (p,) = make_policy("spread").schedule([d], pool, 0.0).placements
    assert p.slots[0].node == "s1"


def test_binpack_and_spread_at_device_level_for_fractions() -> None:
    pool = Pool()
    pool.add_node("n", "c", 2, 64.0)
    pool.reserve(demand("r", share_milli=500), _slot(pool, "n", 0, 500), 0.0)
    frac = demand("f", share_milli=300)
    (p,) = make_policy("binpack").schedule([frac], pool, 0.0).placements
    assert p.slots[0].index == 0  # the half-used device: tightest fit
    pool.release("f")
    (p,) = make_policy("spread").schedule([frac], pool, 0.0).placements
    assert p.slots[0].index == 1  # the idle device: loosest


def test_cost_takes_the_cheapest_chip_that_meets_the_deadline() -> None:
    pool = hand_pool()
    prices = {"slow": 1.0, "fast": 3.0}
    # 3,600 s of work: slow (speed 0.5) takes 2 h and costs 2.0; fast (2.0) 0.5 h and 1.5
    d = demand("j", work=3600.0, speed={"slow": 0.5, "fast": 2.0})
    policy = Cost(prices)
    assert policy.job_cost(d, "slow") == pytest.approx(2.0)
    assert policy.job_cost(d, "fast") == pytest.approx(1.5)
    (p,) = policy.schedule([d], pool, 0.0).placements
    assert p.chip == "fast"
    # with speed 1.0 on slow it costs 1.0 there: cheapest, and in time for a 2 h deadline
    d2 = demand("k", work=3600.0, speed={"slow": 1.0, "fast": 2.0}, deadline=7200.0)
    (p,) = policy.schedule([d2], pool, 0.0).placements
    assert p.chip == "slow"
    # a 45-minute deadline only fast meets, dearer or not
    d3 = demand("l", work=3600.0, speed={"slow": 1.0, "fast": 2.0}, deadline=2700.0)
    (p,) = policy.schedule([d3], pool, 0.0).placements
    assert p.chip == "fast"


def _on(pool: Pool, node: str, index: int):
    from pocgrid.sched import Placement, Slot

    return Placement("r", pool.device((node, index)).chip, (Slot(node, index, WHOLE, 64.0),))


def _slot(pool: Pool, node: str, index: int, share: int):
    from pocgrid.sched import Placement, Slot

    return Placement("r", pool.device((node, index)).chip, (Slot(node, index, share, 0.0),))
