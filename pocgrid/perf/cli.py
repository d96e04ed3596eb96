"""``pocgrid perf`` commands: the performance model from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from pocgrid.catalog import PRECISIONS
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.predict import SCENARIOS, Prediction, predict
from pocgrid.perf.static_batch import SpecDecoding

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
            "CHIP. static (offline) = one static batch; max_throughput = every request queued "
            "at t=0 under continuous batching; poisson (server) = Poisson arrivals at --qps; "
            "concurrency = --concurrency clients each keeping one request in flight. Serving "
            "modes report whether they reached steady state, and say 'saturated' (with the "
            "sustainable rate) when the offered load exceeds capacity. Every prediction names "
            "its software-stack profile."
        ),
    )
    p.add_argument("--chip", required=True, help="chip slug or display name, e.g. ascend-910b2")
    p.add_argument("--devices", required=True, type=int, help="number of devices")
    p.add_argument("--model", required=True, help="model name, e.g. Llama-3.1-8B")
    p.add_argument("--precision", required=True, choices=PRECISIONS)
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="static batch size (required for static); serving modes: max sequences per "
        "replica (default: the profile's)",
    )
    p.add_argument("--input-len", required=True, type=int, help="prompt tokens per request")
    p.add_argument("--output-len", required=True, type=int, help="output tokens per request")
    p.add_argument("--scenario", "--mode", dest="scenario", choices=SCENARIOS, default="offline")
    p.add_argument("--qps", type=float, default=None, help="arrival rate (poisson)")
    p.add_argument("--concurrency", type=int, default=None, help="clients (concurrency mode)")
    p.add_argument("--seed", type=int, default=0, help="seed for Poisson arrivals")
    p.add_argument(
        "--tp", type=_tp, default=None, help="tensor-parallel degree, or 'auto' (default: all)"
    )
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests to simulate (serving modes; extended to the steady-state minimum)",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="software-stack profile (default: static profile for static batches, the chip "
        "family's in-flight profile otherwise)",
    )
    p.add_argument(
        "--acceptance-length",
        type=float,
        default=None,
        help="speculative decoding: mean tokens per verification step (static only)",
    )
    p.add_argument(
        "--draft-tokens", type=int, default=None, help="speculative decoding: drafted tokens k"
    )
    p.add_argument(
        "--draft-cost",
        type=float,
        default=0.0,
        help="speculative decoding: one draft token's time as a share of a decode step",
    )
    p.add_argument("--group-size", type=int, default=128, help="w4a16: weights per 16-bit scale")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(func=run_predict)


def _tp(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer or 'auto'") from None


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print("error: perf: a command is required (predict)", file=sys.stderr)
    return EXIT_USAGE


def run_predict(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    try:
        spec = None
        if args.acceptance_length is not None:
            spec = SpecDecoding(args.acceptance_length, args.draft_tokens, args.draft_cost)
        elif args.draft_tokens is not None:
            raise PerfInputError("draft_tokens", "needs --acceptance-length")
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
            profile=args.profile,
            concurrency=args.concurrency,
            spec=spec,
            group_size=args.group_size,
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
    workload = f"{p.mode}, batch {p.batch}, input {p.input_len}, output {p.output_len}"
    if p.qps is not None:
        workload += f", {p.qps:g} req/s, seed {p.seed}"
    if p.concurrency is not None:
        workload += f", {p.concurrency} clients"
    if p.requests is not None:
        workload += f", {p.requests} requests"
        if p.requests_asked is not None:
            workload += f" (extended from {p.requests_asked} to reach steady state)"
    fits = (
        f"yes ({p.memory_gib:.1f} of {p.memory_available_gib:.1f} GiB per device)"
        if p.fits
        else f"NO: {p.why_not_fits}"
    )
    p50 = "  (p50, steady state)" if p.mode != "static" else ""
    rows = [
        (
            "profile",
            f"{p.profile} ({p.profile_detail.get('stack')} {p.profile_detail.get('version')})",
        ),
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
        ("TTFT", _num(p.ttft_ms, "ms") + (p50 if p.ttft_ms is not None else "")),
        ("TPOT", _num(p.tpot_ms, "ms") + (p50 if p.tpot_ms is not None else "")),
        ("bound", f"prefill {p.prefill_bound or '-'}, decode {p.decode_bound or '-'}"),
        ("factors", ", ".join(f"{k} {v}" for k, v in p.efficiency.items())),
    ]
    if p.steady_state is not None:
        rows.append(
            (
                "steady",
                f"{'yes' if p.steady_state['reached'] else 'NO'}: {p.steady_state['reason']}",
            )
        )
    if p.saturated:
        rows.append(
            ("SATURATED", f"offered {p.qps:g} req/s; sustainable {p.sustainable_qps:.3g} req/s")
        )
    elif p.sustainable_qps is not None:
        rows.append(("capacity", f"{p.sustainable_qps:.3g} req/s"))
    if p.tp_candidates:
        tried = ", ".join(
            f"tp{c['tp']}: "
            + ("-" if c["output_tokens_per_s"] is None else f"{c['output_tokens_per_s']:,.0f}")
            for c in p.tp_candidates
        )
        rows.append(("tp auto", tried))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)
