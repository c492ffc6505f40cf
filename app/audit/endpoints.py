from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditRecordList, AuditRecordRead, AuditVerification
from app.auth.dependencies import AdminDep, AuthDep
from app.core.dependencies import SessionDep, SettingsDep
from app.core.openapi import TENANT_ERRORS, error_responses

router = APIRouter(prefix="/v1/audit", tags=["audit"])

Limit = Annotated[int, Query(ge=1, le=1000)]
# The last second of year 9999: Python's datetime ends there, so a larger value would be a 500
# (OverflowError) instead of a 400 naming the parameter.
MAX_UNIX_TIME = 253_402_300_799
UnixTime = Annotated[int | None, Query(ge=0, le=MAX_UNIX_TIME, description="Unix seconds.")]


def _moment(seconds: int | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


@router.get("", response_model=AuditRecordList, responses=TENANT_ERRORS | error_responses(404))
def list_audit_records(
    auth: AuthDep,
    session: SessionDep,
    job: Annotated[str | None, Query(description="Records whose subject is this job.")] = None,
    model: Annotated[
        str | None,
        Query(
            description="Records about this model: its own (downloads), those naming it "
            "(creation, evaluations, drift decision, patch verdict), and every record of the "
            "job that produced it."
        ),
    ] = None,
    action: str | None = None,
    since: UnixTime = None,
    until: UnixTime = None,
    after: str | None = None,
    limit: Limit = 100,
) -> AuditRecordList:
    """The caller's audit trail, newest first; ``since`` inclusive, ``until`` exclusive.

    ``model=ID`` returns the records about a model. For a fine-tuned, patched or checkpoint
    version: the records of the job that produced it (its creation, state changes, the base
    model's baseline and the other evaluations, the drift decision, the patch), plus those
    whose subject is the version (downloads, integrity failures). For a base model: the records
    that name it, such as its baseline evaluations and the creation of the jobs on it. The
    rules are in ``app.audit.service.list_records``."""
    records, has_more = service.list_records(
        session,
        auth=auth,
        job=job,
        model=model,
        action=action,
        since=_moment(since),
        until=_moment(until),
        after=after,
        limit=limit,
    )
    return AuditRecordList(data=[AuditRecordRead.of(r) for r in records], has_more=has_more)


@router.get(
    "/verify", response_model=AuditVerification, responses=error_responses(401, 403, 500, 503)
)
def verify_audit_chain(
    _admin: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    anchor_seq: Annotated[int | None, Query(ge=1, description="seq of a kept head.")] = None,
    anchor_hash: Annotated[
        str | None, Query(pattern="^[0-9a-f]{64}$", description="Its hash.")
    ] = None,
) -> AuditVerification:
    """Check the whole, global chain and report every broken link, against the given anchor and
    the published one (SAFEPATCH_AUDIT_ANCHOR_PATH). Admin key only: the chain spans every
    tenant, so a tenant's key would learn the others' record counts. A 500
    ``audit_anchor_unreadable``: the published anchor file is damaged."""
    result = service.verify(
        session,
        anchor_seq=anchor_seq,
        anchor_hash=anchor_hash,
        anchor_path=settings.audit_anchor_path,
    )
    return AuditVerification.of(result)
