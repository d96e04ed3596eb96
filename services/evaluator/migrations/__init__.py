"""The evaluator database's schema history (Alembic revisions in ``versions/``)."""

from services.core.migrations import Migrations
from services.evaluator.tables import Base

MIGRATIONS = Migrations(
    package=__name__,
    metadata=Base.metadata,
    # Release 0.1.0's evaluator stored nothing: every database starts at the first revision.
    baseline_tables=(),
    version_table="evaluator_alembic_version",
)
