"""An evaluation as plain data: the JSON shape of ``pocgrid eval run --json``.

``{"results": [...], "recommendation": {...}}`` plus the evaluation's id, scenario, state and
SLO. One result per (scenario, chip type); a chip that cannot run the scenario is in the list
with ``reason`` set and null figures. ``docs/evaluation.md`` defines every key.
"""

from __future__ import annotations

from typing import Any

from pocgrid.v1 import evaluator_pb2

#: Latency keys, each ``{mean, median, p90, p99}`` in milliseconds (vLLM's names).
LATENCY_KEYS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
_MODES = {
    evaluator_pb2.EVALUATION_MODE_OFFLINE: "offline",
    evaluator_pb2.EVALUATION_MODE_SERVER: "server",
    evaluator_pb2.EVALUATION_MODE_SINGLE_STREAM: "single-stream",
    evaluator_pb2.EVALUATION_MODE_CONCURRENCY: "concurrency",
    evaluator_pb2.EVALUATION_MODE_FIND_PEAK: "find-peak",
    evaluator_pb2.EVALUATION_MODE_SWEEP: "sweep",
}
MODE_VALUES = {v: k for k, v in _MODES.items()}
MODES = tuple(_MODES.values())


def _stats(s: evaluator_pb2.LatencyStats) -> dict[str, float]:
    return {"mean": s.mean, "median": s.median, "p90": s.p90, "p99": s.p99}


