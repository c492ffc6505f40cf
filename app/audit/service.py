"""Writing and checking the audit trail.

Each record stores the hash of the one before it, so editing or removing any record breaks every
hash after it (``verify_chain`` finds where). The chain is global, not per tenant: one ordering of
everything that happened, which is what an auditor replays.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import repository
from app.core.errors import InvalidRequest, NotFound
from app.core.ids import new_id
from app.db.base import utcnow
from app.db.models import AuditRecord

if TYPE_CHECKING:  # app.auth.service imports this module (it audits key creation)
    from app.auth.service import AuthContext

GENESIS_HASH = "0" * 64
# Concurrent writers (API and workers) may race for the same seq; the unique constraint makes
# the loser retry on the new head instead of forking the chain.
MAX_APPEND_ATTEMPTS = 5


def record_hash(record: AuditRecord) -> str:
    """SHA-256 over the previous hash and a canonical JSON of this record's content."""
    content = {
        "id": record.id,
        "seq": record.seq,
        "tenant_id": record.tenant_id,
        "actor": record.actor,
        "action": record.action,
        "subject_type": record.subject_type,
        "subject_id": record.subject_id,
        "payload": record.payload,
        "created_at": record.created_at.isoformat(),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{record.prev_hash}\n{canonical}".encode()).hexdigest()


def record(
    session: Session,
    *,
    action: str,
    subject_type: str,
    subject_id: str,
    actor: str,
    tenant_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one record to the chain (flushed, committed with the caller's transaction)."""
    for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
        head = repository.get_head(session)
        entry = AuditRecord(
            id=new_id("audit"),
            seq=head.seq + 1 if head else 1,
            prev_hash=head.hash if head else GENESIS_HASH,
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            payload=payload or {},
            created_at=utcnow(),
        )
        entry.hash = record_hash(entry)
        try:
            with session.begin_nested():
                session.add(entry)
        except IntegrityError:
            if attempt == MAX_APPEND_ATTEMPTS:
                raise
            continue
        return entry
    raise AssertionError("unreachable")


def verify_chain(session: Session) -> int | None:
    """The ``seq`` of the first record that doesn't fit the chain, or None if it is intact."""
    expected_prev, expected_seq = GENESIS_HASH, 1
    for entry in repository.iterate_chain(session):
        if (
            entry.seq != expected_seq
            or entry.prev_hash != expected_prev
            or entry.hash != record_hash(entry)
        ):
            return entry.seq
        expected_prev, expected_seq = entry.hash, entry.seq + 1
    return None


def list_records(
    session: Session,
    *,
    auth: AuthContext,
    job: str | None = None,
    model: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: str | None = None,
    limit: int,
) -> tuple[Sequence[AuditRecord], bool]:
    """A page of the tenant's audit trail, newest first; ``after`` is the last record seen."""
    if job is not None and model is not None:
        raise InvalidRequest("Filter by 'job' or by 'model', not both.", param="model")
    before_seq = None
    if after is not None:
        cursor = repository.get_for_tenant(session, auth.tenant.id, after)
        if cursor is None:
            raise NotFound(f"Could not find audit record: {after}.", param="after")
        before_seq = cursor.seq
    records = repository.list_for_tenant(
        session,
        auth.tenant.id,
        subject_type="fine_tuning_job" if job is not None else None,
        subject_id=job if job is not None else model,
        action=action,
        since=since,
        until=until,
        before_seq=before_seq,
        limit=limit + 1,
    )
    return records[:limit], len(records) > limit
