from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from app.core.ids import new_id
from app.db.base import Base, JSONType, UTCDateTime, utcnow


class FineTuningJob(Base):
    """A customer's fine-tuning job. ``status``/``stage`` change only via ``app.jobs.states``."""

    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (Index("ix_fine_tuning_jobs_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftjob"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model: Mapped[str] = mapped_column(String(200))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType)
    safety_settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64))
    # `metadata` is taken by SQLAlchemy's declarative base; the column keeps OpenAI's name.
    user_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONType)

    status: Mapped[str] = mapped_column(String(32), index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the fine-tune should end: set by the worker while it trains, cleared when the job
    # leaves the fine_tuning stage (`app.jobs.states`).
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Execution bookkeeping: the worker holding the job renews its lease; another worker may take
    # over only after it expires, so a redelivered message never runs a job twice at once.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
