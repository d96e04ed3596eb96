"""Job events move to the core outbox table (per-aggregate order, event type, attempts).

Every row of job_events_outbox is copied, published or not, in its order; its aggregate is the
job named in its event id (``job:<job_id>:<state>`` in 0.1.0). Unpublished ones keep their old
event ids, so a publish that had reached JetStream before the upgrade is still deduplicated.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from services.core.migrations import create_outbox_table_v1

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD = sa.table(
    "job_events_outbox",
    sa.column("seq", sa.Integer()),
    sa.column("event_id", sa.String()),
    sa.column("subject", sa.String()),
    sa.column("payload", sa.LargeBinary()),
    sa.column("trace_headers", sa.JSON()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("published_at", sa.DateTime(timezone=True)),
)
_NEW = sa.table(
    "scheduler_outbox",
    sa.column("event_id", sa.String()),
    sa.column("aggregate", sa.String()),
    sa.column("subject", sa.String()),
    sa.column("event_type", sa.String()),
    sa.column("payload", sa.LargeBinary()),
    sa.column("headers", sa.JSON()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("published_at", sa.DateTime(timezone=True)),
    sa.column("attempts", sa.Integer()),
)


def _aggregate(event_id: str) -> str:
    _, _, rest = event_id.partition(":")
    job_id, _, _ = rest.rpartition(":")
    return f"job/{job_id or rest}"


def upgrade() -> None:
    create_outbox_table_v1("scheduler_outbox")
    rows = op.get_bind().execute(sa.select(_OLD).order_by(_OLD.c.seq)).all()
    if rows:
        op.bulk_insert(
            _NEW,
            [
                {
                    "event_id": r.event_id,
                    "aggregate": _aggregate(r.event_id),
                    "subject": r.subject,
                    "event_type": "pocgrid.v1.JobStateChanged",
                    "payload": r.payload,
                    "headers": r.trace_headers or {},
                    "created_at": r.created_at,
                    "published_at": r.published_at,
                    "attempts": 0,
                }
                for r in rows
            ],
        )
    op.drop_index("ix_job_events_outbox_published_at", table_name="job_events_outbox")
    op.drop_table("job_events_outbox")


def downgrade() -> None:
    raise NotImplementedError("the scheduler's outbox is not moved back to job_events_outbox")
