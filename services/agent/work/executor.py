"""Runs tasks on an emulated node: memory from the vendor runtime, time from the performance
model on the devices' virtual streams, numerics from onnxruntime, usage as events.

Each finished unit of work (a task, a generated stream, or the part of a stream produced before
its client went away) emits one ``UsageRecorded`` (the agent writes it to its outbox, and the
outbox relay publishes it: the answer never waits on the bus) whose id is derived from the node, the
tenant and the client's task/request id, so a retried call or publish is stored once downstream
while two tenants that pick the same task id stay two units of work.

Every entry point takes the tenant explicitly: the servicer refuses work without one, and the
result cache is keyed by (tenant, task id), so a tenant never sees another's result.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message

from pocgrid.catalog import Catalog, Chip, default_catalog
from pocgrid.meters import byte_seconds, device_us
from pocgrid.perf.errors import PerfInputError, UnknownNameInput, UnsupportedInput
from pocgrid.perf.onnx_cost import graph_cost
from pocgrid.perf.predict import Prediction, predict
from pocgrid.precision import to_name
from pocgrid.tensors import TensorError, from_array, to_array
from pocgrid.v1 import agent_pb2, events_pb2
from services.agent.runtime.memory import Allocation
from services.agent.runtime.runtime import VendorRuntime
from services.agent.work.bulk import BulkRun, serve_llm, serve_onnx_samples, serve_samples
from services.agent.work.numerics import OnnxRunner, describe
from services.core import validation as v
from services.core.errors import FailedPrecondition, InvalidArgument, NotFound, PocgridError
from services.core.logging import get_logger
from services.core.usage import usage_into_response

log = get_logger()

#: Where usage events go: subject, event, event id (the agent's outbox).
Publish = Callable[[str, Message, str], Awaitable[None]]
GIB = float(1 << 30)
_RESULT_CACHE = 1024
MAX_LLM_LEN = 1 << 20
#: Requests in one ServeRequests call: 100,000 x 3 doubles stay well under the message limit.
MAX_BULK_REQUESTS = 100_000
#: Metering stores usage ids of at most this many characters.
MAX_USAGE_ID = 160


def usage_event_id(node_id: str, tenant: str, kind: str, unit_id: str) -> str:
    """The stable id of one unit of work's usage: readable when it fits the metering column,
    else the same parts digested (still stable, still distinct per tenant)."""
    readable = f"usage:{node_id}:{tenant}:{kind}:{unit_id}"
    if len(readable) <= MAX_USAGE_ID:
        return readable
    digest = hashlib.sha256(readable.encode()).hexdigest()
    return f"usage:{node_id[:63]}:{digest}"


def _perf_error(exc: PerfInputError) -> PocgridError:
    if isinstance(exc, UnknownNameInput):
        return NotFound(exc.field, str(exc))
    if isinstance(exc, UnsupportedInput):
        return FailedPrecondition(str(exc))
    return InvalidArgument(exc.field, exc.rule)


def _stream_usage(
    request: agent_pb2.GenerateRequest, produced: int, seconds: float, memory_gib: float
) -> events_pb2.UsageRecorded:
    """What a Generate stream consumed: one device busy for ``seconds`` holding the model."""
    return events_pb2.UsageRecorded(
        tokens_in=request.input_len,
        tokens_out=produced,
        busy_device_us=device_us(seconds),
        memory_byte_seconds=byte_seconds(memory_gib * seconds),
        devices=1,
    )


@dataclass(frozen=True, slots=True)
class _Span:
    start: float
    end: float


class TaskExecutor:
    def __init__(
        self,
        node_id: str,
        chip: Chip,
        runtime: VendorRuntime,
        publish: Publish,
        speed_factor: float = 0.0,
        catalog: Catalog | None = None,
    ) -> None:
        self._catalog = catalog or default_catalog()
        self._node_id = node_id
        self._chip = chip
        self._runtime = runtime
        self._publish = publish
        self._speed = speed_factor
        self._onnx = OnnxRunner()
        # Keyed by (tenant, task id): task ids are the client's, unique only within a tenant.
        self._results: OrderedDict[tuple[str, str], agent_pb2.RunTaskResponse] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[agent_pb2.RunTaskResponse]] = {}
        self._background: set[asyncio.Future[None]] = set()

    # -- shared steps ---------------------------------------------------------------------
    def _precision(self, field: str, value: int) -> str:
        name = to_name(value)
        if name == "unspecified":
            raise InvalidArgument(field, "must be set")
        if not self._runtime.supports_precision(name):
            supported = ", ".join(self._runtime.precisions)
            raise InvalidArgument(
                field, f"{name} is not supported by {self._chip.name} (supported: {supported})"
            )
        return name

    def _devices(self, indexes: Sequence[int]) -> list[int]:
        chosen = list(indexes) or [0]
        if len(set(chosen)) != len(chosen):
            raise InvalidArgument("device_indexes", "must not repeat a device")
        for i in chosen:
            if not 0 <= i < self._runtime.device_count:
                raise InvalidArgument(
                    "device_indexes", f"must be 0..{self._runtime.device_count - 1} (got {i})"
                )
        return chosen

    def _allocate(self, devices: list[int], nbytes: int, tag: str) -> list[Allocation]:
        allocations: list[Allocation] = []
        try:
            for d in devices:
                allocations.append(self._runtime.malloc(d, max(nbytes, 1), tag))
        except BaseException:
            self._free(allocations)
            raise
        return allocations

    def _free(self, allocations: list[Allocation]) -> None:
        for a in allocations:
            self._runtime.free(a)

    def _occupy(self, devices: list[int], seconds: float, label: str) -> _Span:
        """Queue ``seconds`` of work on every device's stream, all starting together."""
        streams = [self._runtime.streams[d] for d in devices]
        for s in streams:
            for other in streams:
                s.wait_for(other)
        start = max(s.busy_until for s in streams)
        end = start
        for s in streams:
            end = s.submit(seconds, label)
        return _Span(start, end)

    async def _pace(self, virtual_seconds: float) -> None:
        if self._speed > 0:
            await asyncio.sleep(virtual_seconds / self._speed)

    async def _record(
        self,
        tenant: str,
        kind: str,
        unit_id: str,
        job_id: str,
        model: str,
        *,
        usage: events_pb2.UsageRecorded,
        span: _Span,
    ) -> str:
        """Publish ``usage`` (its amounts set by the caller) as this unit of work's event."""
        usage_id = usage_event_id(self._node_id, tenant, kind, unit_id)
        event = usage
        event.event_id = usage_id
        event.tenant = tenant
        event.node_id = self._node_id
        event.chip = self._chip.name
        event.job_id = job_id
        event.model = model
        # Usage is billed in the window where it ended, in wall-clock time. The span is on the
        # runtime's virtual clock, which starts at 0: as event times it put every evaluation's
        # usage in January 1970 (on no invoice of this month, though `pocgrid usage` listed
        # it). The unit ended now, when it is reported (a paced runtime has slept its virtual
        # time by then), and lasted its virtual duration: never in the future, never stale
        # after an idle spell, whatever the speed factor.
        now_ns = time.time_ns()
        event.occurred_at.FromNanoseconds(now_ns)
        event.ended_at.FromNanoseconds(now_ns)
        event.started_at.FromNanoseconds(now_ns - round((span.end - span.start) * 1e9))
        await self._publish("usage.recorded", event, usage_id)
        return usage_id

    async def record_usage(
        self,
        tenant: str,
        kind: str,
        unit_id: str,
        job_id: str,
        model: str,
        *,
        usage: events_pb2.UsageRecorded,
        start_s: float,
        end_s: float,
    ) -> str:
        """Usage of work this executor did not run (a communicator rank's job), published as
        every unit of work's is; ``start_s``/``end_s`` are its span on the virtual clock."""
        return await self._record(
            tenant, kind, unit_id, job_id, model, usage=usage, span=_Span(start_s, end_s)
        )

    # -- RunTask --------------------------------------------------------------------------
    def check(self, request: agent_pb2.RunTaskRequest) -> None:
        """What ``run_task`` would refuse before running anything, checked without running it:
        ``StartTask`` answers bad work with its status instead of a task that fails later."""
        v.optional_text("work.job_id", request.job_id, 128)
        kind = request.WhichOneof("work")
        if kind not in ("onnx", "llm_batch"):
            raise InvalidArgument("work.work", "must be onnx or llm_batch")
        precision = self._precision("work.precision", request.precision)
        devices = self._devices(request.device_indexes)
        if kind == "onnx":
            if len(devices) != 1:
                raise InvalidArgument("work.device_indexes", "ONNX work runs on one device")
            if not request.onnx.model:
                raise InvalidArgument("work.onnx.model", "must not be empty")
            return
        work = request.llm_batch
        v.require_text("work.llm_batch.model", work.model, 128)
        v.require_range("work.llm_batch.batch", work.batch, 1, 65536)
        v.require_range("work.llm_batch.input_len", work.input_len, 1, MAX_LLM_LEN)
        v.require_range("work.llm_batch.output_len", work.output_len, 1, MAX_LLM_LEN)
        p = self._llm_prediction(
            work.model, precision, len(devices), work.batch, work.input_len, work.output_len
        )
        if not p.fits:
            raise FailedPrecondition(p.why_not_fits or "the deployment does not fit")

    async def run_task(
        self, tenant: str, request: agent_pb2.RunTaskRequest
    ) -> agent_pb2.RunTaskResponse:
        v.require_id("task_id", request.task_id)
        v.optional_text("job_id", request.job_id, 128)
        key = (tenant, request.task_id)
        done = self._results.get(key)
        if done is not None:
            return done
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[agent_pb2.RunTaskResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._inflight[key] = future
        try:
            kind = request.WhichOneof("work")
            if kind == "onnx":
                response = await self._run_onnx(tenant, request)
            elif kind == "llm_batch":
                response = await self._run_llm_batch(tenant, request)
            else:
                raise InvalidArgument("work", "must be onnx or llm_batch")
            future.set_result(response)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here so an unawaited duplicate doesn't warn
            raise
        finally:
            del self._inflight[key]
        self._results[key] = response
        if len(self._results) > _RESULT_CACHE:
            self._results.popitem(last=False)
        return response

    async def _run_onnx(
        self, tenant: str, request: agent_pb2.RunTaskRequest
    ) -> agent_pb2.RunTaskResponse:
        precision = self._precision("precision", request.precision)
        devices = self._devices(request.device_indexes)
        if len(devices) != 1:
            raise InvalidArgument("device_indexes", "ONNX work runs on one device")
        work = request.onnx
        if not work.model:
            raise InvalidArgument("onnx.model", "must not be empty")
        try:
            model = onnx.load_model_from_string(work.model)
        except (DecodeError, ValueError) as exc:
            raise InvalidArgument("onnx.model", f"is not an ONNX model: {exc}") from None
        graph_inputs = {i.name for i in model.graph.input} - {
            init.name for init in model.graph.initializer
        }
        try:
            inputs = {t.name: to_array(f"onnx.inputs[{i}]", t) for i, t in enumerate(work.inputs)}
        except TensorError as exc:
            raise InvalidArgument(exc.field, exc.rule) from None
        if set(inputs) != graph_inputs:
            raise InvalidArgument(
                "onnx.inputs",
                f"must name exactly the graph inputs {sorted(graph_inputs)} (got {sorted(inputs)})",
            )
        missing = self._runtime.unsupported_operators(n.op_type for n in model.graph.node)
        if missing:
            raise FailedPrecondition(
                f"operators not supported natively by {self._runtime.profile.runtime.name} on "
                f"{self._chip.name}: {', '.join(missing)}; adapt the model (operator "
                "supplementation) before running it here"
            )
        try:
            cost = graph_cost(model, {n: a.shape for n, a in inputs.items()}, self._chip, precision)
        except PerfInputError as exc:
            # e.g. a precision the runtime runs but no source gives a peak for: the work cannot
            # be timed, which the caller must hear as such, not as an internal error.
            raise _perf_error(exc) from None
        # Weights, the largest activation twice (in and out), and the inputs stay resident.
        resident = int(
            cost.weight_bytes
            + 2 * cost.activation_peak_bytes
            + sum(a.nbytes for a in inputs.values())
        )
        allocations = self._allocate(devices, resident, f"task:{request.task_id}")
        try:
            try:
                session = self._onnx.session(model, work.model, precision)
                outputs = await asyncio.to_thread(self._onnx.run, session, inputs, precision)
            except Exception as exc:  # onnxruntime rejects a malformed graph at load or run
                raise InvalidArgument("onnx", f"onnxruntime could not run it: {exc}") from None
            span = self._occupy(devices, cost.seconds, f"onnx:{request.task_id}")
            await self._pace(cost.seconds)
        finally:
            self._free(allocations)
        batch = (
            int(next(iter(inputs.values())).shape[0])
            if inputs and next(iter(inputs.values())).ndim
            else 1
        )
        busy = cost.seconds * len(devices)
        mem = resident * len(devices) / GIB * cost.seconds
        usage = events_pb2.UsageRecorded(
            samples=batch,
            busy_device_us=device_us(busy),
            memory_byte_seconds=byte_seconds(mem),
            devices=len(devices),
        )
        usage_id = await self._record(
            tenant, "task", request.task_id, request.job_id, "onnx", usage=usage, span=span
        )
        response = agent_pb2.RunTaskResponse(
            task_id=request.task_id,
            outputs=[from_array(n, np.asarray(a)) for n, a in outputs.items()],
            virtual_start_s=span.start,
            virtual_end_s=span.end,
            usage_id=usage_id,
            numerics=describe(precision),
            cost=agent_pb2.WorkCost(
                flops=cost.flops,
                bytes_moved=cost.bytes_moved,
                bound=str(cost.bound),
                kernels=len(cost.kernels),
                fused_ops=cost.fused_ops,
            ),
        )
        usage_into_response(usage, response)
        return response

    def _llm_prediction(
        self, model: str, precision: str, devices: int, batch: int, input_len: int, output_len: int
    ) -> Prediction:
        try:
            return predict(self._chip.name, devices, model, precision, batch, input_len, output_len)
        except PerfInputError as exc:
            raise _perf_error(exc) from None

    async def _run_llm_batch(
        self, tenant: str, request: agent_pb2.RunTaskRequest
    ) -> agent_pb2.RunTaskResponse:
        precision = self._precision("precision", request.precision)
        devices = self._devices(request.device_indexes)
        work = request.llm_batch
        v.require_text("llm_batch.model", work.model, 128)
        v.require_range("llm_batch.batch", work.batch, 1, 65536)
        v.require_range("llm_batch.input_len", work.input_len, 1, MAX_LLM_LEN)
        v.require_range("llm_batch.output_len", work.output_len, 1, MAX_LLM_LEN)
        p = self._llm_prediction(
            work.model, precision, len(devices), work.batch, work.input_len, work.output_len
        )
        # Allocating what the model needs makes a deployment that doesn't fit fail the way the
        # vendor's runtime fails (its out-of-memory error), not with a made-up one.
        allocations = self._allocate(devices, int(p.memory_gib * GIB), f"task:{request.task_id}")
        try:
            if not p.fits or p.ttft_ms is None or p.tpot_ms is None:
                raise FailedPrecondition(p.why_not_fits or "the deployment does not fit")
            seconds = (p.ttft_ms + p.tpot_ms * (work.output_len - 1)) / 1000
            span = self._occupy(devices, seconds, f"llm:{request.task_id}")
            await self._pace(seconds)
        finally:
            self._free(allocations)
        usage = events_pb2.UsageRecorded(
            tokens_in=work.batch * work.input_len,
            tokens_out=work.batch * work.output_len,
            busy_device_us=device_us(seconds * len(devices)),
            memory_byte_seconds=byte_seconds(p.memory_gib * len(devices) * seconds),
            devices=len(devices),
        )
        usage_id = await self._record(
            tenant, "task", request.task_id, request.job_id, work.model, usage=usage, span=span
        )
        response = agent_pb2.RunTaskResponse(
            task_id=request.task_id,
            virtual_start_s=span.start,
            virtual_end_s=span.end,
            usage_id=usage_id,
            ttft_ms=p.ttft_ms,
            tpot_ms=p.tpot_ms,
            numerics="not computed: LLM weights are not loaded; timing from the performance "
            "model, accuracy not measured",
            # One output token means no decode step: the prefill is the whole batch.
            cost=agent_pb2.WorkCost(
                bound=str(p.decode_bound or p.prefill_bound or ""), kernels=work.output_len
            ),
        )
        usage_into_response(usage, response)
        return response

    # -- ServeRequests ----------------------------------------------------------------------
    async def serve_requests(
        self, tenant: str, request: agent_pb2.ServeRequestsRequest
    ) -> agent_pb2.ServeRequestsResponse:
        """A request list through one engine; per-request timings back in one answer."""
        v.require_id("run_id", request.run_id)
        v.optional_text("job_id", request.job_id, 128)
        v.optional_text("profile", request.profile, 64)
        precision = self._precision("precision", request.precision)
        devices = self._devices(request.device_indexes)
        n = len(request.arrival_s)
        v.require_range("arrival_s", n, 1, MAX_BULK_REQUESTS)
        arrival = np.asarray(request.arrival_s, dtype=np.float64)
        if not np.all(np.isfinite(arrival)) or arrival[0] < 0 or np.any(np.diff(arrival) < 0):
            raise InvalidArgument("arrival_s", "must be finite, >= 0 and non-decreasing")
        v.require_range("concurrency", request.concurrency, 0, MAX_BULK_REQUESTS)
        kind = request.WhichOneof("work")
        if kind == "llm":
            v.require_text("llm.model", request.llm.model, 128)
            v.require_range("llm.max_num_seqs", request.llm.max_num_seqs, 0, 65536)
            for name, values in (
                ("input_len", request.input_len),
                ("output_len", request.output_len),
            ):
                if len(values) != n:
                    raise InvalidArgument(name, f"must have one entry per request ({n})")
            input_len = np.asarray(request.input_len, dtype=np.int64)
            output_len = np.asarray(request.output_len, dtype=np.int64)
            for name, arr in (("input_len", input_len), ("output_len", output_len)):
                if np.any(arr < 1) or np.any(arr > MAX_LLM_LEN):
                    raise InvalidArgument(name, f"every entry must be between 1 and {MAX_LLM_LEN}")
            model = request.llm.model
            job = asyncio.to_thread(
                serve_llm,
                self._catalog,
                self._chip,
                model,
                precision,
                len(devices),
                request.profile,
                request.llm.max_num_seqs,
                arrival,
                input_len,
                output_len,
                request.concurrency,
            )
        elif kind == "samples" and request.samples.onnx:
            v.require_text("samples.model", request.samples.model, 128)
            if len(devices) != 1:
                raise InvalidArgument("device_indexes", "sample serving runs on one device")
            model = request.samples.model
            shapes = {s.name: list(s.dims) for s in request.samples.sample_shapes}
            if len(shapes) != len(request.samples.sample_shapes):
                raise InvalidArgument("samples.sample_shapes", "must name each input once")
            job = asyncio.to_thread(
                serve_onnx_samples,
                self._chip,
                request.samples.onnx,
                shapes,
                precision,
                request.samples.max_batch,
                arrival,
                request.concurrency,
                self._runtime.unsupported_operators,
            )
        elif kind == "samples":
            v.require_text("samples.model", request.samples.model, 128)
            if len(devices) != 1:
                raise InvalidArgument("device_indexes", "sample serving runs on one device")
            model = request.samples.model
            job = asyncio.to_thread(
                serve_samples,
                self._catalog,
                self._chip,
                model,
                precision,
                request.samples.max_batch,
                request.samples.passes,
                arrival,
                request.concurrency,
            )
        else:
            raise InvalidArgument("work", "must be llm or samples")
        try:
            run = await job
        except PerfInputError as exc:
            raise _perf_error(exc) from None
        return await self._answer_bulk(tenant, request, model, devices, run)

    async def _answer_bulk(
        self,
        tenant: str,
        request: agent_pb2.ServeRequestsRequest,
        model: str,
        devices: list[int],
        run: BulkRun,
    ) -> agent_pb2.ServeRequestsResponse:
        result = run.result
        wl = result.workload
        duration = float(np.nanmax(result.finish_s)) if wl.size else 0.0
        # What the vendor runtime must hold while serving: a deployment that does not fit fails
        # with that vendor's out-of-memory error.
        allocations = self._allocate(devices, int(run.memory_gib * GIB), f"serve:{request.run_id}")
        try:
            span = self._occupy(devices, duration, f"serve:{request.run_id}")
            await self._pace(duration)
        finally:
            self._free(allocations)
        samples = request.WhichOneof("work") == "samples"
        usage = events_pb2.UsageRecorded(
            tokens_in=0 if samples else int(wl.input_len.sum()),
            tokens_out=0 if samples else int(wl.output_len.sum()),
            samples=wl.size if samples else 0,
            busy_device_us=device_us(duration * len(devices)),
            memory_byte_seconds=byte_seconds(run.memory_gib * len(devices) * duration),
            devices=len(devices),
        )
        usage_id = await self._record(
            tenant, "serve", request.run_id, request.job_id, model, usage=usage, span=span
        )
        w = run.window
        itl_ms = run.itl_s * 1e3
        if itl_ms.size:
            q50, q90, q99 = np.quantile(itl_ms, (0.5, 0.9, 0.99))
            itl = agent_pb2.LatencySummary(
                mean=float(itl_ms.mean()),
                median=float(q50),
                p90=float(q90),
                p99=float(q99),
                count=int(itl_ms.size),
            )
        else:
            itl = agent_pb2.LatencySummary()
        response = agent_pb2.ServeRequestsResponse(
            run_id=request.run_id,
            profile=run.profile,
            arrival_s=wl.arrival_s.tolist(),
            first_token_s=result.first_token_s.tolist(),
            finish_s=result.finish_s.tolist(),
            preemptions=result.preemptions_per_request.tolist(),
            itl_ms=itl,
            window=agent_pb2.ServingWindow(
                reached=w.reached,
                reason=w.reason,
                start_s=w.start_s,
                end_s=w.end_s,
                saturated=w.saturated,
                concurrency=run.concurrency,
            ),
            virtual_start_s=span.start,
            virtual_end_s=span.end,
            memory_gib=run.memory_gib,
            usage_id=usage_id,
            max_batch=run.max_batch,
            kv_cache_blocks=run.kv_cache_blocks,
            numerics="not computed: timings from the performance model on the virtual clock",
        )
        usage_into_response(usage, response)
        return response

    # -- Generate -------------------------------------------------------------------------
    async def generate(
        self, tenant: str, request: agent_pb2.GenerateRequest
    ) -> AsyncGenerator[agent_pb2.GenerateResponse, None]:
        """Token stream on the virtual clock. A stream its client abandons (cancelled, or
        closed by the caller) records the usage of the tokens produced until then, under an id
        of its own; one abandoned before its first token finished no unit of work and records
        nothing."""
        v.require_id("request_id", request.request_id)
        v.require_text("model", request.model, 128)
        v.require_range("input_len", request.input_len, 1, MAX_LLM_LEN)
        v.require_range("max_output_tokens", request.max_output_tokens, 1, MAX_LLM_LEN)
        precision = self._precision("precision", request.precision)
        # One request served alone on device 0: a batch of one. Concurrent requests queue on
        # the device stream; throughput under batching is the evaluator's serving simulation.
        p = self._llm_prediction(
            request.model, precision, 1, 1, request.input_len, request.max_output_tokens
        )
        allocations = self._allocate([0], int(p.memory_gib * GIB), f"gen:{request.request_id}")
        produced = 0
        finished = False
        try:
            if not p.fits or p.ttft_ms is None or p.tpot_ms is None:
                raise FailedPrecondition(p.why_not_fits or "the model does not fit one device")
            ttft, tpot = p.ttft_ms / 1000, p.tpot_ms / 1000
            n = request.max_output_tokens
            seconds = ttft + tpot * (n - 1)
            span = self._occupy([0], seconds, f"gen:{request.request_id}")
            rng = np.random.default_rng(request.seed)
            vocab = max(2, self._vocab(request.model))
            tokens = rng.integers(0, vocab, size=n)
            queued = span.start - self._runtime.streams[0].now
            previous = 0.0
            for i in range(n):
                at = queued + ttft + tpot * i
                await self._pace(at - previous)
                previous = at
                last = i == n - 1
                usage_id = ""
                if last:
                    usage_id = await self._record(
                        tenant,
                        "gen",
                        request.request_id,
                        request.job_id,
                        request.model,
                        usage=_stream_usage(request, n, seconds, p.memory_gib),
                        span=span,
                    )
                    finished = True
                produced = i + 1
                yield agent_pb2.GenerateResponse(
                    index=i,
                    token_id=int(tokens[i]),
                    virtual_time_s=at,
                    last=last,
                    usage_id=usage_id,
                    queued_s=queued,
                )
        finally:
            self._free(allocations)
            if produced and not finished:
                # Shielded: this runs while the stream is being cancelled or closed, and a
                # second cancellation must not lose work that was done.
                await self._shielded(
                    self._record_partial(tenant, request, p.memory_gib, ttft, tpot, span, produced)
                )

    async def _record_partial(
        self,
        tenant: str,
        request: agent_pb2.GenerateRequest,
        memory_gib: float,
        ttft: float,
        tpot: float,
        span: _Span,
        produced: int,
    ) -> None:
        seconds = ttft + tpot * (produced - 1)
        try:
            await self._record(
                tenant,
                "gen-partial",
                # The count is in the id: an abandoned retry that got further is its own work.
                f"{request.request_id}:{produced}",
                request.job_id,
                request.model,
                usage=_stream_usage(request, produced, seconds, memory_gib),
                span=_Span(span.start, span.start + seconds),
            )
        except Exception:
            log.exception(
                "usage.partial_unrecorded", request_id=request.request_id, produced=produced
            )

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        # Held until done: a task nobody references can be collected mid-flight.
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

    @staticmethod
    def _vocab(model: str) -> int:
        from pocgrid.perf.predict import resolve_model

        arch = resolve_model(model).arch
        return arch.vocab_size if arch is not None else 32000
