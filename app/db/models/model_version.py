from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.ids import new_id
from app.db.base import Base, JSONType, UTCDateTime, utcnow


class ModelKind(StrEnum):
    BASE = "base"
    FINE_TUNED = "fine_tuned"
    PATCHED = "patched"
    CHECKPOINT = "checkpoint"  # an end-of-epoch snapshot of a running fine-tune


class ModelStatus(StrEnum):
    READY = "ready"
    # Failed its safety check, or never had one (checkpoints): kept for audit, never served.
    QUARANTINED = "quarantined"


class ModelVersion(Base):
    """A stored set of weights. ``parent_id`` gives the lineage base -> fine-tuned -> patched."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("mv"))
    name: Mapped[str] = mapped_column(String(255), unique=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("fine_tuning_jobs.id"), index=True)
    storage_uri: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.READY)
    status_reason: Mapped[str | None] = mapped_column(String(1024))
    step: Mapped[int | None] = mapped_column(Integer)  # checkpoints: training step reached
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
