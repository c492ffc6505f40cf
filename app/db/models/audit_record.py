from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime


class AuditRecord(Base):
    """One link of the append-only, hash-chained audit trail (see ``app.audit.service``).

    ``seq`` and ``prev_hash`` are unique, so two writers racing for the same position cannot fork
    the chain; the migrations add triggers that reject UPDATE, DELETE and (PostgreSQL) TRUNCATE.
    """

    __tablename__ = "audit_records"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(64))
    # As long as the longest subject's id: a model version's name (`ft:base:suffix:job:patched`).
    subject_id: Mapped[str] = mapped_column(String(255))
    # What is hashed: the payload's canonical JSON text, stored verbatim (app.audit.canonical).
    payload_canonical: Mapped[str] = mapped_column(Text)
    # A queryable copy of the same value (the `model=` filter reads it); verification checks
    # that it still agrees with the text.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
