"""The registry database's schema history (Alembic revisions in ``versions/``)."""

from services.core.migrations import Migrations
from services.registry.tables import Base

MIGRATIONS = Migrations(
    package=__name__,
    metadata=Base.metadata,
    baseline_tables=("nodes", "devices"),
    version_table="registry_alembic_version",
)
