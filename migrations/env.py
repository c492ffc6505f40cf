"""Alembic environment: the URL comes from safepatch settings unless a caller hands us one.

Callers (``app.db.migrate``, the tests) may pass ``config.attributes["connection"]`` to run inside
their own connection, or ``config.attributes["url"]``; and ``config.attributes["app_role"]``, the
role to grant the application's privileges to (else ``SAFEPATCH_DATABASE_APP_ROLE``, if set).
"""

from __future__ import annotations

from logging.config import fileConfig
from pathlib import Path
from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from app.core.db import create_db_engine
from app.core.settings import get_settings
from app.db import models  # noqa: F401  (registers every table on Base.metadata)
from app.db.base import Base, UTCDateTime
from app.db.grants import grant_application_role

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)  # the `alembic` CLI: log like alembic.ini says


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Autogenerate writes our UTCDateTime as the plain column type it is in the database."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_item=render_item,
        # SQLite can't ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
        # The application's role gets its privileges in the same transaction as the schema it
        # needs them on (app/db/grants.py).
        role = config.attributes.get("app_role") or get_settings().database_app_role
        if role:
            grant_application_role(connection, role)


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = config.attributes.get("url") or get_settings().effective_database_url
    database = make_url(url).database
    if url.startswith("sqlite") and database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            run_with(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_online()
