"""Response bodies of the audit API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from app.db.models import AuditRecord


class AuditSubject(BaseModel):
    type: str
    id: str


class AuditRecordRead(BaseModel):
    """One append-only record; ``hash``/``prev_hash`` let a reader check the chain."""

    id: str
    object: Literal["audit.record"] = "audit.record"
    seq: int
    created_at: int
    actor: str
    action: str
    subject: AuditSubject
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, record: AuditRecord) -> AuditRecordRead:
        return cls(
            id=record.id,
            seq=record.seq,
            created_at=int(record.created_at.timestamp()),
            actor=record.actor,
            action=record.action,
            subject=AuditSubject(type=record.subject_type, id=record.subject_id),
            payload=record.payload,
            prev_hash=record.prev_hash,
            hash=record.hash,
        )


class AuditRecordList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditRecordRead]
    has_more: bool
