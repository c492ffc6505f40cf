from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import BaseModelRecord, ModelVersion


def get_base(session: Session, name: str) -> BaseModelRecord | None:
    return session.scalars(select(BaseModelRecord).where(BaseModelRecord.name == name)).first()


def list_base(session: Session) -> Sequence[BaseModelRecord]:
    return session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.name)).all()


def get_version_by_name(session: Session, name: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()


def get_version_for_tenant(session: Session, tenant_id: str, name: str) -> ModelVersion | None:
    statement = select(ModelVersion).where(
        ModelVersion.name == name, ModelVersion.tenant_id == tenant_id
    )
    return session.scalars(statement).first()


def get_version(session: Session, version_id: str) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def list_versions_for_tenant(
    session: Session, tenant_id: str, *, job_id: str | None = None, kind: str | None = None
) -> Sequence[ModelVersion]:
    statement = select(ModelVersion).where(ModelVersion.tenant_id == tenant_id)
    if job_id is not None:
        statement = statement.where(ModelVersion.job_id == job_id)
    if kind is not None:
        statement = statement.where(ModelVersion.kind == kind)
    order = (ModelVersion.created_at.desc(), ModelVersion.id.desc())
    return session.scalars(statement.order_by(*order)).all()


def total_bytes(session: Session, tenant_id: str) -> int:
    """What the tenant's model versions take on disk (checkpoints, fine-tuned and patched)."""
    statement = select(func.sum(ModelVersion.size_bytes)).where(ModelVersion.tenant_id == tenant_id)
    return int(session.scalar(statement) or 0)
