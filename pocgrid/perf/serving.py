"""Continuous-batching LLM serving simulator (vLLM-like) on a virtual clock.

The engine loop follows vLLM's scheduler: running requests first (one decode token each),
then continuing chunked prefills, then new requests in arrival order, within
``max_num_seqs`` sequences and ``max_num_batched_tokens`` tokens per step; KV-cache blocks of
``block_size`` tokens come from the memory left after weights, activations and the runtime
reserve. When a running request needs a block and none is free, the most recently admitted
request is preempted and later recomputed (prompt + tokens generated so far). Without
chunked prefill, a step is either prefill-only or decode-only, prefills first (vLLM V0).

Each step's duration comes from the deployment's roofline operator table. To price tens of
thousands of steps quickly the loop never walks the running requests: sums over decode
sequences (context, blocks needed, window crossings, completions) are kept as running
aggregates and event buckets keyed by the decode-step counter, so a step costs O(1) Python
work plus O(events).

Everything is deterministic for a given workload (and seed, for generated workloads).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
from numpy.typing import NDArray

from pocgrid.perf.efficiency import GIB_BYTES
from pocgrid.perf.errors import PerfInputError, UnsupportedInput
from pocgrid.perf.llm import (
    F_CONST,
    F_DEC_CTX,
    F_DEC_CTX_WIN,
    F_EXPERTS,
    F_LOGITS,
    F_PRE_CTX_READ,
    F_PRE_PAIRS,
    F_PRE_PAIRS_WIN,
    F_PRE_TOKENS,
    F_TOKENS,
    FEATURES,
    LlmDeployment,
    window_sum,
)
from pocgrid.perf.roofline import FloatArray
from pocgrid.perf.static_batch import SpecDecoding

IntArray = NDArray[np.int64]

_WAITING: Final = 0
_PREFILL: Final = 1
_DECODE: Final = 2
_DONE: Final = 3


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """Engine settings, named as vLLM names them."""

    max_num_seqs: int = 256
    """Most sequences in one step."""
    max_num_batched_tokens: int = 8192
    """Most tokens (decode + prefill) in one step."""
    block_size: int = 16
    """Tokens per KV-cache block."""
    chunked_prefill: bool = True
    """Split long prompts across steps and mix them with decodes (vLLM V1)."""
    gpu_memory_utilization: float = 0.9
    """Share of device memory the engine may use (weights + activations + KV cache)."""
    kv_cache_free_fraction: float | None = None
    """When set, the KV cache gets this share of the memory left after weights, activations
    and the reserve (TensorRT-LLM's ``kv_cache_free_gpu_mem_fraction``) instead of
    ``gpu_memory_utilization`` of the whole device (vLLM)."""
    reserve_kv_at_admission: bool = False
    """Reserve a request's whole KV cache (prompt + every output token) when it is admitted, so
    it is never preempted (TensorRT-LLM's GUARANTEED_NO_EVICT scheduler); False allocates
    blocks as tokens arrive and preempts the newest request when they run out (vLLM)."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise PerfInputError("max_num_seqs", "must be >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise PerfInputError("max_num_batched_tokens", "must be >= max_num_seqs")
        if self.block_size < 1:
            raise PerfInputError("block_size", "must be >= 1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise PerfInputError("gpu_memory_utilization", "must be in (0, 1]")
        if self.kv_cache_free_fraction is not None and not 0.0 < self.kv_cache_free_fraction <= 1:
            raise PerfInputError("kv_cache_free_fraction", "must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests: arrival time (s), prompt tokens and output tokens, sorted by arrival."""

    arrival_s: FloatArray
    input_len: IntArray
    output_len: IntArray
    concurrency: int | None = None
    """Closed loop: this many clients, each sending its next request the moment its previous
    one finishes (``--max-concurrency``); ``arrival_s`` is then ignored and the realised
    arrivals are in the result's workload."""

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise PerfInputError("concurrency", "must be >= 1")
        n = self.arrival_s.shape[0]
        if n < 1:
            raise PerfInputError("requests", "must be >= 1")
        if self.input_len.shape != (n,) or self.output_len.shape != (n,):
            raise PerfInputError("requests", "arrival, input and output arrays must match")
        if np.any(self.input_len < 1):
            raise PerfInputError("input_len", "must be >= 1")
        if np.any(self.output_len < 1):
            raise PerfInputError("output_len", "must be >= 1")
        if np.any(np.diff(self.arrival_s) < 0) or self.arrival_s[0] < 0:
            raise PerfInputError("arrival_s", "must be non-negative and sorted")

    @property
    def size(self) -> int:
        return int(self.arrival_s.shape[0])

    @classmethod
    def offline(cls, n: int, input_len: int, output_len: int) -> Workload:
        """MLPerf Offline: every request is there at t=0."""
        if n < 1:
            raise PerfInputError("requests", "must be >= 1")
        return cls(np.zeros(n), np.full(n, input_len, np.int64), np.full(n, output_len, np.int64))

    @classmethod
    def closed_loop(cls, n: int, concurrency: int, input_len: int, output_len: int) -> Workload:
        """Fixed concurrency: ``concurrency`` clients keep one request each in flight."""
        if n < 1:
            raise PerfInputError("requests", "must be >= 1")
        if concurrency < 1:
            raise PerfInputError("concurrency", "must be >= 1")
        return cls(
            np.zeros(n),
            np.full(n, input_len, np.int64),
            np.full(n, output_len, np.int64),
            concurrency=concurrency,
        )

    @classmethod
    def poisson(cls, n: int, qps: float, input_len: int, output_len: int, seed: int) -> Workload:
        """MLPerf Server: Poisson arrivals at ``qps`` requests per second, seeded."""
        if n < 1:
            raise PerfInputError("requests", "must be >= 1")
        if not qps > 0 or not math.isfinite(qps):
            raise PerfInputError("qps", "must be a positive number")
        rng = np.random.default_rng(seed)
        arrivals = np.cumsum(rng.exponential(1.0 / qps, n))
        return cls(arrivals, np.full(n, input_len, np.int64), np.full(n, output_len, np.int64))


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def of(cls, values: FloatArray) -> Percentiles:
        v = values[np.isfinite(values)]
        if v.size == 0:
            return cls(math.nan, math.nan, math.nan, math.nan)
        p50, p90, p99 = np.quantile(v, (0.5, 0.9, 0.99))
        return cls(float(p50), float(p90), float(p99), float(v.mean()))

    def scaled(self, factor: float) -> dict[str, float]:
        return {
            "p50": self.p50 * factor,
            "p90": self.p90 * factor,
            "p99": self.p99 * factor,
            "mean": self.mean * factor,
        }


@dataclass(frozen=True, slots=True)
class ServingSummary:
    """Aggregate figures of one simulated run (times in seconds)."""

    requests: int
    duration_s: float
    """From the first arrival to the last completion."""
    output_tokens_per_s: float
    requests_per_s: float
    ttft_s: Percentiles
    tpot_s: Percentiles
    latency_s: Percentiles
    mean_in_flight: float
    """Time-weighted mean of requests arrived and not finished (queued or running)."""
    mean_running: float
    """Time-weighted mean of requests held by the engine (prefilling or decoding)."""
    preemptions: int
    steps: int
    kv_cache_blocks: int

    def to_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "requests_per_s": self.requests_per_s,
            "ttft_ms": self.ttft_s.scaled(1e3),
            "tpot_ms": self.tpot_s.scaled(1e3),
            "latency_ms": self.latency_s.scaled(1e3),
            "mean_in_flight": self.mean_in_flight,
            "mean_running": self.mean_running,
            "preemptions": self.preemptions,
            "steps": self.steps,
            "kv_cache_blocks": self.kv_cache_blocks,
        }


@dataclass(slots=True)
class SimResult:
    """Per-request outcomes and the step timeline of one simulated run."""

    workload: Workload
    first_token_s: FloatArray
    finish_s: FloatArray
    preemptions_per_request: IntArray
    step_end_s: FloatArray
    """Virtual time at which each engine step ended."""
    decode_step_index: IntArray
    """Step index of each decode-advancing step, by decode counter."""
    runs: list[list[tuple[int, int, int]]]
    """Per request: (step that emitted the run's first token, first and end decode counter)."""
    kv_cache_blocks: int
    running_seconds: float
    """Integral of the engine's running-request count over time."""
    peak_kv_blocks: int
    """Most KV blocks in use at once."""
    step_tokens: FloatArray
    """Output tokens each engine step emitted (an expectation under speculative decoding)."""
    last_admission_s: float
    """End of the last step after which requests were still waiting or yet to arrive: from
    here on the engine only drains what it holds."""
    _summary: ServingSummary | None = field(default=None, repr=False)

    @property
    def ttft_s(self) -> FloatArray:
        return self.first_token_s - self.workload.arrival_s

    @property
    def latency_s(self) -> FloatArray:
        return self.finish_s - self.workload.arrival_s

    @property
    def tpot_s(self) -> FloatArray:
        """(finish - first token) / (output tokens - 1); NaN for one-token outputs."""
        decode_tokens = (self.workload.output_len - 1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out: FloatArray = np.where(
                decode_tokens > 0, (self.finish_s - self.first_token_s) / decode_tokens, np.nan
            )
        return out

    def token_times(self, request: int) -> FloatArray:
        """Virtual time each output token of ``request`` was produced (for streaming)."""
        parts: list[FloatArray] = []
        for emit_step, first, end in self.runs[request]:
            parts.append(self.step_end_s[emit_step : emit_step + 1])
            parts.append(self.step_end_s[self.decode_step_index[first:end]])
        return np.concatenate(parts) if parts else np.zeros(0)

    def in_flight_seconds(self) -> float:
        """Integral of the in-flight count over time, from the arrival/finish event timeline."""
        times = np.concatenate((self.workload.arrival_s, self.finish_s))
        deltas = np.concatenate((np.ones(self.workload.size), -np.ones(self.workload.size)))
        # At equal times, finishes sort before arrivals (a zero-width overlap either way).
        order = np.lexsort((deltas, times))
        t, d = times[order], deltas[order]
        count = np.cumsum(d)
        return float(np.sum(count[:-1] * np.diff(t)))

    def summary(self) -> ServingSummary:
        if self._summary is None:
            w = self.workload
            start = float(w.arrival_s.min())
            duration = float(self.finish_s.max()) - start
            safe = duration if duration > 0 else math.inf
            self._summary = ServingSummary(
                requests=w.size,
                duration_s=duration,
                output_tokens_per_s=float(w.output_len.sum()) / safe,
                requests_per_s=w.size / safe,
                ttft_s=Percentiles.of(self.ttft_s),
                tpot_s=Percentiles.of(self.tpot_s),
                latency_s=Percentiles.of(self.latency_s),
                mean_in_flight=self.in_flight_seconds() / safe,
                mean_running=self.running_seconds / safe,
                preemptions=int(self.preemptions_per_request.sum()),
                steps=int(self.step_end_s.shape[0]),
                kv_cache_blocks=self.kv_cache_blocks,
            )
        return self._summary


def kv_cache_blocks(deployment: LlmDeployment, config: ServingConfig) -> int:
    """KV blocks per replica: memory left after weights, activations and reserve."""
    memory = deployment.memory_gib * GIB_BYTES
    used = (
        deployment.weights_bytes_device()
        + deployment.activation_bytes(config.max_num_batched_tokens, config.max_num_seqs)
        + deployment.params.runtime_reserve_gib * GIB_BYTES
    )
    if config.kv_cache_free_fraction is not None:
        kv_budget = (memory - used) * config.kv_cache_free_fraction
    else:
        kv_budget = memory * config.gpu_memory_utilization - used
    block_bytes = config.block_size * deployment.kv_bytes_per_token_device()
    return max(0, int(kv_budget // block_bytes))


def request_concurrency(
    deployment: LlmDeployment, config: ServingConfig, input_len: int, output_len: int
) -> int:
    """Requests of these lengths one replica can hold at once: the sequence limit, or the
    KV cache divided by one whole request's blocks (0 when one does not fit)."""
    per_request = _blocks(input_len + output_len, config.block_size)
    return min(config.max_num_seqs, kv_cache_blocks(deployment, config) // per_request)


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def simulate(
    deployment: LlmDeployment,
    workload: Workload,
    config: ServingConfig,
    spec: SpecDecoding | None = None,
) -> SimResult:
    """Run ``workload`` through one replica of ``deployment`` and return what happened.

    With ``spec`` every decode step is a speculative verification that emits, on average,
    ``acceptance_length`` tokens per sequence; it needs ``reserve_kv_at_admission`` (the KV a
    request will hold is then known whatever the acceptance) and a model without sliding
    windows. ``token_times`` then gives one time per verification step.
    """
    bs = config.block_size
    total_blocks = kv_cache_blocks(deployment, config)
    longest = int((workload.input_len + workload.output_len).max())
    if _blocks(longest, bs) > total_blocks:
        raise UnsupportedInput(
            "input_len",
            f"a request of {longest} tokens needs {_blocks(longest, bs)} KV blocks but only "
            f"{total_blocks} fit in memory after the weights",
        )
    if not config.chunked_prefill and longest > config.max_num_batched_tokens:
        raise PerfInputError(
            "max_num_batched_tokens",
            f"must be >= {longest} (prompt + output) when chunked prefill is off",
        )

    table = deployment.op_table
    window = deployment.shape.sliding_window
    moe = deployment.shape.moe
    reserve = config.reserve_kv_at_admission
    accept = 1.0 if spec is None else spec.acceptance_length
    drafted = 0 if spec is None else spec.drafted
    speculative = drafted > 0 or accept != 1.0
    draft_cost = 0.0 if spec is None else spec.draft_cost * drafted
    if speculative and not reserve:
        raise UnsupportedInput(
            "acceptance_length",
            "speculative decoding in the simulator needs reserve_kv_at_admission",
        )
    if speculative and window is not None:
        raise UnsupportedInput(
            "acceptance_length", "speculative decoding is not simulated for sliding windows"
        )
    n = workload.size
    closed = workload.concurrency
    # The engine sees a request once the front end has handed it over.
    front = deployment.params.request_overhead_s
    arrival = (workload.arrival_s + front).tolist()
    if closed is not None:
        # The first ``closed`` clients send at t=0; each later request follows a completion.
        arrival = [front if i < closed else math.inf for i in range(n)]
    released = min(n, closed) if closed is not None else n
    prompt_len = workload.input_len.tolist()
    out_len = workload.output_len.tolist()

    state = [_WAITING] * n
    generated = [0] * n
    prompt_eff = [0] * n
    done = [0] * n
    held = [0] * n  # blocks held while prefilling (decode blocks follow from the counter)
    s0 = [0] * n
    ctx0 = [0] * n
    gen0 = [0] * n
    version = [0] * n
    preempted = [0] * n
    first_token = [math.nan] * n
    finish = [math.nan] * n
    runs: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    run_open: list[tuple[int, int] | None] = [None] * n

    free = total_blocks
    min_free = total_blocks
    waiting: deque[int] = deque()
    running: dict[int, None] = {}  # admission order; the last one is preempted first
    prefilling: dict[int, None] = {}
    # decode aggregates, valid at decode counter s
    s = 0
    n_dec = 0
    k_sum = 0  # sum(ctx0 - s0): decode contexts sum to k_sum + n_dec * s
    c_sum = 0  # sum(ctx0) and sum(s0), for speculative steps (context grows by accept)
    s0_sum = 0
    phase = [0] * bs
    finish_at: dict[int, list[tuple[int, int]]] = {}
    n_under = 0  # decode sequences still inside the sliding window
    k_under = 0
    cross_at: dict[int, list[tuple[int, int]]] = {}
    under = [False] * n

    step_end: list[float] = []
    step_tokens: list[float] = []  # output tokens emitted by each step
    decode_steps: list[int] = []
    last_admission_step = -1
    now = 0.0
    running_seconds = 0.0
    next_arrival = 0
    completed = 0
    x = np.zeros(len(FEATURES))
    x[F_CONST] = 1.0

    def decode_steps_left(rid: int) -> int:
        remaining: int = out_len[rid] - gen0[rid]
        return math.ceil(remaining / accept) if speculative else remaining

    def enter_decode(rid: int, start: int) -> None:
        nonlocal n_dec, k_sum, n_under, k_under, c_sum, s0_sum
        state[rid] = _DECODE
        s0[rid], ctx0[rid], gen0[rid] = start, prompt_eff[rid], generated[rid]
        n_dec += 1
        k_sum += ctx0[rid] - start
        c_sum += ctx0[rid]
        s0_sum += start
        if not reserve:
            phase[(ctx0[rid] - start) % bs] += 1
        last = start + decode_steps_left(rid) - 1
        finish_at.setdefault(last, []).append((rid, version[rid]))
        if window is not None:
            cross = start + window - ctx0[rid]
            if cross > start:
                under[rid] = True
                n_under += 1
                k_under += ctx0[rid] - start
                cross_at.setdefault(cross, []).append((rid, version[rid]))

    def leave_decode(rid: int, at: int) -> int:
        """Drop ``rid`` from the decode aggregates at counter ``at``; returns its blocks."""
        nonlocal n_dec, k_sum, n_under, k_under, c_sum, s0_sum
        n_dec -= 1
        k_sum -= ctx0[rid] - s0[rid]
        c_sum -= ctx0[rid]
        s0_sum -= s0[rid]
        if not reserve:
            phase[(ctx0[rid] - s0[rid]) % bs] -= 1
        if under[rid]:
            under[rid] = False
            n_under -= 1
            k_under -= ctx0[rid] - s0[rid]
        if speculative:
            generated[rid] = min(out_len[rid], gen0[rid] + math.ceil(accept * (at - s0[rid])))
        else:
            generated[rid] = gen0[rid] + at - s0[rid]
        opened = run_open[rid]
        if opened is not None:
            runs[rid].append((opened[0], opened[1], at))
            run_open[rid] = None
        if reserve:
            blocks, held[rid] = held[rid], 0
            return blocks
        return _blocks(ctx0[rid] + at - s0[rid], bs)

    def preempt(rid: int) -> None:
        nonlocal free
        if state[rid] == _DECODE:
            free += leave_decode(rid, s)
        else:
            free += held[rid]
            held[rid] = 0
            del prefilling[rid]
        del running[rid]
        version[rid] += 1
        preempted[rid] += 1
        state[rid] = _WAITING
        prompt_eff[rid] = prompt_len[rid] + generated[rid]
        done[rid] = 0
        waiting.appendleft(rid)

    def make_room(need: int, protect: int) -> bool:
        """Preempt newest-first until ``need`` blocks are free; False if ``protect`` is hit.

        Only continuing prefills call this, and everything newer than one is still waiting
        for it (new prompts start only once older chunks are scheduled), so no block this
        step's decode already took is released here; the final leak check guards that.
        """
        while free < need:
            victim = next(reversed(running))
            if victim == protect:
                return False
            preempt(victim)
        return True

    while completed < n:
        while next_arrival < n and arrival[next_arrival] <= now:
            waiting.append(next_arrival)
            prompt_eff[next_arrival] = prompt_len[next_arrival]
            next_arrival += 1
        if not running and not waiting:
            now = arrival[next_arrival]
            continue
        if window is not None and s in cross_at:
            for rid, ver in cross_at.pop(s):
                if ver == version[rid] and under[rid]:
                    under[rid] = False
                    n_under -= 1
                    k_under -= ctx0[rid] - s0[rid]

        chunks: list[tuple[int, int, int]] = []
        decoding = False
        budget = config.max_num_batched_tokens
        prefill_first = not config.chunked_prefill and bool(waiting)
        if prefill_first:
            # vLLM V0: a prefill-only step whenever a waiting prompt can be admitted whole.
            while waiting and len(running) < config.max_num_seqs:
                rid = waiting[0]
                p = prompt_eff[rid]
                need = _blocks(p + out_len[rid] - generated[rid] if reserve else p, bs)
                if p > budget or need > free:
                    break
                waiting.popleft()
                state[rid] = _PREFILL
                running[rid] = None
                prefilling[rid] = None
                free -= need
                held[rid] = need
                chunks.append((rid, 0, p))
                budget -= p
        if not chunks and n_dec:
            need = 0 if reserve else phase[(-s) % bs]
            while free < need:
                # Preempting a decoding request also removes its own block need.
                preempt(next(reversed(running)))
                need = phase[(-s) % bs]
            if n_dec:
                free -= need
                budget -= n_dec
                decoding = True
        if config.chunked_prefill:
            for rid in list(prefilling):
                if budget <= 0:
                    break
                if rid not in prefilling:  # preempted to make room for an earlier one
                    continue
                c = min(prompt_eff[rid] - done[rid], budget)
                need = max(0, _blocks(done[rid] + c, bs) - held[rid])
                if not make_room(need, rid):
                    preempt(rid)
                    continue
                free -= need
                held[rid] += need
                chunks.append((rid, done[rid], c))
                budget -= c
            while waiting and budget > 0 and len(running) < config.max_num_seqs:
                rid = waiting[0]
                c = min(prompt_eff[rid], budget)
                need = _blocks(
                    prompt_eff[rid] + out_len[rid] - generated[rid] if reserve else c, bs
                )
                if need > free:
                    break
                waiting.popleft()
                state[rid] = _PREFILL
                running[rid] = None
                prefilling[rid] = None
                free -= need
                held[rid] = need
                chunks.append((rid, 0, c))
                budget -= c
        if not chunks and not decoding:
            raise RuntimeError("scheduler made no progress; KV-cache accounting is inconsistent")
        if waiting or next_arrival < n:
            last_admission_step = len(step_end)

        # -- price the step ------------------------------------------------------------
        tokens = n_dec if decoding else 0
        logits = tokens
        pairs = pairs_win = pre_tokens = pre_read = 0.0
        for rid, start, c in chunks:
            tokens += c
            pre_tokens += c
            pre_read += start
            pairs += window_sum(start + 1, start + c, None)
            if window is not None:
                pairs_win += window_sum(start + 1, start + c, window)
            if start + c == prompt_eff[rid]:
                logits += 1
        if decoding and speculative:
            # Each sequence verifies its drafts: k + 1 query tokens through the model.
            tokens += drafted * n_dec
            logits += drafted * n_dec
        x[F_TOKENS] = tokens
        x[F_LOGITS] = logits
        if decoding:
            if speculative:
                ctx_sum = c_sum + accept * (n_dec * s - s0_sum) + n_dec
            else:
                ctx_sum = k_sum + n_dec * (s + 1)
            x[F_DEC_CTX] = ctx_sum
            if window is not None:
                under_sum = k_under + n_under * (s + 1)
                x[F_DEC_CTX_WIN] = under_sum + window * (n_dec - n_under)
            else:
                x[F_DEC_CTX_WIN] = ctx_sum
        else:
            x[F_DEC_CTX] = 0.0
            x[F_DEC_CTX_WIN] = 0.0
        x[F_PRE_PAIRS] = pairs
        x[F_PRE_PAIRS_WIN] = pairs_win if window is not None else pairs
        x[F_PRE_TOKENS] = pre_tokens
        x[F_PRE_CTX_READ] = pre_read
        if decoding and speculative and drafted:
            # The drafted queries' attention over the cached context, priced as prefill pairs.
            x[F_PRE_PAIRS] += drafted * ctx_sum
            x[F_PRE_PAIRS_WIN] += drafted * ctx_sum
            x[F_PRE_TOKENS] += drafted * n_dec
        x[F_EXPERTS] = 0.0 if moe is None else moe.experts_loaded(tokens)
        dt = table.seconds(x)
        if decoding and draft_cost:
            # Drafting: k draft tokens, each a share of a plain decode step of this batch.
            plain = np.zeros(len(FEATURES))
            plain[F_CONST] = 1.0
            plain[F_TOKENS] = plain[F_LOGITS] = n_dec
            plain[F_DEC_CTX] = plain[F_DEC_CTX_WIN] = ctx_sum
            plain[F_EXPERTS] = 0.0 if moe is None else moe.experts_loaded(n_dec)
            dt += draft_cost * table.seconds(plain)
        min_free = min(min_free, free)
        running_seconds += len(running) * dt
        now += dt
        step = len(step_end)
        step_end.append(now)
        next_s = s
        emitted = 0.0
        if decoding:
            decode_steps.append(step)
            next_s = s + 1
            emitted = n_dec * accept
        finished_before = completed

        # -- outcomes --------------------------------------------------------------------
        if decoding and s in finish_at:
            for rid, ver in finish_at.pop(s):
                if ver != version[rid] or state[rid] != _DECODE:
                    continue
                if speculative:
                    # The last verification emits only what was left, not a full ``accept``.
                    left = out_len[rid] - gen0[rid] - accept * (decode_steps_left(rid) - 1)
                    emitted += left - accept
                free += leave_decode(rid, next_s)
                state[rid] = _DONE
                finish[rid] = now
                del running[rid]
                completed += 1
        for rid, start, c in chunks:
            done[rid] = start + c
            if done[rid] < prompt_eff[rid]:
                continue
            del prefilling[rid]
            generated[rid] += 1
            emitted += 1
            if math.isnan(first_token[rid]):
                first_token[rid] = now
            if generated[rid] >= out_len[rid]:
                runs[rid].append((step, next_s, next_s))
                free += held[rid]
                held[rid] = 0
                state[rid] = _DONE
                finish[rid] = now
                del running[rid]
                completed += 1
                continue
            run_open[rid] = (step, next_s)
            if not reserve:
                held[rid] = 0  # from here the decode counter accounts for its blocks
            enter_decode(rid, next_s)
        s = next_s
        step_tokens.append(emitted)
        if closed is not None:
            # Each completion frees a client, which sends its next request at once.
            while finished_before < completed and released < n:
                arrival[released] = now + front
                released += 1
                finished_before += 1

    if free != total_blocks:  # every block must come back once all requests are done
        raise RuntimeError(f"KV-cache accounting leaked {total_blocks - free} blocks")
    if closed is not None:
        workload = replace(workload, arrival_s=np.array(arrival) - front)
    return SimResult(
        workload=workload,
        first_token_s=np.array(first_token),
        finish_s=np.array(finish),
        preemptions_per_request=np.array(preempted, dtype=np.int64),
        step_end_s=np.array(step_end),
        decode_step_index=np.array(decode_steps, dtype=np.int64),
        runs=runs,
        kv_cache_blocks=total_blocks,
        running_seconds=running_seconds,
        peak_kv_blocks=total_blocks - min_free,
        step_tokens=np.array(step_tokens, dtype=np.float64),
        last_admission_s=step_end[last_admission_step] if last_admission_step >= 0 else 0.0,
    )


MIN_STEADY_COMPLETIONS: Final = 50
"""Completions the measured window must hold before its figures count as a steady state."""
WARMUP_SHARE: Final = 0.1
"""Share of the completions always counted as warm-up, whatever the concurrency."""
TURNOVERS_FOR_STEADY_STATE: Final = 3
"""A run needs this many batch turnovers (requests = this x concurrency): one to warm up,
one measured, one to drain."""
SATURATION_TOLERANCE: Final = 0.05
"""Open-loop load is saturated when completions in the window fall this far short of
arrivals (the queue grows instead of settling)."""


def steady_state_min_requests(concurrency: int) -> int:
    """Requests one replica needs to reach a steady state at ``concurrency`` sequences: one
    turnover to warm up, one to drain, and ``max(MIN_STEADY_COMPLETIONS, concurrency)``
    completions measured between them (the warm-up is at least ``WARMUP_SHARE`` of all)."""
    c = max(1, concurrency)
    needed = max(MIN_STEADY_COMPLETIONS, c)
    return max(
        needed + (TURNOVERS_FOR_STEADY_STATE - 1) * c, math.ceil((needed + c) / (1 - WARMUP_SHARE))
    )


@dataclass(frozen=True, slots=True)
class SteadyState:
    """The run's figures over its steady-state window.

    The window runs from the completion that ends warm-up (the first ``concurrency``
    completions, one turnover of the running batch, and at least ``WARMUP_SHARE`` of all) to
    the completion that starts the drain (the last ``concurrency`` completions), and never
    past the last step after which requests were still waiting or yet to arrive.
    """

    reached: bool
    reason: str
    """Why it was or was not reached, in words."""
    start_s: float
    end_s: float
    completions: int
    """Requests that finished inside the window."""
    output_tokens_per_s: float
    requests_per_s: float
    """Completions per second inside the window."""
    arrivals_per_s: float
    """Arrivals per second inside the window (the offered load, open loop)."""
    mean_in_flight: float
    """Time-weighted mean of requests in the system inside the window."""
    saturated: bool
    """Open-loop arrivals outran completions: the queue grows for as long as load is offered,
    so latencies are not a property of the deployment but of the run's length."""
    ttft_s: Percentiles
    """Over requests that finished inside the window."""
    tpot_s: Percentiles
    latency_s: Percentiles

    def to_dict(self) -> dict[str, object]:
        return {
            "reached": self.reached,
            "reason": self.reason,
            "window_s": [self.start_s, self.end_s],
            "completions": self.completions,
            "output_tokens_per_s": self.output_tokens_per_s,
            "requests_per_s": self.requests_per_s,
            "arrivals_per_s": self.arrivals_per_s,
            "mean_in_flight": self.mean_in_flight,
            "saturated": self.saturated,
            "ttft_ms": self.ttft_s.scaled(1e3),
            "tpot_ms": self.tpot_s.scaled(1e3),
            "latency_ms": self.latency_s.scaled(1e3),
        }


def steady_state(
    result: SimResult,
    *,
    concurrency: int | None = None,
    open_loop: bool = True,
    min_completions: int = MIN_STEADY_COMPLETIONS,
) -> SteadyState:
    """The steady-state window of ``result`` and whether the run reached it.

    ``concurrency`` is the batch the run should settle at (the engine's limit for a
    max-throughput run, the client count for a closed loop); by default the run's own mean
    running count. Only open-loop arrivals (Poisson) can saturate.
    """
    w = result.workload
    n = w.size
    arrival, finish = w.arrival_s, result.finish_s
    c = concurrency
    if c is None:
        c = max(1, math.ceil(result.summary().mean_running))
    ordered = np.sort(finish)
    first = max(c, math.ceil(WARMUP_SHARE * n))
    last = n - c
    nan = Percentiles.of(np.zeros(0))
    start = float(ordered[min(first, n) - 1])
    end = min(float(ordered[last - 1]), result.last_admission_s) if last >= 1 else start
    if open_loop and bool(np.any(arrival > 0)):
        # Offered load stops with the last arrival; what follows is drain.
        end = min(end, float(arrival.max()))
    if not end > start:
        return SteadyState(
            reached=False,
            reason=(
                f"no steady-state window: {n} requests do not warm up, fill and drain a batch"
                f" of {c} (that takes at least {steady_state_min_requests(c)}), or every"
                " arrival came before the warm-up ended (offered load above capacity)"
            ),
            start_s=start,
            end_s=end,
            completions=0,
            output_tokens_per_s=math.nan,
            requests_per_s=math.nan,
            arrivals_per_s=math.nan,
            mean_in_flight=math.nan,
            saturated=False,
            ttft_s=nan,
            tpot_s=nan,
            latency_s=nan,
        )
    span = end - start
    steps = (result.step_end_s > start) & (result.step_end_s <= end)
    tokens = float(result.step_tokens[steps].sum())
    done = (finish > start) & (finish <= end)
    # By rank, so completions that share the warm-up's last step are not lost to the tie.
    completions = max(0, int(np.searchsorted(ordered, end, side="right")) - first)
    arrivals_per_s = float(((arrival > start) & (arrival <= end)).sum()) / span
    requests_per_s = completions / span
    # In-flight integral over the window: each request's overlap with it.
    overlap = np.clip(np.minimum(finish, end) - np.maximum(arrival, start), 0.0, None)
    mean_in_flight = float(overlap.sum()) / span
    saturated = (
        open_loop
        and bool(np.any(arrival > 0))
        and requests_per_s < (1.0 - SATURATION_TOLERANCE) * arrivals_per_s
    )
    needed = max(min_completions, c)
    if saturated:
        reached, reason = (
            False,
            (
                f"saturated: {arrivals_per_s:.4g} req/s offered, {requests_per_s:.4g} req/s served;"
                " the queue grows for as long as load is offered"
            ),
        )
    elif completions < needed:
        reached, reason = (
            False,
            (
                f"{completions} completions in the window, fewer than the {needed} needed"
                f" (one turnover of a batch of {c}); give at least"
                f" {steady_state_min_requests(c)} requests"
            ),
        )
    else:
        reached, reason = True, f"{completions} completions in a {span:.4g} s window"
    latency = result.latency_s
    return SteadyState(
        reached=reached,
        reason=reason,
        start_s=start,
        end_s=end,
        completions=completions,
        output_tokens_per_s=tokens / span,
        requests_per_s=requests_per_s,
        arrivals_per_s=arrivals_per_s,
        mean_in_flight=mean_in_flight,
        saturated=saturated,
        ttft_s=Percentiles.of(result.ttft_s[done]),
        tpot_s=Percentiles.of(result.tpot_s[done]),
        latency_s=Percentiles.of(latency[done]),
    )
