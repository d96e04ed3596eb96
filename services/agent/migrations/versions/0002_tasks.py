"""agent_tasks: the tasks an agent runs (StartTask), so they outlive the agent process.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_tasks",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("task_id", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("steps_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reason", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("busy_device_seconds", sa.Float(), server_default="0", nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("last_step", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "task_id", name="pk_agent_tasks"),
    )


def downgrade() -> None:
    op.drop_table("agent_tasks")
