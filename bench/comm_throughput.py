"""Throughput of the unified communication library against the bare transport.

Four agent processes of two vendors (Ascend 910B2 x8 with HCCL, A100 x8 with NCCL, each on
a node of its own) run every collective from 4 KB to 64 MB; each row prints the median wall
time, the bus bandwidth, the bare transport's rate over the same sockets, the median of the
per-round ratios (goal: >= 0.7 at 64 MB) and the modelled virtual time with the algorithm
chosen. A shared-memory copy between two of the ranks is measured as what a same-host
transport could reach. Run from the repository root:

    .venv/bin/python -m bench.comm_throughput            # same as `pocgrid comm bench`
    .venv/bin/python -m bench.comm_throughput --repeats 9
"""

from __future__ import annotations

import argparse
import sys

from pocgrid.comm import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.comm_throughput", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    args = parser.parse_args(["comm", "bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
