"""fine-tuning jobs: estimated_finish, set by the worker while it trains

Revision ID: e2a90e3884e2
Revises: 4ea7c1395401
Create Date: 2026-12-01 16:24:30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e2a90e3884e2"
down_revision: str | None = "4ea7c1395401"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("estimated_finish", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("estimated_finish")
