"""Baseline: the schema release 0.1.0 made with create_all (usage_records).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("usage_id", sa.String(length=160), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=63), nullable=False),
        sa.Column("chip", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("tokens_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("busy_device_seconds", sa.Float(), nullable=False),
        sa.Column("memory_gib_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("usage_id"),
    )
    op.create_index("ix_usage_records_chip", "usage_records", ["chip"], unique=False)
    op.create_index("ix_usage_records_job_id", "usage_records", ["job_id"], unique=False)
    op.create_index("ix_usage_tenant_ended", "usage_records", ["tenant", "ended_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_usage_tenant_ended", table_name="usage_records")
    op.drop_index("ix_usage_records_job_id", table_name="usage_records")
    op.drop_index("ix_usage_records_chip", table_name="usage_records")
    op.drop_table("usage_records")
