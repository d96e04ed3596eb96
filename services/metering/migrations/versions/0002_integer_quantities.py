"""Integer quantities (busy device-microseconds, memory byte-seconds) instead of summed floats,
with the old rows backfilled exactly; devices, corrections, invoices and tenants.

Revision ID: 0002
Revises: 0001
"""

from fractions import Fraction

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BATCH = 1000


def _whole(value: float | None, scale: int) -> int:
    # The float's exact value, scaled, rounded once (half to even): what an integer meter of
    # the old record would have counted.
    return round(Fraction(value or 0.0) * scale)


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(
            sa.Column("busy_device_us", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("memory_byte_seconds", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("devices", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(
            sa.Column("corrects", sa.String(length=160), server_default="", nullable=False)
        )
        batch.add_column(
            sa.Column("reason", sa.String(length=256), server_default="", nullable=False)
        )
        batch.add_column(sa.Column("invoice_id", sa.String(length=200), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT usage_id, busy_device_seconds, memory_gib_seconds FROM usage_records")
    ).all()
    update = sa.text(
        "UPDATE usage_records SET busy_device_us = :us, memory_byte_seconds = :bs "
        "WHERE usage_id = :id"
    )
    for start in range(0, len(rows), _BATCH):
        conn.execute(
            update,
            [
                {"id": uid, "us": _whole(busy, 1_000_000), "bs": _whole(mem, 1 << 30)}
                for uid, busy, mem in rows[start : start + _BATCH]
            ],
        )
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("busy_device_seconds")
        batch.drop_column("memory_gib_seconds")
        batch.create_index("ix_usage_records_corrects", ["corrects"], unique=False)
        batch.create_index("ix_usage_tenant_invoice", ["tenant", "invoice_id"], unique=False)
    op.create_table(
        "metering_tenants",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "invoices",
        sa.Column("invoice_id", sa.String(length=200), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("invoice_id"),
    )
    op.create_index("ix_invoices_tenant", "invoices", ["tenant"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_invoices_tenant", table_name="invoices")
    op.drop_table("invoices")
    op.drop_table("metering_tenants")
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(
            sa.Column("busy_device_seconds", sa.Float(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("memory_gib_seconds", sa.Float(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE usage_records SET busy_device_seconds = busy_device_us / 1000000.0, "
        "memory_gib_seconds = memory_byte_seconds / 1073741824.0"
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_index("ix_usage_tenant_invoice")
        batch.drop_index("ix_usage_records_corrects")
        for name in ("invoice_id", "reason", "corrects", "devices"):
            batch.drop_column(name)
        batch.drop_column("memory_byte_seconds")
        batch.drop_column("busy_device_us")
