"""Placement: the whole spec, checkpointed steps and pending reason on jobs; the assignments
table (which device is held by which job, and the agent task there).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs from before keep their columns; with no spec bytes they read as batch jobs of one
    # step (what JobSpec's defaults say).
    op.add_column("jobs", sa.Column("spec", sa.LargeBinary(), nullable=True))
    op.add_column("jobs", sa.Column("steps_done", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "jobs",
        sa.Column("pending_reason", sa.String(length=64), server_default="", nullable=False),
    )
    op.create_table(
        "assignments",
        sa.Column("task_id", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=63), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=63), nullable=False),
        sa.Column("chip", sa.String(length=64), nullable=False),
        sa.Column("agent_address", sa.String(length=256), nullable=False),
        sa.Column("device_indexes", sa.JSON(), nullable=False),
        sa.Column("device_share", sa.Float(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("steps_done", sa.Integer(), nullable=False),
        sa.Column("started", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index("ix_assignments_job_id", "assignments", ["job_id"], unique=False)
    op.create_index("ix_assignments_node_id", "assignments", ["node_id"], unique=False)
    op.create_index("ix_assignments_released_at", "assignments", ["released_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_assignments_released_at", table_name="assignments")
    op.drop_index("ix_assignments_node_id", table_name="assignments")
    op.drop_index("ix_assignments_job_id", table_name="assignments")
    op.drop_table("assignments")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pending_reason")
        batch.drop_column("steps_done")
        batch.drop_column("spec")
