"""Throwaway databases for tests: a uniquely named PostgreSQL database, or a SQLite file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

# Trust auth on the local server; `make services` starts it.
POSTGRES_URL = os.environ.get(
    "SAFEPATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SAFEPATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The rate limit's tests: their own database number, and a key prefix per test (tests/core).
RATE_LIMIT_REDIS_URL = os.environ.get(
    "SAFEPATCH_TEST_RATE_LIMIT_REDIS_URL", "redis://127.0.0.1:6379/15"
)
BACKENDS = ("postgresql", "sqlite")


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A new, empty database on the test server (dropped afterwards); yields its URL."""
    name = f"safepatch_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@contextmanager
def scratch_database(backend: str, directory: Path) -> Iterator[str]:
    """An empty database of ``backend`` ("postgresql" or "sqlite"); yields its URL."""
    if backend == "postgresql":
        with scratch_postgres() as url:
            yield url
    else:
        yield f"sqlite:///{directory / f'{uuid.uuid4().hex[:8]}.db'}"
