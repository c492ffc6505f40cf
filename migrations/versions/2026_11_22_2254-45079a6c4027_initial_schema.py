"""initial schema: tenants, keys, files, models, jobs, events, evaluations, audit trail

Revision ID: 45079a6c4027
Revises:
Create Date: 2026-11-22 22:54:52.005132
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "45079a6c4027"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of app.db.base's portable types (a migration must not change when the app does).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def _id() -> sa.Column[str]:
    return sa.Column("id", sa.String(64), nullable=False)


def _created_at() -> sa.Column[datetime]:
    return sa.Column("created_at", TIMESTAMP, nullable=False)


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=op.f(f"fk_{table}_tenant_id_tenants")
    )


def upgrade() -> None:
    op.create_table(
        "tenants",
        _id(),
        sa.Column("name", sa.String(200), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "api_keys",
        _id(),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        _created_at(),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        _tenant_fk("api_keys"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])

    op.create_table(
        "files",
        _id(),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_path", sa.String(1024), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _created_at(),
        _tenant_fk("files"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index(op.f("ix_files_tenant_id"), "files", ["tenant_id"])

    op.create_table(
        "base_models",
        _id(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("storage_uri", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("baseline_metrics", JSON, nullable=True),
        sa.Column("suite_version", sa.String(64), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_models")),
        sa.UniqueConstraint("name", name=op.f("uq_base_models_name")),
    )

    op.create_table(
        "fine_tuning_jobs",
        _id(),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("training_file", sa.String(64), nullable=False),
        sa.Column("validation_file", sa.String(64), nullable=True),
        sa.Column("hyperparameters", JSON, nullable=False),
        sa.Column("safety_settings", JSON, nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("suffix", sa.String(64), nullable=True),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32), nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("trained_tokens", sa.BigInteger(), nullable=True),
        sa.Column("fine_tuned_model", sa.String(255), nullable=True),
        _created_at(),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("attempt_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        _tenant_fk("fine_tuning_jobs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fine_tuning_jobs")),
    )
    op.create_index(op.f("ix_fine_tuning_jobs_status"), "fine_tuning_jobs", ["status"])
    op.create_index(
        "ix_fine_tuning_jobs_tenant_created", "fine_tuning_jobs", ["tenant_id", "created_at", "id"]
    )

    op.create_table(
        "job_events",
        _id(),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["job_id"], ["fine_tuning_jobs.id"], name=op.f("fk_job_events_job_id_fine_tuning_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_job_events_job_id_seq")),
    )

    op.create_table(
        "model_versions",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("storage_uri", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metrics", JSON, nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["fine_tuning_jobs.id"],
            name=op.f("fk_model_versions_job_id_fine_tuning_jobs"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["model_versions.id"],
            name=op.f("fk_model_versions_parent_id_model_versions"),
        ),
        _tenant_fk("model_versions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", name=op.f("uq_model_versions_name")),
    )
    op.create_index(op.f("ix_model_versions_job_id"), "model_versions", ["job_id"])
    op.create_index(op.f("ix_model_versions_parent_id"), "model_versions", ["parent_id"])
    op.create_index(op.f("ix_model_versions_tenant_id"), "model_versions", ["tenant_id"])

    op.create_table(
        "evaluations",
        _id(),
        sa.Column("model_version_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("suite_version", sa.String(64), nullable=False),
        sa.Column("judge", sa.String(64), nullable=False),
        sa.Column("asr", sa.Float(), nullable=False),
        sa.Column("over_refusal", sa.Float(), nullable=False),
        sa.Column("utility", sa.Float(), nullable=True),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("records", JSON, nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["job_id"], ["fine_tuning_jobs.id"], name=op.f("fk_evaluations_job_id_fine_tuning_jobs")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_evaluations_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(op.f("ix_evaluations_job_id"), "evaluations", ["job_id"])
    op.create_index(op.f("ix_evaluations_model_version_id"), "evaluations", ["model_version_id"])

    op.create_table(
        "audit_records",
        _id(),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        _created_at(),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        _tenant_fk("audit_records"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
        sa.UniqueConstraint("seq", name=op.f("uq_audit_records_seq")),
        sa.UniqueConstraint("prev_hash", name=op.f("uq_audit_records_prev_hash")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_records_hash")),
    )
    op.create_index(op.f("ix_audit_records_tenant_id"), "audit_records", ["tenant_id"])
    _forbid_audit_changes()


def _forbid_audit_changes() -> None:
    """The audit trail is append-only in the database itself, not just by convention."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION audit_records_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'audit_records is append-only';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records "
            "FOR EACH ROW EXECUTE FUNCTION audit_records_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_records_no_{verb.lower()} BEFORE {verb} ON audit_records "
                "BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_records_append_only ON audit_records")
        op.execute("DROP FUNCTION audit_records_append_only()")
    for table in (
        "audit_records",
        "evaluations",
        "model_versions",
        "job_events",
        "fine_tuning_jobs",
        "base_models",
        "files",
        "api_keys",
        "tenants",
    ):
        op.drop_table(table)  # drops the table's indexes and (SQLite) triggers with it
