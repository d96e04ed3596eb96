"""``pocgrid sched`` commands: the scheduling library offline (``replay``: a trace simulated)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from pocgrid.catalog import default_catalog
from pocgrid.price_book import card_hour_prices
from pocgrid.sched.registry import POLICY_NAMES, make_policy
from pocgrid.sched.shaping import Shaped
from pocgrid.sched.sim import EPOCH, RESULT_KEYS, Result, Simulator
from pocgrid.sched.trace import BE_SLACK_S, TraceError, read_trace
from pocgrid.tariff import parse_tariff

EXIT_OK = 0
EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sched`` (with ``replay``) to the main CLI's subcommands."""
    sched = subparsers.add_parser(
        "sched",
        help="scheduling policies offline: replay a cluster trace through a policy",
        description="The scheduling library (pocgrid/sched) without a mesh.",
    )
    sched.set_defaults(func=lambda _args: _usage(sched))
    commands = sched.add_subparsers(dest="sched_command", metavar="COMMAND")
    p = commands.add_parser(
        "replay",
        help="replay a trace through a policy on a simulated clock",
        description=(
            "Replay an Alibaba GPU trace (cluster-trace-gpu-v2023 'openb' format) through a "
            "scheduling policy on a simulated clock: the same policy code as the live "
            "scheduler. GPU models map to catalogue chips as docs/scheduling.md says. With "
            "--tariff, deferrable (best-effort) work is shifted into cheap hours under the "
            "file's load cap (peak shaving)."
        ),
    )
    p.add_argument("--trace", required=True, type=Path, help="pod list CSV (openb_pod_list_*)")
    p.add_argument("--nodes", required=True, type=Path, help="node list CSV")
    p.add_argument("--policy", required=True, choices=POLICY_NAMES)
    p.add_argument("--tariff", type=Path, help="tariff JSON with an optional cap_devices")
    p.add_argument(
        "--be-slack-h",
        type=float,
        default=BE_SLACK_S / 3600,
        help="deadline of best-effort work: arrival + work + this many hours (default 24)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run_replay)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


@contextmanager
def _progress(stream: TextIO, total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal (rich), nothing elsewhere (pipes, CI, --json logs)."""
    if not stream.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=stream),
        transient=True,
    ) as bar:
        task = bar.add_task("replaying", total=total)
        step = max(1, total // 200)

        def update(done: int, jobs: int) -> None:
            # the pod rows counted up front include pods that are left out (no GPU)
            if done % step == 0 or done == jobs:
                bar.update(task, completed=done, total=jobs)

        yield update


def replay(
    trace: Path,
    nodes: Path,
    policy_name: str,
    *,
    tariff: Path | None = None,
    be_slack_h: float = BE_SLACK_S / 3600,
    prices: Mapping[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """One replay (what the command and the benchmarks run)."""
    loaded = read_trace(trace, nodes, be_slack_s=be_slack_h * 3600)
    book = dict(prices) if prices is not None else card_hour_prices(loaded.pool.chips)
    policy = make_policy(policy_name, prices=book)
    if tariff is not None:
        try:
            text = tariff.read_text(encoding="utf-8")
        except OSError as exc:
            raise TraceError(f"{tariff}: {exc.strerror or exc}") from None
        parsed = parse_tariff(text)
        time_of_use = parsed.time_of_use
        catalog = default_catalog()
        power = {c: tdp for c in loaded.pool.chips if (tdp := catalog.find_chip(c).tdp_w)}
        sim_policy = Shaped(policy, time_of_use, parsed.cap, epoch=EPOCH, power=power)
        sim = Simulator(
            loaded.pool,
            sim_policy,
            loaded.demands,
            prices=book,
            tariff=time_of_use,
            progress=progress,
        )
    else:
        sim = Simulator(loaded.pool, policy, loaded.demands, prices=book, progress=progress)
    return sim.run()


def run_replay(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if not args.be_slack_h >= 0:
        print("pocgrid: error: --be-slack-h must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _progress(sys.stderr, _count_rows(args.trace)) as progress:
            result = replay(
                args.trace,
                args.nodes,
                args.policy,
                tariff=args.tariff,
                be_slack_h=args.be_slack_h,
                progress=progress,
            )
    except (TraceError, ValueError) as exc:
        print(f"pocgrid: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    summary = result.summary()
    if args.json:
        json.dump(summary, out)
        out.write("\n")
        return EXIT_OK
    out.write(format_result(result))
    return EXIT_OK


def _count_rows(path: Path) -> int:
    try:
        with path.open(encoding="utf-8") as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0  # read_trace reports it


def format_result(result: Result) -> str:
    labels = {
        "jobs": "jobs",
        "completed": "completed",
        "avg_jct_s": "average JCT (s)",
        "p99_jct_s": "p99 JCT (s)",
        "avg_wait_s": "average wait (s)",
        "utilization": "utilization",
        "makespan_s": "makespan (s)",
        "peak_to_average": "peak / average load",
        "deadline_misses": "deadline misses",
        "cost": "cost",
    }
    summary = result.summary()
    lines = [f"policy {result.policy}"]
    for key in RESULT_KEYS:
        value = summary[key]
        if isinstance(value, float):
            text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
        else:
            text = f"{value:,}"
        lines.append(f"  {labels[key]:<22} {text}")
    lines.append(f"  {'preemptions':<22} {result.preemptions:,}")
    if result.never_fit:
        lines.append(f"  {'never fit (dropped)':<22} {result.never_fit:,}")
    return "\n".join(lines) + "\n"
