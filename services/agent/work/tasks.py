"""Task lifecycle on an agent: StartTask / GetTask / CancelTask.

A task is ``steps`` units of one piece of work (a ``RunTaskRequest``), run one after another in
the background through the same ``TaskExecutor`` as ``RunTask``. Step ``n`` runs as task id
``<task_id>.<n>``, so each step's usage event has a stable id of its own: a step is billed once
when it finishes, whatever happens to the task later.

Why steps: they are the checkpoints. Cancelling (the scheduler's preemption) lets the step in
progress finish and starts no other, so the work done is kept (``steps_done``) and billed, and
the scheduler resumes the job elsewhere with only the remaining steps.

State lives in the agent's database (``agent_tasks``), written after every step. An agent that
stops (or is killed) mid-step loses only that step: on the next start every task still RUNNING
resumes at its next step. A task is keyed by (tenant, task id), like ``RunTask``'s results.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from pocgrid.v1 import agent_pb2
from services.agent.tables import TASKS
from services.agent.work.executor import TaskExecutor
from services.core import validation as v
from services.core.errors import InvalidArgument, NotFound, PocgridError
from services.core.logging import get_logger
from services.core.storage import Database, db_operation

log = get_logger()

RUNNING = agent_pb2.TASK_STATE_RUNNING
SUCCEEDED = agent_pb2.TASK_STATE_SUCCEEDED
FAILED = agent_pb2.TASK_STATE_FAILED
CANCELLED = agent_pb2.TASK_STATE_CANCELLED
MAX_STEPS = 1_000_000
#: Leaves room for ``.<step>`` within RunTask's 63-character task ids.
MAX_TASK_ID = 52
#: How long CancelTask waits for the step in progress before answering with the task as it is.
CANCEL_WAIT_S = 30.0

Key = tuple[str, str]


@dataclass(slots=True)
class _Running:
    loop: asyncio.Task[None]
    cancel_reason: str | None = None


class TaskStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @db_operation
    async def insert(self, tenant: str, request: agent_pb2.StartTaskRequest) -> bool:
        now = datetime.now(UTC)
        work = request.work
        try:
            async with self._db.session() as session, session.begin():
                await session.execute(
                    insert(TASKS).values(
                        tenant=tenant,
                        task_id=work.task_id,
                        job_id=work.job_id,
                        state=RUNNING,
                        steps=request.steps,
                        steps_done=0,
                        reason="",
                        busy_device_seconds=0.0,
                        request=request.SerializeToString(),
                        last_step=b"",
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    @db_operation
    async def get(self, tenant: str, task_id: str) -> agent_pb2.Task | None:
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(TASKS).where(TASKS.c.tenant == tenant, TASKS.c.task_id == task_id)
                )
            ).one_or_none()
            return None if row is None else _to_task(row)

    @db_operation
    async def request(self, tenant: str, task_id: str) -> agent_pb2.StartTaskRequest:
        async with self._db.session() as session:
            raw = await session.scalar(
                select(TASKS.c.request).where(TASKS.c.tenant == tenant, TASKS.c.task_id == task_id)
            )
            return agent_pb2.StartTaskRequest.FromString(raw or b"")

    @db_operation
    async def running(self) -> list[Key]:
        async with self._db.session() as session:
            rows = await session.execute(
                select(TASKS.c.tenant, TASKS.c.task_id).where(TASKS.c.state == RUNNING)
            )
            return [(r.tenant, r.task_id) for r in rows]

    @db_operation
    async def step_done(self, key: Key, steps_done: int, result: agent_pb2.RunTaskResponse) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(TASKS)
                .where(TASKS.c.tenant == key[0], TASKS.c.task_id == key[1])
                .values(
                    steps_done=steps_done,
                    last_step=result.SerializeToString(),
                    busy_device_seconds=TASKS.c.busy_device_seconds + result.busy_device_seconds,
                    updated_at=datetime.now(UTC),
                )
            )

    @db_operation
    async def finish(self, key: Key, state: int, reason: str) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(TASKS)
                .where(
                    TASKS.c.tenant == key[0], TASKS.c.task_id == key[1], TASKS.c.state == RUNNING
                )
                .values(state=state, reason=reason[:1024], updated_at=datetime.now(UTC))
            )


def _to_task(row: object) -> agent_pb2.Task:
    r = row._mapping  # type: ignore[attr-defined]
    request = agent_pb2.StartTaskRequest.FromString(r["request"])
    task = agent_pb2.Task(
        task_id=r["task_id"],
        job_id=r["job_id"],
        state=agent_pb2.TaskState.ValueType(r["state"]),
        steps=r["steps"],
        steps_done=r["steps_done"],
        reason=r["reason"],
        device_indexes=list(request.work.device_indexes) or [0],
        busy_device_seconds=r["busy_device_seconds"],
    )
    if r["last_step"]:
        task.last_step.ParseFromString(r["last_step"])
    return task


class TaskRunner:
    """The agent's background tasks: one asyncio loop per RUNNING task."""

    def __init__(self, store: TaskStore, executor: TaskExecutor) -> None:
        self._store = store
        self._executor = executor
        self._running: dict[Key, _Running] = {}
        self._starting = asyncio.Lock()

    async def start(self, tenant: str, request: agent_pb2.StartTaskRequest) -> agent_pb2.Task:
        if not request.HasField("work"):
            raise InvalidArgument("work", "must be set")
        v.require_id("work.task_id", request.work.task_id)
        if len(request.work.task_id) > MAX_TASK_ID:
            raise InvalidArgument(
                "work.task_id", f"must be at most {MAX_TASK_ID} characters (steps add '.<n>')"
            )
        v.require_range("steps", request.steps, 1, MAX_STEPS)
        # Bad work is refused now, not reported later as a failed task.
        self._executor.check(request.work)
        key = (tenant, request.work.task_id)
        async with self._starting:
            if await self._store.insert(tenant, request):
                self._launch(key)
                log.info(
                    "task.started",
                    task_id=key[1],
                    job_id=request.work.job_id,
                    tenant=tenant,
                    steps=request.steps,
                )
        task = await self._store.get(*key)
        assert task is not None
        return task

    async def get(self, tenant: str, task_id: str) -> agent_pb2.Task:
        v.require_id("task_id", task_id)
        task = await self._store.get(tenant, task_id)
        if task is None:
            raise NotFound("task", task_id)
        return task

    async def cancel(self, tenant: str, task_id: str, reason: str) -> agent_pb2.Task:
        task = await self.get(tenant, task_id)
        v.optional_text("reason", reason, 512)
        key = (tenant, task_id)
        running = self._running.get(key)
        if running is not None:
            running.cancel_reason = reason or "cancelled by the caller"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running.loop), CANCEL_WAIT_S)
        elif task.state == RUNNING:
            # RUNNING in the table with no loop here: resumption has not reached it yet.
            await self._store.finish(key, CANCELLED, reason or "cancelled by the caller")
        return await self.get(tenant, task_id)

    async def resume_all(self) -> int:
        """Resume every task the table says is RUNNING (after an agent restart)."""
        keys = await self._store.running()
        for key in keys:
            if key not in self._running:
                log.info("task.resumed", task_id=key[1], tenant=key[0])
                self._launch(key)
        return len(keys)

    async def stop(self) -> None:
        """Stop the loops, leaving their tasks RUNNING in the table: the next start resumes."""
        loops = [r.loop for r in self._running.values()]
        for loop in loops:
            loop.cancel()
        if loops:
            await asyncio.gather(*loops, return_exceptions=True)

    def _launch(self, key: Key) -> None:
        loop = asyncio.create_task(self._run(key), name=f"task:{key[1]}")
        self._running[key] = _Running(loop)

        def _forget(done: asyncio.Task[None]) -> None:
            if self._running.get(key) is not None and self._running[key].loop is done:
                del self._running[key]
            if not done.cancelled() and done.exception() is not None:
                log.error("task.loop_crashed", task_id=key[1], error=repr(done.exception()))

        loop.add_done_callback(_forget)

    async def _run(self, key: Key) -> None:
        tenant, task_id = key
        request = await self._store.request(tenant, task_id)
        task = await self._store.get(tenant, task_id)
        assert task is not None
        done = task.steps_done
        while True:
            running = self._running.get(key)
            if running is not None and running.cancel_reason is not None:
                await self._store.finish(key, CANCELLED, running.cancel_reason)
                log.info("task.cancelled", task_id=task_id, tenant=tenant, steps_done=done)
                return
            if done >= request.steps:
                await self._store.finish(key, SUCCEEDED, "")
                log.info("task.succeeded", task_id=task_id, tenant=tenant, steps=done)
                return
            step = agent_pb2.RunTaskRequest()
            step.CopyFrom(request.work)
            step.task_id = f"{task_id}.{done}"
            try:
                result = await self._executor.run_task(tenant, step)
            except PocgridError as exc:
                await self._store.finish(key, FAILED, f"step {done}: {exc.message}")
                log.warning("task.failed", task_id=task_id, step=done, error=exc.message)
                return
            except Exception as exc:  # a task never stays RUNNING with nothing running it
                log.exception("task.step_crashed", task_id=task_id, step=done)
                await self._store.finish(key, FAILED, f"step {done}: internal error {exc!r}")
                return
            done += 1
            await self._store.step_done(key, done, result)
