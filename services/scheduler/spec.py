"""A submitted JobSpec checked and normalised, and turned into the scheduling library's Demand.

Checks here need no pool: names against the catalogue, ranges, which chip types may run the job
(``CHIP_CHOICE_ADAPTER_FITS`` resolved with the performance model's fit check, the function the
adapter's CheckFit answers with). What the *pool* can never hold is checked by the servicer
against the registry's nodes (``pocgrid.sched.never_fits``).

The normalised spec is what is stored and shown: catalogue spellings, the chip types it may run
on resolved into ``allowed_chips``, batch work with its defaults filled in, and the memory it
holds per device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC

from pocgrid import precision as precisions
from pocgrid.adapt.model_ids import is_imported_model_id
from pocgrid.catalog import Catalog, Chip, Model, UnknownNameError
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.fit import check_fit
from pocgrid.perf.predict import predict
from pocgrid.sched import WHOLE, Demand
from pocgrid.v1 import common_pb2, scheduler_pb2
from services.core import validation as v
from services.core.errors import FailedPrecondition, InvalidArgument

GIB = 1 << 30
MAX_DEVICES = 64
MAX_REPLICAS = 64
MAX_PRIORITY = 1000
MAX_STEPS = 1_000_000
DEFAULT_LEN = 128

KIND_NAMES: dict[int, str] = {
    scheduler_pb2.JOB_KIND_UNSPECIFIED: "batch",
    scheduler_pb2.JOB_KIND_BATCH: "batch",
    scheduler_pb2.JOB_KIND_EVALUATION: "evaluation",
    scheduler_pb2.JOB_KIND_SERVING: "serving",
}


def _hint(exc: UnknownNameError) -> str:
    return f"; did you mean {', '.join(exc.suggestions)}?" if exc.suggestions else ""


@dataclass(frozen=True, slots=True)
class SpecChecker:
    catalog: Catalog

    def _chip(self, field: str, name: str) -> Chip:
        try:
            chip = self.catalog.find_chip(name)
        except UnknownNameError as exc:
            raise InvalidArgument(field, f"unknown chip '{name}'{_hint(exc)}") from None
        if not chip.emulatable:
            raise InvalidArgument(
                field, f"chip '{chip.name}' lacks the public figures to run work on it"
            )
        return chip

    def normalise(self, spec: scheduler_pb2.JobSpec) -> scheduler_pb2.JobSpec:
        v.require_text("spec.model", spec.model, 128)
        # An evaluation of a tenant's imported model (the adapter's id, not a catalogue name):
        # the evaluator planned its chip and devices from the graph, so the job is a plain
        # reservation on a named chip and needs no catalogue figure here.
        imported = spec.kind == scheduler_pb2.JOB_KIND_EVALUATION and is_imported_model_id(
            spec.model
        )
        model: Model | None = None
        if not imported:
            try:
                model = self.catalog.find_model(spec.model)
            except UnknownNameError as exc:
                raise InvalidArgument(
                    "spec.model", f"unknown model '{spec.model}'{_hint(exc)}"
                ) from None
        elif not spec.chip:
            raise InvalidArgument(
                "spec.chip",
                "must be set for an imported model (spec.model is not in the catalogue)",
            )
        elif spec.chip_choice == scheduler_pb2.CHIP_CHOICE_ADAPTER_FITS:
            raise InvalidArgument(
                "spec.chip_choice",
                "must not be ADAPTER_FITS for an imported model (the catalogue has no figures"
                " of it to check a fit with)",
            )
        elif spec.device_share and not spec.memory_bytes:
            raise InvalidArgument(
                "spec.memory_bytes",
                "must be set for a fraction of a device running an imported model",
            )
        if spec.kind not in KIND_NAMES:
            raise InvalidArgument("spec.kind", "is not a JobKind value")
        v.require_range("spec.devices", spec.devices, 1, MAX_DEVICES)
        if spec.precision == common_pb2.PRECISION_UNSPECIFIED:
            raise InvalidArgument("spec.precision", "must be set")
        precision = precisions.PRECISION_NAME.get(spec.precision)
        if precision is None:
            raise InvalidArgument("spec.precision", "is not a Precision value")
        v.require_range("spec.priority", spec.priority, 0, MAX_PRIORITY)
        v.optional_text("spec.display_name", spec.display_name, 256)
        if not 0 <= spec.device_share < 1:
            raise InvalidArgument(
                "spec.device_share", "must be 0 (whole devices) or between 0 and 1"
            )
        if spec.device_share and spec.devices != 1:
            raise InvalidArgument("spec.devices", "must be 1 for a fraction of a device")
        if spec.device_share and round(spec.device_share * WHOLE) < 1:
            raise InvalidArgument("spec.device_share", f"must be at least {1 / WHOLE:g}")
        if spec.memory_bytes < 0:
            raise InvalidArgument("spec.memory_bytes", "must be >= 0")
        if spec.chip_choice not in scheduler_pb2.ChipChoice.values():
            raise InvalidArgument("spec.chip_choice", "is not a ChipChoice value")
        replicas = spec.replicas or 1
        v.require_range("spec.replicas", replicas, 1, MAX_REPLICAS)
        if replicas > 1 and spec.kind != scheduler_pb2.JOB_KIND_SERVING:
            raise InvalidArgument("spec.replicas", "only serving jobs have replicas")
        if spec.device_share and replicas > 1:
            raise InvalidArgument("spec.replicas", "must be 1 for a fraction of a device")
        if spec.min_replicas and spec.kind != scheduler_pb2.JOB_KIND_SERVING:
            raise InvalidArgument("spec.min_replicas", "only serving jobs have replicas")
        v.require_range("spec.min_replicas", spec.min_replicas, 0, replicas)
        if spec.devices * replicas > MAX_DEVICES:
            raise InvalidArgument(
                "spec.replicas", f"devices x replicas must be at most {MAX_DEVICES}"
            )
        kind = KIND_NAMES[spec.kind]
        if spec.preemptible and kind != "batch":
            raise InvalidArgument("spec.preemptible", "only batch jobs can be preempted")
        if spec.HasField("deadline") and kind != "batch":
            raise InvalidArgument("spec.deadline", "only batch jobs are deferrable")
        batch = scheduler_pb2.BatchWork(
            steps=spec.batch.steps or 1,
            batch=spec.batch.batch or 1,
            input_len=spec.batch.input_len or DEFAULT_LEN,
            output_len=spec.batch.output_len or DEFAULT_LEN,
        )
        v.require_range("spec.batch.steps", batch.steps, 1, MAX_STEPS)
        v.require_range("spec.batch.batch", batch.batch, 1, 65536)
        v.require_range("spec.batch.input_len", batch.input_len, 1, 1 << 20)
        v.require_range("spec.batch.output_len", batch.output_len, 1, 1 << 20)

        # Which chip types may run it.
        if spec.chip:
            if spec.allowed_chips:
                raise InvalidArgument("spec.allowed_chips", "must be empty when spec.chip is set")
            candidates = [self._chip("spec.chip", spec.chip)]
        elif spec.allowed_chips:
            candidates = [
                self._chip(f"spec.allowed_chips[{i}]", name)
                for i, name in enumerate(spec.allowed_chips)
            ]
        else:
            candidates = []
        field = "spec.chip" if spec.chip else "spec.allowed_chips"
        for chip in candidates:
            runs = self.catalog.precisions(chip)
            if precision not in runs and spec.chip_choice != scheduler_pb2.CHIP_CHOICE_ADAPTER_FITS:
                raise InvalidArgument(
                    "spec.precision",
                    f"chip '{chip.name}' does not support {precision} (it runs: "
                    f"{', '.join(runs) or 'none'})",
                )
        if not candidates:
            # "Any" chip type means any whose runtime runs the precision: named, so the policy
            # never places the job where the agent would refuse it.
            candidates = [
                c
                for c in self.catalog.emulatable_chips()
                if precision in self.catalog.precisions(c)
            ]
        memory_gib = spec.memory_bytes / GIB
        if spec.chip_choice == scheduler_pb2.CHIP_CHOICE_ADAPTER_FITS:
            assert model is not None  # refused above for an imported model
            pool = candidates
            fitting: list[Chip] = []
            why: list[str] = []
            for chip in pool:
                fit = self._fit(chip, model.name, precision, spec.devices, batch)
                if fit is None:
                    continue
                if fit[0]:
                    fitting.append(chip)
                else:
                    why.append(f"{chip.name}: {fit[1]}")
            if not fitting:
                raise FailedPrecondition(
                    f"spec.chip_choice: the performance model says {model.name} {precision} on "
                    f"{spec.devices} device(s) fits none of the chip types it may use "
                    f"({'; '.join(why[:3])}{'; ...' if len(why) > 3 else ''})"
                )
            candidates = fitting
            field = "spec.allowed_chips"
        if kind == "batch":
            assert model is not None  # only evaluations may name an imported model
            # Batch work runs where the performance model says one step fits (the agent refuses
            # it elsewhere): "any" and a list keep those chip types, a named chip must fit.
            tp = tensor_parallel(spec)
            timed = [
                (c, step_seconds(c.name, tp, model.name, precision, *_work(batch)))
                for c in candidates
            ]
            if not any(t is not None for _, t in timed):
                reason = _why_not(candidates[0].name, tp, model.name, precision, batch)
                raise FailedPrecondition(
                    f"{field}: one step of {model.name} {precision} (batch {batch.batch}, "
                    f"{batch.input_len}+{batch.output_len} tokens) on {tp} device(s) "
                    f"runs on none of {', '.join(c.name for c in candidates[:5])}"
                    f"{' ...' if len(candidates) > 5 else ''}: {reason}"
                )
            candidates = [c for c, t in timed if t is not None]
        if spec.device_share and not spec.memory_bytes:
            assert model is not None  # refused above for an imported model
            # A slice of a device holds what the model needs, as the agent will allocate it.
            needed = [
                step_memory_gib(c.name, model.name, precision, *_work(batch))
                if kind == "batch"
                else self._needed_gib(c, model.name, precision, batch)
                for c in candidates
            ]
            known = [n for n in needed if n is not None]
            if known:
                memory_gib = max(known)
        for chip in candidates:
            if spec.device_share and chip.memory_gib and memory_gib > chip.memory_gib:
                raise FailedPrecondition(
                    f"{field}: a slice of one {chip.name} has at most {chip.memory_gib:g} GiB; "
                    f"the job needs {memory_gib:.3g} GiB (spec.memory_bytes)"
                )
        names = [c.name for c in candidates]
        out = scheduler_pb2.JobSpec()
        out.CopyFrom(spec)
        out.model = model.name if model is not None else spec.model
        out.chip = names[0] if spec.chip else ""
        del out.allowed_chips[:]
        if not spec.chip:
            out.allowed_chips.extend(names)
        out.replicas = replicas
        if kind == "serving":
            out.min_replicas = spec.min_replicas or replicas
        out.kind = spec.kind or scheduler_pb2.JOB_KIND_BATCH
        out.memory_bytes = round(memory_gib * GIB) if spec.device_share else spec.memory_bytes
        if kind == "batch":
            out.batch.CopyFrom(batch)
        else:
            out.ClearField("batch")
        return out

    def _fit(
        self, chip: Chip, model: str, precision: str, devices: int, batch: scheduler_pb2.BatchWork
    ) -> tuple[bool, str] | None:
        try:
            fit = check_fit(
                chip,
                self.catalog.find_model(model),
                precision,
                devices,
                batch=batch.batch,
                input_len=batch.input_len,
                output_len=batch.output_len,
                catalog=self.catalog,
            )
        except PerfInputError:
            return None
        return fit.fits, fit.reason

    def _needed_gib(
        self, chip: Chip, model: str, precision: str, batch: scheduler_pb2.BatchWork
    ) -> float | None:
        try:
            fit = check_fit(
                chip,
                self.catalog.find_model(model),
                precision,
                1,
                batch=batch.batch,
                input_len=batch.input_len,
                output_len=batch.output_len,
                catalog=self.catalog,
            )
        except PerfInputError:
            return None
        if fit.memory is None:
            return None
        m = fit.memory
        return m.weights_gib + m.kv_cache_gib + m.activations_gib


def tensor_parallel(spec: scheduler_pb2.JobSpec) -> int:
    """Devices one batch step runs on: all of them (tensor parallel on one node), or one for a
    gang, whose devices may sit on several nodes and each run their share of the steps (data
    parallel: a step never spans nodes, and a node's part of a gang may be any size)."""
    return 1 if spec.gang else spec.devices


def _why_not(
    chip: str, devices: int, model: str, precision: str, batch: scheduler_pb2.BatchWork
) -> str:
    """The performance model's words for why a step cannot run there."""
    try:
        p = predict(chip, devices, model, precision, *_work(batch))
    except PerfInputError as exc:
        return str(exc)
    return f"{chip}: {p.why_not_fits or 'the deployment does not fit'}"


def _work(batch: scheduler_pb2.BatchWork) -> tuple[int, int, int]:
    return batch.batch, batch.input_len, batch.output_len


@functools.lru_cache(maxsize=8192)
def step_seconds(
    chip: str,
    devices: int,
    model: str,
    precision: str,
    batch: int,
    input_len: int,
    output_len: int,
) -> float | None:
    """Virtual seconds one batch step takes on ``devices`` devices of ``chip``, as the agent's
    executor computes it (the same prediction); None when it does not fit or cannot run."""
    try:
        p = predict(chip, devices, model, precision, batch, input_len, output_len)
    except PerfInputError:
        return None
    if not p.fits or p.ttft_ms is None or p.tpot_ms is None:
        return None
    return (p.ttft_ms + p.tpot_ms * (output_len - 1)) / 1000


@functools.lru_cache(maxsize=8192)
def step_memory_gib(
    chip: str, model: str, precision: str, batch: int, input_len: int, output_len: int
) -> float | None:
    """Memory one batch step allocates on one device of ``chip`` (what the agent allocates)."""
    try:
        p = predict(chip, 1, model, precision, batch, input_len, output_len)
    except PerfInputError:
        return None
    return p.memory_gib


def chips_of(spec: scheduler_pb2.JobSpec) -> frozenset[str]:
    return frozenset([spec.chip]) if spec.chip else frozenset(spec.allowed_chips)


def replicated(job: scheduler_pb2.Job) -> bool:
    """A serving job whose replicas are placed one by one (without ``gang``)."""
    return job.spec.kind == scheduler_pb2.JOB_KIND_SERVING and not job.spec.gang


def replica_id(job_id: str, replica: int) -> str:
    """The library demand id of one replica of a serving job."""
    return f"{job_id}/r{replica}"


def demand(job: scheduler_pb2.Job, replica: int | None = None) -> Demand:
    """The library's view of a normalised job: every demand is all-or-nothing; without
    ``gang`` its devices must sit on one node (tensor parallel over the chip interconnect). A
    serving job without ``gang`` is one demand per replica (``replica``; without it, the
    shape of any one of them)."""
    spec = job.spec
    kind = KIND_NAMES[spec.kind]
    share = round(spec.device_share * WHOLE) if spec.device_share else WHOLE
    deadline = (
        spec.deadline.ToDatetime(tzinfo=UTC).timestamp() if spec.HasField("deadline") else None
    )
    steps_left = max(0, spec.batch.steps - job.steps_done) if kind == "batch" else 0
    work = 0.0
    speed: dict[str, float] = {}
    if kind == "batch":
        # The job x chip matrix heterogeneity-aware policies read: work in seconds of the first
        # allowed chip type, speed relative to it (from the performance model).
        name = precisions.PRECISION_NAME.get(spec.precision, "")
        times = {
            c: t
            for c in (spec.allowed_chips or [spec.chip])
            if (t := step_seconds(c, tensor_parallel(spec), spec.model, name, *_work(spec.batch)))
        }
        if times:
            ref = next(iter(times.values()))
            # Data-parallel tasks of a gang share the steps.
            work = steps_left * ref / (spec.devices // tensor_parallel(spec))
            speed = {c: ref / t for c, t in times.items()}
        else:
            work = float(steps_left)
    per_replica = replicated(job)
    return Demand(
        job_id=replica_id(job.job_id, replica)
        if per_replica and replica is not None
        else job.job_id,
        tenant=job.tenant,
        kind=kind,  # type: ignore[arg-type]
        priority=spec.priority,
        devices=spec.devices if per_replica else spec.devices * (spec.replicas or 1),
        share_milli=share,
        memory_gib=spec.memory_bytes / GIB if share < WHOLE else 0.0,
        chips=chips_of(spec),
        single_node=not spec.gang,
        deferrable=deadline is not None,
        deadline=deadline,
        preemptible=spec.preemptible,
        work=work,
        speed=speed,
        submitted_at=job.created_at.ToDatetime(tzinfo=UTC).timestamp(),
    )
