"""``JoinCommunicator``: one rank of a unified-communication-library job inside this agent.

The caller (the evaluator, for the ``hybrid-training`` scenario) makes the communicator's
unique id (its process hosts the bootstrap root) and calls this RPC on every agent taking part
at once. Here the agent joins as its rank with its devices (``AgentCollectives``: each
collective's buffer charged to the vendor's device memory, its virtual time and each step's
compute queued on the device streams) and runs the job in a worker thread of its own (a rank
blocks in socket calls for the whole job; the event loop must keep serving), listening for
its peers on the agent's advertised host. Between agents the library moves the real data
between the agent processes.

Runtime state (memory, streams) belongs to the event loop, so the worker thread hands every
change to it (``OwnerThread``). A caller that goes away, or an agent that drains, aborts the
communicator, which ends the rank (and tells its peers why). The job is billed to the tenant
as one usage event: the rank's devices held for its virtual span.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from pocgrid.comm import CommAbortedError, CommError, CommInputError, NetworkConfig, UniqueId
from pocgrid.comm.errors import CommProtocolError, CommTimeoutError, PeerLostError
from pocgrid.comm.training import MlpConfig, check_split, train_loop
from pocgrid.meters import byte_seconds, device_us
from pocgrid.v1 import agent_pb2, events_pb2
from services.agent.collectives import AgentCollectives, OwnerThread
from services.agent.runtime.devices import DeviceHealth
from services.agent.runtime.runtime import VendorRuntime
from services.agent.work.comm_checks import CollectivesSpec, check_spec, run_checks
from services.agent.work.executor import TaskExecutor
from services.core import validation as v
from services.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    PocgridError,
    ResourceExhausted,
)
from services.core.logging import get_logger

log = get_logger()

MAX_RANKS: Final = 64
"""Ranks of one communicator (the library has no limit; this bounds a caller's request)."""
MAX_CONCURRENT: Final = 4
"""Communicator ranks one agent runs at once; each holds a worker thread for its job."""
DEFAULT_TIMEOUT_S: Final = 30.0
MAX_TIMEOUT_S: Final = 600.0
# The bounds of a training job an agent takes (the synthetic set lives in its memory as
# float64: samples x inputs x 8 bytes, at most 128 MiB).
MAX_WIDTH: Final = 4096
MAX_SAMPLES: Final = 1 << 20
MAX_SET_VALUES: Final = 16 << 20
MAX_STEPS: Final = 10_000


def comm_failure(exc: CommError) -> PocgridError:
    """The library's error as the RPC's status: the message names the rank that went away."""
    if isinstance(exc, CommInputError):
        return InvalidArgument(exc.field, exc.rule)
    reason = "COMM_FAILED"
    if isinstance(exc, PeerLostError):
        reason = "COMM_PEER_LOST"
    elif isinstance(exc, CommTimeoutError):
        reason = "COMM_TIMEOUT"
    elif isinstance(exc, CommProtocolError):
        reason = "COMM_PROTOCOL"
    elif isinstance(exc, CommAbortedError):
        reason = "COMM_ABORTED"
    error = PocgridError(str(exc), reason=reason)
    # Each library error names its status (errors.py): UNAVAILABLE for a lost or aborting
    # peer, DEADLINE_EXCEEDED for a silent one, FAILED_PRECONDITION for mismatched calls.
    error.code = getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL)
    return error


@dataclass(frozen=True, slots=True)
class _Job:
    uid: UniqueId
    nranks: int
    rank: int
    job_id: str
    devices: tuple[int, ...]
    timeout_s: float
    network: NetworkConfig
    work: _Training | CollectivesSpec

    @property
    def model(self) -> str:
        if isinstance(self.work, CollectivesSpec):
            return "collectives-check"
        cfg = self.work.cfg
        return f"mlp-{cfg.inputs}-{cfg.hidden}-{cfg.classes}"


@dataclass(frozen=True, slots=True)
class _Training:
    cfg: MlpConfig
    split: str


@dataclass(slots=True)
class _Outcome:
    value: dict[str, Any] | list[agent_pb2.CollectiveDigest]
    library: str
    transports: list[str]
    start_s: float
    end_s: float
    wall_s: float


@dataclass(eq=False, slots=True)
class _Running:
    """A rank in progress: its communicator once joined (to abort it from the loop)."""

    joined: list[AgentCollectives] = field(default_factory=list)

    def abort(self, reason: str) -> None:
        for coll in self.joined:
            coll.comm.abort(reason)


