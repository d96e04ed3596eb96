"""The placement loop: the scheduling library's policy over the live pool, turned into tasks.

Each round (every ``placement_interval_ms``, and at once after a submit, a cancel or a lost
node):

1. **The pool** is read from the registry (READY nodes, their healthy devices) and loaded with
   the reservations of the scheduler's own ``assignments`` table (the one record of which
   device is held by which job, docs/scheduling.md).
2. **Running jobs are reconciled**: a job holding a device of a node that is no longer READY is
   requeued (its surviving tasks cancelled checkpoint-style, the steps done kept, attempt + 1);
   batch tasks are polled (``GetTask``) for their steps; a job whose tasks all succeeded
   succeeds, one whose task failed fails; a task the scheduler placed but never got an answer
   for is started again (StartTask is idempotent).
3. **The policy** (``pocgrid.sched``, the same objects the simulator drives) decides placements
   and preemptions for the queued jobs. Preemptions are carried out first (CancelTask: the step
   in progress finishes and is billed, the job goes PREEMPTED then QUEUED with its steps kept),
   then placements are written (QUEUED -> RUNNING and the assignments in one transaction) and
   started on the agents (batch work: ``StartTask``, one task per node, the job's remaining
   steps split between them). Why every other job waits is stored as its pending reason.
   A serving job without ``gang`` is one demand per missing replica: it starts when its
   ``min_replicas`` fit together (a round that cannot reach that is decided again without
   it, so it holds no room), and its other replicas are added in later rounds.

The registry decides whether a node is alive (its lease); the loop never declares a node dead
because one call failed: an unreachable agent's job waits for the registry's verdict, and a
``registry.node.lost`` event (consumed by ``on_node_lost``) triggers the round at once.
Released assignments whose task may still run (a node that comes back after its jobs were
requeued resumes its RUNNING tasks) are cancelled on the agent when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from pocgrid.metadata import TENANT_METADATA_KEY
from pocgrid.sched import Demand, Placement, Policy, Pool, PoolError, Slot
from pocgrid.sched.model import PendingCode
from pocgrid.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    events_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
)
from services.core.bus import EventMeta
from services.core.logging import get_logger
from services.core.outbox import OutboxEvent, OutboxRelay
from services.scheduler.jobs import state_event
from services.scheduler.spec import GIB, KIND_NAMES, demand, replicated
from services.scheduler.store import JobStore, NewAssignment

log = get_logger()

QUEUED = scheduler_pb2.JOB_STATE_QUEUED
RUNNING = scheduler_pb2.JOB_STATE_RUNNING
SUCCEEDED = scheduler_pb2.JOB_STATE_SUCCEEDED
FAILED = scheduler_pb2.JOB_STATE_FAILED
PREEMPTED = scheduler_pb2.JOB_STATE_PREEMPTED
#: Pending codes as a CLI shows them (Kueue's words where it has them).
PENDING_NAMES: dict[PendingCode, str] = {
    PendingCode.NO_CAPACITY: "InsufficientCapacity",
    PendingCode.GANG: "WaitingForGang",
    PendingCode.QUOTA: "QuotaExceeded",
    PendingCode.NEVER_FITS: "PoolTooSmallNow",
    PendingCode.DEFERRED: "Deferred",
    PendingCode.BEHIND: "WaitingBehind",
}
AGENT_TIMEOUT_S = 10.0
#: CancelTask waits for the step in progress; a preemption waits at most this long for it.
CANCEL_TIMEOUT_S = 40.0


@dataclass(frozen=True, slots=True)
class LiveNode:
    node: registry_pb2.Node

    @property
    def ready(self) -> bool:
        return self.node.state == registry_pb2.NODE_STATE_READY


class AgentCalls:
    """Task calls to agents, one channel per agent address, each call for the job's tenant."""

    def __init__(self, channel: object) -> None:
        self._channel = channel
        self._stubs: dict[str, agent_pb2_grpc.AgentServiceStub] = {}

    def stub(self, address: str) -> agent_pb2_grpc.AgentServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            stub = agent_pb2_grpc.AgentServiceStub(self._channel(address))  # type: ignore[operator]
            self._stubs[address] = stub
        return stub

    @staticmethod
    def _md(tenant: str) -> tuple[tuple[str, str], ...]:
        return ((TENANT_METADATA_KEY, tenant),)

    async def start(
        self, address: str, tenant: str, request: agent_pb2.StartTaskRequest
    ) -> agent_pb2.Task:
        resp = await self.stub(address).StartTask(
            request, metadata=self._md(tenant), timeout=AGENT_TIMEOUT_S
        )
        task: agent_pb2.Task = resp.task
        return task

    async def get(self, address: str, tenant: str, task_id: str) -> agent_pb2.Task:
        resp = await self.stub(address).GetTask(
            agent_pb2.GetTaskRequest(task_id=task_id),
            metadata=self._md(tenant),
            timeout=AGENT_TIMEOUT_S,
        )
        task: agent_pb2.Task = resp.task
        return task

    async def cancel(self, address: str, tenant: str, task_id: str, reason: str) -> agent_pb2.Task:
        resp = await self.stub(address).CancelTask(
            agent_pb2.CancelTaskRequest(task_id=task_id, reason=reason[:512]),
            metadata=self._md(tenant),
            timeout=CANCEL_TIMEOUT_S,
        )
        task: agent_pb2.Task = resp.task
        return task


