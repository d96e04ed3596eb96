"""gRPC servicer: the public AdapterService."""

from __future__ import annotations

import grpc

from pocgrid import precision
from pocgrid.catalog import Catalog, UnknownNameError
from pocgrid.perf import FIT_BATCH, FIT_INPUT_LEN, FIT_OUTPUT_LEN, PerfInputError, check_fit
from pocgrid.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2
from services.adapter.config import AdapterConfig
from services.adapter.imports import ModelBook, coverage_proto, plan_request, to_proto
from services.core import rpc_context
from services.core import validation as v
from services.core.errors import InvalidArgument, NotFound, Unauthenticated

MAX_DEVICES = 64
MAX_BATCH = 4096
MAX_TOKENS = 1 << 20


def _hint(exc: UnknownNameError) -> str:
    return "did you mean " + ", ".join(exc.suggestions) if exc.suggestions else ""


def precision_name(field: str, value: int) -> str:
    """The catalogue name of a Precision value; InvalidArgument naming ``field`` otherwise."""
    if value == common_pb2.PRECISION_UNSPECIFIED:
        raise InvalidArgument(field, "must be set")
    if value not in precision.PRECISION_NAME:
        raise InvalidArgument(field, "is not a Precision value")
    return precision.PRECISION_NAME[value]


def caller_tenant() -> str:
    """The tenant the gateway authenticated; a call that bypassed the gateway has none."""
    tenant = rpc_context.current_tenant()
    if not tenant:
        raise Unauthenticated("no tenant: call through the gateway")
    return tenant


class AdapterServicer(adapter_pb2_grpc.AdapterServiceServicer):
    def __init__(self, catalog: Catalog, config: AdapterConfig, models: ModelBook) -> None:
        self._catalog = catalog
        self._config = config
        self._models = models

    async def ImportOnnxModel(
        self, request: adapter_pb2.ImportOnnxModelRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.ImportOnnxModelResponse:
        tenant = caller_tenant()
        if len(request.name) > 256:
            raise InvalidArgument(
                "name", f"must be at most 256 characters (got {len(request.name)})"
            )
        row, created = await self._models.import_onnx(tenant, request.name, request.onnx)
        return adapter_pb2.ImportOnnxModelResponse(model=to_proto(row), created=created)

    async def ImportLlmConfig(
        self, request: adapter_pb2.ImportLlmConfigRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.ImportLlmConfigResponse:
        tenant = caller_tenant()
        if len(request.name) > 256:
            raise InvalidArgument(
                "name", f"must be at most 256 characters (got {len(request.name)})"
            )
        row, created = await self._models.import_llm(tenant, request.name, request.config_json)
        return adapter_pb2.ImportLlmConfigResponse(model=to_proto(row), created=created)

    async def GetImportedModel(
        self, request: adapter_pb2.GetImportedModelRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.GetImportedModelResponse:
        tenant = caller_tenant()
        v.require_text("model_id", request.model_id)
        row = await self._models.get(tenant, request.model_id)
        return adapter_pb2.GetImportedModelResponse(
            model=to_proto(row), content=row.content if request.include_content else b""
        )

    async def ListImportedModels(
        self, request: adapter_pb2.ListImportedModelsRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.ListImportedModelsResponse:
        tenant = caller_tenant()
        rows = await self._models.list(tenant)
        return adapter_pb2.ListImportedModelsResponse(models=[to_proto(r) for r in rows])

    async def GetCoverage(
        self, request: adapter_pb2.GetCoverageRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.GetCoverageResponse:
        tenant = caller_tenant()
        v.require_text("model", request.model)
        v.require_text("chip", request.chip)
        cov = await self._models.coverage(tenant, request.model, request.chip)
        return adapter_pb2.GetCoverageResponse(
            verdict=cov.verdict, operators=coverage_proto(cov), basis=cov.basis
        )

    async def Estimate(
        self, request: adapter_pb2.EstimateRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.EstimateResponse:
        tenant = caller_tenant()
        v.require_text("model", request.model)
        v.require_text("chip", request.chip)
        req = plan_request(request)
        return await self._models.estimate(tenant, request.model, request.chip, req)

    async def CheckFit(
        self, request: adapter_pb2.CheckFitRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.CheckFitResponse:
        v.require_text("model", request.model)
        v.require_text("chip", request.chip)
        name = precision_name("precision", request.precision)
        v.require_range("devices", request.devices, 1, MAX_DEVICES)
        try:
            model = self._catalog.find_model(request.model)
        except UnknownNameError as exc:
            raise NotFound("model", request.model, _hint(exc)) from None
        try:
            chip = self._catalog.find_chip(request.chip)
        except UnknownNameError as exc:
            raise NotFound("chip", request.chip, _hint(exc)) from None
        batch = _or_default("batch", request.batch, FIT_BATCH, MAX_BATCH)
        input_len = _or_default("input_len", request.input_len, FIT_INPUT_LEN, MAX_TOKENS)
        output_len = _or_default("output_len", request.output_len, FIT_OUTPUT_LEN, MAX_TOKENS)
        # The performance model's fit, so CheckFit and `pocgrid perf predict` agree.
        try:
            fit = check_fit(
                chip,
                model,
                name,
                request.devices,
                batch=batch,
                input_len=input_len,
                output_len=output_len,
                catalog=self._catalog,
            )
        except PerfInputError as exc:
            raise InvalidArgument(exc.field, exc.rule) from None
        memory = fit.memory
        return adapter_pb2.CheckFitResponse(
            fits=fit.fits,
            weights_gib_per_device=0.0 if memory is None else memory.weights_gib,
            memory_gib_per_device=self._catalog.device_memory_gib(chip) or 0.0,
            reserve_gib_per_device=0.0 if memory is None else memory.reserve_gib,
            kv_cache_gib_per_device=0.0 if memory is None else memory.kv_cache_gib,
            activations_gib_per_device=0.0 if memory is None else memory.activations_gib,
            headroom_gib_per_device=fit.headroom_gib,
            precision_supported=fit.precision_supported,
            reason=fit.reason,
        )


def _or_default(field: str, value: int, default: int, maximum: int) -> int:
    """A workload size, or the fit's default when the request leaves it 0."""
    if value == 0:
        return default
    v.require_range(field, value, 1, maximum)
    return value
