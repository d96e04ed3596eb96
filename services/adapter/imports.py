"""Tenants' imported models and plans: validation off the event loop, storage, the plan cache."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json

import onnx

from pocgrid import precision as precisions
from pocgrid.adapt.adapt import Adaptation, adapt, adapt_onnx
from pocgrid.adapt.coverage import Coverage, graph_coverage
from pocgrid.adapt.hf_config import ConfigImportError, parse_config
from pocgrid.adapt.onnx_import import OnnxImportError, validate_onnx
from pocgrid.adapt.plan import Candidate, Plan, PlanRequest
from pocgrid.catalog import Catalog, Chip, Model, UnknownNameError
from pocgrid.v1 import adapter_pb2
from services.adapter.store import AdapterStore
from services.adapter.tables import ImportedModelRow
from services.core.errors import InvalidArgument, NotFound

_VERDICTS = {
    "runs_natively": adapter_pb2.ADAPT_VERDICT_RUNS_NATIVELY,
    "runs_with_supplementation": adapter_pb2.ADAPT_VERDICT_RUNS_WITH_SUPPLEMENTATION,
    "needs_devices": adapter_pb2.ADAPT_VERDICT_NEEDS_DEVICES,
    "does_not_fit": adapter_pb2.ADAPT_VERDICT_DOES_NOT_FIT,
    "unsupported": adapter_pb2.ADAPT_VERDICT_UNSUPPORTED,
}
#: Bumped when a change to the planner changes its answers, so stored plans are not reused.
PLANNER_VERSION = "3"


def to_proto(row: ImportedModelRow) -> adapter_pb2.ImportedModel:
    return adapter_pb2.ImportedModel(
        model_id=row.model_id,
        name=row.name,
        kind=row.kind,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        opset=row.opset,
        operators=dict(row.operators),
        params_b=row.params_b,
    )


class ModelBook:
    def __init__(self, store: AdapterStore, catalog: Catalog, max_bytes: int) -> None:
        self._store = store
        self._catalog = catalog
        self._max_bytes = max_bytes

    async def import_onnx(
        self, tenant: str, name: str, data: bytes
    ) -> tuple[ImportedModelRow, bool]:
        try:
            # Parsing and checking are CPU work: off the event loop, so other calls go on.
            checked = await asyncio.to_thread(validate_onnx, data, self._max_bytes)
        except OnnxImportError as exc:
            raise InvalidArgument("onnx", str(exc).removeprefix("onnx: ")) from None
        row = ImportedModelRow(
            tenant=tenant,
            model_id=checked.model_id,
            name=name or checked.graph_name or checked.model_id,
            kind="onnx",
            sha256=checked.sha256,
            size_bytes=checked.size_bytes,
            opset=checked.opset,
            operators=checked.ops,
            params_b=0.0,
            content=data,
        )
        return await self._store.put_model(row)

    async def import_llm(
        self, tenant: str, name: str, data: bytes
    ) -> tuple[ImportedModelRow, bool]:
        try:
            imported = parse_config(data, name)
        except ConfigImportError as exc:
            field, _, rule = str(exc).partition(": ")
            raise InvalidArgument(f"config_json ({field})", rule or str(exc)) from None
        row = ImportedModelRow(
            tenant=tenant,
            model_id=imported.model_id,
            name=imported.model.name,
            kind="llm",
            sha256=imported.sha256,
            size_bytes=len(data),
            opset=0,
            operators={},
            params_b=imported.model.params_b,
            content=data,
        )
        return await self._store.put_model(row)

    async def get(self, tenant: str, model_id: str) -> ImportedModelRow:
        row = await self._store.get_model(tenant, model_id)
        if row is None:
            # Another tenant's model is answered exactly like one that does not exist.
            raise NotFound("model", model_id)
        return row

    async def list(self, tenant: str) -> list[ImportedModelRow]:
        return list(await self._store.list_models(tenant))

    # -- resolving a request's model ---------------------------------------------------------

    def chip(self, name: str) -> Chip:
        try:
            return self._catalog.find_chip(name)
        except UnknownNameError as exc:
            hint = "did you mean " + ", ".join(exc.suggestions) if exc.suggestions else ""
            raise NotFound("chip", name, hint) from None

    async def resolve(self, tenant: str, name: str) -> tuple[str, Model | onnx.ModelProto, str]:
        """(display name, catalogue/LLM model or ONNX graph, content hash) of ``name``."""
        if name.startswith(("onnx-", "llm-")):
            row = await self.get(tenant, name)
            if row.kind == "onnx":
                return row.name, onnx.ModelProto.FromString(row.content), row.sha256
            return row.name, parse_config(row.content, row.name).model, row.sha256
        try:
            model = self._catalog.find_model(name)
        except UnknownNameError as exc:
            hint = "did you mean " + ", ".join(exc.suggestions) if exc.suggestions else ""
            raise NotFound("model", name, hint) from None
        digest = hashlib.sha256(json.dumps(model.to_dict(), sort_keys=True).encode()).hexdigest()
        return model.name, model, digest

    async def coverage(self, tenant: str, model_name: str, chip_name: str) -> Coverage:
        chip = self.chip(chip_name)
        name, model, _ = await self.resolve(tenant, model_name)
        if isinstance(model, onnx.ModelProto):
            gaps = {op: g.reason for op, g in self._catalog.operator_gaps(chip).items()}
            native = self._catalog.native_operators(chip)
            cov, _ = await asyncio.to_thread(graph_coverage, name, chip.name, model, native, gaps)
            return cov
        result = adapt(self._catalog, model, chip, PlanRequest())
        if result.coverage is None:
            raise InvalidArgument("model", f"{name} has no known operator signature")
        return result.coverage

    async def estimate(
        self, tenant: str, model_name: str, chip_name: str, req: PlanRequest
    ) -> adapter_pb2.EstimateResponse:
        chip = self.chip(chip_name)
        name, model, digest = await self.resolve(tenant, model_name)
        options = f"v{PLANNER_VERSION}:{req.cache_key()}"
        key = hashlib.sha256(f"{digest}|{chip.name}|{options}".encode()).hexdigest()
        stored = await self._store.get_plan(key)
        if stored is not None:
            resp = adapter_pb2.EstimateResponse.FromString(stored)
            resp.cached = True
            return resp
        if isinstance(model, onnx.ModelProto):
            result = await asyncio.to_thread(adapt_onnx, self._catalog, name, model, chip, req)
        else:
            result = await asyncio.to_thread(
                functools.partial(adapt, self._catalog, model, chip, req, simulate=True)
            )
        resp = estimate_response(result)
        await self._store.put_plan(key, digest, chip.name, options, resp.SerializeToString())
        return resp


def _candidate(c: Candidate | None) -> adapter_pb2.PlanCandidate | None:
    if c is None:
        return None
    return adapter_pb2.PlanCandidate(
        precision=c.precision,
        kv_cache=c.kv_cache,
        devices=c.devices,
        tp=c.tp,
        replicas=c.replicas,
        max_num_seqs=c.max_num_seqs,
        prefill_chunk=c.prefill_chunk,
        passes=list(c.passes),
        output_tokens_per_s=c.output_tokens_per_s,
        output_tokens_per_s_per_device=c.output_tokens_per_s_per_device,
        tokens_per_s_per_user=c.tokens_per_s_per_user,
        ttft_p99_ms=c.ttft_p99_ms,
        tpot_p99_ms=c.tpot_p99_ms,
        pp=c.pp,
    )


def coverage_proto(cov: Coverage | None) -> list[adapter_pb2.OperatorCoverage]:
    if cov is None:
        return []
    return [
        adapter_pb2.OperatorCoverage(
            op=o.op, count=o.count, status=o.status, method=o.method, detail=o.detail, gap=o.gap
        )
        for o in cov.ops
    ]


def estimate_response(a: Adaptation) -> adapter_pb2.EstimateResponse:
    plan: Plan | None = a.plan
    resp = adapter_pb2.EstimateResponse(
        verdict=_VERDICTS[a.verdict],
        reason=a.reason,
        explanation=list(a.explanation),
        operators=coverage_proto(a.coverage),
    )
    if plan is not None:
        best, cheap = _candidate(plan.best_by_throughput), _candidate(plan.best_by_cost)
        if best is not None:
            resp.best_by_throughput.CopyFrom(best)
        if cheap is not None:
            resp.best_by_cost.CopyFrom(cheap)
        resp.pareto.extend(p for c in plan.pareto if (p := _candidate(c)) is not None)
        resp.basis = plan.basis
        if plan.simulated is not None:
            sim = plan.simulated
            resp.simulated.CopyFrom(
                adapter_pb2.SimulatedCheck(
                    requests=sim.requests,
                    requests_per_s=sim.requests_per_s,
                    output_tokens_per_s=sim.output_tokens_per_s,
                    ttft_p99_ms=sim.ttft_p99_ms,
                    tpot_p99_ms=sim.tpot_p99_ms,
                    preemptions=sim.preemptions,
                    meets_slo=sim.meets_slo,
                    note=sim.note,
                )
            )
    resp.passes.extend(
        adapter_pb2.PassDecision(
            name=p.name,
            applied=p.applied,
            gain=p.gain or 0.0,
            reason=p.reason,
            measured=p.measured,
            accuracy_delta=p.accuracy_delta or 0.0,
            measured_gain=p.measured_gain or 0.0,
            assumption=p.assumption,
        )
        for p in a.all_passes()
    )
    if a.dense is not None:
        resp.samples_per_s = a.dense.samples_per_s
        resp.batch = a.dense.batch
        resp.latency_ms = a.dense.latency_ms
        resp.basis = "roofline of the chip's achieved ceilings (graph cost for imported ONNX)"
    return resp


def plan_request(request: adapter_pb2.EstimateRequest) -> PlanRequest:
    """The planner's request from the RPC's, InvalidArgument naming a bad field."""
    from pocgrid.adapt.plan import Slo
    from pocgrid.perf.errors import PerfInputError

    name: str | None = None
    if request.precision != 0:
        if request.precision not in precisions.PRECISION_NAME:
            raise InvalidArgument("precision", "is not a Precision value")
        name = precisions.PRECISION_NAME[request.precision]
    try:
        return PlanRequest(
            devices=request.devices or None,
            precision=name,
            slo=Slo(
                ttft_ms=request.slo_ttft_ms or None,
                tpot_ms=request.slo_tpot_ms or None,
                latency_ms=request.slo_latency_ms or None,
            ),
            input_len=request.input_len or 1024,
            output_len=request.output_len or 256,
            allow_quantized=request.allow_quantized,
            spec_acceptance=request.spec_acceptance or None,
            prefix_hit_rate=request.prefix_hit_rate,
        )
    except PerfInputError as exc:
        raise InvalidArgument(exc.field, exc.rule) from None
