"""The scheduler database's schema history (Alembic revisions in ``versions/``)."""

from services.core.migrations import Migrations
from services.scheduler.tables import Base

MIGRATIONS = Migrations(
    package=__name__,
    metadata=Base.metadata,
    baseline_tables=("jobs", "job_events_outbox"),
    version_table="scheduler_alembic_version",
)
