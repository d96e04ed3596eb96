"""``pocgrid comm`` commands: the communication library's benchmark and hybrid training run."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, TextIO

from pocgrid.comm.bench import (
    DEFAULT_RANKS,
    DEFAULT_SIZES,
    format_table,
    merge_ranks,
    parse_size,
    report_rows,
)
from pocgrid.comm.errors import CommError
from pocgrid.comm.launch import RankOutcome, RankSpec, parse_ranks, run_ranks
from pocgrid.comm.topology import NetworkConfig
from pocgrid.comm.training import SPLITS, MlpConfig, train_pool
from pocgrid.perf.collective import COLLECTIVE_KINDS

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_TRAIN_RANKS = "a100-80gb-sxm,ascend-910b2,mlu370-x8,bi-v100"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``comm`` (with ``bench`` and ``train``) to the main CLI's subcommands."""
    comm = subparsers.add_parser(
        "comm",
        help="unified communication library: collectives across chips of different vendors",
        description=(
            "Collectives across agent processes of different chip types (ranks given as "
            "CHIP[:DEVICES][@NODE],...), with real data over TCP and virtual time from the "
            "alpha-beta model."
        ),
    )
    comm.set_defaults(func=lambda _args: _usage(comm))
    commands = comm.add_subparsers(dest="comm_command", metavar="COMMAND")

    p = commands.add_parser(
        "bench",
        help="real throughput per collective and size, beside the bare transport's",
        description=(
            "Runs each collective on one process per rank and prints the median wall time, "
            "bus bandwidth (nccl-tests convention), the bare transport's rate over the same "
            "sockets, their ratio, the modelled (virtual) time and the algorithm chosen."
        ),
    )
    p.add_argument("--ranks", default=DEFAULT_RANKS, help=f"ranks (default {DEFAULT_RANKS})")
    p.add_argument(
        "--sizes",
        default=",".join(DEFAULT_SIZES),
        help="message sizes in bytes, K/M suffixes (default %(default)s)",
    )
    p.add_argument(
        "--collectives",
        default=",".join(COLLECTIVE_KINDS),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (median)")
    p.add_argument("--no-shm", action="store_true", help="skip the shared-memory copy figure")
    _network_args(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run_bench)

    t = commands.add_parser(
        "train",
        help="hybrid data-parallel training of a numpy MLP across chips of different vendors",
        description=(
            "Trains the same MLP for --steps steps with the batch split in proportion to each "
            "chip's modelled speed and split equally, checks both against a single-process "
            "run, and prints the virtual step time and scaling efficiency of each."
        ),
    )
    t.add_argument("--ranks", default=DEFAULT_TRAIN_RANKS, help="ranks (default %(default)s)")
    defaults = MlpConfig()
    for f in fields(MlpConfig):
        t.add_argument(
            f"--{f.name}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name)
        )
    _network_args(t)
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=run_train)


def _network_args(p: argparse.ArgumentParser) -> None:
    d = NetworkConfig()
    p.add_argument("--network-gbs", type=float, default=d.network_gbs, help="GB/s between nodes")
    p.add_argument(
        "--bridge-gbs", type=float, default=d.bridge_gbs, help="GB/s across vendor families"
    )


def _network(args: argparse.Namespace) -> NetworkConfig:
    return NetworkConfig(network_gbs=args.network_gbs, bridge_gbs=args.bridge_gbs)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print("error: comm: a command is required (bench, train)", file=sys.stderr)
    return EXIT_USAGE


def _failed(outcomes: list[RankOutcome], err: TextIO) -> bool:
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        print(f"error: rank {o.rank}: {o.error_type}: {o.error}", file=err)
    return bool(bad)


def run_bench(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    try:
        specs = parse_ranks(args.ranks)
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        kinds = [k.strip() for k in args.collectives.split(",") if k.strip()]
        unknown = sorted(set(kinds) - set(COLLECTIVE_KINDS))
        if unknown:
            raise CommError(f"collectives: unknown {unknown}; choose from {COLLECTIVE_KINDS}")
        if args.repeats < 1:
            raise CommError("repeats: must be >= 1")
        network = _network(args)
    except (CommError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    outcomes = run_ranks(
        "pocgrid.comm.bench:bench_rank",
        specs,
        kwargs={"sizes": sizes, "kinds": kinds, "repeats": args.repeats, "shm": not args.no_shm},
        network=network,
        comm_timeout_s=120.0,
        timeout_s=1800.0,
    )
    if _failed(outcomes, sys.stderr):
        return EXIT_FAILED
    values = merge_ranks([o.value for o in outcomes])
    if args.json:
        rows = report_rows(values)
        json.dump(
            {"rows": rows, "shm": values["shm"], "transports": values["transports"]},
            stream,
            indent=2,
        )
        stream.write("\n")
    else:
        stream.write(format_table(values) + "\n")
    return EXIT_OK


def run_train(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    try:
        specs = parse_ranks(args.ranks)
        cfg = MlpConfig(**{f.name: getattr(args, f.name) for f in fields(MlpConfig)})
        network = _network(args)
    except (CommError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = train_pool(specs, cfg, network)
    except CommError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        json.dump(result, stream, indent=2)
        stream.write("\n")
        return EXIT_OK
    stream.write(format_train(specs, result) + "\n")
    return EXIT_OK


def format_train(specs: list[RankSpec], result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"MLP {cfg['inputs']}-{cfg['hidden']}-{cfg['classes']}, global batch {cfg['batch']}, "
        f"{cfg['steps']} steps, lr {cfg['lr']}",
        "ranks: " + ", ".join(f"{s.chip} x{s.devices}" for s in specs),
    ]
    prop = result["proportional"]
    lines.append(
        "modelled speed (samples/s): "
        + ", ".join(f"{s:,.0f}" for s in prop["speeds"])
        + f"  (precision {', '.join(prop['precisions'])})"
    )
    ref = result["single_process_losses"]
    lines.append(f"loss, single process: {ref[0]:.5f} -> {ref[-1]:.5f}")
    for split in SPLITS:
        v = result[split]
        step = v["step"]
        lines.append(
            f"{split:<13} batch {v['counts']}  step {step['step_s'] * 1e3:.4f} ms "
            f"(slowest compute {max(step['compute_s']) * 1e3:.4f} ms + all-reduce "
            f"{step['allreduce_s'] * 1e3:.4f} ms, {step['algorithm']})  scaling efficiency "
            f"{step['efficiency']:.3f}  max |loss - single| {v['max_loss_diff']:.2e}"
        )
    gain = result["equal"]["step"]["step_s"] / prop["step"]["step_s"]
    lines.append(f"proportional split: {gain:.3f}x faster per step than the equal split")
    return "\n".join(lines)
