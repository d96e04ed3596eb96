"""Runs one evaluation: every (scenario component, chip type) pair, planned, placed, served,
measured.

Placement (``Pool``, implemented in ``services.evaluator.placement``): the pool's node list says
which chip types there are and how many devices one node of each has (for the plan); each run
then *holds* its devices for as long as it runs (``Pool.hold``): through the scheduler, a
``JOB_KIND_EVALUATION`` job placed like any other and completed when the run ends
(``placement: scheduler``), or, in an evaluator without a scheduler, the registry's first node
of the chip type driven directly (``placement: registry``). A run that the scheduler refuses,
cannot place in time, or that ends before it is placed, is reported with the reason.

Planning (``plan``): the precision the request or scenario asks for when the chip's runtime runs
it (bf16 falls back to fp16 and back, said in ``precision_note``); for an LLM the fewest devices
(1, 2, 4, 8, within the node) that hold the model with the longest request's KV cache
(``pocgrid.perf.check_fit``), one tensor-parallel replica; one device for other models. A chip
that cannot run the scenario gets a result with ``runnable`` False and the reason.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import grpc

from pocgrid.adapt.dense_plan import sample_flops
from pocgrid.adapt.plan import PlanRequest, precision_choices
from pocgrid.catalog import Catalog, Chip, Model
from pocgrid.error_details import error_details
from pocgrid.perf.fit import check_fit
from pocgrid.precision import to_proto
from pocgrid.v1 import agent_pb2, evaluator_pb2
from services.core.errors import PocgridError
from services.evaluator import loadgen, training
from services.evaluator import metrics as m
from services.evaluator.accuracy import (
    LabelledSamples,
    PrecisionAccuracy,
    Reference,
    fp32_reference,
    measure_accuracy,
)
from services.evaluator.realmodels import RealModel, RealModelError, load_real_model
from services.evaluator.scenarios import MODE_BY_VALUE, component_slo
from services.evaluator.usermodels import UserModel, UserModels

TP_CHOICES = (1, 2, 4, 8)
#: Find-peak: bisection steps between 0 and the offline capacity (about 1.5 % of it).
PEAK_STEPS = 6
#: A concurrency sweep's default points, cut at the engine's limit.
SWEEP_POINTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    chip: str
    address: str
    devices: int
    device_indexes: tuple[int, ...] = ()
    """The devices held for a run (``Pool.hold``); empty in the pool's node list."""
    job_id: str = ""
    """The scheduler job holding them, when the scheduler placed the run."""


