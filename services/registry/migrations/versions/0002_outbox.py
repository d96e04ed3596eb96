"""The outbox of node and device events (until now published directly, and lost on failure).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from services.core.migrations import create_outbox_table_v1

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table_v1("registry_outbox")


def downgrade() -> None:
    op.drop_table("registry_outbox")
