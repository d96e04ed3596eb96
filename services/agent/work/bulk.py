"""Bulk serving: a whole request list through one engine on the virtual clock.

LLMs go through the performance model's continuous-batching simulator
(``pocgrid.perf.serving.simulate``), the same one ``pocgrid perf predict`` and the adapter use;
other models through the batching server (``pocgrid.perf.batching``) with each batch priced by
the dense-model roofline the adapter plans with (``pocgrid.adapt.dense_plan.price_batch``).
Either way the result is one ``SimResult`` and one steady-state window
(``pocgrid.perf.serving.steady_state``), so per-request timings travel back in one message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from pocgrid.adapt.adapt import chip_coverage
from pocgrid.adapt.dense_plan import price_batch
from pocgrid.catalog import PRECISION_BYTES, Catalog, Chip
from pocgrid.perf.batching import simulate_batches
from pocgrid.perf.efficiency import GIB_BYTES, StackProfile, default_efficiency
from pocgrid.perf.errors import PerfInputError, UnsupportedInput
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.onnx_cost import graph_cost
from pocgrid.perf.predict import resolve_model, serving_config
from pocgrid.perf.serving import (
    SimResult,
    SteadyState,
    Workload,
    kv_cache_blocks,
    request_concurrency,
    simulate,
    steady_state,
)

DEFAULT_MAX_BATCH = 32
MAX_PASSES = 1000


@dataclass(frozen=True, slots=True)
class BulkRun:
    result: SimResult
    window: SteadyState
    concurrency: int
    """The concurrency the window was judged at."""
    profile: str
    memory_gib: float
    """Held per device while serving, GiB."""
    max_batch: int
    kv_cache_blocks: int
    itl_s: np.ndarray
    """Every inter-token gap of the requests measured (window, or all without one)."""


def _workload(
    arrival_s: np.ndarray, input_len: np.ndarray, output_len: np.ndarray, concurrency: int
) -> Workload:
    return Workload(
        arrival_s.astype(np.float64),
        input_len.astype(np.int64),
        output_len.astype(np.int64),
        concurrency=concurrency or None,
    )


def _window(result: SimResult, target: int | None, closed: bool) -> tuple[SteadyState, int]:
    window = steady_state(result, concurrency=target, open_loop=not closed)
    c = target if target else max(1, math.ceil(result.summary().mean_running))
    return window, c


def _measured(result: SimResult, window: SteadyState) -> np.ndarray:
    """Indexes of the requests the window measures (all of them when there is none)."""
    finish = result.finish_s
    if window.completions > 0:
        return np.flatnonzero((finish > window.start_s) & (finish <= window.end_s))
    return np.arange(result.workload.size)


def serve_llm(
    catalog: Catalog,
    chip: Chip,
    model_name: str,
    precision: str,
    devices: int,
    profile: str,
    max_num_seqs: int,
    arrival_s: np.ndarray,
    input_len: np.ndarray,
    output_len: np.ndarray,
    concurrency: int,
) -> BulkRun:
    """Raises ``PerfInputError`` (bad input), ``UnsupportedInput`` (the deployment does not fit
    or cannot be modelled)."""
    model = resolve_model(model_name, catalog)
    if model.arch is None:
        raise PerfInputError("llm.model", f"{model.name} is not an LLM; serve it as samples")
    eff = default_efficiency()
    stack: StackProfile = (
        eff.profile(profile) if profile else eff.default_profile(chip.vendor_family, "in-flight")
    )
    deployment = LlmDeployment(
        chip,
        model,
        precision,
        devices,
        params=stack.params,
        efficiency=eff,
        memory_gib=catalog.device_memory_gib(chip),
    )
    config = serving_config(stack, max_num_seqs or None)
    longest = int((input_len + output_len).max())
    fit = deployment.memory_fit(
        kv_cache_bytes=deployment.kv_bytes_per_token_device() * longest,
        max_tokens=config.max_num_batched_tokens,
        max_logits=config.max_num_seqs,
    )
    if not fit.fits:
        raise UnsupportedInput("devices", fit.why_not() or "the deployment does not fit")
    workload = _workload(arrival_s, input_len, output_len, concurrency)
    result = simulate(deployment, workload, config)
    closed = concurrency > 0
    offline = not closed and not bool(np.any(arrival_s > 0))
    typical_in = int(np.median(input_len))
    typical_out = int(np.median(output_len))
    capacity = max(1, request_concurrency(deployment, config, typical_in, typical_out))
    if closed:
        target: int | None = min(concurrency, capacity)
    elif offline:
        target = capacity
    else:
        target = None
    window, c = _window(result, target, closed)
    measured = _measured(result, window)
    gaps = [np.diff(result.token_times(int(i))) for i in measured]
    itl = np.concatenate(gaps) if gaps else np.zeros(0)
    blocks = kv_cache_blocks(deployment, config)
    memory = (
        fit.weights_gib
        + fit.activations_gib
        + fit.reserve_gib
        + result.peak_kv_blocks
        * config.block_size
        * deployment.kv_bytes_per_token_device()
        / GIB_BYTES
    )
    return BulkRun(result, window, c, stack.name, memory, config.max_num_seqs, blocks, itl)


def serve_samples(
    catalog: Catalog,
    chip: Chip,
    model_name: str,
    precision: str,
    max_batch: int,
    passes: int,
    arrival_s: np.ndarray,
    concurrency: int,
) -> BulkRun:
    model = resolve_model(model_name, catalog)
    if model.arch is not None:
        raise PerfInputError("samples.model", f"{model.name} is an LLM; serve it as llm")
    batch = max_batch or DEFAULT_MAX_BATCH
    if not 1 <= batch <= 4096:
        raise PerfInputError("samples.max_batch", "must be between 1 and 4096")
    if not 0 <= passes <= MAX_PASSES:
        raise PerfInputError("samples.passes", f"must be between 0 and {MAX_PASSES}")
    coverage = chip_coverage(catalog, model, chip)
    missing = [] if coverage is None else coverage.by_status("unsupported")
    if missing:
        raise UnsupportedInput(
            "samples.model",
            f"operators with no kernel or supplementation on {chip.name}: "
            + ", ".join(sorted(o.op for o in missing)),
        )
    if model.diffusion is not None:
        # Steps multiply only the denoiser, not the text encoder or the VAE decoder.
        seconds = [
            price_batch(model, chip, precision, b, coverage, passes) for b in range(1, batch + 1)
        ]
    else:
        per_pass = [price_batch(model, chip, precision, b, coverage) for b in range(1, batch + 1)]
        seconds = [t * max(1, passes) for t in per_pass]
    eff = default_efficiency()
    n = arrival_s.shape[0]
    workload = _workload(arrival_s, np.ones(n), np.ones(n), concurrency)
    result = simulate_batches(workload, seconds, eff.params.request_overhead_s)
    closed = concurrency > 0
    offline = not closed and not bool(np.any(arrival_s > 0))
    target = min(concurrency, batch) if closed else (batch if offline else None)
    window, c = _window(result, target, closed)
    weights_gib = model.params_b * 1e9 * PRECISION_BYTES[precision] / GIB_BYTES
    memory = weights_gib + eff.params.runtime_reserve_gib
    return BulkRun(
        result, window, c, "batching-server", memory, batch, 0, np.zeros(0, dtype=np.float64)
    )


#: Batch sizes a graph is priced at; sizes in between are interpolated (each pricing is a shape
#: inference of the whole graph, too slow to repeat for every size up to the largest batch).
ONNX_PRICED_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def onnx_batch_seconds(
    graph: onnx.ModelProto,
    sample_shapes: Mapping[str, Sequence[int]],
    chip: Chip,
    precision: str,
    max_batch: int,
) -> tuple[list[float], float]:
    """Seconds of every batch size 1..max_batch on the graph cost model, and the bytes the
    deployment holds (weights, the largest activation in and out at the largest batch).

    Batch sizes between two priced ones are interpolated linearly: a batch's time is close to
    linear in its size between powers of two (the graph's FLOPs and activations are)."""
    priced = [b for b in ONNX_PRICED_BATCHES if b < max_batch] + [max_batch]
    times: list[float] = []
    resident = 0.0
    for b in priced:
        shapes = {name: [b, *dims] for name, dims in sample_shapes.items()}
        cost = graph_cost(graph, shapes, chip, precision)
        times.append(cost.seconds)
        resident = cost.weight_bytes + 2 * cost.activation_peak_bytes
    seconds = np.interp(np.arange(1, max_batch + 1), priced, times).tolist()
    return [float(t) for t in seconds], resident


def serve_onnx_samples(
    chip: Chip,
    graph_bytes: bytes,
    sample_shapes: Mapping[str, Sequence[int]],
    precision: str,
    max_batch: int,
    arrival_s: np.ndarray,
    concurrency: int,
    unsupported: Callable[[Iterable[str]], Sequence[str]],
) -> BulkRun:
    """A tenant's imported ONNX graph on the batching server, each batch priced on the graph.

    Raises ``PerfInputError`` naming the field for a graph that does not parse or shapes that
    do not match its inputs, ``UnsupportedInput`` for operators the chip's runtime lacks
    (``unsupported``: the runtime's check, as ``RunTask`` makes it)."""
    batch = max_batch or DEFAULT_MAX_BATCH
    if not 1 <= batch <= 4096:
        raise PerfInputError("samples.max_batch", "must be between 1 and 4096")
    try:
        graph = onnx.load_model_from_string(graph_bytes)
    except (DecodeError, ValueError) as exc:
        raise PerfInputError("samples.onnx", f"is not an ONNX model: {exc}") from None
    missing = unsupported(n.op_type for n in graph.graph.node)
    if missing:
        raise UnsupportedInput(
            "samples.onnx",
            f"operators not supported natively on {chip.name}: {', '.join(missing)}; adapt the"
            " model (operator supplementation) before serving it here",
        )
    inits = {i.name for i in graph.graph.initializer}
    inputs = {i.name for i in graph.graph.input if i.name not in inits}
    if set(sample_shapes) != inputs:
        raise PerfInputError(
            "samples.sample_shapes",
            f"must name exactly the graph inputs {sorted(inputs)} (got {sorted(sample_shapes)})",
        )
    for name, dims in sample_shapes.items():
        if any(d < 1 or d > 1 << 24 for d in dims):
            raise PerfInputError(f"samples.sample_shapes[{name}]", "dims must be 1..2^24")
    try:
        seconds, resident = onnx_batch_seconds(graph, sample_shapes, chip, precision, batch)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PerfInputError("samples.onnx", f"shape inference failed: {exc}") from None
    eff = default_efficiency()
    n = arrival_s.shape[0]
    workload = _workload(arrival_s, np.ones(n), np.ones(n), concurrency)
    result = simulate_batches(workload, seconds, eff.params.request_overhead_s)
    closed = concurrency > 0
    offline = not closed and not bool(np.any(arrival_s > 0))
    target = min(concurrency, batch) if closed else (batch if offline else None)
    window, c = _window(result, target, closed)
    memory = resident / GIB_BYTES + eff.params.runtime_reserve_gib
    return BulkRun(
        result, window, c, "batching-server", memory, batch, 0, np.zeros(0, dtype=np.float64)
    )
