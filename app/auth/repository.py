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


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Hold the tenant's row until the transaction ends: serializes the tenant's quota checks
    (count, then insert) across API processes. SQLite's BEGIN IMMEDIATE already has."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def get_key(session: Session, key_id: str) -> APIKey | None:
    return session.get(APIKey, key_id)
