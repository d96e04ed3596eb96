"""Leaner usage indexes for ingest: no index on chip or job_id (queries are a tenant's records
over a window, which ix_usage_tenant_ended serves), and the index on corrects only over
corrections (a partial index) instead of every row's empty string.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_IS_CORRECTION = sa.text("corrects <> ''")


def upgrade() -> None:
    op.drop_index("ix_usage_records_chip", table_name="usage_records")
    op.drop_index("ix_usage_records_job_id", table_name="usage_records")
    op.drop_index("ix_usage_records_corrects", table_name="usage_records")
    op.create_index(
        "ix_usage_corrections",
        "usage_records",
        ["corrects"],
        unique=False,
        sqlite_where=_IS_CORRECTION,
        postgresql_where=_IS_CORRECTION,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_corrections", table_name="usage_records")
    op.create_index("ix_usage_records_corrects", "usage_records", ["corrects"], unique=False)
    op.create_index("ix_usage_records_job_id", "usage_records", ["job_id"], unique=False)
    op.create_index("ix_usage_records_chip", "usage_records", ["chip"], unique=False)
