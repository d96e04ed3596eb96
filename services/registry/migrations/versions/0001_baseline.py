"""Baseline: the schema release 0.1.0 made with create_all (nodes, devices).

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
        "nodes",
        sa.Column("node_id", sa.String(length=63), nullable=False),
        sa.Column("chip", sa.String(length=64), nullable=False),
        sa.Column("vendor_family", sa.String(length=32), nullable=False),
        sa.Column("agent_address", sa.String(length=256), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("runtime_name", sa.String(length=128), nullable=False),
        sa.Column("runtime_version", sa.String(length=128), nullable=False),
        sa.Column("collective_library", sa.String(length=128), nullable=False),
        sa.Column("hostname", sa.String(length=256), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
    )
    op.create_index("ix_nodes_chip", "nodes", ["chip"], unique=False)
    op.create_index("ix_nodes_state", "nodes", ["state"], unique=False)
    op.create_index("ix_nodes_vendor_family", "nodes", ["vendor_family"], unique=False)
    op.create_table(
        "devices",
        sa.Column("node_id", sa.String(length=63), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("uuid", sa.String(length=128), nullable=False),
        sa.Column("chip", sa.String(length=64), nullable=False),
        sa.Column("memory_total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("compute_units", sa.Integer(), nullable=False),
        sa.Column("precisions", sa.JSON(), nullable=False),
        sa.Column("health", sa.Integer(), nullable=False),
        sa.Column("health_reason", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.node_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_id", "index"),
    )


def downgrade() -> None:
    op.drop_table("devices")
    op.drop_index("ix_nodes_vendor_family", table_name="nodes")
    op.drop_index("ix_nodes_state", table_name="nodes")
    op.drop_index("ix_nodes_chip", table_name="nodes")
    op.drop_table("nodes")