class CommRanks:
    """The agent's communicator ranks (``JoinCommunicator``)."""

    def __init__(
        self,
        node_id: str,
        runtime: VendorRuntime,
        executor: TaskExecutor,
        host: Callable[[], str],
    ) -> None:
        self._node_id = node_id
        self._runtime = runtime
        self._executor = executor
        self._host = host
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=MAX_CONCURRENT, thread_name_prefix="pgcx-agent-rank"
        )
        self._running: set[_Running] = set()

    # -- validation ----------------------------------------------------------------------
    def _devices(self, indexes: Sequence[int]) -> tuple[int, ...]:
        count = self._runtime.device_count
        if not indexes:
            usable = tuple(
                i for i in range(count) if self._runtime.device(i).health != DeviceHealth.FAILED
            )
            if not usable:
                raise FailedPrecondition(f"every device of node {self._node_id} has FAILED")
            return usable
        if len(set(indexes)) != len(indexes):
            raise InvalidArgument("device_indexes", "must not repeat a device")
        for i in indexes:
            if not 0 <= i < count:
                raise InvalidArgument("device_indexes", f"must be 0..{count - 1} (got {i})")
        return tuple(indexes)

    def check(self, request: agent_pb2.JoinCommunicatorRequest) -> _Job:
        v.require_text("unique_id", request.unique_id, 512)
        try:
            uid = UniqueId.decode(request.unique_id)
        except CommInputError as exc:
            raise InvalidArgument("unique_id", exc.rule) from None
        v.require_range("nranks", request.nranks, 1, MAX_RANKS)
        v.require_range("rank", request.rank, 0, request.nranks - 1)
        v.optional_text("job_id", request.job_id, 128)
        devices = self._devices(list(request.device_indexes))
        timeout = request.timeout_s or DEFAULT_TIMEOUT_S
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise InvalidArgument("timeout_s", f"must be 0 (default) or in (0, {MAX_TIMEOUT_S:g}]")
        defaults = NetworkConfig()
        net = request.network
        for name in ("network_gbs", "bridge_gbs"):
            value = getattr(net, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidArgument(f"network.{name}", "must be 0 (default) or > 0 GB/s")
        network = NetworkConfig(
            network_gbs=net.network_gbs or defaults.network_gbs,
            bridge_gbs=net.bridge_gbs or defaults.bridge_gbs,
        )
        kind = request.WhichOneof("work")
        if kind == "collectives":
            work: _Training | CollectivesSpec = check_spec(request.collectives)
        elif kind == "training":
            work = self._training(request.training)
        else:
            raise InvalidArgument("work", "must be training or collectives")
        return _Job(
            uid,
            request.nranks,
            request.rank,
            request.job_id,
            devices,
            timeout,
            network,
            work,
        )

    @staticmethod
    def _training(t: agent_pb2.TrainingJob) -> _Training:
        for name in ("inputs", "hidden", "classes"):
            v.require_range(f"training.{name}", getattr(t, name), 1, MAX_WIDTH)
        v.require_range("training.samples", t.samples, 1, MAX_SAMPLES)
        if t.samples * t.inputs > MAX_SET_VALUES:
            raise InvalidArgument(
                "training.samples", f"samples x inputs must be at most {MAX_SET_VALUES}"
            )
        v.require_range("training.batch", t.batch, 1, t.samples)
        v.require_range("training.steps", t.steps, 1, MAX_STEPS)
        if not (math.isfinite(t.lr) and t.lr > 0):
            raise InvalidArgument("training.lr", "must be a finite number > 0")
        if t.seed < 0:
            raise InvalidArgument("training.seed", "must be >= 0")
        try:
            split = check_split(t.split)
            cfg = MlpConfig(
                inputs=t.inputs,
                hidden=t.hidden,
                classes=t.classes,
                samples=t.samples,
                batch=t.batch,
                steps=t.steps,
                lr=t.lr,
                seed=t.seed,
            )
        except CommInputError as exc:
            raise InvalidArgument(f"training.{exc.field}", exc.rule) from None
        return _Training(cfg, split)

    # -- the RPC -------------------------------------------------------------------------
    async def join(
        self, tenant: str, request: agent_pb2.JoinCommunicatorRequest
    ) -> agent_pb2.JoinCommunicatorResponse:
        job = self.check(request)
        if len(self._running) >= MAX_CONCURRENT:
            raise ResourceExhausted(
                f"node {self._node_id} already runs {MAX_CONCURRENT} communicator ranks",
                retry_after_s=1.0,
                reason="COMM_RANKS_BUSY",
            )
        running = _Running()
        self._running.add(running)
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._pool, self._run, job, running, OwnerThread(loop))

        def ended(done: asyncio.Future[_Outcome]) -> None:
            # Counted until the thread ends, not until the RPC does (a cancelled caller's rank
            # still runs until its abort lands); a cancelled call's error is read here.
            self._running.discard(running)
            if not done.cancelled():
                done.exception()

        work.add_done_callback(ended)
        log.info(
            "comm.join",
            communicator=job.uid.label,
            rank=job.rank,
            nranks=job.nranks,
            devices=len(job.devices),
        )
        try:
            outcome = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The caller went away: end the rank (its peers hear why), then let it finish.
            running.abort(f"rank {job.rank} on node {self._node_id}: the caller cancelled")
            raise
        except CommError as exc:
            log.info("comm.failed", communicator=job.uid.label, rank=job.rank, error=str(exc))
            raise comm_failure(exc) from None
        except concurrent.futures.TimeoutError:
            raise PocgridError(
                f"node {self._node_id}: the runtime did not answer the rank (agent stopping?)"
            ) from None
        return await self._answer(tenant, job, outcome)

    def _run(self, job: _Job, running: _Running, owner: OwnerThread) -> _Outcome:
        """The rank, in its worker thread: join, train, report."""
        started = time.monotonic()
        coll = AgentCollectives.join(
            self._runtime,
            job.uid,
            job.nranks,
            job.rank,
            node=self._node_id,
            network=job.network,
            timeout_s=job.timeout_s,
            devices=job.devices,
            host=self._host(),
            owner=owner,
        )
        running.joined.append(coll)
        with coll:
            first: list[float] = []

            def compute(seconds: float) -> None:
                end = coll.occupy(seconds, f"training step, rank {job.rank} (compute)")
                if not first:
                    first.append(end - seconds)

            work = job.work
            value: dict[str, Any] | list[agent_pb2.CollectiveDigest]
            if isinstance(work, CollectivesSpec):
                value = run_checks(coll, work)
            else:
                value = train_loop(coll, work.cfg, check_split(work.split), on_compute=compute)
            end = owner(lambda: max(self._runtime.streams[d].busy_until for d in job.devices))
            peers = coll.comm.transports
            transports = [peers.get(r, "") for r in range(job.nranks)]
            library = coll.library
        return _Outcome(
            value,
            library,
            transports,
            first[0] if first else end,
            end,
            time.monotonic() - started,
        )

    async def _answer(
        self, tenant: str, job: _Job, outcome: _Outcome
    ) -> agent_pb2.JoinCommunicatorResponse:
        value, work = outcome.value, job.work
        span = outcome.end_s - outcome.start_s
        devices = len(job.devices)
        if isinstance(work, CollectivesSpec):
            assert isinstance(value, list)
            samples = 0
            # The largest message's buffer on each device for the span.
            held = work.largest_bytes
        else:
            assert isinstance(value, dict)
            samples = value["counts"][job.rank] * work.cfg.steps
            # The gradient buffer (float64 parameters and the loss) on each device.
            held = (work.cfg.params + 1) * 8
        usage = events_pb2.UsageRecorded(
            samples=samples,
            busy_device_us=device_us(span * devices),
            memory_byte_seconds=byte_seconds(held * devices * span / float(1 << 30)),
            devices=devices,
        )
        usage_id = await self._executor.record_usage(
            tenant,
            "comm",
            f"{job.job_id or 'comm'}.{job.uid.label}.r{job.rank}",
            job.job_id,
            job.model,
            usage=usage,
            start_s=outcome.start_s,
            end_s=outcome.end_s,
        )
        response = agent_pb2.JoinCommunicatorResponse(
            rank=job.rank,
            nranks=job.nranks,
            collective_library=outcome.library,
            device_indexes=job.devices,
            transports=outcome.transports,
            virtual_start_s=outcome.start_s,
            virtual_end_s=outcome.end_s,
            wall_s=outcome.wall_s,
            usage_id=usage_id,
        )
        if isinstance(value, list):
            response.collectives.digests.extend(value)
            return response
        step = value["step"]
        response.training.CopyFrom(
            agent_pb2.TrainingRankResult(
                losses=value["losses"],
                batch=value["counts"],
                compute_s=step["compute_s"],
                all_reduce_s=step["allreduce_s"],
                all_reduce_algorithm=step["algorithm"],
                step_s=step["step_s"],
                ideal_step_s=step["ideal_s"],
                scaling_efficiency=step["efficiency"],
                samples_per_s=value["speeds"],
                precisions=value["precisions"],
            )
        )
        return response

    def stop(self) -> None:
        """The agent drains: every rank still running is aborted (its peers hear why)."""
        for running in list(self._running):
            running.abort(f"node {self._node_id} is shutting down")
        self._pool.shutdown(wait=False, cancel_futures=True)
