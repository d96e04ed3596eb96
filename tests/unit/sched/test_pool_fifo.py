"""The scheduling library's first pieces: the pool's index, fifo, gang, quotas, preemption."""

from __future__ import annotations

import pytest

from pocgrid.sched import (
    WHOLE,
    Demand,
    DemandError,
    PendingCode,
    Pool,
    PoolError,
    PreemptionCause,
    Quota,
    QuotaBook,
    make_policy,
)
from pocgrid.sched.policies.fifo import Fifo


def pool_of(*nodes: tuple[str, str, int]) -> Pool:
    pool = Pool()
    for node, chip, n in nodes:
        pool.add_node(node, chip, n, 64.0)
    return pool


def job(job_id: str, t: float = 0.0, **kw: object) -> Demand:
    kw.setdefault("tenant", "a")
    return Demand(job_id=job_id, submitted_at=t, **kw)  # type: ignore[arg-type]


def test_demand_rules_name_the_field() -> None:
    with pytest.raises(DemandError, match="devices: must be 1 for a fraction"):
        Demand("j", "a", devices=2, share_milli=500)
    with pytest.raises(DemandError, match="share_milli"):
        Demand("j", "a", share_milli=0)
    with pytest.raises(DemandError, match="deadline: must be set for deferrable"):
        Demand("j", "a", deferrable=True)
    with pytest.raises(DemandError, match=r"speed\[x\]"):
        Demand("j", "a", speed={"x": 0.0})


def test_reserve_and_release_keep_the_index_true() -> None:
    pool = pool_of(("n1", "c", 2))
    p = Fifo()
    d1 = job("f1", share_milli=300, memory_gib=10)
    dec = p.schedule([d1], pool, 0.0)
    (pl,) = dec.placements
    assert pool.free_levels("c") == [700, WHOLE]
    assert pool.device(pl.slots[0].key).memory_free_gib == pytest.approx(54.0)
    # the tightest fit: the next fraction goes on the partly used device
    dec = p.schedule([job("f2", share_milli=600)], pool, 0.0)
    assert dec.placements[0].slots[0].key == pl.slots[0].key
    assert pool.free_levels("c") == [100, WHOLE]
    pool.release("f1")
    pool.release("f2")
    assert pool.free_levels("c") == [WHOLE]
    assert pool.whole_free("c") == 2 and pool.used_milli == 0
    with pytest.raises(PoolError, match="holds no devices"):
        pool.release("f1")


def test_fifo_order_priority_then_arrival_and_best_effort() -> None:
    pool = pool_of(("n1", "c", 2))
    q = [
        job("late", t=5),
        job("big", t=1, devices=3),  # never fits: does not block the others
        job("early", t=2),
        job("urgent", t=9, priority=5),
    ]
    dec = make_policy("fifo").schedule(q, pool, 10.0)
    assert [p.job_id for p in dec.placements] == ["urgent", "early"]
    assert dec.pending["big"].code is PendingCode.NEVER_FITS
    assert "at most 2" in dec.pending["big"].message
    assert dec.pending["late"].code is PendingCode.NO_CAPACITY


def test_strict_fifo_holds_everyone_behind_a_waiting_job() -> None:
    pool = pool_of(("n1", "c", 2))
    pool.reserve(job("r", devices=1), make_placement(pool, "r", 1), 0.0)
    q = [job("pair", t=1, devices=2), job("single", t=2)]
    dec = Fifo(strict=True).schedule(q, pool, 3.0)
    assert dec.placements == ()
    assert dec.pending["single"].code is PendingCode.BEHIND
    dec = Fifo().schedule(q, pool, 3.0)
    assert [p.job_id for p in dec.placements] == ["single"]


def make_placement(pool: Pool, job_id: str, n: int):
    from pocgrid.sched import fit

    pl = fit.find(Demand(job_id, "x", devices=n), pool.chips[0], pool)
    assert pl is not None
    return pl


def test_unknown_chip_never_fits() -> None:
    pool = pool_of(("n1", "c", 2))
    dec = Fifo().schedule([job("j", chips=frozenset({"nope"}))], pool, 0.0)
    assert dec.pending["j"].code is PendingCode.NEVER_FITS
    assert "nope" in dec.pending["j"].message