def _opt(message: Any, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None


def slo_to_dict(slo: evaluator_pb2.Slo) -> dict[str, Any]:
    """The bounds, None where there is none."""
    return {
        "ttft_p99_ms": slo.p99_ttft_ms or None,
        "tpot_p99_ms": slo.p99_tpot_ms or None,
        "e2el_p99_ms": slo.p99_latency_ms or None,
        "min_accuracy_ratio": slo.min_accuracy_ratio or None,
        "source": slo.source,
    }


def result_to_dict(r: evaluator_pb2.ChipResult) -> dict[str, Any]:
    ran = r.runnable
    llm = r.kind == "llm"
    out: dict[str, Any] = {
        "chip": r.chip,
        "vendor": r.vendor,
        "domestic": r.domestic,
        "scenario": r.scenario,
        "kind": r.kind,
        "model": r.model,
        "node_id": r.node_id or None,
        "placement": r.placement,
        "job_id": r.job_id or None,
        "runnable": ran,
        "devices": r.devices if ran else None,
        "precision": r.precision or None,
        "precision_note": r.precision_note,
        "profile": r.profile or None,
        "mode": r.mode,
        "requests": r.requests if ran else None,
        "measured_requests": r.measured_requests if ran else None,
        "offered_qps": r.offered_qps if ran and r.offered_qps else None,
        "concurrency": r.concurrency if ran and r.concurrency else None,
        "duration_s": r.duration_s if ran else None,
        "request_throughput": r.request_throughput if ran else None,
        "output_tokens_per_s": r.output_tokens_per_s if ran and llm else None,
        "total_tokens_per_s": r.total_tokens_per_s if ran and llm else None,
    }
    for key in LATENCY_KEYS:
        stats = getattr(r, key)
        token_metric = key in ("tpot_ms", "itl_ms")
        out[key] = _stats(stats) if ran and (llm or not token_metric) else None
    cost: dict[str, Any] | None = None
    if r.HasField("cost"):
        c = r.cost
        cost = {
            "per_million_tokens": _opt(c, "per_million_tokens"),
            "per_thousand_samples": _opt(c, "per_thousand_samples"),
            "currency": c.currency,
            "price_per_device_hour": c.price_per_device_hour,
            "price_source": c.price_source,
        }
    out.update(
        {
            "goodput": r.goodput if ran else None,
            "good_requests": r.good_requests if ran else None,
            "accuracy": _opt(r, "accuracy"),
            "accuracy_note": r.accuracy_note,
            "cost": cost,
            "cost_note": r.cost_note,
            "energy_wh": _opt(r, "energy_wh"),
            "tokens_per_joule": _opt(r, "tokens_per_joule"),
            "energy_note": r.energy_note,
            "mfu": _opt(r, "mfu"),
            "slo": slo_to_dict(r.slo),
            "slo_met": r.slo_met if ran else False,
            "slo_violations": list(r.slo_violations),
            "verdict": evaluator_pb2.Verdict.Name(r.verdict).removeprefix("VERDICT_")
            if r.verdict
            else "INVALID",
            "verdict_reasons": list(r.verdict_reasons),
            "steady_state": {
                "reached": r.steady_state,
                "reason": r.steady_state_reason,
                "saturated": r.saturated,
            }
            if ran
            else None,
            "peak_qps": _opt(r, "peak_qps"),
            "curve": [
                {
                    "concurrency": p.concurrency,
                    "qps": p.qps,
                    "output_tokens_per_s": p.output_tokens_per_s,
                    "output_tokens_per_s_per_user": p.output_tokens_per_s_per_user,
                    "output_tokens_per_s_per_device": p.output_tokens_per_s_per_device,
                    "ttft_p99_ms": p.ttft_p99_ms,
                    "tpot_p99_ms": p.tpot_p99_ms,
                    "e2el_p99_ms": p.e2el_p99_ms,
                    "slo_met": p.slo_met,
                    "steady": p.steady,
                }
                for p in r.curve
            ],
            "reason": None if ran else r.reason,
        }
    )
    return out


def recommendation_to_dict(rec: evaluator_pb2.Recommendation) -> dict[str, Any]:
    return {
        "cheapest": rec.cheapest or None,
        "cheapest_reason": rec.cheapest_reason,
        "fastest": rec.fastest or None,
        "fastest_reason": rec.fastest_reason,
        "best_domestic": rec.best_domestic or None,
        "best_domestic_reason": rec.best_domestic_reason,
        "summary": rec.summary,
    }


def training_to_dict(t: evaluator_pb2.TrainingResult) -> dict[str, Any]:
    """A training scenario's pool result: per split, the virtual step and scaling efficiency."""
    spec = t.spec
    return {
        "chips": list(t.chips),
        "devices": list(t.devices),
        "precisions": list(t.precisions),
        "samples_per_s": list(t.samples_per_s),
        "model": {
            "inputs": spec.inputs,
            "hidden": spec.hidden,
            "classes": spec.classes,
            "samples": spec.samples,
            "batch": spec.batch,
            "steps": spec.steps,
            "lr": spec.lr,
        },
        "splits": [
            {
                "split": s.split,
                "batch": list(s.batch),
                "compute_ms": list(s.compute_ms),
                "all_reduce_ms": s.all_reduce_ms,
                "all_reduce_algorithm": s.all_reduce_algorithm,
                "step_ms": s.step_ms,
                "ideal_step_ms": s.ideal_step_ms,
                "scaling_efficiency": s.scaling_efficiency,
                "losses": list(s.losses),
                "max_loss_deviation": s.max_loss_deviation,
            }
            for s in t.splits
        ],
        "single_process_losses": list(t.single_process_losses),
        "proportional_speedup": t.proportional_speedup,
    }


def evaluation_to_dict(e: evaluator_pb2.Evaluation) -> dict[str, Any]:
    request = e.request
    return {
        "evaluation_id": e.evaluation_id,
        "scenario": request.scenario,
        "scenario_kind": e.scenario_kind,
        "model": e.model or None,
        "mode": _MODES.get(request.mode, "default"),
        "seed": request.seed,
        "state": evaluator_pb2.EvaluationState.Name(e.state).removeprefix("EVALUATION_STATE_"),
        "placement": e.placement,
        "error": e.error or None,
        "slo": {
            "ttft_p99_ms": e.slo.p99_ttft_ms or None,
            "tpot_p99_ms": e.slo.p99_tpot_ms or None,
            "e2el_p99_ms": e.slo.p99_latency_ms or None,
            "source": e.slo.source,
        },
        "progress": {
            "runs_done": e.progress.runs_done,
            "runs_total": e.progress.runs_total,
            "current": e.progress.current,
        },
        "created_at": e.created_at.ToJsonString() if e.HasField("created_at") else None,
        "finished_at": e.finished_at.ToJsonString() if e.HasField("finished_at") else None,
        "results": [result_to_dict(r) for r in e.results],
        "recommendation": recommendation_to_dict(e.recommendation),
        "training": training_to_dict(e.training) if e.HasField("training") else None,
    }
