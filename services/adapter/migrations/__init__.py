"""The adapter database's schema history (Alembic revisions in ``versions/``)."""

from services.adapter.tables import Base
from services.core.migrations import Migrations

MIGRATIONS = Migrations(
    package=__name__,
    metadata=Base.metadata,
    # Release 0.1.0's adapter stored nothing: every database is built by the revisions.
    baseline_tables=(),
    version_table="adapter_alembic_version",
)