class Placer:
    def __init__(
        self,
        store: JobStore,
        relay: OutboxRelay,
        policy: Policy,
        registry: registry_pb2_grpc.RegistryServiceStub,
        agents: AgentCalls,
        interval_s: float,
    ) -> None:
        self._store = store
        self._relay = relay
        self.policy = policy
        self._registry = registry
        self._agents = agents
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()
        self.rounds = 0

    def notify(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except grpc.aio.AioRpcError as exc:  # the registry is away: the next round retries
                log.warning("placement.round_skipped", code=exc.code().name, details=exc.details())
            except Exception:  # the loop outlives any one bad round; the next retries
                log.exception("placement.round_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()

    # -- the pool ------------------------------------------------------------------------
    async def nodes(self) -> list[registry_pb2.Node]:
        nodes: list[registry_pb2.Node] = []
        token = ""
        while True:
            resp = await self._registry.ListNodes(
                registry_pb2.ListNodesRequest(
                    page=common_pb2.PageRequest(page_size=1000, page_token=token)
                ),
                timeout=AGENT_TIMEOUT_S,
            )
            nodes.extend(resp.nodes)
            token = resp.page.next_page_token
            if not token:
                return nodes

    # -- one round -----------------------------------------------------------------------
    async def round(self) -> None:
        async with self._round:
            self.rounds += 1
            nodes = {n.node_id: n for n in await self.nodes()}
            ready = {k: n for k, n in nodes.items() if n.state == registry_pb2.NODE_STATE_READY}
            await self._cancel_orphans(ready)
            running = await self._store.in_states([RUNNING])
            for job in running:
                lost = sorted({a.node_id for a in job.assignments} - set(ready))
                if lost:
                    state = (
                        registry_pb2.NodeState.Name(nodes[lost[0]].state)
                        if lost[0] in nodes
                        else "gone from the registry"
                    )
                    await self._lost(job, f"node {lost[0]} is {state}", lost)
                    continue
                await self._reconcile(job)
            running = await self._store.in_states([RUNNING])
            queued = await self._store.in_states([QUEUED])
            # Demands: one per job, or one per missing replica of a serving job placed one by
            # one (queued: all of them; running: those not placed yet or lost).
            demands: list[Demand] = []
            replicas: dict[str, tuple[scheduler_pb2.Job, int]] = {}
            for job in queued:
                if replicated(job):
                    missing: Iterable[int] = range(job.spec.replicas)
                else:
                    demands.append(demand(job))
                    continue
                self._replica_demands(job, missing, demands, replicas)
            for job in running:
                if replicated(job):
                    held = {a.replica for a in job.assignments}
                    gaps = [r for r in range(job.spec.replicas) if r not in held]
                    self._replica_demands(job, gaps, demands, replicas)
            if not demands:
                return
            now = time.time()
            by_id = {j.job_id: j for j in [*queued, *running]}
            # A serving job that cannot start with its min_replicas this round must not keep
            # the room its partial replicas took from the jobs behind it: decide again without
            # it (at most a few times: each pass drops at least one job).
            excluded: set[str] = set()
            short: dict[str, int] = {}
            for _ in range(4):
                pool = self._pool(ready, running)
                wanted = [
                    d
                    for d in demands
                    if d.job_id not in replicas or replicas[d.job_id][0].job_id not in excluded
                ]
                decision = self.policy.schedule(wanted, pool, now)
                got: dict[str, list[tuple[int, Placement]]] = {}
                for p in decision.placements:
                    if p.job_id in replicas:
                        parent, index = replicas[p.job_id]
                        got.setdefault(parent.job_id, []).append((index, p))
                failing = {
                    job_id: len(placed)
                    for job_id, placed in got.items()
                    if by_id[job_id].state == QUEUED and len(placed) < _min_replicas(by_id[job_id])
                }
                if not failing:
                    break
                short.update(failing)
                excluded.update(failing)
            for pre in decision.preemptions:
                victim = by_id.get(pre.job_id)
                if victim is not None and victim.state == RUNNING:
                    await self.preempt(victim, f"preempted ({pre.cause}) for job {pre.for_job}")
            for placement in decision.placements:
                if placement.job_id not in replicas:
                    await self._start(by_id[placement.job_id], placement, ready)
            for job_id, placed in got.items():
                if job_id not in excluded:
                    await self._start_replicas(by_id[job_id], sorted(placed), ready)
            pending: dict[str, tuple[str, str]] = {}
            for job_id, why in decision.pending.items():
                code = PENDING_NAMES.get(why.code, str(why.code))
                of = replicas.get(job_id)
                if of is None:
                    pending[job_id] = (code, why.message)
                elif of[0].state == QUEUED and of[0].job_id not in pending:
                    pending[of[0].job_id] = (code, f"replica {of[1]}: {why.message}")
            for job_id, count in short.items():
                job = by_id[job_id]
                need = _min_replicas(job)
                pending[job_id] = (
                    PENDING_NAMES[PendingCode.GANG],
                    f"{count} of the {need} replicas it needs to start fit now "
                    f"(min_replicas {need} of {job.spec.replicas})",
                )
            await self._store.set_pending(pending)

    @staticmethod
    def _replica_demands(
        job: scheduler_pb2.Job,
        missing: Iterable[int],
        demands: list[Demand],
        replicas: dict[str, tuple[scheduler_pb2.Job, int]],
    ) -> None:
        for r in missing:
            d = demand(job, r)
            demands.append(d)
            replicas[d.job_id] = (job, r)

    def _pool(
        self, ready: dict[str, registry_pb2.Node], running: Sequence[scheduler_pb2.Job]
    ) -> Pool:
        """The READY nodes' healthy devices with every running job's reservations."""
        pool = Pool()
        for node in ready.values():
            for d in node.devices:
                if d.health == common_pb2.DEVICE_HEALTH_FAILED:
                    continue
                pool.add_device(node.node_id, d.index, node.chip, d.memory_total_bytes / GIB)
        for job in running:
            since = job.updated_at.ToDatetime(tzinfo=UTC).timestamp()
            held: list[tuple[Demand, Placement]] = []
            if replicated(job):
                by_replica: dict[int, list[scheduler_pb2.Assignment]] = {}
                for a in job.assignments:
                    by_replica.setdefault(a.replica, []).append(a)
                for index, assignments in by_replica.items():
                    one = demand(job, index)
                    held.append((one, _placement(one.job_id, assignments)))
            else:
                held.append((demand(job), _placement(job.job_id, job.assignments)))
            for wanted, placement in held:
                try:
                    pool.reserve(wanted, placement, since)
                except PoolError as exc:
                    # A device that left the pool's view (failed health): keep the job, warn.
                    log.warning(
                        "placement.reservation_outside_pool", job_id=job.job_id, error=str(exc)
                    )
        return pool

    async def _lost(self, job: scheduler_pb2.Job, why: str, lost: Sequence[str]) -> None:
        """A running job holding devices of nodes that are not READY: requeued, except a
        serving job whose replicas elsewhere still meet its ``min_replicas``, which keeps
        serving on them while the lost replicas are placed again."""
        if replicated(job):
            kept = [a for a in job.assignments if a.node_id not in lost]
            if len(kept) >= _min_replicas(job):
                gone = [a.task_id for a in job.assignments if a.node_id in lost]
                reason = (
                    f"{why}: {len(gone)} replica(s) released, {len(kept)} of "
                    f"{job.spec.replicas} serving; the rest are placed again"
                )
                await self._store.drop_replicas(job.job_id, gone, reason)
                log.info("job.replicas_lost", job_id=job.job_id, released=len(gone))
                self.notify()
                return
        await self.requeue(job, f"{why}: requeued", lost)

    # -- running jobs --------------------------------------------------------------------
    async def _reconcile(self, job: scheduler_pb2.Job) -> None:
        if KIND_NAMES[job.spec.kind] != "batch":
            return
        states: list[int] = []
        for a in job.assignments:
            if a.steps == 0:
                states.append(agent_pb2.TASK_STATE_SUCCEEDED)
                continue
            try:
                task = await self._agents.get(a.agent_address, job.tenant, a.task_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    # Placed but never started (the scheduler stopped in between): start it.
                    await self._start_task(job, a)
                    states.append(agent_pb2.TASK_STATE_RUNNING)
                    continue
                log.info(
                    "placement.agent_unreachable",
                    job_id=job.job_id,
                    node=a.node_id,
                    code=exc.code().name,
                )
                return
            if task.steps_done != a.steps_done:
                await self._store.progress(a.task_id, task.steps_done)
            states.append(task.state)
            if task.state == agent_pb2.TASK_STATE_FAILED:
                await self._end(
                    job, FAILED, f"task {a.task_id} on {a.node_id} failed: {task.reason}"
                )
                return
            if task.state == agent_pb2.TASK_STATE_CANCELLED:
                await self.requeue(
                    job, f"task {a.task_id} was cancelled on {a.node_id}: requeued", []
                )
                return
        if states and all(s == agent_pb2.TASK_STATE_SUCCEEDED for s in states):
            await self._end(job, SUCCEEDED, f"all {job.spec.batch.steps} steps done")

    async def _end(self, job: scheduler_pb2.Job, state: int, reason: str) -> None:
        now = datetime.now(UTC)
        others = [a for a in job.assignments]
        done = await self._store.transition(
            job.tenant,
            job.job_id,
            [RUNNING],
            state,
            reason,
            now,
            lambda attempt: state_event(job.job_id, job.tenant, attempt, state, reason, now),
        )
        if done is not None:
            if state == SUCCEEDED:
                await self._store.stopped([a.task_id for a in others])
            log.info(
                "job.ended",
                job_id=job.job_id,
                state=scheduler_pb2.JobState.Name(scheduler_pb2.JobState.ValueType(state)),
                reason=reason,
            )
            self._relay.notify()
            if state != SUCCEEDED:
                await self.stop_tasks(job.tenant, others, reason)

    async def stop_tasks(
        self, tenant: str, assignments: Sequence[scheduler_pb2.Assignment], reason: str
    ) -> None:
        """Cancel released tasks on their agents; one that does not answer stays recorded as
        started and is cancelled by a later round (an agent that comes back would otherwise
        resume it)."""
        stopped = [
            a.task_id
            for a in assignments
            if a.task_id and a.steps and await self._cancel(a.agent_address, tenant, a, reason)
        ]
        await self._store.stopped(stopped)

    async def _cancel(
        self, address: str, tenant: str, a: scheduler_pb2.Assignment, reason: str
    ) -> agent_pb2.Task | None:
        """CancelTask; the task as it stopped, an empty task when the agent never had it, or
        None when the agent did not answer."""
        try:
            return await self._agents.cancel(address, tenant, a.task_id, reason)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return agent_pb2.Task(task_id=a.task_id)
            log.info(
                "placement.cancel_unanswered",
                task_id=a.task_id,
                node=a.node_id,
                code=exc.code().name,
            )
            return None

    async def _cancel_orphans(self, ready: dict[str, registry_pb2.Node]) -> None:
        stopped = []
        for tenant, a in await self._store.orphans():
            node = ready.get(a.node_id)
            if node is None:
                continue
            reason = "its job was requeued elsewhere while this node was away"
            if await self._cancel(node.agent_address or a.agent_address, tenant, a, reason):
                log.info("placement.orphan_cancelled", task_id=a.task_id, node=a.node_id)
                stopped.append(a.task_id)
        await self._store.stopped(stopped)

    async def requeue(
        self,
        job: scheduler_pb2.Job,
        reason: str,
        lost_nodes: Sequence[str],
        *,
        preempted: bool = False,
    ) -> bool:
        """Release a running job's devices and queue it again (attempt + 1), keeping the steps
        done: surviving tasks are cancelled first so their last steps count."""
        stopped = []
        for a in job.assignments:
            if a.node_id in lost_nodes or not a.task_id or a.steps == 0:
                continue
            task = await self._cancel(a.agent_address, job.tenant, a, reason)
            if task is not None:
                if task.steps:
                    await self._store.progress(a.task_id, task.steps_done)
                stopped.append(a.task_id)
        await self._store.stopped(stopped)
        now = datetime.now(UTC)

        def events(tenant: str, attempt: int) -> list[OutboxEvent]:
            out = []
            if preempted:
                out.append(state_event(job.job_id, tenant, attempt - 1, PREEMPTED, reason, now))
            out.append(state_event(job.job_id, tenant, attempt, QUEUED, reason, now))
            return out

        ok = await self._store.requeue(job.job_id, job.attempt, reason, now, events)
        if ok:
            log.info("job.requeued", job_id=job.job_id, attempt=job.attempt + 1, reason=reason)
            self._relay.notify()
            self.notify()
        return ok

    async def preempt(self, job: scheduler_pb2.Job, reason: str) -> bool:
        return await self.requeue(job, reason, [], preempted=True)

    async def on_node_lost(self, event: events_pb2.NodeLost, meta: EventMeta) -> None:
        """``registry.node.lost``: requeue the node's work now rather than at the next round."""
        log.info("placement.node_lost", node_id=event.node_id)
        for job_id in await self._store.jobs_on_node(event.node_id):
            job = await self._store.get_any(job_id)
            if job is not None and job.state == RUNNING:
                async with self._round:
                    await self._lost(job, f"node {event.node_id} lost", [event.node_id])
        self.notify()

    # -- starting ------------------------------------------------------------------------
    async def _start(
        self,
        job: scheduler_pb2.Job,
        placement: Placement,
        ready: dict[str, registry_pb2.Node],
    ) -> None:
        batch = KIND_NAMES[job.spec.kind] == "batch"
        # One task per node (tensor parallel over its devices), or per device for a gang's batch
        # work (data parallel, see spec.tensor_parallel); held devices: one row per node.
        groups: list[tuple[str, list[Slot]]] = []
        if batch and job.spec.gang:
            groups = [(s.node, [s]) for s in placement.slots]
        else:
            by_node: dict[str, list[Slot]] = {}
            for s in placement.slots:
                by_node.setdefault(s.node, []).append(s)
            groups = list(by_node.items())
        remaining = max(0, job.spec.batch.steps - job.steps_done) if batch else 0
        parts = len(groups)
        new: list[NewAssignment] = []
        for k, (node_id, slots) in enumerate(groups):
            steps = remaining // parts + (1 if k < remaining % parts else 0) if batch else 0
            node = ready[node_id]
            new.append(
                NewAssignment(
                    task_id=f"{job.job_id}-a{job.attempt}-n{k}",
                    replica=k,
                    node_id=node_id,
                    chip=placement.chip,
                    agent_address=node.agent_address,
                    device_indexes=tuple(s.index for s in slots),
                    device_share=slots[0].share_milli / 1000,
                    memory_bytes=round(slots[0].memory_gib * GIB),
                    steps=steps,
                )
            )
        now = datetime.now(UTC)
        where = ", ".join(f"{a.node_id}[{','.join(map(str, a.device_indexes))}]" for a in new)
        reason = f"placed by {self.policy.name} on {placement.chip}: {where}"
        ok = await self._store.place(
            job.job_id,
            job.attempt,
            new,
            reason,
            now,
            state_event(job.job_id, job.tenant, job.attempt, RUNNING, reason, now),
        )
        if not ok:
            return
        log.info("job.placed", job_id=job.job_id, attempt=job.attempt, where=where)
        self._relay.notify()
        placed = await self._store.get_any(job.job_id)
        if placed is None or not batch:
            return
        for a in placed.assignments:
            # A start that gets no answer is retried by the next rounds (StartTask is
            # idempotent) until it is answered or the registry says the node is gone.
            if a.steps and not await self._start_task(placed, a):
                return

    async def _start_replicas(
        self,
        job: scheduler_pb2.Job,
        placed: Sequence[tuple[int, Placement]],
        ready: dict[str, registry_pb2.Node],
    ) -> None:
        """Replicas of a serving job placed one by one: the first ones (at least its
        min_replicas) start the job, later ones are added to it. They hold devices only (the
        agents' Generate serves); a replica placed again gets a fresh task id."""
        suffix = uuid.uuid4().hex[:6]
        new = [
            NewAssignment(
                task_id=f"{job.job_id}-a{job.attempt}-r{r}-{suffix}",
                replica=r,
                node_id=p.slots[0].node,
                chip=p.chip,
                agent_address=ready[p.slots[0].node].agent_address,
                device_indexes=tuple(s.index for s in p.slots),
                device_share=p.slots[0].share_milli / 1000,
                memory_bytes=round(p.slots[0].memory_gib * GIB),
                steps=0,
            )
            for r, p in placed
        ]
        where = ", ".join(
            f"r{a.replica} {a.node_id}[{','.join(map(str, a.device_indexes))}]" for a in new
        )
        total = len(job.assignments) + len(new)
        reason = (
            f"placed by {self.policy.name} on {placed[0][1].chip}: {where} "
            f"({total} of {job.spec.replicas} replicas)"
        )
        now = datetime.now(UTC)
        if job.state == QUEUED:
            ok = await self._store.place(
                job.job_id,
                job.attempt,
                new,
                reason,
                now,
                state_event(job.job_id, job.tenant, job.attempt, RUNNING, reason, now),
            )
            if ok:
                self._relay.notify()
        else:
            ok = await self._store.add_replicas(job.job_id, job.attempt, new, reason)
        if ok:
            log.info("job.replicas_placed", job_id=job.job_id, where=where, total=total)

    async def _start_task(self, job: scheduler_pb2.Job, a: scheduler_pb2.Assignment) -> bool:
        work = job.spec.batch
        request = agent_pb2.StartTaskRequest(
            work=agent_pb2.RunTaskRequest(
                task_id=a.task_id,
                job_id=job.job_id,
                precision=job.spec.precision,
                device_indexes=list(a.device_indexes),
                llm_batch=agent_pb2.LlmBatchWork(
                    model=job.spec.model,
                    batch=work.batch,
                    input_len=work.input_len,
                    output_len=work.output_len,
                ),
            ),
            steps=a.steps,
        )
        try:
            await self._agents.start(a.agent_address, job.tenant, request)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "placement.start_failed",
                job_id=job.job_id,
                node=a.node_id,
                code=exc.code().name,
                details=exc.details(),
            )
            if exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
            ):
                await self._end(
                    job, FAILED, f"the agent on {a.node_id} refused the work: {exc.details()}"
                )
            return False
        await self._store.started(a.task_id)
        return True


def _min_replicas(job: scheduler_pb2.Job) -> int:
    return job.spec.min_replicas or job.spec.replicas or 1


def _placement(demand_id: str, assignments: Sequence[scheduler_pb2.Assignment]) -> Placement:
    slots = tuple(
        Slot(a.node_id, i, round(a.device_share * 1000), a.memory_bytes / GIB)
        for a in assignments
        for i in a.device_indexes
    )
    chip = assignments[0].chip if assignments else ""
    return Placement(demand_id, chip, slots)
