"""Imported models per tenant and stored plans (the adapter's first tables).

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
        "adapter_imported_models",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("opset", sa.Integer(), nullable=False),
        sa.Column("operators", sa.JSON(), nullable=False),
        sa.Column("params_b", sa.Float(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "model_id"),
    )
    op.create_index(
        "ix_adapter_imported_models_sha256", "adapter_imported_models", ["sha256"], unique=False
    )
    op.create_table(
        "adapter_plans",
        sa.Column("cache_key", sa.String(length=64), nullable=False),
        sa.Column("model_hash", sa.String(length=64), nullable=False),
        sa.Column("chip", sa.String(length=64), nullable=False),
        sa.Column("options", sa.String(length=1024), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cache_key"),
    )
    op.create_index("ix_adapter_plans_model_hash", "adapter_plans", ["model_hash"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_adapter_plans_model_hash", table_name="adapter_plans")
    op.drop_table("adapter_plans")
    op.drop_index("ix_adapter_imported_models_sha256", table_name="adapter_imported_models")
    op.drop_table("adapter_imported_models")
