"""Evaluations and tenants' own scenarios (the evaluator's first database).

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
        "evaluations",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("evaluation_id", sa.String(length=63), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("evaluation_id"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_evaluations_tenant_key"),
    )
    op.create_index("ix_evaluations_state", "evaluations", ["state"], unique=False)
    op.create_index("ix_evaluations_tenant", "evaluations", ["tenant"], unique=False)
    op.create_table(
        "user_scenarios",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("tenant", "name", name="uq_user_scenarios_tenant_name"),
    )
    op.create_index("ix_user_scenarios_tenant", "user_scenarios", ["tenant"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_user_scenarios_tenant", table_name="user_scenarios")
    op.drop_table("user_scenarios")
    op.drop_index("ix_evaluations_tenant", table_name="evaluations")
    op.drop_index("ix_evaluations_state", table_name="evaluations")
    op.drop_table("evaluations")
