"""audit_records: refuse TRUNCATE too, and revoke UPDATE, DELETE, TRUNCATE (PostgreSQL)

The initial schema's row triggers refuse UPDATE and DELETE for every role, the table's owner
included. Row triggers don't fire on TRUNCATE, so a statement trigger refuses that as well. The
privileges go too, from PUBLIC and from the role running the migration (normally the owner, and
often the application's role as well): a second lock that needs an explicit GRANT to undo.
Neither stops the owner or a superuser, who may disable triggers; the hash chain is what shows
such tampering (docs/reliability.md). SQLite has no TRUNCATE and no roles: nothing to do.

Revision ID: 68f35a4100b1
Revises: 7d3c1f2a9b40
Create Date: 2026-12-01 16:36:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "68f35a4100b1"
down_revision: str | None = "7d3c1f2a9b40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only()"
    )
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM PUBLIC, CURRENT_USER")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("GRANT UPDATE, DELETE, TRUNCATE ON audit_records TO CURRENT_USER")
    op.execute("DROP TRIGGER audit_records_no_truncate ON audit_records")
