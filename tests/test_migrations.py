"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from app.core.db import create_db_engine
from app.db import migrate
from app.db.base import Base
from tests.databases import scratch_database


def schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


@pytest.fixture
def empty_database(backend: str, tmp_path: Path) -> Iterator[str]:
    with scratch_database(backend, tmp_path) as url:
        yield url


def test_upgrade_head_matches_the_models(connection: Connection) -> None:
    # `connection` is the session's database, built by `alembic upgrade head` in conftest.
    assert schema_diff(connection) == []


def test_the_comparison_would_notice_drift(connection: Connection) -> None:
    connection.exec_driver_sql("ALTER TABLE tenants ADD COLUMN nickname VARCHAR(20)")
    diff = schema_diff(connection)
    assert [entry[0] for entry in diff] == ["remove_column"]
    assert diff[0][3].name == "nickname"


def test_downgrade_to_base_and_back(empty_database: str) -> None:
    migrate.upgrade(empty_database)
    migrate.downgrade(empty_database, "base")
    engine = create_db_engine(empty_database)
    try:
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        migrate.upgrade(empty_database)
        with engine.connect() as connection:
            assert schema_diff(connection) == []
    finally:
        engine.dispose()
