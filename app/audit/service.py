"""Writing, listing and checking the audit trail.

The chain (``app.audit.chain``) is global, not per tenant: one ordering of everything that
happened, which is what an auditor replays. A per-tenant chain would let each tenant check its
own records, but deleting a tenant's records wholesale (or the records of no tenant: the
operator's own actions) would leave no gap anywhere, and a tenant could not check the operator
anyway. So verification belongs to the operator and the auditor: the admin-only
``GET /v1/audit/verify`` and ``safepatch admin audit-verify``, never a tenant's key, which would
learn from ``checked`` how busy the other tenants are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from app.audit import anchors, repository
from app.audit.anchors import PublishedAnchor
from app.audit.chain import (
    GENESIS_HASH,
    Anchor,
    BrokenLink,
    ChainVerification,
    record,
    record_hash,
    verify_chain,
)
from app.core.errors import InvalidRequest, NotFound
from app.db.models import AuditRecord
from app.models import repository as models_repository

if TYPE_CHECKING:
    from app.auth.context import AuthContext

__all__ = [
    "GENESIS_HASH",
    "Anchor",
    "BrokenLink",
    "ChainVerification",
    "Verification",
    "list_records",
    "record",
    "record_hash",
    "verify",
    "verify_chain",
]


@dataclass(frozen=True)
class Verification:
    """A check of the whole chain, and the published anchor it was checked against (None: none
    configured, none published yet, or not asked for)."""

    chain: ChainVerification
    published_anchor: PublishedAnchor | None


def verify(
    session: Session,
    *,
    anchor_seq: int | None = None,
    anchor_hash: str | None = None,
    anchor_path: Path | None = None,
) -> Verification:
    """``verify_chain`` against the anchor the caller gives (two optional values), and against
    the one published at ``anchor_path`` (``SAFEPATCH_AUDIT_ANCHOR_PATH``), if any."""
    if (anchor_seq is None) != (anchor_hash is None):
        missing = "anchor_hash" if anchor_hash is None else "anchor_seq"
        raise InvalidRequest(
            "An anchor needs both 'anchor_seq' and 'anchor_hash'.",
            param=missing,
            code="missing_required_parameter",
        )
    given = []
    if anchor_seq is not None and anchor_hash is not None:
        given.append(Anchor(anchor_seq, anchor_hash))
    published = anchors.read(anchor_path) if anchor_path is not None else None
    if published is not None:
        given.append(published.anchor)
    return Verification(verify_chain(session, anchors=given), published)


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
