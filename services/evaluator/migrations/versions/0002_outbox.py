"""The evaluator's outbox: eval.started / eval.completed / eval.failed, written in the commit
that stores the evaluation's state.

Revision ID: 0002
Revises: 0001
"""

from services.core.migrations import create_outbox_table_v1

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table_v1("evaluator_outbox")


def downgrade() -> None:
    from alembic import op

    op.drop_table("evaluator_outbox")
