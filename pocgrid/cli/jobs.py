"""``pocgrid jobs submit|list|show|cancel``, ``pocgrid queue`` and ``pocgrid pool``: jobs on the
virtual pool through the gateway. Every command acts for the API key's tenant: its own jobs
only; the pool view shows another tenant's holdings without naming their job."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.json_format import MessageToDict

from pocgrid.cli.output import emit_json, say, table
from pocgrid.cli.target import resolve
from pocgrid.client import Client
from pocgrid.precision import PRECISION_BY_NAME
from pocgrid.v1 import common_pb2, scheduler_pb2

GIB: Final = 1 << 30
KINDS: Final = {
    "batch": scheduler_pb2.JOB_KIND_BATCH,
    "evaluation": scheduler_pb2.JOB_KIND_EVALUATION,
    "serving": scheduler_pb2.JOB_KIND_SERVING,
}
_IN_RE: Final = re.compile(r"^\+([1-9][0-9]*)(m|h|d)$")
_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days"}


def deadline(text: str) -> datetime:
    """``+90m``, ``+6h``, ``+1d`` from now, or an ISO-8601 time (UTC when it names no zone)."""
    match = _IN_RE.match(text)
    if match:
        return datetime.now(UTC) + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a deadline: +N followed by m, h or d, or an ISO-8601 time"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def register(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="your jobs on the pool: submit, list, show, cancel")
    verbs = jobs.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("submit", help="submit a job")
    p.add_argument("--model", required=True, help="catalogue model, e.g. Qwen2.5-7B")
    p.add_argument("--precision", required=True, choices=list(PRECISION_BY_NAME))
    p.add_argument("--kind", choices=list(KINDS), default="batch")
    chips = p.add_mutually_exclusive_group()
    chips.add_argument("--chip", default="", help="one chip type")
    chips.add_argument("--chips", default="", help="allowed chip types, comma-separated")
    p.add_argument(
        "--fits",
        action="store_true",
        help="only the chip types the performance model says the model fits",
    )
    p.add_argument("--devices", type=int, default=1, help="devices (per replica)")
    p.add_argument("--share", type=float, default=0.0, help="a fraction of one device, 0..1")
    p.add_argument("--memory-gib", type=float, default=0.0, help="memory per device, GiB")
    p.add_argument("--replicas", type=int, default=0, help="serving replicas")
    p.add_argument(
        "--min-replicas",
        type=int,
        default=0,
        help="serving: replicas it needs to start (default all); the rest are added as room frees",
    )
    p.add_argument("--gang", action="store_true", help="devices may span nodes, all at once")
    p.add_argument("--preemptible", action="store_true")
    p.add_argument("--deadline", type=deadline, help="+90m, +6h or an ISO time (deferrable)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--steps", type=int, default=0, help="batch steps (default 1)")
    p.add_argument("--batch", type=int, default=0, help="sequences per step (default 1)")
    p.add_argument("--input-len", type=int, default=0, help="prompt tokens (default 128)")
    p.add_argument("--output-len", type=int, default=0, help="output tokens (default 128)")
    p.add_argument("--name", default="", help="display name")
    p.add_argument("--idempotency-key", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=submit)

    p = verbs.add_parser("list", help="your jobs")
    p.add_argument("--state", choices=[_slug(s) for s in _states()], default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=list_jobs)

    p = verbs.add_parser("show", help="one job, with where it runs")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=show)

    p = verbs.add_parser("cancel", help="cancel a job (a running one releases its devices)")
    p.add_argument("job_id")
    p.add_argument("--reason", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cancel)

    p = sub.add_parser("queue", help="what waits, in placement order, and why")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=queue)

    p = sub.add_parser("pool", help="per-device allocation: memory and share held, by which job")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=pool)


def _states() -> list[int]:
    return [v for v in scheduler_pb2.JobState.values() if v != scheduler_pb2.JOB_STATE_UNSPECIFIED]


def _slug(state: int) -> str:
    return (
        scheduler_pb2.JobState.Name(scheduler_pb2.JobState.ValueType(state))
        .removeprefix("JOB_STATE_")
        .lower()
    )


def _kind(kind: int) -> str:
    names: dict[int, str] = {int(v): k for k, v in KINDS.items()}
    return names.get(int(kind), "batch")


def job_dict(job: scheduler_pb2.Job) -> dict[str, Any]:
    """A job as JSON: the contract's field names, enums as short words."""
    out = MessageToDict(
        job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    out["state"] = _slug(job.state)
    out["spec"]["kind"] = _kind(job.spec.kind)
    return out


def _client(args: argparse.Namespace) -> Client:
    target = resolve(args)
    return Client(target.gateway, target.api_key, timeout_s=args.timeout, ca_file=target.ca_file)


def submit(args: argparse.Namespace) -> int:
    spec = scheduler_pb2.JobSpec(
        model=args.model,
        chip=args.chip,
        allowed_chips=[c.strip() for c in args.chips.split(",") if c.strip()],
        chip_choice=(
            scheduler_pb2.CHIP_CHOICE_ADAPTER_FITS
            if args.fits
            else scheduler_pb2.CHIP_CHOICE_UNSPECIFIED
        ),
        devices=args.devices,
        precision=PRECISION_BY_NAME[args.precision],
        priority=args.priority,
        display_name=args.name,
        kind=KINDS[args.kind],
        device_share=args.share,
        memory_bytes=round(args.memory_gib * GIB),
        gang=args.gang,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        preemptible=args.preemptible,
    )
    if args.kind == "batch":
        spec.batch.CopyFrom(
            scheduler_pb2.BatchWork(
                steps=args.steps,
                batch=args.batch,
                input_len=args.input_len,
                output_len=args.output_len,
            )
        )
    if args.deadline is not None:
        spec.deadline.FromDatetime(args.deadline)
    with _client(args) as pg:
        job = pg.scheduler.SubmitJob(
            scheduler_pb2.SubmitJobRequest(spec=spec, idempotency_key=args.idempotency_key)
        ).job
    if args.json:
        emit_json(job_dict(job))
    else:
        say(f"{job.job_id} {_slug(job.state)}: {job.state_reason}")
    return 0


def _chips(job: scheduler_pb2.Job) -> str:
    if job.spec.chip:
        return job.spec.chip
    chips = list(job.spec.allowed_chips)
    if len(chips) > 3:
        return f"{','.join(chips[:2])} +{len(chips) - 2} more"
    return ",".join(chips) or "any"


def _where(job: scheduler_pb2.Job) -> str:
    return " ".join(
        f"{a.node_id}[{','.join(str(i) for i in a.device_indexes)}]" for a in job.assignments
    )


def _size(job: scheduler_pb2.Job) -> str:
    if job.spec.device_share:
        return f"{job.spec.device_share:g} of 1"
    replicas = job.spec.replicas or 1
    return f"{job.spec.devices}x{replicas}" if replicas > 1 else str(job.spec.devices)


def list_jobs(args: argparse.Namespace) -> int:
    state = scheduler_pb2.JobState.Value(
        f"JOB_STATE_{args.state.upper()}" if args.state else "JOB_STATE_UNSPECIFIED"
    )
    jobs: list[scheduler_pb2.Job] = []
    token = ""
    with _client(args) as pg:
        while True:
            resp = pg.scheduler.ListJobs(
                scheduler_pb2.ListJobsRequest(
                    state=state, page=common_pb2.PageRequest(page_size=1000, page_token=token)
                )
            )
            jobs.extend(resp.jobs)
            token = resp.page.next_page_token
            if not token:
                break
    if args.json:
        emit_json([job_dict(j) for j in jobs])
        return 0
    if not jobs:
        say("no jobs")
        return 0
    rows = [
        [
            j.job_id,
            _kind(j.spec.kind),
            _slug(j.state),
            j.spec.model,
            _chips(j),
            _size(j),
            j.attempt,
            f"{j.steps_done}/{j.spec.batch.steps}" if j.spec.batch.steps else "",
            _where(j),
        ]
        for j in jobs
    ]
    say(
        table(
            ["job", "kind", "state", "model", "chips", "devices", "attempt", "steps", "where"], rows
        )
    )
    return 0


def show(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        job = pg.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=args.job_id)).job
    if args.json:
        emit_json(job_dict(job))
        return 0
    lines = [
        f"job       {job.job_id}  ({job.spec.display_name})"
        if job.spec.display_name
        else f"job       {job.job_id}",
        f"kind      {_kind(job.spec.kind)}  priority {job.spec.priority}"
        + ("  preemptible" if job.spec.preemptible else ""),
        f"state     {_slug(job.state)} (attempt {job.attempt}): {job.state_reason}",
        f"model     {job.spec.model} {job.spec.precision and _precision(job.spec.precision)}",
        f"chips     {_chips(job)}",
        f"devices   {_size(job)}" + ("  gang" if job.spec.gang else ""),
    ]
    if job.state == scheduler_pb2.JOB_STATE_QUEUED and job.pending_reason:
        lines.append(f"pending   {job.pending_reason}")
    if job.spec.batch.steps:
        lines.append(f"steps     {job.steps_done}/{job.spec.batch.steps} done")
    for a in job.assignments:
        lines.append(
            f"runs on   {a.node_id} ({a.chip}) devices {list(a.device_indexes)} share "
            f"{a.device_share:g} memory {a.memory_bytes / GIB:.1f} GiB each"
            + (f"  task {a.task_id} {a.steps_done}/{a.steps}" if a.task_id and a.steps else "")
        )
    say("\n".join(lines))
    return 0


