"""Evaluations as resources: started at once, run in the background, watched, kept per tenant.

``start`` validates the request (INVALID_ARGUMENT naming the field), stores the evaluation
QUEUED and returns it; a task runs it (``Runner``) and saves progress after every finished run,
so ``GetEvaluation`` and ``WatchEvaluation`` see it move; the result, the recommendation and the
SLO it was judged against are stored with it. An evaluation a previous process left unfinished
is marked FAILED on start, with the reason: its runs cannot be resumed half-way.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from pocgrid.catalog import Catalog, UnknownChipError
from pocgrid.comm.training import SPLITS
from pocgrid.v1 import common_pb2, evaluator_pb2
from services.core import rpc_context
from services.core import validation as v
from services.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.core.logging import get_logger
from services.evaluator import recommend, training
from services.evaluator.events import state_event
from services.evaluator.runner import Component, Runner, RunSpec, components_of, mode_name
from services.evaluator.scenarios import (
    MAX_CONCURRENCY,
    MAX_QPS,
    MAX_REQUESTS,
    PRECISIONS,
    ScenarioCatalog,
)
from services.evaluator.store import TERMINAL, EvaluationStore

log = get_logger()

DEFAULT_REQUESTS = 1000
MAX_BURSTINESS = 100.0
MAX_CHIPS = 64
MAX_SLO_MS = 3.6e6
RUNNING = evaluator_pb2.EVALUATION_STATE_RUNNING
QUEUED = evaluator_pb2.EVALUATION_STATE_QUEUED
SUCCEEDED = evaluator_pb2.EVALUATION_STATE_SUCCEEDED
FAILED = evaluator_pb2.EVALUATION_STATE_FAILED


@dataclass(slots=True)
class _Live:
    evaluation: evaluator_pb2.Evaluation
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    version: int = 0


def _finite(name: str, value: float, hi: float) -> None:
    if not math.isfinite(value) or not 0 <= value <= hi:
        raise InvalidArgument(name, f"must be between 0 and {hi:g} (got {value:g})")


class Evaluations:
    def __init__(
        self,
        store: EvaluationStore,
        catalog: Catalog,
        scenarios: ScenarioCatalog,
        runner: Callable[[], Runner | None],
        placement: str,
        published: Callable[[], None] = lambda: None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        """``published``: told after a commit that wrote lifecycle events (the outbox relay's
        ``notify``, so they go out at once rather than at its next sweep)."""
        self._published = published
        self._store = store
        # The run's own span, under StartEvaluation's: the run outlives that RPC, and its calls
        # (agents, the scheduler, metering) belong under one span that lasts as long as it does.
        self._tracer = tracer
        self._catalog = catalog
        self._scenarios = scenarios
        self._runner = runner
        self._placement = placement
        self._live: dict[str, _Live] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> None:
        for evaluation in await self._store.unfinished():
            evaluation.state = FAILED
            evaluation.error = "the evaluator restarted while this evaluation ran; start it again"
            evaluation.finished_at.GetCurrentTime()
            await self._store.save(evaluation, state_event(evaluation))
            self._published()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- scenarios --------------------------------------------------------------------------
    async def scenario(self, tenant: str, name: str) -> evaluator_pb2.Scenario | None:
        return self._scenarios.get(name) or (
            await self._store.scenario(tenant, name) if tenant else None
        )

    # -- start ------------------------------------------------------------------------------
    async def start(
        self, tenant: str, request: evaluator_pb2.StartEvaluationRequest
    ) -> evaluator_pb2.Evaluation:
        v.optional_text("idempotency_key", request.idempotency_key, 128)
        if request.idempotency_key:
            found = await self._store.find_by_key(tenant, request.idempotency_key)
            if found is not None:
                return found
        scenario, components = await self._validate(tenant, request)
        runner = self._runner()
        if runner is None:
            raise FailedPrecondition(
                "the evaluator has no registry address (POCGRID_REGISTRY_ADDR): it cannot find"
                " the pool's agents"
            )
        evaluation = evaluator_pb2.Evaluation(
            evaluation_id=f"ev-{uuid.uuid4().hex[:16]}",
            tenant=tenant,
            state=QUEUED,
            request=request,
            scenario_kind=scenario.kind,
            model=components[0].model if scenario.kind != "pack" else "",
            placement=self._placement,
            slo=components[0].slo if scenario.kind != "pack" else scenario.default_slo,
        )
        evaluation.created_at.GetCurrentTime()
        if not await self._store.insert(evaluation, request.idempotency_key):
            found = await self._store.find_by_key(tenant, request.idempotency_key)
            assert found is not None
            return found
        live = _Live(evaluation)
        self._live[evaluation.evaluation_id] = live
        spec = self._spec(request, scenario, evaluation.evaluation_id)
        task = asyncio.create_task(
            self._run_traced(live, runner, components, list(request.chips), spec),
            name=f"evaluation {evaluation.evaluation_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        out = evaluator_pb2.Evaluation()
        out.CopyFrom(evaluation)
        return out

    async def _validate(
        self, tenant: str, r: evaluator_pb2.StartEvaluationRequest
    ) -> tuple[evaluator_pb2.Scenario, list[Component]]:
        v.require_text("scenario", r.scenario, 63)
        scenario = await self.scenario(tenant, r.scenario)
        if scenario is None:
            raise NotFound("scenario", r.scenario, "see ListScenarios")
        if r.model:
            if scenario.kind == training.KIND:
                raise InvalidArgument("model", "a training scenario trains its own MLP")
            if scenario.kind == "pack":
                raise InvalidArgument("model", "a pack runs each component's own model")
            if r.model not in scenario.models:
                raise InvalidArgument(
                    "model", f"must be one of the scenario's models: {', '.join(scenario.models)}"
                )
        if len(r.chips) > MAX_CHIPS:
            raise InvalidArgument("chips", f"at most {MAX_CHIPS} chip types")
        for i, chip in enumerate(r.chips):
            try:
                self._catalog.find_chip(chip)
            except UnknownChipError:
                raise InvalidArgument(
                    f"chips[{i}]", f"{chip!r} is not in the chip catalogue"
                ) from None
        if len(set(r.chips)) != len(r.chips):
            raise InvalidArgument("chips", "must not name a chip type twice")
        if r.mode not in evaluator_pb2.EvaluationMode.values():
            raise InvalidArgument("mode", "is not an EvaluationMode value")
        _finite("qps", r.qps, MAX_QPS)
        _finite("burstiness", r.burstiness, MAX_BURSTINESS)
        v.require_range("concurrency", r.concurrency, 0, MAX_CONCURRENCY)
        v.require_range("requests", r.requests, 0, MAX_REQUESTS)
        if r.seed < 0:
            raise InvalidArgument("seed", "must be >= 0")
        for name in ("ttft_p99_ms", "tpot_p99_ms", "e2el_p99_ms"):
            if r.slo.HasField(name):
                value = getattr(r.slo, name)
                if not (math.isfinite(value) and 0 < value <= MAX_SLO_MS):
                    raise InvalidArgument(f"slo.{name}", f"must be in (0, {MAX_SLO_MS:g}] ms")
        for i, c in enumerate(r.sweep_concurrency):
            v.require_range(f"sweep_concurrency[{i}]", c, 1, MAX_CONCURRENCY)
        if r.precision and r.precision not in common_pb2.Precision.values():
            raise InvalidArgument("precision", "is not a Precision value")
        mode = self._mode(r, scenario)
        # A pack's components bring their own rates and concurrencies; training has none.
        if scenario.kind in ("pack", training.KIND):
            pass
        elif mode == "server" and not (r.qps or scenario.default_qps):
            raise InvalidArgument("qps", "must be > 0 in server mode (the scenario has no default)")
        elif mode == "concurrency" and not (r.concurrency or scenario.default_concurrency):
            raise InvalidArgument("concurrency", "must be > 0 in concurrency mode")
        atomic = self._scenarios.atomic()
        return scenario, components_of(scenario, atomic, r.model, r.slo)

    @staticmethod
    def _mode(r: evaluator_pb2.StartEvaluationRequest, scenario: evaluator_pb2.Scenario) -> str:
        mode = r.mode or scenario.default_mode or evaluator_pb2.EVALUATION_MODE_SERVER
        return mode_name(mode)

    def _spec(
        self,
        r: evaluator_pb2.StartEvaluationRequest,
        scenario: evaluator_pb2.Scenario,
        evaluation_id: str,
    ) -> RunSpec:
        from pocgrid.precision import to_name

        precision = to_name(r.precision) if r.precision else ""
        if precision not in PRECISIONS:
            precision = scenario.default_precision or "bf16"
        return RunSpec(
            mode=self._mode(r, scenario),
            requests=r.requests or scenario.default_requests or DEFAULT_REQUESTS,
            seed=r.seed,
            qps=r.qps,
            burstiness=r.burstiness or 1.0,
            concurrency=r.concurrency,
            sweep=tuple(sorted(set(r.sweep_concurrency))),
            precision=precision,
            evaluation_id=evaluation_id,
        )

    # -- the run -------------------------------------------------------------------------------
    async def _run_traced(
        self,
        live: _Live,
        runner: Runner,
        components: list[Component],
        chips: list[str],
        spec: RunSpec,
    ) -> None:
        if self._tracer is None:
            await self._run(live, runner, components, chips, spec)
            return
        evaluation = live.evaluation
        with self._tracer.start_as_current_span(
            "evaluation",
            attributes={
                "pocgrid.evaluation_id": evaluation.evaluation_id,
                "pocgrid.scenario": evaluation.request.scenario,
                "pocgrid.tenant": evaluation.tenant,
            },
        ) as span:
            # Both lines carry the trace id (logging.add_trace_context): where to look it up.
            log.info("evaluation.started", evaluation_id=evaluation.evaluation_id)
            await self._run(live, runner, components, chips, spec)
            if evaluation.state == FAILED:
                span.set_status(Status(StatusCode.ERROR, evaluation.error))
            log.info(
                "evaluation.finished",
                evaluation_id=evaluation.evaluation_id,
                state=evaluator_pb2.EvaluationState.Name(evaluation.state),
            )

    async def _run(
        self,
        live: _Live,
        runner: Runner,
        components: list[Component],
        chips: list[str],
        spec: RunSpec,
    ) -> None:
        # The run outlives StartEvaluation: no caller deadline applies to its calls (each call
        # to an agent has its own), while the tenant stays the one the work is done for.
        rpc_context.set_deadline_from_remaining(None)
        evaluation = live.evaluation
        evaluation.state = RUNNING
        await self._changed(live, save=True, announce=True)

        async def progress(message: str, result: evaluator_pb2.ChipResult | None) -> None:
            p = evaluation.progress
            p.message = message
            if result is None:
                p.current = message
            else:
                p.runs_done += 1
                evaluation.results.append(result)
            await self._changed(live, save=result is not None)

        try:
            if not chips:
                chips = sorted(await runner.pool.nodes())
            if components[0].scenario.kind == training.KIND:
                # One job across all the chips: a run per split.
                evaluation.progress.runs_total = len(SPLITS)
                results, trained = await runner.train(components[0].scenario, chips, spec, progress)
                evaluation.training.CopyFrom(trained)
                evaluation.progress.runs_done = len(trained.splits)
                evaluation.recommendation.CopyFrom(training.recommendation(trained))
                del evaluation.results[:]
                evaluation.results.extend(results)
            else:
                evaluation.progress.runs_total = len(components) * len(chips)
                results = await runner.run(components, chips, spec, progress)
                del evaluation.results[:]
                evaluation.results.extend(results)
                shares = {c.scenario.name: c.share for c in components}
                evaluation.recommendation.CopyFrom(recommend.recommend(results, shares))
            evaluation.state = SUCCEEDED
            evaluation.progress.current = ""
            evaluation.progress.message = "done"
        except asyncio.CancelledError:
            evaluation.state = FAILED
            evaluation.error = "the evaluator stopped while this evaluation ran"
            raise
        except Exception as exc:
            log.exception("evaluation.failed", evaluation_id=evaluation.evaluation_id)
            evaluation.state = FAILED
            evaluation.error = f"{type(exc).__name__}: {exc}"
        finally:
            evaluation.finished_at.GetCurrentTime()
            try:
                await asyncio.shield(self._changed(live, save=True, announce=True))
            finally:
                self._live.pop(evaluation.evaluation_id, None)

    async def _changed(self, live: _Live, *, save: bool, announce: bool = False) -> None:
        """Tell watchers; ``save`` stores it, ``announce`` with its lifecycle event."""
        if save:
            events = (state_event(live.evaluation),) if announce else ()
            await self._store.save(live.evaluation, *events)
            if events:
                self._published()
        async with live.changed:
            live.version += 1
            live.changed.notify_all()

    # -- reads ---------------------------------------------------------------------------------
    async def get(self, tenant: str, evaluation_id: str) -> evaluator_pb2.Evaluation:
        v.require_text("evaluation_id", evaluation_id, 63)
        live = self._live.get(evaluation_id)
        if live is not None and live.evaluation.tenant == tenant:
            out = evaluator_pb2.Evaluation()
            out.CopyFrom(live.evaluation)
            return out
        found = await self._store.get(tenant, evaluation_id)
        if found is None:
            raise NotFound("evaluation", evaluation_id)
        return found

    async def list(
        self, tenant: str, offset: int, limit: int
    ) -> tuple[list[evaluator_pb2.Evaluation], int]:
        items, total = await self._store.query(tenant, offset, limit)
        for e in items:
            for r in e.results:
                del r.curve[:]
        return items, total

    async def watch(
        self, tenant: str, evaluation_id: str
    ) -> AsyncIterator[evaluator_pb2.Evaluation]:
        # The version a snapshot was taken at is remembered with it: a change made while the
        # caller was still reading the last one (the final one, say) is not waited for again.
        live = self._live.get(evaluation_id)
        seen = live.version if live is not None else -1
        current = await self.get(tenant, evaluation_id)
        yield current
        if current.state in TERMINAL:
            return
        while live is not None:
            async with live.changed:
                current_live, since = live, seen
                await live.changed.wait_for(lambda: current_live.version != since)  # noqa: B023
                seen = live.version
                snapshot = evaluator_pb2.Evaluation()
                snapshot.CopyFrom(live.evaluation)
            yield snapshot
            if snapshot.state in TERMINAL:
                return
        # It ended between the first read and now: the stored copy is final.
        yield await self.get(tenant, evaluation_id)
