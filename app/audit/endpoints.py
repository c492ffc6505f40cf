from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditRecordList, AuditRecordRead
from app.auth.dependencies import AuthDep
from app.core.dependencies import SessionDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])

Limit = Annotated[int, Query(ge=1, le=1000)]
UnixTime = Annotated[int | None, Query(ge=0, description="Unix seconds.")]


def _moment(seconds: int | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


@router.get("", response_model=AuditRecordList)
def list_audit_records(
    auth: AuthDep,
    session: SessionDep,
    job: str | None = None,
    model: str | None = None,
    action: str | None = None,
    since: UnixTime = None,
    until: UnixTime = None,
    after: str | None = None,
    limit: Limit = 100,
) -> AuditRecordList:
    """The caller's audit trail, newest first; ``since`` inclusive, ``until`` exclusive."""
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
