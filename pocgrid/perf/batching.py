"""A batching server for non-LLM models (vision, speech, encoders) on a virtual clock.

One request is one sample. When the device frees, the server runs everything queued, up to
``max_batch`` samples, as one batch (Triton's dynamic batcher with no queue delay); a batch of
``b`` takes ``batch_seconds[b - 1]``, priced by the caller from the performance model. Arrivals
are open (given times) or a closed loop of clients, as for the LLM simulator.

The result is a :class:`~pocgrid.perf.serving.SimResult`, one engine step per batch, so the
one steady-state definition (:func:`~pocgrid.perf.serving.steady_state`) and the same summaries
apply to both kinds of serving.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.serving import SimResult, Workload


def simulate_batches(
    workload: Workload, batch_seconds: Sequence[float], request_overhead_s: float = 0.0
) -> SimResult:
    """Serve ``workload`` (one sample per request) on one device.

    ``batch_seconds[b - 1]`` is the time of a batch of ``b``; its length is the largest batch.
    A request reaches the server ``request_overhead_s`` after it was sent (the front end).
    """
    max_batch = len(batch_seconds)
    if max_batch < 1:
        raise PerfInputError("max_batch", "must be >= 1")
    if any(not (t > 0 and math.isfinite(t)) for t in batch_seconds):
        raise PerfInputError("batch_seconds", "must be positive and finite")
    n = workload.size
    closed = workload.concurrency
    sent = workload.arrival_s.astype(np.float64).copy()
    if closed is not None:
        sent[:] = math.inf
        sent[: min(n, closed)] = 0.0
    # Requests not yet arrived, by (time, index); a closed loop releases one per completion.
    pending: list[tuple[float, int]] = [(float(sent[i]), i) for i in range(n) if sent[i] < math.inf]
    heapq.heapify(pending)
    next_closed = min(n, closed) if closed is not None else n
    queue: deque[int] = deque()
    finish = np.full(n, math.nan)
    step_end: list[float] = []
    step_tokens: list[float] = []
    running_seconds = 0.0
    last_admission = 0.0
    now = 0.0
    done = 0
    while done < n:
        while pending and pending[0][0] + request_overhead_s <= now:
            queue.append(heapq.heappop(pending)[1])
        if not queue:
            now = pending[0][0] + request_overhead_s
            continue
        batch = [queue.popleft() for _ in range(min(max_batch, len(queue)))]
        seconds = float(batch_seconds[len(batch) - 1])
        now += seconds
        running_seconds += seconds * len(batch)
        step_end.append(now)
        step_tokens.append(float(len(batch)))
        for rid in batch:
            finish[rid] = now
        done += len(batch)
        if queue or pending or next_closed < n:
            last_admission = now
        if closed is not None:
            for _ in batch:
                if next_closed < n:
                    sent[next_closed] = now
                    heapq.heappush(pending, (now, next_closed))
                    next_closed += 1
    realised = Workload(
        sent, workload.input_len, workload.output_len
    )  # arrivals as sent, for every later figure
    steps = len(step_end)
    return SimResult(
        workload=realised,
        first_token_s=finish.copy(),
        finish_s=finish,
        preemptions_per_request=np.zeros(n, np.int64),
        step_end_s=np.asarray(step_end),
        decode_step_index=np.zeros(0, np.int64),
        runs=[[] for _ in range(n)],
        kv_cache_blocks=0,
        running_seconds=running_seconds,
        peak_kv_blocks=0,
        step_tokens=np.asarray(step_tokens) if steps else np.zeros(0),
        last_admission_s=last_admission,
    )
