"""The evaluator process: the scenario catalogue, checked against the model catalogue on start."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from opentelemetry.sdk.trace import SpanProcessor

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.v1 import evaluator_pb2, evaluator_pb2_grpc
from services.core.config import CommonConfig
from services.core.service import Service
from services.evaluator.config import EvaluatorConfig
from services.evaluator.scenarios import load_scenarios
from services.evaluator.servicer import EvaluatorServicer


class EvaluatorServer(Service):
    name = "evaluator"
    config_type = EvaluatorConfig

    def __init__(
        self,
        common: CommonConfig,
        config: EvaluatorConfig,
        *,
        catalog: Catalog | None = None,
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        super().__init__(common, env=env, span_processors=span_processors)
        self.config = config
        self.catalog = catalog or default_catalog()

    async def on_start(self, server: grpc.aio.Server) -> None:
        path = (
            Path(self.config.evaluator_scenarios_file)
            if self.config.evaluator_scenarios_file
            else None
        )
        scenarios = load_scenarios(self.catalog, path)
        evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(
            EvaluatorServicer(scenarios), server
        )
        self.add_service(evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name)
