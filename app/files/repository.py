from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.db.models import File


def get_for_tenant(session: Session, tenant_id: str, file_id: str) -> File | None:
    if "\x00" in file_id:  # no id has one, and PostgreSQL can't compare text containing NUL
        return None
    statement = select(File).where(File.id == file_id, File.tenant_id == tenant_id)
    return session.scalars(statement).first()


def list_for_tenant(
    session: Session,
    tenant_id: str,
    *,
    purpose: str | None,
    after: File | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
) -> Sequence[File]:
    """Newest first (``order="asc"``: oldest first); ``after`` is the last file of the previous
    page (keyset pagination on ``created_at``, then ``id`` for files made in the same instant)."""
    statement = select(File).where(File.tenant_id == tenant_id)
    if purpose is not None:
        statement = statement.where(File.purpose == purpose)
    if after is not None:
        if order == "desc":
            later = or_(
                File.created_at < after.created_at,
                and_(File.created_at == after.created_at, File.id < after.id),
            )
        else:
            later = or_(
                File.created_at > after.created_at,
                and_(File.created_at == after.created_at, File.id > after.id),
            )
        statement = statement.where(later)
    if order == "desc":
        statement = statement.order_by(File.created_at.desc(), File.id.desc())
    else:
        statement = statement.order_by(File.created_at.asc(), File.id.asc())
    return session.scalars(statement.limit(limit)).all()


def total_bytes(session: Session, tenant_id: str) -> int:
    """What the tenant's files take, as uploaded (content shared with others counts for each)."""
    total = session.scalar(select(func.sum(File.bytes)).where(File.tenant_id == tenant_id))
    return int(total or 0)


def count_by_sha256(session: Session, sha256: str) -> int:
    """How many file rows (any tenant) share this stored content."""
    return session.scalar(select(func.count()).where(File.sha256 == sha256)) or 0
