"""Metrics of one run, named and defined as ``vllm bench serve`` defines them.

Per request (seconds on the agent's virtual clock, from its send time):

- TTFT = first token - sent; E2EL = last token - sent;
- TPOT = (E2EL - TTFT) / (output tokens - 1), for requests of more than one output token;
- ITL: every gap between consecutive output tokens (summarised by the agent, which holds them).

Only the requests that finished inside the steady-state window count (warm-up and drain
excluded, ``pocgrid.perf.serving.steady_state``); when a run has no window, all of them count
and the verdict says so. Throughputs are over the window's span: request throughput =
measured requests / span, output token throughput = their output tokens / span, total token
throughput = their prompt + output tokens / span. Goodput is the request throughput of the
measured requests that met **every** SLO bound (vLLM's ``--goodput``). The SLO is met when the
p99 of every bounded metric is within its bound; the LoadGen-style verdict is VALID when the
run reached a steady state, was not saturated, and (server mode, as MLPerf Server) met its
latency bounds.

MFU = achieved model FLOP/s / (devices x the chip's dense peak at the run's precision), with
model FLOPs = 2 x active parameters per processed token (prompt and output; the attention term
is left out, as PaLM's MFU definition does) or the catalogue's FLOPs per sample.
Energy = devices x TDP x run time (the catalogue's TDP: an upper bound, the emulator has no
power model); tokens per joule = output token throughput / (devices x TDP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pocgrid.v1 import agent_pb2, evaluator_pb2

#: Fewest measured requests a VALID run needs (vllm and LoadGen both want hundreds; the
#: steady-state check already asks for one batch turnover).
MIN_MEASURED = 50


@dataclass(frozen=True, slots=True)
class Bounds:
    """SLO bounds in milliseconds; 0 means none."""

    ttft_p99_ms: float = 0.0
    tpot_p99_ms: float = 0.0
    e2el_p99_ms: float = 0.0

    @classmethod
    def of(cls, slo: evaluator_pb2.Slo) -> Bounds:
        return cls(slo.p99_ttft_ms, slo.p99_tpot_ms, slo.p99_latency_ms)


def stats(values_ms: np.ndarray) -> evaluator_pb2.LatencyStats:
    v = values_ms[np.isfinite(values_ms)]
    if v.size == 0:
        return evaluator_pb2.LatencyStats()
    p50, p90, p99 = np.quantile(v, (0.5, 0.9, 0.99))
    return evaluator_pb2.LatencyStats(
        mean=float(v.mean()), median=float(p50), p90=float(p90), p99=float(p99)
    )


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """Per-request figures (ms) and the run's aggregates; every array in request order."""

    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    e2el_ms: np.ndarray
    measured: np.ndarray
    """Indexes of the requests that count."""
    good: np.ndarray
    """Boolean per request: met every SLO bound."""
    span_s: float
    request_throughput: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    input_tokens_per_s: float
    goodput: float
    violations: list[str] = field(default_factory=list)
    """SLO bounds whose p99 was exceeded, in words."""

    @property
    def slo_met(self) -> bool:
        return not self.violations


