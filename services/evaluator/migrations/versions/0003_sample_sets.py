"""Tenants' labelled sample sets (ImportSampleSet), for user scenarios over an imported ONNX
model.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sample_sets",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("sample_set_id", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("tenant", "sample_set_id", name="uq_sample_sets_tenant_id"),
    )
    op.create_index("ix_sample_sets_tenant", "sample_sets", ["tenant"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sample_sets_tenant", table_name="sample_sets")
    op.drop_table("sample_sets")
