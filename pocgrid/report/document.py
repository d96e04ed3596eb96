"""Reading an evaluation document: the JSON of ``pocgrid eval run --json``.

The document is the evaluator's contract (``{"results": [...], "recommendation": {...}}``, see
docs/evaluation.md); every report renders from it, so a stored evaluation, a fresh run and a
file a user kept all give the same table, HTML and vLLM files. These helpers only read: they
tolerate a missing optional figure (``None``) and never invent one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Doc = Mapping[str, Any]

#: Latency statistics in each result, as the evaluator names them (vLLM's names).
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
STATS = ("mean", "median", "p90", "p99")


def results(doc: Doc) -> list[Doc]:
    items = doc.get("results") or []
    return [r for r in items if isinstance(r, Mapping)]


def recommendation(doc: Doc) -> Doc:
    rec = doc.get("recommendation")
    return rec if isinstance(rec, Mapping) else {}


def number(value: object) -> float | None:
    """A finite number, or None (missing, null, NaN, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def stat(result: Doc, latency: str, which: str) -> float | None:
    block = result.get(latency)
    return number(block.get(which)) if isinstance(block, Mapping) else None


def runnable(result: Doc) -> bool:
    """A chip that could not run the scenario says so: ``runnable`` false, or a reason with no
    throughput figure."""
    flag = result.get("runnable")
    if isinstance(flag, bool):
        return flag
    return number(result.get("request_throughput")) is not None or not result.get("reason")


def kind(result: Doc) -> str:
    """``llm`` when the result counts tokens, ``samples`` otherwise."""
    declared = result.get("kind") or result.get("scenario_kind")
    if declared in ("llm", "samples"):
        return str(declared)
    tokens = number(result.get("output_tokens_per_s"))
    return "llm" if tokens else "samples"


def verdict(result: Doc) -> str:
    """VALID / INVALID (LoadGen's words), whatever enum spelling the document carries."""
    raw = str(result.get("verdict") or "")
    return raw.removeprefix("VERDICT_") or ("INVALID" if not runnable(result) else "")


def cost_value(result: Doc) -> tuple[float | None, str]:
    """The cost figure and its unit: per million output tokens for LLM scenarios, per thousand
    samples otherwise; a bare number is taken as the scenario kind's unit."""
    cost = result.get("cost")
    llm = kind(result) == "llm"
    if isinstance(cost, Mapping):
        currency = str(cost.get("currency") or "")
        for key, unit in (
            ("per_million_tokens", "per 1M output tokens"),
            ("per_thousand_samples", "per 1k samples"),
        ):
            v = number(cost.get(key))
            if v is not None:
                return v, f"{currency} {unit}".strip()
        return None, ""
    v = number(cost)
    return v, ("per 1M output tokens" if llm else "per 1k samples") if v is not None else ""


def by_scenario(items: Iterable[Doc]) -> dict[str, list[Doc]]:
    """Results grouped by the scenario they measured, in first-seen order (an industry pack
    evaluates several atomic scenarios)."""
    groups: dict[str, list[Doc]] = {}
    for r in items:
        groups.setdefault(str(r.get("scenario") or ""), []).append(r)
    return groups


def curve(result: Doc) -> list[Doc]:
    """The result's sweep or find-peak points (``curve``), ordered by load."""
    points = [p for p in (result.get("curve") or []) if isinstance(p, Mapping)]
    return sorted(points, key=lambda p: (number(p.get("qps")) or 0.0, p.get("concurrency") or 0))


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def chips(items: Sequence[Doc]) -> list[str]:
    return list(dict.fromkeys(str(r.get("chip") or "?") for r in items))
