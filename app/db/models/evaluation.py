from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.ids import new_id
from app.db.base import Base, JSONType, UTCDateTime, utcnow


class Evaluation(Base):
    """Safety and utility of one model version, as measured by one suite and one judge."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("eval"))
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("fine_tuning_jobs.id"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    suite_version: Mapped[str] = mapped_column(String(64))
    judge: Mapped[str] = mapped_column(String(64))
    asr: Mapped[float] = mapped_column(Float)
    over_refusal: Mapped[float] = mapped_column(Float)
    utility: Mapped[float | None] = mapped_column(Float)
    counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    records: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
