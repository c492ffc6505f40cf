"""Response bodies of the audit API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from app.audit.service import ChainVerification
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


class AuditLink(BaseModel):
    seq: int
    hash: str


class AuditBrokenLink(BaseModel):
    seq: int
    id: str | None
    reason: str


class AuditVerification(BaseModel):
    """The result of checking the whole chain; keep ``head`` to pass back as the next anchor."""

    object: Literal["audit.verification"] = "audit.verification"
    ok: bool
    checked: int
    first_broken: AuditBrokenLink | None
    head: AuditLink | None

    @classmethod
    def of(cls, result: ChainVerification) -> AuditVerification:
        broken = result.first_broken
        head = result.head
        return cls(
            ok=result.ok,
            checked=result.checked,
            first_broken=AuditBrokenLink(seq=broken.seq, id=broken.id, reason=broken.reason)
            if broken
            else None,
            head=AuditLink(seq=head.seq, hash=head.hash) if head else None,
        )
