"""The agent database's schema history (Alembic revisions in ``versions/``)."""

from services.agent.tables import METADATA
from services.core.migrations import Migrations

MIGRATIONS = Migrations(
    package=__name__,
    metadata=METADATA,
    # Release 0.1.0 agents had no database: every one starts at the first revision.
    baseline_tables=(),
    version_table="agent_alembic_version",
)
