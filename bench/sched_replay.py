"""Every policy on the Alibaba trace (openb_pod_list_default.csv on its node list), and peak
shaving on it and on a two-week trace with a daily cycle, in one run.

Prints one Markdown table (every ``--json`` key of ``pocgrid sched replay``, plus the CPU
seconds of each replay; goal <= 30 s each) and the ratios the goals are about:

- hetero's average JCT over fifo's (goal <= 0.6);
- peak shaving: peak-to-average with and without it (goal: >= 30 % lower), and the deadlines
  missed with shaping that the same policy without it met (goal: none).

Shaping uses ``bench/data/tariff_cn_tou.json`` (time-of-use hours and prices) with a load cap
set per replay: 1.05 x the average busy devices of the same replay without shaping, in every
period (a flat line at the average is the best any shaping could reach; the 5 % leaves room
for the work that cannot be moved). The daily-cycle trace is ``bench/sched_diurnal.py``'s,
written to a temporary folder. Run from the repository root (matplotlib not needed):

    .venv/bin/python -m bench.sched_replay [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import sched_diurnal
from pocgrid.price_book import card_hour_prices
from pocgrid.sched import POLICY_NAMES, make_policy
from pocgrid.sched.shaping import Shaped
from pocgrid.sched.sim import EPOCH, RESULT_KEYS, Result, Simulator
from pocgrid.sched.trace import read_trace
from pocgrid.tariff import FLAT_RATE, LoadCap, Period, TimeOfUse, parse_tariff

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "data" / "traces" / "alibaba-gpu-v2023"
TARIFF = REPO / "bench" / "data" / "tariff_cn_tou.json"
CAP_OVER_MEAN = 1.05
GOAL_S = 30.0


@dataclass(frozen=True)
class Run:
    label: str
    trace: str
    result: Result
    cpu_s: float
    wall_s: float


def replay(
    pods: Path,
    nodes: Path,
    policy: str,
    label: str,
    trace: str,
    tariff: TimeOfUse = FLAT_RATE,
    cap: LoadCap | None = None,
) -> Run:
    w0, c0 = time.perf_counter(), time.process_time()
    loaded = read_trace(pods, nodes)
    prices = card_hour_prices(loaded.pool.chips)
    base = make_policy(policy, prices=prices)
    sim_policy = base if cap is None else Shaped(base, tariff, cap, epoch=EPOCH)
    result = Simulator(loaded.pool, sim_policy, loaded.demands, prices=prices, tariff=tariff).run()
    return Run(label, trace, result, time.process_time() - c0, time.perf_counter() - w0)


def shaped(pods: Path, nodes: Path, policy: str, trace: str, unshaped: Run) -> Run:
    tou = parse_tariff(TARIFF.read_text(encoding="utf-8")).time_of_use
    load = unshaped.result.hourly_load
    mean = sum(load) / len(load)
    cap = LoadCap({p: round(CAP_OVER_MEAN * mean, 1) for p in Period})
    run = replay(pods, nodes, policy, f"{policy}+shaping", trace, tou, cap)
    return run


def missed_newly(shaped_run: Run, plain: Run) -> int:
    """Deadlines missed with shaping that the same policy without shaping met."""
    n = 0
    for job_id, rec in shaped_run.result.records.items():
        deadline = rec.demand.deadline
        if deadline is None:
            continue
        before = plain.result.records[job_id].finished
        late = rec.finished is None or rec.finished > deadline + 1e-6
        if late and before is not None and before <= deadline + 1e-6:
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    pods, nodes = TRACES / "openb_pod_list_default.csv", TRACES / "openb_node_list_gpu_node.csv"
    runs: list[Run] = []
    by: dict[tuple[str, str], Run] = {}
    for policy in POLICY_NAMES:
        run = replay(pods, nodes, policy, policy, "openb")
        runs.append(run)
        by[("openb", policy)] = run
    with tempfile.TemporaryDirectory() as tmp:
        dpods, dnodes = sched_diurnal.write(Path(tmp))
        for policy in ("fifo", "hetero"):
            for trace, (p, n) in (("openb", (pods, nodes)), ("diurnal", (dpods, dnodes))):
                plain = by.get((trace, policy)) or replay(p, n, policy, policy, trace)
                if (trace, policy) not in by:
                    runs.append(plain)
                    by[(trace, policy)] = plain
                sh = shaped(p, n, policy, trace, plain)
                runs.append(sh)
                by[(trace, sh.label)] = sh

    header = ["trace", "policy", *RESULT_KEYS, "CPU s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in runs:
        summary = r.result.summary()
        cells = [r.trace, r.label]
        for k in RESULT_KEYS:
            v = summary[k]
            cells.append(f"{v:,.4g}" if isinstance(v, float) else f"{v:,}")
        cells.append(f"{r.cpu_s:.1f}")
        print("| " + " | ".join(cells) + " |")
    print()
    fifo, het = by[("openb", "fifo")].result, by[("openb", "hetero")].result
    ref = sum(rec.work_total for rec in het.records.values()) / len(het.records)
    print(
        f"openb: hetero / fifo average JCT = {het.avg_jct_s / fifo.avg_jct_s:.2f} (goal <= 0.6); "
        f"every job on the reference chip at its trace lifetime, no wait: {ref:,.0f} s, "
        f"hetero / that = {het.avg_jct_s / ref:.2f}"
    )
    for trace in ("openb", "diurnal"):
        for policy in ("fifo", "hetero"):
            plain, sh = by[(trace, policy)], by[(trace, f"{policy}+shaping")]
            drop = 1 - sh.result.peak_to_average / plain.result.peak_to_average
            print(
                f"{trace}: {policy} peak-to-average {plain.result.peak_to_average:.3f} -> "
                f"{sh.result.peak_to_average:.3f} with shaping ({drop:+.1%} lower; goal >= 30 %), "
                f"deadlines newly missed: {missed_newly(sh, plain)} (goal 0), cost "
                f"{plain.result.cost:,.0f} -> {sh.result.cost:,.0f}"
            )
    slowest = max(runs, key=lambda r: r.cpu_s)
    print(
        f"slowest replay: {slowest.trace} {slowest.label}, {slowest.cpu_s:.1f} CPU s "
        f"({slowest.wall_s:.1f} s wall; goal <= {GOAL_S:g} s per policy)"
    )
    if args.json:
        doc = [
            {
                "trace": r.trace,
                "policy": r.label,
                **r.result.summary(),
                "cpu_s": r.cpu_s,
                "hourly_load": list(r.result.hourly_load),
            }
            for r in runs
        ]
        args.json.write_text(json.dumps(doc) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
