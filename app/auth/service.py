"""API keys: ``sp-`` + 48 random base62 characters (~285 bits), shown once, stored as SHA-256.

A plain hash is enough (no salt, no slow KDF): the keys are random and long, so there is nothing
to brute-force, and a hash lookup keeps authentication one indexed query.

The operator's admin key (``spa-`` + 48) belongs to no tenant and lives in no table: only its
SHA-256 is configured (``SAFEPATCH_ADMIN_KEY_SHA256``), so whoever can read or write the database
still cannot mint one. It opens the admin endpoints (audit verification) and nothing else.

Key uses of note are audited: creation, revocation, and a refused key that looks like one of ours
(unknown or revoked), counted per prefix and minute (``app.auth.refused_keys``) so that callers
without a key cannot write to the chain at will. Tokens of another shape are refused without a
record, so noise does not fill the trail; the full token is never recorded, only its display
prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth import repository
from app.auth.context import AdminContext, AuthContext
from app.auth.refused_keys import RefusedKeyLog
from app.core.errors import AuthenticationFailed, Conflict, NotFound, PermissionDenied
from app.core.ids import random_token
from app.db.base import utcnow
from app.db.models import APIKey, Tenant

KEY_PREFIX = "sp-"
ADMIN_KEY_PREFIX = "spa-"
KEY_RANDOM_LENGTH = 48
DISPLAY_PREFIX_LENGTH = 8  # "sp-" + 5 characters: enough to tell a tenant's keys apart
WELL_FORMED_KEY = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9]{{{KEY_RANDOM_LENGTH}}}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    session: Session, *, tenant: Tenant, actor: str, name: str | None = None
) -> tuple[APIKey, str]:
    """A new key for ``tenant``; returns the row and the plaintext, which is never stored."""
    plaintext = KEY_PREFIX + random_token(KEY_RANDOM_LENGTH)
    api_key = APIKey(
        tenant_id=tenant.id,
        name=name,
        prefix=plaintext[:DISPLAY_PREFIX_LENGTH],
        key_hash=hash_key(plaintext),
    )
    session.add(api_key)
    session.flush()
    audit.record(
        session,
        action="api_key.created",
        subject_type="api_key",
        subject_id=api_key.id,
        actor=actor,
        tenant_id=tenant.id,
        payload={"prefix": api_key.prefix, "name": name},
    )
    return api_key, plaintext


def create_tenant(session: Session, *, name: str, actor: str) -> tuple[Tenant, APIKey, str]:
    """A tenant with its first API key (plaintext returned once)."""
    if repository.get_tenant_by_name(session, name) is not None:
        raise Conflict(f"Tenant {name!r} already exists.", code="tenant_exists", param="name")
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    audit.record(
        session,
        action="tenant.created",
        subject_type="tenant",
        subject_id=tenant.id,
        actor=actor,
        tenant_id=tenant.id,
        payload={"name": name},
    )
    api_key, plaintext = create_api_key(session, tenant=tenant, actor=actor, name="default")
    return tenant, api_key, plaintext


def revoke_api_key(session: Session, *, key_id: str, actor: str) -> APIKey:
    """Refuse ``key_id`` from now on (idempotent: revoking twice keeps the first time)."""
    api_key = repository.get_key(session, key_id)
    if api_key is None:
        raise NotFound(f"API key {key_id!r} does not exist.", param="key_id", code="key_not_found")
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        session.flush()
        audit.record(
            session,
            action="api_key.revoked",
            subject_type="api_key",
            subject_id=api_key.id,
            actor=actor,
            tenant_id=api_key.tenant_id,
            payload={"prefix": api_key.prefix, "name": api_key.name},
        )
    return api_key


def authenticate(
    session: Session, *, token: str, refused: RefusedKeyLog, client: str | None = None
) -> AuthContext:
    """The caller owning ``token``, or ``AuthenticationFailed``. A refused key that looks like
    one of ours is counted in ``refused``, with ``client`` (its address); nothing is written."""
    found = repository.get_key_with_tenant(session, hash_key(token))
    if found is None or found[0].revoked_at is not None:
        shown = token[:DISPLAY_PREFIX_LENGTH] + "*" * 4 if token.startswith(KEY_PREFIX) else "***"
        if WELL_FORMED_KEY.fullmatch(token):
            revoked = found[0] if found else None
            refused.add(
                prefix=token[:DISPLAY_PREFIX_LENGTH],
                client=client,
                api_key_id=revoked.id if revoked is not None else None,
                tenant_id=revoked.tenant_id if revoked is not None else None,
            )
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}.")
    api_key, tenant = found
    return AuthContext(tenant=tenant, api_key=api_key)


def create_admin_key() -> tuple[str, str]:
    """A new admin key and the SHA-256 to configure; the plaintext is shown once, never stored."""
    plaintext = ADMIN_KEY_PREFIX + random_token(KEY_RANDOM_LENGTH)
    return plaintext, hash_key(plaintext)


def authenticate_admin(token: str, *, admin_key_sha256: str | None) -> AdminContext:
    """The operator, if ``token`` is the configured admin key; a tenant's key is a 403."""
    if not token.startswith(ADMIN_KEY_PREFIX):
        raise PermissionDenied(
            "This endpoint is for the operator and needs the admin key (spa-...); "
            "a tenant's API key cannot use it.",
            code="admin_key_required",
        )
    if admin_key_sha256 is None or not hmac.compare_digest(hash_key(token), admin_key_sha256):
        raise AuthenticationFailed("Incorrect admin key provided.")
    return AdminContext()
