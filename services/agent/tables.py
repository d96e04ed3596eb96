"""Agent tables: the outbox of its usage events, and the tasks it runs.

The outbox lets a finished task be answered at once when NATS is away (``services.core.outbox``);
the task table lets a started task outlive the agent process: a restarted agent resumes every
task still RUNNING at its next step. A change here needs a migration revision in
``services/agent/migrations/versions``.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
)

from services.core.outbox import outbox_table

METADATA = MetaData()
OUTBOX = outbox_table(METADATA, "agent_outbox")

TASKS = Table(
    "agent_tasks",
    METADATA,
    # Task ids are the client's, unique only within a tenant.
    Column("tenant", String(128), nullable=False),
    Column("task_id", String(63), nullable=False),
    Column("job_id", String(128), nullable=False, server_default=""),
    Column("state", Integer, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("steps_done", Integer, nullable=False, server_default="0"),
    Column("reason", String(1024), nullable=False, server_default=""),
    Column("busy_device_seconds", Float, nullable=False, server_default="0"),
    # The StartTaskRequest as sent: what a resumed task runs again.
    Column("request", LargeBinary, nullable=False),
    # The last finished step's RunTaskResponse; empty before the first.
    Column("last_step", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "task_id", name="pk_agent_tasks"),
)
