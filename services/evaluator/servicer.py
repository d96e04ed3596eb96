"""gRPC servicer: the public EvaluatorService."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from pocgrid.catalog import Catalog
from pocgrid.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc
from services.core import rpc_context
from services.core import validation as v
from services.core.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from services.evaluator.evaluations import Evaluations
from services.evaluator.scenarios import TRAINING, ScenarioCatalog, ScenarioError, check_scenario
from services.evaluator.store import EvaluationStore
from services.evaluator.usermodels import (
    UserModels,
    decode_sample_set,
    sample_set_id,
    sample_set_payload,
)


def require_tenant() -> str:
    tenant = rpc_context.current_tenant()
    if not tenant:
        raise Unauthenticated(
            "no tenant: evaluations are kept per tenant (call through the gateway)",
            reason="TENANT_REQUIRED",
        )
    return tenant


class EvaluatorServicer(evaluator_pb2_grpc.EvaluatorServiceServicer):
    def __init__(
        self,
        scenarios: ScenarioCatalog,
        catalog: Catalog,
        evaluations: Evaluations,
        store: EvaluationStore,
        users: UserModels,
    ) -> None:
        self._scenarios = scenarios
        self._catalog = catalog
        self._users = users
        self._evaluations = evaluations
        self._store = store

    async def ListScenarios(
        self, request: evaluator_pb2.ListScenariosRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.ListScenariosResponse:
        tenant = rpc_context.current_tenant()
        own = await self._store.scenarios(tenant) if tenant else []
        return evaluator_pb2.ListScenariosResponse(scenarios=[*self._scenarios.scenarios, *own])

    async def GetScenario(
        self, request: evaluator_pb2.GetScenarioRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.GetScenarioResponse:
        v.require_text("name", request.name, 63)
        scenario = await self._evaluations.scenario(rpc_context.current_tenant(), request.name)
        if scenario is None:
            raise NotFound("scenario", request.name, "known: " + ", ".join(self._scenarios.names))
        return evaluator_pb2.GetScenarioResponse(scenario=scenario)

    async def CreateScenario(
        self, request: evaluator_pb2.CreateScenarioRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.CreateScenarioResponse:
        tenant = require_tenant()
        s = evaluator_pb2.Scenario()
        s.CopyFrom(request.scenario)
        if s.owner and s.owner != tenant:
            raise InvalidArgument("scenario.owner", "must be empty (it is set to the caller)")
        if s.kind in ("pack", TRAINING):
            raise InvalidArgument(
                "scenario.kind", f"user scenarios are llm or samples, not {s.kind}"
            )
        try:
            check_scenario(s, self._catalog, "scenario")
        except ScenarioError as exc:
            raise InvalidArgument(exc.field, exc.rule) from None
        if s.onnx_model_hash:
            # The graph from the adapter and the samples from here, checked against each other
            # (a real fp32 run included): what a user can get wrong is refused now, by field.
            user = await self._users.load(tenant, s)
            s.labelled_samples = user.samples.count
        elif s.labelled_samples:
            raise InvalidArgument("scenario.labelled_samples", "is set from sample_set")
        if self._scenarios.get(s.name) is not None:
            raise InvalidArgument("scenario.name", f"{s.name!r} is a built-in scenario")
        s.owner = tenant
        if not s.load_scenarios:
            s.load_scenarios.append(evaluator_pb2.LOAD_SCENARIO_SERVER)
        if not await self._store.put_scenario(tenant, s):
            existing = await self._store.scenario(tenant, s.name)
            if existing == s:
                return evaluator_pb2.CreateScenarioResponse(scenario=existing)
            raise AlreadyExists(f"scenario {s.name!r} already exists with another definition")
        return evaluator_pb2.CreateScenarioResponse(scenario=s)

    async def ImportSampleSet(
        self, request: evaluator_pb2.ImportSampleSetRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.ImportSampleSetResponse:
        tenant = require_tenant()
        samples = decode_sample_set(request)
        payload = sample_set_payload(request)
        set_id, digest = sample_set_id(payload)
        name = request.name or set_id
        created = await self._store.put_sample_set(
            tenant, set_id, name, samples.count, digest, payload
        )
        if not created:
            row = await self._store.sample_set(tenant, set_id)
            name = row.name if row is not None else name
        return evaluator_pb2.ImportSampleSetResponse(
            sample_set=evaluator_pb2.SampleSet(
                sample_set_id=set_id,
                name=name,
                count=samples.count,
                inputs=sorted(samples.inputs),
                output=samples.output,
                sha256=digest,
            ),
            created=created,
        )

    async def StartEvaluation(
        self, request: evaluator_pb2.StartEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.StartEvaluationResponse:
        evaluation = await self._evaluations.start(require_tenant(), request)
        return evaluator_pb2.StartEvaluationResponse(evaluation=evaluation)

    async def GetEvaluation(
        self, request: evaluator_pb2.GetEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.GetEvaluationResponse:
        evaluation = await self._evaluations.get(require_tenant(), request.evaluation_id)
        return evaluator_pb2.GetEvaluationResponse(evaluation=evaluation)

    async def ListEvaluations(
        self, request: evaluator_pb2.ListEvaluationsRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.ListEvaluationsResponse:
        tenant = require_tenant()
        size = v.page_size("page.page_size", request.page.page_size)
        offset = v.page_offset("page.page_token", request.page.page_token)
        items, total = await self._evaluations.list(tenant, offset, size)
        token = str(offset + size) if offset + size < total else ""
        return evaluator_pb2.ListEvaluationsResponse(
            evaluations=items,
            page=common_pb2.PageResponse(next_page_token=token, total_size=total),
        )

    async def WatchEvaluation(
        self, request: evaluator_pb2.WatchEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[evaluator_pb2.WatchEvaluationResponse]:
        tenant = require_tenant()
        async for evaluation in self._evaluations.watch(tenant, request.evaluation_id):
            yield evaluator_pb2.WatchEvaluationResponse(evaluation=evaluation)
