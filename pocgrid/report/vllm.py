"""``--format vllm``: one result file per chip with the keys of ``vllm bench serve --save-result``.

Key names, their order and the file name follow vLLM's ``vllm/benchmarks/serve.py`` (commit
009e6d4a1cd6ba3fb2a9fc00f4ec06f5297232a1; docs/evaluation.md cites it): the run's settings
(``date``, ``backend``, ``label``, ``model_id``, ``num_prompts``, ``request_rate``,
``burstiness``, ``max_concurrency``), the totals (``duration``, ``completed``,
``request_throughput``, ``request_goodput``, ``output_throughput``, ``total_token_throughput``)
and per metric ``mean_/median_/std_/p99_<metric>_ms`` for ttft, tpot, itl and e2el (vLLM writes
the percentiles it was asked for: p90 and p99 here).

What the evaluation does not carry is ``null`` rather than made up: the standard deviations
(the evaluator keeps mean, median, p90 and p99) and vLLM's per-second peaks. pocgrid's own
figures ride along under a ``pocgrid`` key, which vLLM's readers ignore.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pocgrid.report.document import Doc, cost_value, number, results, runnable, stat

#: vLLM's metric names in its result file, and the evaluator's latency blocks they come from.
_METRICS = (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("itl", "itl_ms"), ("e2el", "e2el_ms"))


def vllm_result(r: Doc, doc: Doc, *, date: str) -> dict[str, Any]:
    request = doc.get("request") if isinstance(doc.get("request"), dict) else {}
    assert isinstance(request, dict)
    qps = number(r.get("offered_qps")) or number(request.get("qps"))
    concurrency = r.get("concurrency") or request.get("concurrency") or None
    model = str(r.get("model") or doc.get("model") or "")
    measured = r.get("measured_requests") or r.get("requests") or 0
    duration = number(r.get("duration_s"))
    req_tp = number(r.get("request_throughput"))
    out_tp = number(r.get("output_tokens_per_s"))
    total_tp = number(r.get("total_tokens_per_s"))
    out: dict[str, Any] = {
        "date": date,
        "endpoint_type": "pocgrid",
        "backend": "pocgrid",
        "label": f"pocgrid-{r.get('chip')}",
        "model_id": model,
        "tokenizer_id": model,
        "num_prompts": r.get("requests") or request.get("requests") or measured,
        "request_rate": qps if qps else "inf",
        "burstiness": number(request.get("burstiness")) or 1.0,
        "max_concurrency": concurrency,
        "duration": duration,
        "completed": measured,
        "failed": 0,
        "total_input_tokens": None,
        "total_output_tokens": None,
        "request_throughput": req_tp,
        "request_goodput": number(r.get("goodput")),
        "output_throughput": out_tp,
        "total_token_throughput": total_tp,
        "max_output_tokens_per_s": None,
        "max_concurrent_requests": None,
    }
    if duration is not None and out_tp is not None:
        out["total_output_tokens"] = round(out_tp * duration)
        if total_tp is not None:
            out["total_input_tokens"] = round((total_tp - out_tp) * duration)
    for name, key in _METRICS:
        out[f"mean_{name}_ms"] = stat(r, key, "mean")
        out[f"median_{name}_ms"] = stat(r, key, "median")
        out[f"std_{name}_ms"] = None
        out[f"p90_{name}_ms"] = stat(r, key, "p90")
        out[f"p99_{name}_ms"] = stat(r, key, "p99")
    cost, unit = cost_value(r)
    out["pocgrid"] = {
        "chip": r.get("chip"),
        "devices": r.get("devices"),
        "precision": r.get("precision"),
        "profile": r.get("profile"),
        "scenario": r.get("scenario"),
        "accuracy": number(r.get("accuracy")),
        "cost": cost,
        "cost_unit": unit,
        "energy_wh": number(r.get("energy_wh")),
        "slo_met": r.get("slo_met"),
        "verdict": r.get("verdict"),
        "virtual_clock": True,
    }
    return out


def _file_name(label: str, rate: object, concurrency: object, model: str, date: str) -> str:
    """vLLM's own pattern: ``{label}-{request_rate}qps[-concurrency{N}]-{model}-{date}.json``."""
    conc = f"-concurrency{concurrency}" if concurrency else ""
    base = model.split("/")[-1] or "model"
    name = f"{label}-{rate}qps{conc}-{base}-{date}.json"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_vllm_results(doc: Doc, directory: Path, *, now: datetime | None = None) -> list[Path]:
    """One file per chip that ran (a chip that could not run has no vLLM figures to write)."""
    date = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results(doc):
        if not runnable(r):
            continue
        data = vllm_result(r, doc, date=date)
        scenario = str(r.get("scenario") or "")
        label = data["label"] + (f"-{scenario}" if scenario else "")
        path = directory / _file_name(
            label, data["request_rate"], data["max_concurrency"], data["model_id"], date
        )
        path.write_text(json.dumps(data) + "\n", encoding="utf-8")
        written.append(path)
    return written
