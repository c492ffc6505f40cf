from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import APIKey, Tenant


def get_key_with_tenant(session: Session, key_hash: str) -> tuple[APIKey, Tenant] | None:
    statement = (
        select(APIKey, Tenant)
        .join(Tenant, Tenant.id == APIKey.tenant_id)
        .where(APIKey.key_hash == key_hash)
    )
    row = session.execute(statement).first()
    return (row[0], row[1]) if row else None


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def get_key(session: Session, key_id: str) -> APIKey | None:
    return session.get(APIKey, key_id)
