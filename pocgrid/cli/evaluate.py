"""``pocgrid eval run|list|show|watch`` and ``pocgrid scenarios``, through the gateway."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pocgrid.cli.output import emit_json, fail, say, table
from pocgrid.cli.target import resolve
from pocgrid.client import Client
from pocgrid.evaluation import MODE_VALUES, MODES, evaluation_to_dict
from pocgrid.precision import to_proto
from pocgrid.report import write_report
from pocgrid.report.progress import follow
from pocgrid.report.table import console, render
from pocgrid.report.vllm import write_vllm_results
from pocgrid.v1 import common_pb2, evaluator_pb2

SLO_KEYS = ("ttft_p99_ms", "tpot_p99_ms", "e2el_p99_ms")
TERMINAL = (evaluator_pb2.EVALUATION_STATE_SUCCEEDED, evaluator_pb2.EVALUATION_STATE_FAILED)


def parse_slo(text: str) -> evaluator_pb2.SloOverride:
    """``ttft_p99_ms=2000,tpot_p99_ms=100`` -> bounds (milliseconds, > 0)."""
    slo = evaluator_pb2.SloOverride()
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SLO_KEYS:
            raise argparse.ArgumentTypeError(
                f"--slo: {part!r} must be KEY=MS with KEY one of {', '.join(SLO_KEYS)}"
            )
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--slo: {key} must be a number of ms") from None
        if not number > 0 or number == float("inf"):
            raise argparse.ArgumentTypeError(f"--slo: {key} must be > 0 ms")
        setattr(slo, key, number)
    return slo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scenarios", help="evaluation scenarios and industry packs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=scenarios)

    ev = sub.add_parser("eval", help="evaluate a scenario on every chip type of the pool")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")
    p = esub.add_parser("run", help="start an evaluation, follow it, print its results")
    p.add_argument("--scenario", required=True, help="atomic scenario, industry pack or your own")
    p.add_argument("--model", default="", help="catalogue model (default: the scenario's)")
    p.add_argument("--chips", default="all", help="all, or chip types A,B (default all)")
    p.add_argument("--mode", choices=MODES, help="load mode (default: the scenario's)")
    p.add_argument("--qps", type=float, default=0.0, help="server mode: requests per second")
    p.add_argument(
        "--burstiness", type=float, default=0.0, help="server mode: gamma shape (1 = Poisson)"
    )
    p.add_argument("--concurrency", type=int, default=0, help="concurrency mode: clients")
    p.add_argument("--sweep", default="", help="sweep mode: concurrencies C1,C2,...")
    p.add_argument("--requests", type=int, default=0, help="requests per chip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="", help="e.g. bf16 (default: the scenario's)")
    p.add_argument("--slo", type=parse_slo, help="ttft_p99_ms=X,tpot_p99_ms=Y,e2el_p99_ms=Z")
    p.add_argument("--json", action="store_true", help='print {"results", "recommendation"}')
    _report_options(p)
    p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the end")
    p.set_defaults(func=run)

    p = esub.add_parser("list", help="your evaluations, newest first")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=list_evaluations)

    p = esub.add_parser("show", help="one evaluation: results and recommendation")
    p.add_argument("evaluation_id")
    p.add_argument("--json", action="store_true")
    _report_options(p)
    p.set_defaults(func=show)

    p = esub.add_parser("watch", help="follow an evaluation until it ends")
    p.add_argument("evaluation_id")
    p.add_argument("--json", action="store_true", help="one JSON object per update")
    p.add_argument("--wait", type=float, default=600.0)
    p.set_defaults(func=watch)


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write DIR/report.html (self-contained, with charts) and DIR/evaluation.json",
    )
    p.add_argument(
        "--format",
        choices=("vllm",),
        help="vllm: also write one `vllm bench serve --save-result` file per chip "
        "(into DIR/vllm with --report, else the current directory)",
    )
    p.add_argument(
        "--detail", action="store_true", help="also print each chip under vLLM's result labels"
    )


def _reports(data: dict[str, Any], args: argparse.Namespace) -> None:
    """The files asked for with --report / --format, each path said on stderr."""
    written: list[Path] = []
    if args.report:
        written += write_report(data, Path(args.report), vllm=args.format == "vllm")
    elif args.format == "vllm":
        written += write_vllm_results(data, Path("."))
    for path in written:
        sys.stderr.write(f"wrote {path}\n")


def _client(args: argparse.Namespace) -> Client:
    target = resolve(args)
    return Client(target.gateway, target.api_key, timeout_s=args.timeout, ca_file=target.ca_file)


def _request(args: argparse.Namespace) -> evaluator_pb2.StartEvaluationRequest:
    chips = [] if args.chips.strip() in ("", "all") else [c.strip() for c in args.chips.split(",")]
    request = evaluator_pb2.StartEvaluationRequest(
        scenario=args.scenario,
        model=args.model,
        chips=[c for c in chips if c],
        qps=args.qps,
        burstiness=args.burstiness,
        concurrency=args.concurrency,
        requests=args.requests,
        seed=args.seed,
    )
    if args.mode:
        request.mode = MODE_VALUES[args.mode]
    if args.precision:
        request.precision = to_proto(args.precision)
    if args.slo is not None:
        request.slo.CopyFrom(args.slo)
    if args.sweep:
        request.sweep_concurrency.extend(int(c) for c in args.sweep.split(",") if c.strip())
    return request


def _follow(pg: Client, evaluation_id: str, wait_s: float) -> Iterator[evaluator_pb2.Evaluation]:
    stream = pg.evaluator.WatchEvaluation(
        evaluator_pb2.WatchEvaluationRequest(evaluation_id=evaluation_id), timeout=wait_s
    )
    for update in stream:
        yield update.evaluation


def _progress_line(e: evaluator_pb2.Evaluation) -> str:
    p = e.progress
    state = evaluator_pb2.EvaluationState.Name(e.state).removeprefix("EVALUATION_STATE_")
    return f"{e.evaluation_id} {state.lower()} {p.runs_done}/{p.runs_total} {p.current}".rstrip()


def run(args: argparse.Namespace) -> int:
    try:
        request = _request(args)
    except ValueError as exc:
        return fail(str(exc))
    with _client(args) as pg:
        started = pg.evaluator.StartEvaluation(request).evaluation
        updates = _follow(pg, started.evaluation_id, args.wait)
        if sys.stderr.isatty() or not args.json:
            # Bars on a terminal, a line per finished run otherwise (stderr: --json stays clean).
            evaluation = follow(updates, sys.stderr) or started
        else:
            evaluation = started
            for update in updates:
                evaluation = update
        if evaluation.state not in TERMINAL:
            evaluation = pg.evaluator.GetEvaluation(
                evaluator_pb2.GetEvaluationRequest(evaluation_id=started.evaluation_id)
            ).evaluation
    data = evaluation_to_dict(evaluation)
    _reports(data, args)
    if args.json:
        emit_json(data)
    else:
        _print(data, detail=args.detail)
    if evaluation.state != evaluator_pb2.EVALUATION_STATE_SUCCEEDED:
        return fail(f"evaluation {evaluation.evaluation_id} failed: {evaluation.error}")
    return 0


def _print(data: dict[str, Any], *, detail: bool = False) -> None:
    say(f"evaluation {data['evaluation_id']}: {data['scenario']} ({data['state'].lower()})")
    if data.get("training"):
        _print_training(data)
        return
    render(data, console(), detail=detail)


def _print_training(data: dict[str, Any]) -> None:
    """hybrid-training: the chips taking part, then per split the virtual step time and the
    scaling efficiency."""
    t = data["training"]
    m = t["model"]
    say(
        f"MLP {m['inputs']}-{m['hidden']}-{m['classes']}, global batch {m['batch']}, "
        f"{m['steps']} steps"
    )
    say(
        table(
            ["chip", "dev", "prec", "samples/s (modelled)", "node"],
            [
                [c, d, p, f"{s:,.0f}", r["node_id"] or "-"]
                for c, d, p, s, r in zip(
                    t["chips"],
                    t["devices"],
                    t["precisions"],
                    t["samples_per_s"],
                    [r for r in data["results"] if r["reason"] is None],
                    strict=True,
                )
            ],
        )
    )
    for r in data["results"]:
        if r["reason"]:
            say(f"{r['chip']}: not run: {r['reason']}")
    say(
        table(
            [
                "split",
                "batch per chip",
                "step ms",
                "slowest compute ms",
                "all-reduce ms",
                "scaling eff.",
                "max |loss - 1 proc|",
            ],
            [
                [
                    s["split"],
                    "/".join(str(b) for b in s["batch"]),
                    f"{s['step_ms']:.4f}",
                    f"{max(s['compute_ms']):.4f}",
                    f"{s['all_reduce_ms']:.4f} ({s['all_reduce_algorithm']})",
                    f"{s['scaling_efficiency']:.3f}",
                    f"{s['max_loss_deviation']:.1e}",
                ]
                for s in t["splits"]
            ],
        )
    )
    say()
    say(data["recommendation"]["summary"])


def list_evaluations(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        resp = pg.evaluator.ListEvaluations(
            evaluator_pb2.ListEvaluationsRequest(
                page=common_pb2.PageRequest(page_size=max(1, min(args.limit, 1000)))
            )
        )
    items = [evaluation_to_dict(e) for e in resp.evaluations]
    if args.json:
        emit_json({"evaluations": items, "total": resp.page.total_size})
        return 0
    say(
        table(
            ["id", "scenario", "state", "runs", "cheapest", "fastest", "best domestic", "created"],
            [
                [
                    e["evaluation_id"],
                    e["scenario"],
                    e["state"].lower(),
                    f"{e['progress']['runs_done']}/{e['progress']['runs_total']}",
                    e["recommendation"]["cheapest"],
                    e["recommendation"]["fastest"],
                    e["recommendation"]["best_domestic"],
                    e["created_at"],
                ]
                for e in items
            ],
        )
    )
    return 0


def show(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        evaluation = pg.evaluator.GetEvaluation(
            evaluator_pb2.GetEvaluationRequest(evaluation_id=args.evaluation_id)
        ).evaluation
    data = evaluation_to_dict(evaluation)
    _reports(data, args)
    if args.json:
        emit_json(data)
    else:
        _print(data, detail=args.detail)
    return 0


def watch(args: argparse.Namespace) -> int:
    last: evaluator_pb2.Evaluation | None = None
    with _client(args) as pg:
        updates = _follow(pg, args.evaluation_id, args.wait)
        if not args.json and sys.stdout.isatty():
            last = follow(updates, sys.stdout)  # a bar on a terminal
        else:
            for last in updates:
                if args.json:
                    sys.stdout.write(json.dumps(evaluation_to_dict(last)) + "\n")
                    sys.stdout.flush()
                else:
                    say(_progress_line(last))
    return 0 if last is not None and last.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED else 1


def scenarios(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _client(args) as pg:
        items = pg.evaluator.ListScenarios(evaluator_pb2.ListScenariosRequest()).scenarios
    if args.json:
        emit_json(
            {
                "scenarios": [
                    json_format.MessageToDict(s, preserving_proto_field_name=True) for s in items
                ]
            }
        )
        return 0
    rows = []
    for s in items:
        slo = s.default_slo
        bounds = ", ".join(
            f"{name} {value:g} ms"
            for name, value in (
                ("TTFT p99", slo.p99_ttft_ms),
                ("TPOT p99", slo.p99_tpot_ms),
                ("E2EL p99", slo.p99_latency_ms),
            )
            if value
        )
        what = (
            " + ".join(f"{c.scenario} {c.share:.0%}" for c in s.components)
            if s.kind == "pack"
            else s.default_model
        )
        rows.append([s.name, s.kind, s.field or "-", what, bounds or "-", s.owner or "built-in"])
    say(table(["scenario", "kind", "field", "model / mix", "SLO", "owner"], rows))
    return 0
