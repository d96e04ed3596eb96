"""The recommendation: the cheapest chip type meeting the SLO, the fastest, the best domestic.

A chip type qualifies when every scenario it ran (one, or each component of a pack) ran, met
its SLO and was VALID. Among those:

- cheapest: the lowest cost, share-weighted over a pack's components (per million output
  tokens for LLM scenarios, per thousand samples otherwise); chips without a price do not take
  part, and when none has a price the reason says so;
- fastest: under a fixed offered load (server, single-stream, concurrency) every qualifying
  chip serves the same requests, so the fastest is the one that answers soonest: the lowest
  share-weighted median end-to-end latency; in throughput modes (offline, find-peak, sweep) it
  is the highest share-weighted goodput (or peak rate) per device, since deployments differ in
  size;
- best domestic: among domestic chip types, the cheapest when prices exist, else the fastest.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from pocgrid.v1 import evaluator_pb2


def _qualifies(results: Sequence[evaluator_pb2.ChipResult]) -> str:
    """Empty when every run of the chip met its SLO; else why not (the first problem)."""
    for r in results:
        if not r.runnable:
            return f"{r.scenario}: cannot run ({r.reason})"
        if not r.slo_met:
            return f"{r.scenario}: SLO missed ({'; '.join(r.slo_violations)})"
        if r.verdict != evaluator_pb2.VERDICT_VALID:
            return f"{r.scenario}: INVALID ({'; '.join(r.verdict_reasons)})"
    return ""


def _cost(results: Sequence[evaluator_pb2.ChipResult], shares: Mapping[str, float]) -> float | None:
    total = 0.0
    for r in results:
        if not r.HasField("cost"):
            return None
        c = r.cost
        value = (
            c.per_million_tokens
            if c.HasField("per_million_tokens")
            else (c.per_thousand_samples if c.HasField("per_thousand_samples") else None)
        )
        if value is None:
            return None
        total += shares.get(r.scenario, 1.0) * value
    return total


THROUGHPUT_MODES = ("offline", "find-peak", "sweep")


def _throughput_mode(results: Sequence[evaluator_pb2.ChipResult]) -> bool:
    return all(r.mode in THROUGHPUT_MODES for r in results)


def _speed(results: Sequence[evaluator_pb2.ChipResult], shares: Mapping[str, float]) -> float:
    """Larger is faster: rate per device in throughput modes, minus latency otherwise."""
    if _throughput_mode(results):
        return sum(
            shares.get(r.scenario, 1.0)
            * (r.peak_qps if r.HasField("peak_qps") else r.goodput)
            / max(1, r.devices)
            for r in results
        )
    return -sum(shares.get(r.scenario, 1.0) * r.e2el_ms.median for r in results)


def _speed_text(value: float, throughput: bool) -> str:
    if throughput:
        return f"{value:.4g} good requests/s per device"
    return f"{-value:.4g} ms median end-to-end latency"


def recommend(
    results: Sequence[evaluator_pb2.ChipResult], shares: Mapping[str, float]
) -> evaluator_pb2.Recommendation:
    by_chip: dict[str, list[evaluator_pb2.ChipResult]] = defaultdict(list)
    for r in results:
        by_chip[r.chip].append(r)
    rec = evaluator_pb2.Recommendation()
    qualified = {chip: rs for chip, rs in by_chip.items() if not _qualifies(rs)}
    if not qualified:
        why = "; ".join(f"{chip}: {_qualifies(rs)}" for chip, rs in sorted(by_chip.items()))
        rec.summary = "No chip type met the SLO. " + (why or "No chip was evaluated.")
        rec.cheapest_reason = rec.fastest_reason = rec.best_domestic_reason = "no chip met the SLO"
        return rec
    unit = (
        "per million output tokens"
        if any(r.output_tokens_per_s for r in results)
        else ("per thousand samples")
    )
    priced = {c: v for c, rs in qualified.items() if (v := _cost(rs, shares)) is not None}
    if priced:
        rec.cheapest = min(priced, key=lambda c: (priced[c], c))
        currency = qualified[rec.cheapest][0].cost.currency
        rec.cheapest_reason = (
            f"{priced[rec.cheapest]:.4g} {currency} {unit}, the lowest of the {len(priced)}"
            f" priced chip types that met the SLO"
        )
    else:
        rec.cheapest_reason = "no chip type that met the SLO has a price in the price book"
    speed = {c: _speed(rs, shares) for c, rs in qualified.items()}
    throughput = _throughput_mode(results)
    best = "the most" if throughput else "the lowest"
    rec.fastest = max(speed, key=lambda c: (speed[c], c))
    rec.fastest_reason = (
        f"{_speed_text(speed[rec.fastest], throughput)}, {best} of the {len(speed)} chip types"
        " that met the SLO"
    )
    domestic = [c for c in qualified if qualified[c][0].domestic]
    priced_domestic = [c for c in domestic if c in priced]
    if priced_domestic:
        rec.best_domestic = min(priced_domestic, key=lambda c: (priced[c], c))
        currency = qualified[rec.best_domestic][0].cost.currency
        rec.best_domestic_reason = (
            f"{priced[rec.best_domestic]:.4g} {currency} {unit}, the cheapest of the"
            f" {len(priced_domestic)} priced domestic chip types that met the SLO"
            f" ({_speed_text(speed[rec.best_domestic], throughput)})"
        )
    elif domestic:
        rec.best_domestic = max(domestic, key=lambda c: (speed[c], c))
        rec.best_domestic_reason = (
            f"{_speed_text(speed[rec.best_domestic], throughput)}, {best} of the"
            f" {len(domestic)} domestic chip types that met the SLO (none has a price)"
        )
    else:
        rec.best_domestic_reason = "no domestic chip type met the SLO"
    missed = sorted(set(by_chip) - set(qualified))
    parts = [f"{len(qualified)} of {len(by_chip)} chip types met the SLO."]
    if rec.cheapest:
        parts.append(f"Cheapest: {rec.cheapest} ({rec.cheapest_reason}).")
    parts.append(f"Fastest: {rec.fastest} ({rec.fastest_reason}).")
    if rec.best_domestic:
        parts.append(f"Best domestic: {rec.best_domestic} ({rec.best_domestic_reason}).")
    else:
        parts.append("No domestic chip type met the SLO.")
    if missed:
        parts.append("Missed: " + "; ".join(f"{c} ({_qualifies(by_chip[c])})" for c in missed[:8]))
        if len(missed) > 8:
            parts[-1] += f"; and {len(missed) - 8} more"
    rec.summary = " ".join(parts)
    return rec
