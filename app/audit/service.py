"""Writing and checking the audit trail.

Each record stores the hash of the one before it, so editing or removing any record breaks every
hash after it (``verify_chain`` finds where). The chain is global, not per tenant: one ordering of
everything that happened, which is what an auditor replays. A per-tenant chain would let each
tenant check its own records, but deleting a tenant's records wholesale (or the records of no
tenant: the operator's own actions) would leave no gap anywhere, and a tenant could not check
the operator anyway. So verification belongs to the operator and the auditor: the admin-only
``GET /v1/audit/verify`` and ``safepatch admin audit-verify``, never a tenant's key, which would
learn from ``checked`` how busy the other tenants are.

What the chain cannot show by itself: whoever can write the table can also recompute every hash
after an edit, or drop the newest records. An *anchor*, the head's (seq, hash) as reported by an
earlier verification and kept outside the database, closes that gap up to the anchored record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import repository
from app.core.errors import InvalidRequest, NotFound
from app.core.ids import new_id
from app.db.base import utcnow
from app.db.models import AuditRecord
from app.models import repository as models_repository

if TYPE_CHECKING:
    from app.auth.context import AuthContext

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


@dataclass(frozen=True)
class Anchor:
    """A link the verifier saw before, kept outside the database: (seq, hash) of a record."""

    seq: int
    hash: str


@dataclass(frozen=True)
class BrokenLink:
    """Where the chain stops holding: the record (None if it is missing) and why."""

    seq: int
    id: str | None
    reason: str


@dataclass(frozen=True)
class ChainVerification:
    """``checked``: records read, up to and including the first broken one; ``head``: the last
    intact record, the anchor to keep for the next verification."""

    checked: int
    first_broken: BrokenLink | None
    head: Anchor | None

    @property
    def ok(self) -> bool:
        return self.first_broken is None


def _link_problem(entry: AuditRecord, expected_seq: int, expected_prev: str) -> str | None:
    """Why ``entry`` is not the next link of the chain, or None."""
    if entry.seq != expected_seq:
        return (
            f"seq {entry.seq} follows seq {expected_seq - 1}: "
            f"record {expected_seq} is missing (deleted or renumbered)"
        )
    if entry.prev_hash != expected_prev:
        previous = "the genesis hash" if expected_seq == 1 else f"the hash of seq {entry.seq - 1}"
        return f"prev_hash is not {previous}: a record was removed, reordered or inserted before it"
    if entry.hash != record_hash(entry):
        return "hash does not match the record's content: the record was altered"
    return None


def _anchor_problem(entry: AuditRecord, anchor: Anchor | None) -> str | None:
    if anchor is None or entry.seq != anchor.seq or entry.hash == anchor.hash:
        return None
    return f"hash differs from the anchor ({anchor.hash[:16]}...): the chain was rewritten"


def verify_chain(session: Session, *, anchor: Anchor | None = None) -> ChainVerification:
    """Check every link from the genesis hash on and report the first broken one.

    With an ``anchor`` the record at ``anchor.seq`` must still exist and carry ``anchor.hash``,
    which also catches a chain rewritten with recomputed hashes, or cut short, up to the anchor.
    """
    expected_prev, expected_seq, checked = GENESIS_HASH, 1, 0
    head: Anchor | None = None
    for entry in repository.iterate_chain(session):
        checked += 1
        reason = _link_problem(entry, expected_seq, expected_prev) or _anchor_problem(entry, anchor)
        if reason is not None:
            return ChainVerification(checked, BrokenLink(entry.seq, entry.id, reason), head)
        head = Anchor(entry.seq, entry.hash)
        expected_prev, expected_seq = entry.hash, entry.seq + 1
    if anchor is not None and (head is None or head.seq < anchor.seq):
        last = head.seq if head is not None else 0
        reason = f"missing: the chain ends at seq {last}, before the anchored record"
        return ChainVerification(checked, BrokenLink(anchor.seq, None, reason), head)
    return ChainVerification(checked, None, head)


def verify(
    session: Session, *, anchor_seq: int | None = None, anchor_hash: str | None = None
) -> ChainVerification:
    """``verify_chain`` for a caller that gives the anchor as two optional values."""
    if (anchor_seq is None) != (anchor_hash is None):
        missing = "anchor_hash" if anchor_hash is None else "anchor_seq"
        raise InvalidRequest(
            "An anchor needs both 'anchor_seq' and 'anchor_hash'.",
            param=missing,
            code="missing_required_parameter",
        )
    anchor = None
    if anchor_seq is not None and anchor_hash is not None:
        anchor = Anchor(anchor_seq, anchor_hash)
    return verify_chain(session, anchor=anchor)


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
    """A page of the tenant's audit trail, newest first; ``after`` is the last record seen.

    ``job``: the records whose subject is the job. ``model`` (a base model's name, or one of
    the tenant's model versions): the records about that model, which are
    - those whose subject is the model: its downloads, a failed integrity check;
    - those whose payload names it as ``model``: its version's creation, its evaluations (a
      base model's baseline, measured in a job, included), the drift decision on a fine-tuned
      model, the patch's verdict on a patched one, and for a base model the creation of each
      job that fine-tunes it;
    - for a version a job produced (fine-tuned, patched, checkpoint): every record of that
      job, from its creation through its state changes, evaluations and drift decision to the
      patch.
    Another tenant's model is answered as a model nobody has: no records.
    """
    if job is not None and model is not None:
        raise InvalidRequest("Filter by 'job' or by 'model', not both.", param="model")
    before_seq = None
    if after is not None:
        cursor = repository.get_for_tenant(session, auth.tenant.id, after)
        if cursor is None:
            raise NotFound(f"Could not find audit record: {after}.", param="after")
        before_seq = cursor.seq
    about = None
    if model is not None:
        version = models_repository.get_version_for_tenant(session, auth.tenant.id, model)
        about = repository.about_model(model, version.job_id if version is not None else None)
    records = repository.list_for_tenant(
        session,
        auth.tenant.id,
        subject_type="fine_tuning_job" if job is not None else None,
        subject_id=job,
        about=about,
        action=action,
        since=since,
        until=until,
        before_seq=before_seq,
        limit=limit + 1,
    )
    return records[:limit], len(records) > limit
