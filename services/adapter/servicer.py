"""gRPC servicer: the public AdapterService."""

from __future__ import annotations

import grpc

from pocgrid import precision
from pocgrid.catalog import Catalog, UnknownNameError
from pocgrid.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2
from services.adapter.config import AdapterConfig
from services.adapter.fit import check_fit
from services.core import validation as v
from services.core.errors import InvalidArgument, NotFound

MAX_DEVICES = 64


def _hint(exc: UnknownNameError) -> str:
    return "did you mean " + ", ".join(exc.suggestions) if exc.suggestions else ""


def precision_name(field: str, value: int) -> str:
    """The catalogue name of a Precision value; InvalidArgument naming ``field`` otherwise."""
    if value == common_pb2.PRECISION_UNSPECIFIED:
        raise InvalidArgument(field, "must be set")
    if value not in precision.PRECISION_NAME:
        raise InvalidArgument(field, "is not a Precision value")
    return precision.PRECISION_NAME[value]


class AdapterServicer(adapter_pb2_grpc.AdapterServiceServicer):
    def __init__(self, catalog: Catalog, config: AdapterConfig) -> None:
        self._catalog = catalog
        self._config = config

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
        fit = check_fit(
            model, chip, name, request.devices, self._config.adapter_memory_reserve_fraction
        )
        return adapter_pb2.CheckFitResponse(
            fits=fit.fits,
            weights_gb_per_device=fit.weights_gb_per_device,
            memory_gb_per_device=fit.memory_gb_per_device,
            reserve_gb_per_device=fit.reserve_gb_per_device,
            headroom_gb_per_device=fit.headroom_gb_per_device,
            precision_supported=fit.precision_supported,
            reason=fit.reason,
        )
