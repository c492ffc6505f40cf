"""Response bodies of the audit API."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel

from app.audit.service import Verification
from app.db.models import AuditRecord


class AuditSubject(BaseModel):
    type: str
    id: str


class AuditRecordRead(BaseModel):
    """One append-only record; ``hash``/``prev_hash`` let a reader check the chain. ``payload``
    is read from the text that was hashed (``payload_canonical``)."""

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
            payload=json.loads(record.payload_canonical),
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


class AuditPublishedAnchor(BaseModel):
    seq: int
    hash: str
    published_at: int


class AuditVerification(BaseModel):
    """The result of checking the whole chain: every broken link in ``broken`` (``first_broken``
    is its first, kept for older clients); ``head`` is the newest intact record, to pass back
    as the next anchor; ``published_anchor``, the one read from SAFEPATCH_AUDIT_ANCHOR_PATH."""

    object: Literal["audit.verification"] = "audit.verification"
    ok: bool
    checked: int
    first_broken: AuditBrokenLink | None
    broken: list[AuditBrokenLink]
    head: AuditLink | None
    published_anchor: AuditPublishedAnchor | None

    @classmethod
    def of(cls, result: Verification) -> AuditVerification:
        chain, head, published = result.chain, result.chain.head, result.published_anchor
        broken = [
            AuditBrokenLink(seq=link.seq, id=link.id, reason=link.reason) for link in chain.broken
        ]
        return cls(
            ok=chain.ok,
            checked=chain.checked,
            first_broken=broken[0] if broken else None,
            broken=broken,
            head=AuditLink(seq=head.seq, hash=head.hash) if head else None,
            published_anchor=AuditPublishedAnchor(
                seq=published.seq,
                hash=published.hash,
                published_at=int(published.published_at.timestamp()),
            )
            if published
            else None,
        )
