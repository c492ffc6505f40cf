from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from app.db.models import AuditRecord


def get_head(session: Session) -> AuditRecord | None:
    """The newest link of the chain."""
    return session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).first()


def iterate_chain(
    session: Session, *, after: int = 0, batch_size: int = 1000
) -> Iterator[AuditRecord]:
    """Every record after seq ``after``, in chain order, fetched in batches."""
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


def about_model(model: str, job_id: str | None) -> ColumnElement[bool]:
    """Records about ``model`` (see ``service.list_records``): its subject is the model, or the
    payload names it, or it is a record of ``job_id``, the job that produced it."""
    about = [
        AuditRecord.subject_id == model,
        AuditRecord.payload["model"].as_string() == model,
    ]
    if job_id is not None:
        job = and_(AuditRecord.subject_type == "fine_tuning_job", AuditRecord.subject_id == job_id)
        about.append(job)
    return or_(*about)


def list_for_tenant(
    session: Session,
    tenant_id: str,
    *,
    subject_type: str | None = None,
    subject_id: str | None = None,
    about: ColumnElement[bool] | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_seq: int | None = None,
    limit: int,
) -> Sequence[AuditRecord]:
    """The tenant's records, newest first; ``before_seq`` continues a previous page."""
    statement = select(AuditRecord).where(AuditRecord.tenant_id == tenant_id)
    if subject_type is not None:
        statement = statement.where(AuditRecord.subject_type == subject_type)
    if subject_id is not None:
        statement = statement.where(AuditRecord.subject_id == subject_id)
    if about is not None:
        statement = statement.where(about)
    if action is not None:
        statement = statement.where(AuditRecord.action == action)
    if since is not None:
        statement = statement.where(AuditRecord.created_at >= since)
    if until is not None:
        statement = statement.where(AuditRecord.created_at < until)
    if before_seq is not None:
        statement = statement.where(AuditRecord.seq < before_seq)
    return session.scalars(statement.order_by(AuditRecord.seq.desc()).limit(limit)).all()


def get_for_tenant(session: Session, tenant_id: str, record_id: str) -> AuditRecord | None:
    statement = select(AuditRecord).where(
        AuditRecord.id == record_id, AuditRecord.tenant_id == tenant_id
    )
    return session.scalars(statement).first()
