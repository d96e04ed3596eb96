"""``pocgrid perf`` commands: the performance model from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from pocgrid.catalog import PRECISIONS
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.predict import SCENARIOS, Prediction, predict

EXIT_OK = 0
EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``perf`` (with ``predict``) to the main CLI's subcommands."""
    perf = subparsers.add_parser(
        "perf",
        help="performance model: predict LLM throughput and latency on a chip",
        description="Roofline performance model with calibrated efficiency factors.",
    )
    perf.set_defaults(func=lambda _args: _usage(perf))
    commands = perf.add_subparsers(dest="perf_command", metavar="COMMAND")
    p = commands.add_parser(
        "predict",
        help="predict one deployment",
        description=(
            "Predict output tokens/s, TTFT, TPOT and memory for MODEL on DEVICES devices of "
            "CHIP. offline = one static batch; server = continuous batching under Poisson "
            "arrivals at --qps (batch caps concurrent sequences per replica)."
        ),
    )
    p.add_argument("--chip", required=True, help="chip slug or display name, e.g. ascend-910b2")
    p.add_argument("--devices", required=True, type=int, help="number of devices")
    p.add_argument("--model", required=True, help="model name, e.g. Llama-3.1-8B")
    p.add_argument("--precision", required=True, choices=PRECISIONS)
    p.add_argument("--batch", required=True, type=int, help="batch size (server: max sequences)")
    p.add_argument("--input-len", required=True, type=int, help="prompt tokens per request")
    p.add_argument("--output-len", required=True, type=int, help="output tokens per request")
    p.add_argument("--scenario", choices=SCENARIOS, default="offline")
    p.add_argument("--qps", type=float, default=None, help="arrival rate (server scenario)")
    p.add_argument("--seed", type=int, default=0, help="seed for server arrivals")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel degree (default: all)")
    p.add_argument("--requests", type=int, default=None, help="requests to simulate (server)")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(func=run_predict)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print("error: perf: a command is required (predict)", file=sys.stderr)
    return EXIT_USAGE


def run_predict(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    try:
        result = predict(
            args.chip,
            args.devices,
            args.model,
            args.precision,
            args.batch,
            args.input_len,
            args.output_len,
            scenario=args.scenario,
            qps=args.qps,
            seed=args.seed,
            tp=args.tp,
            requests=args.requests,
        )
    except PerfInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        json.dump(result.to_dict(), stream, indent=2, sort_keys=True)
        stream.write("\n")
    else:
        stream.write(format_prediction(result))
    return EXIT_OK


def _num(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f} {unit}"


def format_prediction(p: Prediction) -> str:
    """A small two-column table for a terminal."""
    workload = f"{p.scenario}, batch {p.batch}, input {p.input_len}, output {p.output_len}"
    if p.qps is not None:
        workload += f", {p.qps:g} req/s, seed {p.seed}"
    fits = (
        f"yes ({p.memory_gib:.1f} of {p.memory_available_gib:.1f} GiB per device)"
        if p.fits
        else f"NO: {p.why_not_fits}"
    )
    rows = [
        ("chip", f"{p.chip} x {p.devices} (tp {p.tp}, {p.replicas} replica(s))"),
        ("model", f"{p.model} @ {p.precision}"),
        ("workload", workload),
        ("fits", fits),
        (
            "throughput",
            _num(p.output_tokens_per_s, "output tok/s")
            + (
                ""
                if p.output_tokens_per_s_per_device is None
                else f" ({p.output_tokens_per_s_per_device:,.1f} per device)"
            ),
        ),
        ("TTFT", _num(p.ttft_ms, "ms") + ("  (p50)" if p.scenario == "server" else "")),
        ("TPOT", _num(p.tpot_ms, "ms") + ("  (p50)" if p.scenario == "server" else "")),
        ("bound", f"prefill {p.prefill_bound or '-'}, decode {p.decode_bound or '-'}"),
        ("factors", ", ".join(f"{k} {v}" for k, v in p.efficiency.items())),
    ]
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)
