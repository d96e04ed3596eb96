"""The agent's outbox of usage events (the agent's first database).

Revision ID: 0001
Revises:
"""

from services.core.migrations import create_outbox_table_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table_v1("agent_outbox")


def downgrade() -> None:
    raise NotImplementedError("the agent's outbox is not removed")