class PlacementError(Exception):
    """A run that got no devices: the message says why (refused, not placed in time, ended)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """What one run asks the pool to hold while it runs."""

    model: str
    precision: str
    devices: int
    run_id: str
    label: str
    waiting: Callable[[str], Awaitable[None]] | None = None
    """Told why the run waits (the scheduler's pending reason), each time it changes."""


class Pool(Protocol):
    """Where runs go: which node serves a chip type, and the call that serves a request list."""

    placement: str

    async def nodes(self) -> dict[str, Node]:
        """One node per chip type in the pool: the one a plan is made for."""
        ...

    def hold(self, node: Node, hold: Hold) -> AbstractAsyncContextManager[Node]:
        """Devices of ``node``'s chip type held for one run, released when the block ends;
        PlacementError (or the scheduler's gRPC error) when it gets none."""
        ...

    async def serve(
        self, node: Node, request: agent_pb2.ServeRequestsRequest
    ) -> agent_pb2.ServeRequestsResponse: ...

    async def run_task(
        self, node: Node, request: agent_pb2.RunTaskRequest
    ) -> agent_pb2.RunTaskResponse: ...

    async def join_communicator(
        self, node: Node, request: agent_pb2.JoinCommunicatorRequest
    ) -> agent_pb2.JoinCommunicatorResponse:
        """One rank of a communicator on ``node``'s agent (returns when its job is done)."""
        ...


@dataclass(frozen=True, slots=True)
class Price:
    """What metering charges for one device serving for an hour: its busy time, and each GiB
    of its memory held (the book's consumption prices, not a card rental)."""

    busy_device_hour: float
    memory_gib_hour: float
    currency: str
    source: str

    def per_device_hour(self, memory_gib: float) -> float:
        return self.busy_device_hour + self.memory_gib_hour * memory_gib


class Prices(Protocol):
    async def price(self, chip: str) -> Price | None:
        """Price of one device-hour of ``chip``; None when no price book has one."""
        ...


class NoPrices:
    async def price(self, chip: str) -> Price | None:
        return None


@dataclass(frozen=True, slots=True)
class Component:
    scenario: evaluator_pb2.Scenario
    share: float
    slo: evaluator_pb2.Slo
    model: str


@dataclass(slots=True)
class Plan:
    chip: Chip
    model: Model
    precision: str
    devices: int
    precision_note: str = ""
    passes: int = 0
    """Forward passes per sample (diffusion steps; 0: the model's default)."""
    user: UserModel | None = None
    """A tenant's imported ONNX graph and samples (``model`` then describes the graph)."""


@dataclass(slots=True)
class RunSpec:
    """What the request asked for, resolved against the scenario's defaults."""

    mode: str
    requests: int
    seed: int
    qps: float
    burstiness: float
    concurrency: int
    sweep: tuple[int, ...]
    precision: str
    evaluation_id: str


Progress = Callable[[str, evaluator_pb2.ChipResult | None], Awaitable[None]]


def _fail(result: evaluator_pb2.ChipResult, reason: str) -> evaluator_pb2.ChipResult:
    result.runnable = False
    result.reason = reason
    result.verdict = evaluator_pb2.VERDICT_INVALID
    result.verdict_reasons.append(f"not run: {reason}")
    return result


def plan(
    catalog: Catalog,
    chip: Chip,
    model: Model,
    precision: str,
    node_devices: int,
    sizes: tuple[int, int],
) -> Plan | str:
    """The deployment of ``model`` on ``chip``, or why there is none."""
    runs = catalog.precisions(chip)
    if precision in ("fp32", "tf32"):
        if precision not in runs or chip.peak(precision) is None:
            return f"{chip.name} cannot run {precision} here (no runtime support or no peak)"
        chosen: str = precision
        note = ""
    else:
        # The adapter's rule: only what the runtime runs and the catalogue can price; bf16
        # asked on a chip without it becomes its nearest format, said in the note.
        choices, lines, why = precision_choices(chip, PlanRequest(precision=precision), runs)
        if not choices:
            return why or f"{chip.name} cannot run {precision}"
        chosen = choices[0]
        note = lines[-1] if chosen != precision and lines else ""
    if model.arch is None:
        fit = check_fit(chip, model, chosen, 1, catalog=catalog)
        if not fit.fits:
            return fit.reason
        return Plan(chip, model, chosen, 1, note)
    problems: list[str] = []
    for tp in TP_CHOICES:
        if tp > node_devices:
            break
        fit = check_fit(
            chip,
            model,
            chosen,
            tp,
            batch=1,
            input_len=sizes[0],
            output_len=sizes[1],
            catalog=catalog,
        )
        if fit.fits:
            return Plan(chip, model, chosen, tp, note)
        problems = list(fit.problems)
    return (
        f"does not fit one node of {node_devices} x {chip.name}: " + "; ".join(problems)
        if problems
        else "no device"
    )


def flops_per_unit(model: Model, passes: int = 0) -> float:
    """Model FLOPs per processed token (LLMs: 2 x active parameters) or per sample (a diffusion
    image: every stage, the denoiser once per step)."""
    if model.arch is not None:
        active = model.active_params_b if model.active_params_b else model.params_b
        return 2.0 * active * 1e9
    return sample_flops(model, passes)


class Runner:
    def __init__(
        self,
        catalog: Catalog,
        pool: Pool,
        prices: Prices,
        parallel: int = 6,
        users: UserModels | None = None,
        comm_host: Callable[[], str] = lambda: "127.0.0.1",
    ) -> None:
        self.catalog = catalog
        self.pool = pool
        self.prices = prices
        self.parallel = parallel
        self.users = users
        self.comm_host = comm_host
        """Where this process's communicator bootstrap roots listen (agents must reach it)."""
        # Real models and their fp32 CPU references, computed once per process.
        self._references: dict[str, tuple[RealModel, Reference]] = {}

    async def run(
        self,
        components: Sequence[Component],
        chips: Sequence[str],
        spec: RunSpec,
        progress: Progress,
    ) -> list[evaluator_pb2.ChipResult]:
        nodes = await self.pool.nodes()
        chip_names = list(chips) or sorted(nodes)
        pairs = [(c, chip) for c in components for chip in chip_names]
        gate = asyncio.Semaphore(self.parallel)
        await progress(f"{len(pairs)} runs on {len(chip_names)} chip types", None)

        async def one(index: int, component: Component, chip: str) -> evaluator_pb2.ChipResult:
            async with gate:
                what = f"{chip}: {component.scenario.name}"
                await progress(what, None)

                async def waiting(why: str) -> None:
                    await progress(f"{what} {why}", None)

                result = await self._pair(index, component, chip, nodes.get(chip), spec, waiting)
                await progress(f"{chip}: {component.scenario.name} done", result)
                return result

        return list(await asyncio.gather(*(one(i, c, chip) for i, (c, chip) in enumerate(pairs))))

    async def train(
        self,
        scenario: evaluator_pb2.Scenario,
        chips: Sequence[str],
        spec: RunSpec,
        progress: Progress,
    ) -> tuple[list[evaluator_pb2.ChipResult], evaluator_pb2.TrainingResult]:
        """A training scenario: one job across every chip asked for, not one run per chip."""
        nodes = await self.pool.nodes()
        chip_names = list(chips) or sorted(nodes)
        return await training.run(
            self.catalog,
            self.pool,
            nodes,
            scenario,
            chip_names,
            training.Job(spec.evaluation_id, spec.seed, self.comm_host()),
            progress,
        )

    # -- one (component, chip) ---------------------------------------------------------------
    async def _pair(
        self,
        index: int,
        component: Component,
        chip_name: str,
        node: Node | None,
        spec: RunSpec,
        waiting: Callable[[str], Awaitable[None]] | None = None,
    ) -> evaluator_pb2.ChipResult:
        s = component.scenario
        chip = self.catalog.find_chip(chip_name)
        result = evaluator_pb2.ChipResult(
            chip=chip.name,
            vendor=chip.vendor,
            domestic=chip.domestic,
            scenario=s.name,
            kind=s.kind,
            model=component.model,
            mode=spec.mode,
            placement=self.pool.placement,
        )
        result.slo.CopyFrom(component.slo)
        if node is None:
            return _fail(result, f"no READY node of {chip.name} in the pool")
        user: UserModel | None = None
        if s.onnx_model_hash:
            if self.users is None:
                return _fail(result, "this evaluator cannot read imported models")
            try:
                user = await self.users.load(s.owner, s)
            except (PocgridError, grpc.aio.AioRpcError) as exc:
                why = _rpc_reason(exc) if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                return _fail(result, f"the imported model cannot be evaluated: {why}")
        model = user.model if user else self.catalog.find_model(component.model)
        llm = s.kind == "llm"
        sizes = (s.input_len.max, s.output_len.max) if llm else (1, 1)
        planned = plan(self.catalog, chip, model, spec.precision, node.devices, sizes)
        if isinstance(planned, str):
            return _fail(result, planned)
        planned.passes = s.passes_per_sample
        planned.user = user
        result.devices = planned.devices
        result.precision = planned.precision
        result.precision_note = planned.precision_note
        bounds = m.Bounds.of(component.slo)
        requests = max(1, round(spec.requests * component.share))
        run_id = f"{spec.evaluation_id}-{index}"[:63]
        hold = Hold(
            model=model.name,
            precision=planned.precision,
            devices=planned.devices,
            run_id=run_id,
            label=f"evaluation {spec.evaluation_id}: {s.name} on {chip.name}",
            waiting=waiting,
        )
        try:
            async with self.pool.hold(node, hold) as held:
                result.node_id = held.node_id
                result.job_id = held.job_id
                await self._runs(result, planned, held, component, spec, requests, run_id, bounds)
                result.runnable = True
                await self._accuracy(result, planned, held, component)
        except PlacementError as exc:
            return _fail(result, str(exc))
        except grpc.aio.AioRpcError as exc:
            return _fail(result, _rpc_reason(exc))
        return result

    async def _runs(
        self,
        result: evaluator_pb2.ChipResult,
        planned: Plan,
        node: Node,
        component: Component,
        spec: RunSpec,
        requests: int,
        run_id: str,
        bounds: m.Bounds,
    ) -> None:
        llm = component.scenario.kind == "llm"
        if spec.mode == "find-peak":
            await self._find_peak(result, planned, node, component, spec, requests, run_id, bounds)
        elif spec.mode == "sweep":
            await self._sweep(result, planned, node, component, spec, requests, run_id, bounds)
        else:
            reqs = self._requests(component, spec.mode, requests, spec)
            served = await self._serve(planned, node, component, reqs, f"{run_id}")
            self._measure(result, planned, served, reqs, bounds, spec.mode, llm)
            await self._cost(result, planned, llm, served)

    async def _accuracy(
        self, result: evaluator_pb2.ChipResult, planned: Plan, node: Node, component: Component
    ) -> None:
        """Measured accuracy of the scenario's real model (``accuracy_task`` names it) on this
        chip at the run's precision, through the agent's RunTask, against the fp32 CPU
        reference; the SLO's ``min_accuracy_ratio`` bounds accuracy / reference accuracy."""
        s = component.scenario
        if planned.user is not None:
            await self._user_accuracy(result, planned, planned.user, node, component)
            return
        if not s.accuracy_task:
            result.accuracy_note = "not measured: " + (
                s.accuracy_metric or "the scenario names no accuracy task"
            )
            return
        try:
            real, reference = self._real_model(s.accuracy_task)
        except RealModelError as exc:
            result.accuracy_note = f"not measured: {exc}"
            return

        await self._record_accuracy(
            result,
            planned,
            node,
            component,
            real.model,
            real.samples,
            reference,
            "acc",
            lambda measured: (
                f"{real.card.metric} of the project's {real.card.name} on {measured.samples}"
                f" held-out samples at {planned.precision}: {measured.correct}/{measured.samples}"
                f" (fp32 CPU reference {reference.accuracy:.4f}, predictions agreeing with it"
                f" {measured.agreement:.4f}); timing is {planned.model.name}'s"
            ),
        )

    def _on_held(
        self, node: Node
    ) -> Callable[[agent_pb2.RunTaskRequest], Awaitable[agent_pb2.RunTaskResponse]]:
        """RunTask on the device the run holds (the scheduler placed the run on it), unless
        the request names its devices itself."""

        def call(r: agent_pb2.RunTaskRequest) -> Awaitable[agent_pb2.RunTaskResponse]:
            if not r.device_indexes:
                r.device_indexes.extend(node.device_indexes[:1])
            return self.pool.run_task(node, r)

        return call

    async def _user_accuracy(
        self,
        result: evaluator_pb2.ChipResult,
        planned: Plan,
        user: UserModel,
        node: Node,
        component: Component,
    ) -> None:
        """The tenant's graph on its own labelled samples, through the chip's agent at the
        run's precision, against the fp32 CPU reference computed when the scenario was made."""
        await self._record_accuracy(
            result,
            planned,
            node,
            component,
            user.onnx,
            user.samples,
            user.reference,
            "user",
            lambda measured: (
                f"top-1 accuracy of your model {user.name} ({user.model_id}) on the"
                f" {measured.samples} samples of {user.sample_set_id} at {planned.precision}:"
                f" {measured.correct}/{measured.samples} (fp32 CPU reference"
                f" {user.reference.accuracy:.4f}, predictions agreeing with it"
                f" {measured.agreement:.4f}); timing from its graph on the graph cost model"
            ),
        )

    async def _record_accuracy(
        self,
        result: evaluator_pb2.ChipResult,
        planned: Plan,
        node: Node,
        component: Component,
        model: bytes,
        samples: LabelledSamples,
        reference: Reference,
        task_prefix: str,
        describe: Callable[[PrecisionAccuracy], str],
    ) -> None:
        """Measure ``model`` on ``samples`` on the device the run holds and record it: the
        accuracy, its note (``describe``), or why it was not measured; the SLO's
        ``min_accuracy_ratio`` bounds accuracy / the fp32 reference's."""
        try:
            measured = await measure_accuracy(
                self._on_held(node),
                model,
                samples,
                chip=planned.chip.name,
                precision=planned.precision,
                reference=reference,
                task_prefix=task_prefix,
            )
        except grpc.aio.AioRpcError as exc:
            result.accuracy_note = f"not measured: the agent refused ({_rpc_reason(exc)})"
            return
        if measured.accuracy is None:
            result.accuracy_note = f"not measured: {measured.reason}"
            return
        result.accuracy = measured.accuracy
        result.accuracy_note = describe(measured)
        ratio = component.slo.min_accuracy_ratio
        ref = reference.accuracy
        if ratio and ref > 0 and measured.accuracy < ratio * ref:
            result.slo_met = False
            result.slo_violations.append(
                f"accuracy {measured.accuracy:.4f} < {ratio:g} x the fp32 reference's {ref:.4f}"
            )

    def _real_model(self, name: str) -> tuple[RealModel, Reference]:
        cached = self._references.get(name)
        if cached is None:
            real = load_real_model(name)
            cached = (real, fp32_reference(real.model, real.samples))
            self._references[name] = cached
        return cached

    def _requests(
        self,
        component: Component,
        mode: str,
        n: int,
        spec: RunSpec,
        *,
        qps: float = 0.0,
        concurrency: int = 0,
    ) -> loadgen.RequestList:
        s = component.scenario
        llm = s.kind == "llm"
        return loadgen.request_list(
            mode,
            n,
            spec.seed,
            input_len=s.input_len if llm else None,
            output_len=s.output_len if llm else None,
            qps=qps or spec.qps or s.default_qps,
            burstiness=spec.burstiness,
            concurrency=concurrency or spec.concurrency or s.default_concurrency,
        )

    async def _serve(
        self,
        planned: Plan,
        node: Node,
        component: Component,
        reqs: loadgen.RequestList,
        run_id: str,
    ) -> agent_pb2.ServeRequestsResponse:
        s = component.scenario
        request = agent_pb2.ServeRequestsRequest(
            run_id=run_id,
            job_id=run_id,
            precision=to_proto(planned.precision),
            device_indexes=list(node.device_indexes or range(planned.devices)),
            arrival_s=reqs.arrival_s.tolist(),
            concurrency=reqs.concurrency,
        )
        if s.kind == "llm":
            request.input_len.extend(reqs.input_len.tolist())
            request.output_len.extend(reqs.output_len.tolist())
            request.llm.model = planned.model.name
        else:
            request.samples.model = planned.model.name
            request.samples.passes = s.passes_per_sample
            if planned.user is not None:
                request.samples.onnx = planned.user.onnx
                for name, dims in planned.user.sample_shapes.items():
                    request.samples.sample_shapes.add(name=name, dims=dims)
        return await self.pool.serve(node, request)

    def _measure(
        self,
        result: evaluator_pb2.ChipResult,
        planned: Plan,
        served: agent_pb2.ServeRequestsResponse,
        reqs: loadgen.RequestList,
        bounds: m.Bounds,
        mode: str,
        llm: bool,
    ) -> m.RunMetrics:
        run = m.compute(served, reqs.input_len, reqs.output_len, bounds)
        m.fill(result, served, run, llm=llm)
        result.requests = reqs.size
        result.offered_qps = (
            float(reqs.size / reqs.arrival_s[-1])
            if mode == "server" and reqs.arrival_s[-1] > 0
            else 0.0
        )
        result.concurrency = reqs.concurrency
        verdict, reasons = m.verdict(served, run, mode)
        result.verdict = verdict
        result.verdict_reasons.extend(reasons)
        chip = planned.chip
        units_per_s = run.total_tokens_per_s if llm else run.request_throughput
        value = m.mfu(
            flops_per_unit(planned.model, planned.passes),
            units_per_s,
            planned.devices,
            chip.peak_tflops.get(planned.precision),
        )
        if value is not None:
            result.mfu = value
        wh, per_joule, note = m.energy(
            chip.tdp_w, planned.devices, result.duration_s, run.output_tokens_per_s if llm else 0.0
        )
        if wh is not None:
            result.energy_wh = wh
        if per_joule is not None:
            result.tokens_per_joule = per_joule
        result.energy_note = note
        return run

    async def _cost(
        self,
        result: evaluator_pb2.ChipResult,
        planned: Plan,
        llm: bool,
        served: agent_pb2.ServeRequestsResponse,
    ) -> None:
        try:
            price = await self.prices.price(planned.chip.name)
        except grpc.aio.AioRpcError as exc:
            result.cost_note = f"not priced: the price book could not be read ({_rpc_reason(exc)})"
            return
        if price is None:
            result.cost_note = "not priced: no price book in force has a price for this chip"
            return
        per_device = price.per_device_hour(served.memory_gib)
        per_hour = per_device * planned.devices
        cost = evaluator_pb2.Cost(
            currency=price.currency,
            price_per_device_hour=per_device,
            price_source=price.source,
        )
        if llm and result.output_tokens_per_s > 0:
            cost.per_million_tokens = per_hour / (result.output_tokens_per_s * 3600) * 1e6
        elif not llm and result.request_throughput > 0:
            cost.per_thousand_samples = per_hour / (result.request_throughput * 3600) * 1e3
        result.cost.CopyFrom(cost)
        result.cost_note = (
            f"{planned.devices} device(s) x ({price.busy_device_hour:g} {price.currency} per busy"
            f" device-hour + {served.memory_gib:.3g} GiB held x {price.memory_gib_hour:g} per"
            " GiB-hour), over the measured throughput"
        )

    # -- find-peak and sweep --------------------------------------------------------------------
    async def _find_peak(
        self,
        result: evaluator_pb2.ChipResult,
        planned: Plan,
        node: Node,
        component: Component,
        spec: RunSpec,
        n: int,
        run_id: str,
        bounds: m.Bounds,
    ) -> None:
        """Bisection on the Poisson rate between 0 and the offline capacity: the highest rate
        whose run is steady, unsaturated and within every SLO bound."""
        llm = component.scenario.kind == "llm"
        offline = self._requests(component, "offline", n, spec)
        cap = await self._serve(planned, node, component, offline, f"{run_id}-cap")
        cap_run = m.compute(cap, offline.input_len, offline.output_len, m.Bounds())
        hi = cap_run.request_throughput
        lo = 0.0
        best: tuple[agent_pb2.ServeRequestsResponse, loadgen.RequestList] | None = None
        for step in range(PEAK_STEPS + 1):
            qps = hi if step == 0 else (lo + hi) / 2
            reqs = self._requests(component, "server", n, spec, qps=qps)
            served = await self._serve(planned, node, component, reqs, f"{run_id}-p{step}")
            run = m.compute(served, reqs.input_len, reqs.output_len, bounds)
            ok = served.window.reached and not served.window.saturated and run.slo_met
            result.curve.append(_point(run, served, qps, 0, planned.devices, ok))
            if ok:
                lo, best = qps, (served, reqs)
                if step == 0:
                    break
            elif step > 0:
                hi = qps
        if best is None:
            result.verdict = evaluator_pb2.VERDICT_INVALID
            result.verdict_reasons.append(
                f"no rate above {lo:.3g} req/s met the SLO (bisection of {PEAK_STEPS} steps)"
            )
            reqs = self._requests(component, "server", n, spec, qps=max(hi, 1e-3))
            served = await self._serve(planned, node, component, reqs, f"{run_id}-last")
            best = (served, reqs)
        served, reqs = best
        self._measure(result, planned, served, reqs, bounds, "server", llm)
        if lo > 0:
            result.peak_qps = lo
        await self._cost(result, planned, llm, served)

    async def _sweep(
        self,
        result: evaluator_pb2.ChipResult,
        planned: Plan,
        node: Node,
        component: Component,
        spec: RunSpec,
        n: int,
        run_id: str,
        bounds: m.Bounds,
    ) -> None:
        """Closed loops at each concurrency: throughput per device against tokens/s per user."""
        llm = component.scenario.kind == "llm"
        best: tuple[float, agent_pb2.ServeRequestsResponse, loadgen.RequestList] | None = None
        limit: int | None = None
        for c in spec.sweep or SWEEP_POINTS:
            if limit is not None and c > 2 * limit:
                break
            reqs = self._requests(component, "concurrency", max(n, 3 * c), spec, concurrency=c)
            served = await self._serve(planned, node, component, reqs, f"{run_id}-c{c}")
            limit = served.max_batch
            run = m.compute(served, reqs.input_len, reqs.output_len, bounds)
            ok = served.window.reached and run.slo_met
            result.curve.append(_point(run, served, 0.0, c, planned.devices, ok))
            # The result's own figures are the highest-throughput point that met the SLO.
            if ok and (best is None or run.output_tokens_per_s > best[0]):
                best = (run.output_tokens_per_s if llm else run.request_throughput, served, reqs)
        if best is None:
            reqs = self._requests(component, "concurrency", n, spec, concurrency=1)
            served = await self._serve(planned, node, component, reqs, f"{run_id}-c1x")
            best = (0.0, served, reqs)
            result.verdict_reasons.append("no concurrency of the sweep met the SLO")
        _, served, reqs = best
        self._measure(result, planned, served, reqs, bounds, "concurrency", llm)
        await self._cost(result, planned, llm, served)


def _point(
    run: m.RunMetrics,
    served: agent_pb2.ServeRequestsResponse,
    qps: float,
    concurrency: int,
    devices: int,
    ok: bool,
) -> evaluator_pb2.CurvePoint:
    tpot = m.stats(run.tpot_ms[run.measured])
    return evaluator_pb2.CurvePoint(
        concurrency=concurrency,
        qps=qps,
        output_tokens_per_s=run.output_tokens_per_s,
        output_tokens_per_s_per_user=1000.0 / tpot.median if tpot.median > 0 else 0.0,
        output_tokens_per_s_per_device=run.output_tokens_per_s / devices,
        ttft_p99_ms=m.p99_of(run, "ttft"),
        tpot_p99_ms=0.0 if math.isnan(tpot.p99) else tpot.p99,
        e2el_p99_ms=m.p99_of(run, "e2el"),
        slo_met=run.slo_met,
        steady=served.window.reached and ok,
    )


def _rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    details = error_details(exc)
    reason = f" ({details.reason})" if details.reason else ""
    return f"{exc.code().name}{reason}: {exc.details()}"


def components_of(
    scenario: evaluator_pb2.Scenario,
    atomic: dict[str, evaluator_pb2.Scenario],
    model: str,
    slo: evaluator_pb2.SloOverride,
) -> list[Component]:
    """The atomic scenarios an evaluation runs, with their shares, bounds and models."""
    if scenario.kind == training.KIND:
        name = training.model_name(scenario.training)
        return [Component(scenario, 1.0, scenario.default_slo, name)]
    if scenario.kind == "pack":
        out = []
        for c in scenario.components:
            s = atomic[c.scenario]
            model_name = s.default_model or s.models[0]
            out.append(Component(s, c.share, _override(component_slo(c, s), slo), model_name))
        return out
    return [
        Component(
            scenario,
            1.0,
            _override(scenario.default_slo, slo),
            # A scenario over an imported graph names no catalogue model: the graph is it.
            model
            or scenario.default_model
            or (scenario.models[0] if scenario.models else scenario.onnx_model_hash),
        )
    ]


def _override(slo: evaluator_pb2.Slo, override: evaluator_pb2.SloOverride) -> evaluator_pb2.Slo:
    out = evaluator_pb2.Slo()
    out.CopyFrom(slo)
    if override.HasField("ttft_p99_ms"):
        out.p99_ttft_ms = override.ttft_p99_ms
    if override.HasField("tpot_p99_ms"):
        out.p99_tpot_ms = override.tpot_p99_ms
    if override.HasField("e2el_p99_ms"):
        out.p99_latency_ms = override.e2el_p99_ms
    return out


def mode_name(mode: evaluator_pb2.EvaluationMode.ValueType) -> str:
    return MODE_BY_VALUE[mode]
