"""audit_records.payload_canonical: the payload's canonical JSON text, which is what is hashed

A record's hash was computed over the payload in memory, while PostgreSQL's JSONB kept its own
form of it (``-0.0`` came back ``0.0``, ``1e308`` as a 309-digit integer), so such a record no
longer matched its hash. From now on the hash covers this text column, stored verbatim
(app/audit/canonical.py).

Existing rows are backfilled with ``json.dumps(payload, sort_keys=True, separators=(",", ":"),
default=str)`` of their stored payload: exactly the text their hash was computed over, nested in
the record's content with those same options, so every intact record still verifies under the
one hash formula (no second scheme). A row whose payload the database had already changed
(the ``-0.0`` case) stays a broken link, as it was: its hashed value is gone.

The rows are append-only (triggers, and no UPDATE privilege since 68f35a4100b1): the backfill
lifts both for its own statements and puts them back. Run it as the tables' owner, as every
migration.

Revision ID: b7e4c2d91f3a
Revises: e2a90e3884e2
Create Date: 2026-12-05 23:50:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "b7e4c2d91f3a"
down_revision: str | None = "e2a90e3884e2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000

records = sa.table(
    "audit_records",
    sa.column("id", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("payload", sa.JSON().with_variant(JSONB(), "postgresql")),
    sa.column("payload_canonical", sa.Text),
)


def upgrade() -> None:
    op.add_column("audit_records", sa.Column("payload_canonical", sa.Text(), nullable=True))
    _backfill()
    with op.batch_alter_table("audit_records") as batch:
        batch.alter_column("payload_canonical", existing_type=sa.Text(), nullable=False)
    _sqlite_triggers()


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("payload_canonical")
    _sqlite_triggers()


def _backfill() -> None:
    bind = op.get_bind()
    if bind.execute(sa.select(sa.func.count()).select_from(records)).scalar_one() == 0:
        return
    postgresql = bind.dialect.name == "postgresql"
    if postgresql:
        op.execute("GRANT UPDATE ON audit_records TO CURRENT_USER")
        op.execute("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only")
    else:
        op.execute("DROP TRIGGER audit_records_no_update")
    after = 0
    while True:
        rows = bind.execute(
            sa.select(records.c.id, records.c.seq, records.c.payload)
            .where(records.c.seq > after)
            .order_by(records.c.seq)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        bind.execute(
            records.update()
            .where(records.c.id == sa.bindparam("record_id"))
            .values(payload_canonical=sa.bindparam("text")),
            [{"record_id": row.id, "text": _hashed_text(row.payload)} for row in rows],
        )
        after = rows[-1].seq
    if postgresql:
        op.execute("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only")
        op.execute("REVOKE UPDATE ON audit_records FROM CURRENT_USER")


def _hashed_text(payload: object) -> str:
    # The encoder the hash used before this revision (app.audit.canonical.legacy_dumps), frozen
    # here so that the migration keeps meaning what it meant.
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def _sqlite_triggers() -> None:
    # SQLite's batch mode rebuilds the table, which drops its triggers (and the backfill dropped
    # one): the append-only triggers of the initial schema are created again.
    if op.get_bind().dialect.name != "sqlite":
        return
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER IF NOT EXISTS audit_records_no_{verb.lower()} BEFORE {verb} "
            "ON audit_records BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END"
        )