def test_gang_never_starts_partially() -> None:
    # 4 idle devices, 2 on each node; a single-node gang of 3 must wait, never take 2 + 1
    pool = pool_of(("n1", "c", 4), ("n2", "c", 2))
    pool.reserve(job("r", devices=2), make_placement(pool, "r", 2), 0.0)
    gang = job("g", devices=3, single_node=True)
    dec = Fifo().schedule([gang], pool, 1.0)
    assert dec.placements == ()
    assert dec.pending["g"].code is PendingCode.GANG
    assert "at most 2 on one node" in dec.pending["g"].message
    assert "g" not in pool.running
    assert pool.whole_free("c") == 4
    # across nodes it may go, and then with all three at once
    spread = job("s", devices=3)
    dec = Fifo().schedule([spread], pool, 1.0)
    (pl,) = dec.placements
    assert len(pl.slots) == 3 and len(set(s.key for s in pl.slots)) == 3
    assert pool.whole_free("c") == 1


def test_gang_of_one_chip_type_only() -> None:
    # 2 idle of chip a and 2 idle of chip b: a gang of 3 cannot mix them
    pool = pool_of(("n1", "a", 2), ("n2", "b", 2))
    dec = Fifo().schedule([job("g", devices=3)], pool, 0.0)
    assert dec.placements == ()
    assert dec.pending["g"].code is PendingCode.NEVER_FITS


def test_tenant_over_quota_waits_while_others_have_work_and_borrows_when_they_are_idle() -> None:
    pool = pool_of(("n1", "c", 4))
    book = QuotaBook({"a": Quota(2 * WHOLE), "b": Quota(2 * WHOLE)})
    policy = Fifo(book)
    a_jobs = [job(f"a{i}", t=i, tenant="a") for i in range(4)]
    b_job = job("b0", t=0.5, tenant="b")
    # b has work waiting: a gets its guarantee (2) and b its own; a's extra jobs wait on quota
    dec = policy.schedule([*a_jobs, b_job], pool, 0.0)
    assert sorted(p.job_id for p in dec.placements) == ["a0", "a1", "b0"]
    assert dec.pending["a2"].code is PendingCode.QUOTA
    assert "guaranteed to tenants with work waiting" in dec.pending["a2"].message
    # b has nothing more waiting: its idle quota (1 device) is lent to a
    dec = policy.schedule(a_jobs[2:], pool, 1.0)
    assert [p.job_id for p in dec.placements] == ["a2"]
    assert book.borrowed_milli("a", pool) == WHOLE


def test_borrowing_limit() -> None:
    pool = pool_of(("n1", "c", 4))
    book = QuotaBook({"a": Quota(1 * WHOLE, borrow_limit_milli=1 * WHOLE)})
    dec = Fifo(book).schedule([job(f"a{i}", t=i) for i in range(4)], pool, 0.0)
    assert len(dec.placements) == 2
    assert "borrowing limit is 1" in dec.pending["a2"].message


def test_reclaim_preempts_a_borrower_for_its_owner() -> None:
    pool = pool_of(("n1", "c", 2))
    book = QuotaBook({"a": Quota(1 * WHOLE), "b": Quota(1 * WHOLE)})
    policy = Fifo(book)
    dec = policy.schedule(
        [job("a0", tenant="a", preemptible=True), job("a1", t=1, tenant="a", preemptible=True)],
        pool,
        0.0,
    )
    assert len(dec.placements) == 2  # a borrows b's idle guarantee
    dec = policy.schedule([job("b0", t=2, tenant="b")], pool, 3.0)
    assert [p.job_id for p in dec.placements] == ["b0"]
    (pre,) = dec.preemptions
    assert pre.job_id == "a1" and pre.cause is PreemptionCause.RECLAIM  # the latest started
    assert set(pool.running) == {"a0", "b0"}


def test_priority_preempts_only_preemptible_work_and_only_as_much_as_needed() -> None:
    pool = pool_of(("n1", "c", 3))
    policy = Fifo()
    policy.schedule(
        [
            job("keep", t=0),  # not preemptible
            job("be1", t=1, preemptible=True),
            job("be2", t=2, preemptible=True),
        ],
        pool,
        0.0,
    )
    dec = policy.schedule([job("hi", t=3, priority=10)], pool, 5.0)
    assert [p.job_id for p in dec.placements] == ["hi"]
    assert [p.job_id for p in dec.preemptions] == ["be2"]
    assert set(pool.running) == {"keep", "be1", "hi"}
    # equal priority never preempts
    dec = policy.schedule([job("same", t=4)], pool, 6.0)
    assert dec.preemptions == () and dec.pending["same"].code is PendingCode.NO_CAPACITY
