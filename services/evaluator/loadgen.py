"""Load generation: the request list of a run, deterministic for a seed.

Modes follow MLPerf LoadGen and ``vllm bench serve``:

- offline: every request at t = 0 (maximum throughput);
- server: Poisson arrivals at ``qps``; with ``burstiness`` != 1 the gaps are gamma-distributed
  with shape ``burstiness`` and mean ``1 / qps``, as vLLM's ``--burstiness`` (< 1 burstier,
  > 1 more regular);
- single-stream: one client, each request sent when the last finished (a closed loop of 1);
- concurrency: a closed loop of ``concurrency`` clients (``--max-concurrency``).

Request sizes are drawn from the scenario's distributions with their own stream of the same
seed, so a change of rate does not change the sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pocgrid.v1 import evaluator_pb2


@dataclass(frozen=True, slots=True)
class RequestList:
    arrival_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    concurrency: int
    """> 0: a closed loop of this many clients (arrivals are then realised by the agent)."""

    @property
    def size(self) -> int:
        return int(self.arrival_s.shape[0])


def draw_lengths(
    d: evaluator_pb2.LengthDistribution, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` token counts from ``d``, clipped to [min, max]."""
    if d.kind == "fixed":
        values = np.full(n, d.mean)
    elif d.kind == "uniform":
        values = rng.integers(d.min, d.max + 1, n).astype(np.float64)
    elif d.kind == "normal":
        values = rng.normal(d.mean, d.std, n)
    else:  # lognormal with the given mean and standard deviation (not of the log)
        sigma2 = math.log1p((d.std / d.mean) ** 2)
        mu = math.log(d.mean) - sigma2 / 2
        values = rng.lognormal(mu, math.sqrt(sigma2), n)
    out: np.ndarray = np.clip(np.rint(values), d.min, d.max).astype(np.int64)
    return out


def arrivals(n: int, qps: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Open-loop send times: gaps of mean ``1/qps``, exponential (burstiness 1) or gamma."""
    shape = burstiness or 1.0
    gaps = rng.gamma(shape, 1.0 / (qps * shape), n)
    gaps[0] = 0.0  # the first request opens the run
    return np.cumsum(gaps)


def request_list(
    mode: str,
    n: int,
    seed: int,
    *,
    input_len: evaluator_pb2.LengthDistribution | None,
    output_len: evaluator_pb2.LengthDistribution | None,
    qps: float = 0.0,
    burstiness: float = 1.0,
    concurrency: int = 0,
) -> RequestList:
    """``mode`` is offline, server, single-stream or concurrency; sizes are 1 for samples."""
    sizes = np.random.default_rng([seed, 1])
    if input_len is not None and output_len is not None:
        ins = draw_lengths(input_len, n, sizes)
        outs = draw_lengths(output_len, n, sizes)
    else:
        ins = np.ones(n, np.int64)
        outs = np.ones(n, np.int64)
    zeros = np.zeros(n)
    if mode == "offline":
        return RequestList(zeros, ins, outs, 0)
    if mode == "server":
        times = arrivals(n, qps, burstiness, np.random.default_rng([seed, 2]))
        return RequestList(times, ins, outs, 0)
    if mode == "single-stream":
        return RequestList(zeros, ins, outs, 1)
    if mode == "concurrency":
        return RequestList(zeros, ins, outs, concurrency)
    raise ValueError(f"mode {mode!r} has no request list of its own")
