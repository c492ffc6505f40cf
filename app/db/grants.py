"""What the application's PostgreSQL role may do: granted by ``safepatch db upgrade`` after the
migrations, as the tables' owner (``SAFEPATCH_DATABASE_APP_ROLE``; migrations/env.py).

The API and the workers connect as a role that owns nothing. The owner (and a superuser) may
disable the audit trail's append-only triggers or grant itself UPDATE back; a role that does not
own the table can do neither, so for it the database itself keeps the trail append-only. The
grants are computed from the tables the code maps, and set again after every upgrade: a table a
later release adds is granted with it, and a privilege granted by hand is taken back.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from app.db.base import Base

# Tables the application may append to and read, never change (the hash-chained audit trail).
APPEND_ONLY_TABLES = frozenset({"audit_records"})
READ_WRITE = "SELECT, INSERT, UPDATE, DELETE"
APPEND_ONLY = "SELECT, INSERT"


def privileges(table: str) -> str:
    return APPEND_ONLY if table in APPEND_ONLY_TABLES else READ_WRITE


def grant_application_role(connection: Connection, role: str) -> None:
    """Give ``role`` exactly the application's privileges on this schema (PostgreSQL only).

    Run as the tables' owner, inside the migrations' transaction. ``role`` must exist (the
    init script creates it: docker/postgres-init/) and must not be the role running this: a
    role that owns the tables could undo every restriction.
    """
    if connection.dialect.name != "postgresql":
        return  # SQLite has no roles: embedded mode is one process's file
    quote = connection.dialect.identifier_preparer.quote
    current = connection.execute(text("SELECT current_user")).scalar_one()
    if role == current:
        raise ValueError(
            f"SAFEPATCH_DATABASE_APP_ROLE is {role!r}, the role running the migrations: the "
            "application must connect as a role that does not own the tables"
        )
    exists = connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    if exists.first() is None:
        raise ValueError(f"SAFEPATCH_DATABASE_APP_ROLE: no role {role!r} in this database")
    schema = quote(connection.execute(text("SELECT current_schema()")).scalar_one())
    grantee = quote(role)
    present = set(
        connection.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ).scalars()
    )
    connection.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {grantee}"))
    # From nothing, so that running it again also takes back what was granted by hand.
    connection.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {grantee}"))
    connection.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {grantee}"))
    for table in sorted(present & set(Base.metadata.tables)):
        connection.execute(
            text(f"GRANT {privileges(table)} ON {schema}.{quote(table)} TO {grantee}")
        )
    connection.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {grantee}"))
