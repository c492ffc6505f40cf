from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditRecord


def get_head(session: Session) -> AuditRecord | None:
    """The newest link of the chain."""
    return session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).first()


def iterate_chain(session: Session, batch_size: int = 1000) -> Iterator[AuditRecord]:
    """Every record in chain order, fetched in batches."""
    after = 0
    while True:
        batch = session.scalars(
            select(AuditRecord)
            .where(AuditRecord.seq > after)
            .order_by(AuditRecord.seq)
            .limit(batch_size)
        ).all()
        if not batch:
            return
        yield from batch
        after = batch[-1].seq


def list_for_subject(session: Session, subject_type: str, subject_id: str) -> list[AuditRecord]:
    statement = (
        select(AuditRecord)
        .where(AuditRecord.subject_type == subject_type, AuditRecord.subject_id == subject_id)
        .order_by(AuditRecord.seq)
    )
    return list(session.scalars(statement))
