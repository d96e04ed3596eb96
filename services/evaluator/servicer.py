"""gRPC servicer: the public EvaluatorService."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from pocgrid.v1 import evaluator_pb2, evaluator_pb2_grpc
from services.core import validation as v
from services.core.errors import NotFound
from services.evaluator.scenarios import Scenario

LOAD_SCENARIO: dict[str, evaluator_pb2.LoadScenario.ValueType] = {
    "offline": evaluator_pb2.LOAD_SCENARIO_OFFLINE,
    "server": evaluator_pb2.LOAD_SCENARIO_SERVER,
    "single-stream": evaluator_pb2.LOAD_SCENARIO_SINGLE_STREAM,
    "multi-stream": evaluator_pb2.LOAD_SCENARIO_MULTI_STREAM,
}


def scenario_to_proto(scenario: Scenario) -> evaluator_pb2.Scenario:
    slo = scenario.default_slo
    return evaluator_pb2.Scenario(
        name=scenario.name,
        title=scenario.title,
        description=scenario.description,
        models=list(scenario.models),
        load_scenarios=[LOAD_SCENARIO[s] for s in scenario.load_scenarios],
        default_slo=evaluator_pb2.Slo(
            p99_latency_ms=slo.p99_latency_ms,
            p99_ttft_ms=slo.p99_ttft_ms,
            p99_tpot_ms=slo.p99_tpot_ms,
            min_accuracy_ratio=slo.min_accuracy_ratio,
            source=slo.source,
        ),
        accuracy_metric=scenario.accuracy_metric,
    )


class EvaluatorServicer(evaluator_pb2_grpc.EvaluatorServiceServicer):
    def __init__(self, scenarios: Iterable[Scenario]) -> None:
        self._scenarios = {s.name: scenario_to_proto(s) for s in scenarios}

    async def ListScenarios(
        self, request: evaluator_pb2.ListScenariosRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.ListScenariosResponse:
        return evaluator_pb2.ListScenariosResponse(scenarios=list(self._scenarios.values()))

    async def GetScenario(
        self, request: evaluator_pb2.GetScenarioRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.GetScenarioResponse:
        v.require_text("name", request.name, 63)
        scenario = self._scenarios.get(request.name)
        if scenario is None:
            raise NotFound("scenario", request.name, "known: " + ", ".join(self._scenarios))
        return evaluator_pb2.GetScenarioResponse(scenario=scenario)
