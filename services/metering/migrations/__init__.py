"""The metering database's schema history (Alembic revisions in ``versions/``)."""

from services.core.migrations import Migrations
from services.metering.tables import Base

MIGRATIONS = Migrations(
    package=__name__,
    metadata=Base.metadata,
    baseline_tables=("usage_records",),
    version_table="metering_alembic_version",
)
