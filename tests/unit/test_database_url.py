"""POCGRID_DATABASE_URL: one PostgreSQL server for every service, a database each."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.config import CommonConfig, ConfigError


def test_each_service_gets_its_own_database_from_the_template():
    common = CommonConfig(database_url="postgresql+asyncpg://pocgrid@db:5432/pocgrid_{name}")
    assert common.default_database_url("registry") == (
        "postgresql+asyncpg://pocgrid@db:5432/pocgrid_registry"
    )
    assert common.default_database_url("agent-npu-0").endswith("/pocgrid_agent-npu-0")


def test_without_a_template_each_service_keeps_a_sqlite_file():
    common = CommonConfig(data_dir=Path("/var/lib/pocgrid"))
    assert common.default_database_url("metering") == (
        "sqlite+aiosqlite:////var/lib/pocgrid/metering.db"
    )


def test_a_url_without_name_is_refused_naming_the_variable_and_rule():
    # Services keep tables of the same names: one shared database would mix their rows.
    with pytest.raises(ConfigError, match=r"POCGRID_DATABASE_URL: must contain \{name\}"):
        CommonConfig.from_env({"POCGRID_DATABASE_URL": "postgresql+asyncpg://db/pocgrid"})
