"""audit records: subject_id as long as a model version's name (up to 255 characters)

A model version's name (``ft:base:suffix:ftjob-...:patched``) is longer than 64 characters, so
auditing a download of one failed on PostgreSQL (SQLite does not enforce lengths).

Revision ID: 4ea7c1395401
Revises: 68f35a4100b1
Create Date: 2026-12-01 16:21:51
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4ea7c1395401"
down_revision: str | None = "68f35a4100b1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _resize_subject_id(sa.String(64), sa.String(255))


def downgrade() -> None:
    _resize_subject_id(sa.String(255), sa.String(64))


def _resize_subject_id(old: sa.String, new: sa.String) -> None:
    # PostgreSQL alters the column in place (no row is updated, so the append-only trigger is
    # not involved). SQLite's batch mode rebuilds the table, which drops its triggers: the
    # append-only triggers of the initial schema are created again on the new table.
    with op.batch_alter_table("audit_records") as batch:
        batch.alter_column("subject_id", existing_type=old, type_=new, existing_nullable=False)
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER IF NOT EXISTS audit_records_no_{verb.lower()} BEFORE {verb} "
                "ON audit_records BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END"
            )
