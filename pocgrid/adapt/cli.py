"""``pocgrid adapt``: the best plan of a model on a chip, and the adaptation matrix.

Runs the planner locally on the packaged catalogue and performance model (no mesh needed),
like ``pocgrid perf predict``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from pocgrid.adapt.adapt import CELL_KEYS, Adaptation, adapt, adapt_onnx, matrix
from pocgrid.adapt.html import matrix_html
from pocgrid.adapt.onnx_import import OnnxImportError, validate_onnx
from pocgrid.adapt.plan import MAX_DEVICES, PlanRequest, Slo
from pocgrid.catalog import PRECISIONS, UnknownNameError, default_catalog
from pocgrid.perf.errors import PerfInputError

EXIT_OK = 0
EXIT_USAGE = 2
_SLO_KEYS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "latency": "latency_ms"}


def parse_slo(text: str | None) -> Slo:
    """``ttft=2000,tpot=50`` (milliseconds, p99) or ``latency=20`` for non-LLM models."""
    if not text:
        return Slo()
    values: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().removesuffix("_ms")
        if not sep or key not in _SLO_KEYS:
            raise PerfInputError(
                "slo", f"'{part}' is not KEY=MS with KEY one of ttft, tpot, latency"
            )
        try:
            values[_SLO_KEYS[key]] = float(value)
        except ValueError:
            raise PerfInputError("slo", f"'{value}' is not a number of milliseconds") from None
    return Slo(**values)


def _add_request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=None, help=f"device budget (1-{MAX_DEVICES})")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="weight precision")
    p.add_argument("--slo", default=None, help="p99 bounds in ms: ttft=2000,tpot=50 or latency=20")
    p.add_argument("--input-len", type=int, default=1024, help="prompt tokens (default 1024)")
    p.add_argument("--output-len", type=int, default=256, help="output tokens (default 256)")
    p.add_argument(
        "--allow-quantized",
        action="store_true",
        help="let the planner choose fp8/int8 weights and a quantized KV cache",
    )
    p.add_argument(
        "--spec-accept",
        type=float,
        default=None,
        help="speculative decoding: mean tokens emitted per verification (applies it; the MTP"
        " module where the model has one, else a draft model)",
    )
    p.add_argument(
        "--prefix-hit",
        type=float,
        default=0.0,
        help="prefix caching: share of prompt tokens hit (applies it)",
    )
    p.add_argument("--price", type=float, default=None, help="price per device-hour")
    p.add_argument("--json", action="store_true", help="print JSON")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "adapt",
        help="adapt a model to a chip: coverage, supplementation, the best plan",
        description=(
            "Operator coverage, supplementation and the best plan (precision, TP x DP, "
            "concurrency, prefill chunk, passes) of MODEL on CHIP; `adapt matrix` does every "
            "catalogue model on every emulatable chip."
        ),
    )
    p.add_argument("--model", help="model name, e.g. Llama-2-70B")
    p.add_argument(
        "--onnx", type=Path, default=None, help="an ONNX file instead of a catalogue model"
    )
    p.add_argument("--chip", help="chip slug, e.g. h100-80gb-sxm")
    _add_request_options(p)
    p.set_defaults(func=run_adapt)
    commands = p.add_subparsers(dest="adapt_command", metavar="COMMAND")
    m = commands.add_parser("matrix", help="every catalogue model x every emulatable chip")
    _add_request_options(m)
    m.add_argument("--html", type=Path, default=None, help="write a self-contained HTML heatmap")
    m.set_defaults(func=run_matrix)


def _request(args: argparse.Namespace) -> PlanRequest:
    return PlanRequest(
        devices=args.devices,
        precision=args.precision,
        slo=parse_slo(args.slo),
        input_len=args.input_len,
        output_len=args.output_len,
        allow_quantized=args.allow_quantized,
        spec_acceptance=args.spec_accept,
        prefix_hit_rate=args.prefix_hit,
        price_per_device_hour=args.price,
    )


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_adapt(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    if not (args.model or args.onnx) or not args.chip:
        return _error("adapt: --model (or --onnx) and --chip are required (or `adapt matrix`)")
    catalog = default_catalog()
    try:
        chip = catalog.find_chip(args.chip)
        if args.onnx is not None:
            checked = validate_onnx(args.onnx.read_bytes())
            result = adapt_onnx(catalog, args.onnx.name, checked.model, chip, _request(args))
        else:
            model = catalog.find_model(args.model)
            result = adapt(catalog, model, chip, _request(args), simulate=True)
    except (UnknownNameError, PerfInputError, OnnxImportError, OSError) as exc:
        return _error(str(exc))
    if args.json:
        json.dump(result.to_dict(), stream, indent=2)
        stream.write("\n")
    else:
        stream.write(format_adaptation(result))
    return EXIT_OK


def format_adaptation(a: Adaptation) -> str:
    cell = a.cell()
    lines = [f"{a.model} on {a.chip}: {a.verdict}" + (f" ({a.reason})" if a.reason else "")]
    if a.coverage is not None:
        lines.append("  operators: " + a.coverage.summary())
    if cell["output_tokens_per_s"] is not None:
        best = a.plan.best if a.plan else None
        assert best is not None
        lines.append(
            f"  plan: {best.precision}, {best.devices} devices = "
            + (f"pp {best.pp} x " if best.pp > 1 else "")
            + f"tp {best.tp} x {best.replicas}"
            f" replicas, {best.max_num_seqs} sequences, chunk {best.prefill_chunk}:"
            f" {best.output_tokens_per_s:.0f} tokens/s ({best.output_tokens_per_s_per_device:.0f}"
            f" per device, {best.tokens_per_s_per_user:.1f} per user), TTFT p99"
            f" {best.ttft_p99_ms:.0f} ms, TPOT p99 {best.tpot_p99_ms:.1f} ms"
        )
    elif a.dense is not None:
        d = a.dense
        lines.append(
            f"  plan: {d.precision}, batch {d.batch}: {d.samples_per_s:.0f} samples/s,"
            f" {d.latency_ms:.3g} ms per batch"
        )
    for line in a.explanation:
        lines.append(f"  - {line}")
    for p in a.all_passes():
        gain = "modelled gain -" if p.gain is None else f"modelled gain x{p.gain:.2f}"
        if p.measured_gain is not None:
            gain += f", measured here x{p.measured_gain:.2f}"
        state = "applied" if p.applied else "not applied"
        lines.append(f"  pass {p.name}: {state}, {gain} - {p.reason}")
        if p.assumption:
            lines.append(f"      assumes {p.assumption}")
    return "\n".join(lines) + "\n"


def run_matrix(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    catalog = default_catalog()
    try:
        req = _request(args)
    except PerfInputError as exc:
        return _error(str(exc))
    start = time.perf_counter()
    results = matrix(catalog, req)
    seconds = time.perf_counter() - start
    cells = [r.cell() for r in results]
    if args.html is not None:
        args.html.write_text(matrix_html(cells, seconds), encoding="utf-8")
    if args.json:
        json.dump(cells, stream, indent=1)
        stream.write("\n")
        return EXIT_OK
    for c in cells:
        tps = c["output_tokens_per_s"]
        sps = c["samples_per_s"]
        figure = (
            f"{tps:.0f} tok/s"
            if isinstance(tps, float)
            else f"{sps:.0f} samples/s"
            if isinstance(sps, float)
            else "-"
        )
        stream.write(
            f"{c['model']:<40} {c['chip']:<16} {c['verdict']:<26} {c['precision'] or '-':<5}"
            f" {c['devices'] or '-':>3} {figure:>16}  {c['reason']}\n"
        )
    stream.write(f"{len(cells)} cells in {seconds:.1f} s\n")
    return EXIT_OK


__all__ = ["CELL_KEYS", "register"]
