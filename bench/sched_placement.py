"""Placement decisions per second: 1,000 devices of 16 chip types, 10,000 queued jobs.

Goal: >= 5,000 placements/s. Two measurements per policy, each the median of ``RUNS`` seeded
repetitions (the machine is shared, so CPU time per placement is printed beside wall time):

- ``fill``: an empty pool and 10,000 queued jobs, one ``schedule()`` call. A decision is one
  queued job answered: placed, or told why it waits (its pending reason); placements/s counts
  only the placed ones.
- ``churn``: the filled pool; each round 1 % of the running jobs finish (released) and one
  ``schedule()`` call decides the whole remaining queue (about 9,000 jobs) again, placing what
  now fits: the live scheduler's steady state.

The jobs (seeded): 45 % a fraction of one device (10-90 %), 30 % one device, 15 % 2-4 devices,
10 % 8 devices on one node; 30 % name 1-3 allowed chip types; 8 tenants; priority 0-2, a third
preemptible; a speed per chip type drawn from 0.3-3. Run from the repository root:

    .venv/bin/python -m bench.sched_placement
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence

from pocgrid.catalog import default_catalog
from pocgrid.sched import POLICY_NAMES, Demand, Pool, make_policy

DEVICES = 1_000
CHIP_TYPES = 16
JOBS = 10_000
RUNS = 3
CHURN_ROUNDS = 20
GOAL = 5_000.0


def build_pool() -> Pool:
    chips = [c for c in default_catalog().chips if c.emulatable][:CHIP_TYPES]
    pool = Pool()
    for n in range(DEVICES // 8):
        chip = chips[n % len(chips)]
        pool.add_node(f"node-{n:03d}", chip.name, 8, chip.memory_gib or 64.0)
    return pool


def build_jobs(chips: Sequence[str], seed: int) -> list[Demand]:
    rng = random.Random(seed)
    jobs: list[Demand] = []
    for i in range(JOBS):
        r = rng.random()
        share, devices, single = 1000, 1, False
        if r < 0.45:
            share = rng.randrange(100, 901, 10)
        elif r < 0.75:
            pass
        elif r < 0.90:
            devices = rng.randint(2, 4)
            single = rng.random() < 0.5
        else:
            devices, single = 8, True
        allowed = (
            frozenset(rng.sample(chips, rng.randint(1, 3))) if rng.random() < 0.3 else frozenset()
        )
        jobs.append(
            Demand(
                job_id=f"j{i:05d}",
                tenant=f"t{rng.randrange(8)}",
                priority=rng.randrange(3),
                devices=devices,
                share_milli=share,
                memory_gib=rng.choice((0.0, 4.0, 8.0)) if share < 1000 else 0.0,
                chips=allowed,
                single_node=single,
                preemptible=rng.random() < 0.33,
                work=3600.0,
                speed={c: rng.uniform(0.3, 3.0) for c in chips},
                submitted_at=float(i),
            )
        )
    return jobs


def measure(name: str, seed: int) -> dict[str, float]:
    """One seeded run: CPU-time rates (the machine is shared; wall time is printed too)."""
    pool = build_pool()
    jobs = build_jobs(pool.chips, seed)
    by_id = {d.job_id: d for d in jobs}
    policy = make_policy(name, prices={c: 1.0 + i for i, c in enumerate(pool.chips)})
    w0, c0 = time.perf_counter(), time.process_time()
    dec = policy.schedule(jobs, pool, 0.0)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    out = {
        "fill_placed": float(len(dec.placements)),
        "fill_placements_per_s": len(dec.placements) / cpu,
        "fill_decisions_per_s": len(jobs) / cpu,
        "fill_wall_s": wall,
    }
    queue = {d.job_id: d for d in jobs if d.job_id not in pool.running}
    rng = random.Random(seed + 1)
    placed = decided = 0
    cpu = wall = 0.0
    for r in range(CHURN_ROUNDS):
        running = sorted(pool.running)
        for job_id in rng.sample(running, max(1, len(running) // 100)):
            pool.release(job_id)
        w0, c0 = time.perf_counter(), time.process_time()
        dec = policy.schedule(list(queue.values()), pool, float(r + 1))
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        decided += len(queue)
        for p in dec.placements:
            del queue[p.job_id]
        for pre in dec.preemptions:
            queue[pre.job_id] = by_id[pre.job_id]
        placed += len(dec.placements)
    out["churn_placed_per_round"] = placed / CHURN_ROUNDS
    out["churn_decisions_per_s"] = decided / cpu
    out["churn_round_ms"] = cpu / CHURN_ROUNDS * 1e3
    out["churn_wall_s"] = wall
    return out


def main() -> None:
    pool = build_pool()
    print(
        f"pool: {sum(1 for _ in pool.devices())} devices, {len(pool.chips)} chip types; "
        f"queue: {JOBS:,} jobs; median of {RUNS} seeded runs, rates per CPU second; "
        f"goal >= {GOAL:,.0f} placement decisions/s"
    )
    print(
        "| policy | fill: placed | fill: placements/s | fill: decisions/s | "
        "churn: placed per round | churn: decisions/s | churn: ms per round | goal |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in POLICY_NAMES:
        runs = [measure(name, seed) for seed in range(RUNS)]

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        ok = (
            "met"
            if min(med("fill_decisions_per_s"), med("churn_decisions_per_s")) >= GOAL
            else "missed"
        )
        print(
            f"| {name} | {med('fill_placed'):,.0f} | {med('fill_placements_per_s'):,.0f} | "
            f"{med('fill_decisions_per_s'):,.0f} | {med('churn_placed_per_round'):,.1f} | "
            f"{med('churn_decisions_per_s'):,.0f} | {med('churn_round_ms'):,.1f} | {ok} |"
        )


if __name__ == "__main__":
    main()
