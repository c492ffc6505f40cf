"""model versions: why a version is quarantined, and the training step of a checkpoint

Revision ID: 7d3c1f2a9b40
Revises: 45079a6c4027
Create Date: 2026-11-24 11:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7d3c1f2a9b40"
down_revision: str | None = "45079a6c4027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("status_reason", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("step")
        batch.drop_column("status_reason")
