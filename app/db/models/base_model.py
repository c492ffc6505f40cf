from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.ids import new_id
from app.db.base import Base, JSONType, UTCDateTime, utcnow


class BaseModelRecord(Base):
    """A hosted base model customers may fine-tune, with the safety baseline measured on it."""

    __tablename__ = "base_models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("bm"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    storage_uri: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    baseline_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    suite_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