def _precision(value: int) -> str:
    return {int(v): k for k, v in PRECISION_BY_NAME.items()}.get(value, "")


def cancel(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        job = pg.scheduler.CancelJob(
            scheduler_pb2.CancelJobRequest(job_id=args.job_id, reason=args.reason)
        ).job
    if args.json:
        emit_json(job_dict(job))
    else:
        say(f"{job.job_id} {_slug(job.state)}: {job.state_reason}")
    return 0


def queue(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        resp = pg.scheduler.GetQueue(scheduler_pb2.GetQueueRequest())
    if args.json:
        emit_json(
            {
                "queued_total": resp.queued_total,
                "entries": [
                    {
                        "position": e.position,
                        "job_id": e.job.job_id,
                        "priority": e.job.spec.priority,
                        "pending_reason": e.job.pending_reason,
                        "message": e.job.state_reason,
                        "job": job_dict(e.job),
                    }
                    for e in resp.entries
                ],
            }
        )
        return 0
    if not resp.entries:
        say(f"none of your jobs waits ({resp.queued_total} queued in all)")
        return 0
    rows = [
        [
            e.position,
            e.job.job_id,
            e.job.spec.priority,
            _chips(e.job),
            _size(e.job),
            e.job.pending_reason,
            e.job.state_reason,
        ]
        for e in resp.entries
    ]
    say(table(["pos", "job", "prio", "chips", "devices", "reason", "why"], rows))
    say(f"{len(resp.entries)} of yours, {resp.queued_total} queued in all")
    return 0


def pool(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        devices = pg.scheduler.GetPool(scheduler_pb2.GetPoolRequest()).devices
    if args.json:
        emit_json(
            [
                MessageToDict(
                    d, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
                for d in devices
            ]
        )
        return 0
    if not devices:
        say("the pool has no devices")
        return 0
    rows = [
        [
            d.node_id,
            d.chip,
            d.device_index,
            d.node_state,
            f"{d.memory_held_bytes / GIB:.1f}/{d.memory_total_bytes / GIB:.1f}",
            f"{d.share_held * 100:.0f}%",
            " ".join(
                f"{h.job_id if h.own else '(other tenant)'}:{h.device_share * 100:.0f}%"
                for h in d.holdings
            ),
        ]
        for d in devices
    ]
    say(table(["node", "chip", "dev", "node state", "memory GiB", "share", "held by"], rows))
    return 0