def per_request(
    served: agent_pb2.ServeRequestsResponse, output_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TTFT, TPOT and E2EL of each request, milliseconds (TPOT NaN for one-token outputs)."""
    sent = np.asarray(served.arrival_s)
    first = np.asarray(served.first_token_s)
    finish = np.asarray(served.finish_s)
    ttft = (first - sent) * 1e3
    e2el = (finish - sent) * 1e3
    decode = (output_len - 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(decode > 0, (e2el - ttft) / decode, np.nan)
    return ttft, tpot, e2el


def compute(
    served: agent_pb2.ServeRequestsResponse,
    input_len: np.ndarray,
    output_len: np.ndarray,
    bounds: Bounds,
) -> RunMetrics:
    ttft, tpot, e2el = per_request(served, output_len)
    finish = np.asarray(served.finish_s)
    sent = np.asarray(served.arrival_s)
    w = served.window
    measured = np.flatnonzero((finish > w.start_s) & (finish <= w.end_s))
    if measured.size and w.end_s > w.start_s:
        span = w.end_s - w.start_s
    else:
        measured = np.arange(finish.size)
        span = float(finish.max() - sent.min()) if finish.size else 0.0
    good = np.ones(finish.size, dtype=bool)
    violations: list[str] = []
    for name, values, bound in (
        ("TTFT", ttft, bounds.ttft_p99_ms),
        ("TPOT", tpot, bounds.tpot_p99_ms),
        ("E2EL", e2el, bounds.e2el_p99_ms),
    ):
        if not bound:
            continue
        # A one-token request has no TPOT: it cannot miss a TPOT bound (vLLM counts it good).
        good &= ~(values > bound)
        p99 = stats(values[measured]).p99
        if p99 > bound:
            violations.append(f"{name} p99 {p99:.4g} ms > {bound:.4g} ms")
    safe = span if span > 0 else math.inf
    n = measured.size
    out_tokens = float(output_len[measured].sum())
    in_tokens = float(input_len[measured].sum())
    return RunMetrics(
        ttft_ms=ttft,
        tpot_ms=tpot,
        e2el_ms=e2el,
        measured=measured,
        good=good,
        span_s=span,
        request_throughput=n / safe,
        output_tokens_per_s=out_tokens / safe,
        total_tokens_per_s=(out_tokens + in_tokens) / safe,
        input_tokens_per_s=in_tokens / safe,
        goodput=int(good[measured].sum()) / safe,
        violations=violations,
    )


def verdict(
    served: agent_pb2.ServeRequestsResponse, metrics: RunMetrics, mode: str
) -> tuple[evaluator_pb2.Verdict.ValueType, list[str]]:
    """LoadGen-style: VALID, or INVALID with every reason."""
    reasons: list[str] = []
    w = served.window
    if w.saturated:
        reasons.append(w.reason)
    elif not w.reached:
        reasons.append(f"no steady state: {w.reason}")
    if metrics.measured.size < MIN_MEASURED:
        reasons.append(
            f"{metrics.measured.size} requests measured, fewer than the {MIN_MEASURED} needed"
        )
    if mode == "server":
        reasons.extend(f"latency bound missed: {v}" for v in metrics.violations)
    if reasons:
        return evaluator_pb2.VERDICT_INVALID, reasons
    return evaluator_pb2.VERDICT_VALID, []


def mfu(
    flops_per_token: float, tokens_per_s: float, devices: int, peak_tflops: float | None
) -> float | None:
    if not peak_tflops or devices < 1:
        return None
    return flops_per_token * tokens_per_s / (devices * peak_tflops * 1e12)


def energy(
    tdp_w: float | None, devices: int, run_seconds: float, output_tokens_per_s: float
) -> tuple[float | None, float | None, str]:
    """(energy of the run in Wh, output tokens per joule, the note on how)."""
    if not tdp_w:
        return None, None, "not estimated: the catalogue has no TDP for this chip"
    watts = tdp_w * devices
    return (
        watts * run_seconds / 3600.0,
        output_tokens_per_s / watts if output_tokens_per_s else None,
        f"{devices} x {tdp_w:g} W TDP over the run (an upper bound: no power model)",
    )


def merged_itl(summary: agent_pb2.LatencySummary) -> evaluator_pb2.LatencyStats:
    return evaluator_pb2.LatencyStats(
        mean=summary.mean, median=summary.median, p90=summary.p90, p99=summary.p99
    )


def p99_of(metrics: RunMetrics, what: str) -> float:
    values = {"ttft": metrics.ttft_ms, "tpot": metrics.tpot_ms, "e2el": metrics.e2el_ms}[what]
    return stats(values[metrics.measured]).p99


def fill(
    result: evaluator_pb2.ChipResult,
    served: agent_pb2.ServeRequestsResponse,
    metrics: RunMetrics,
    *,
    llm: bool,
) -> None:
    """Copy the run's figures into ``result``."""
    m = metrics.measured
    result.measured_requests = int(m.size)
    result.duration_s = float(np.max(np.asarray(served.finish_s))) if served.finish_s else 0.0
    result.request_throughput = metrics.request_throughput
    result.output_tokens_per_s = metrics.output_tokens_per_s if llm else 0.0
    result.total_tokens_per_s = metrics.total_tokens_per_s if llm else 0.0
    result.ttft_ms.CopyFrom(stats(metrics.ttft_ms[m]))
    if llm:
        result.tpot_ms.CopyFrom(stats(metrics.tpot_ms[m]))
        result.itl_ms.CopyFrom(merged_itl(served.itl_ms))
    result.e2el_ms.CopyFrom(stats(metrics.e2el_ms[m]))
    result.goodput = metrics.goodput
    result.good_requests = int(metrics.good[m].sum())
    result.slo_met = metrics.slo_met
    del result.slo_violations[:]
    result.slo_violations.extend(metrics.violations)
    result.steady_state = served.window.reached
    result.steady_state_reason = served.window.reason
    result.saturated = served.window.saturated
    result.profile = served.profile


def sequence_stats(values: Sequence[float]) -> evaluator_pb2.LatencyStats:
    return stats(np.asarray(values, dtype=np.float64))
