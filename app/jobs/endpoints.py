from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.auth.dependencies import AuthDep
from app.core.dependencies import (
    SessionDep,
    SettingsDep,
    TaskQueueDep,
    deep_object,
    deep_object_parameter,
)
from app.core.openapi import TENANT_ERRORS, error_responses
from app.jobs import service
from app.jobs.schemas import (
    CheckpointList,
    CheckpointRead,
    JobCreate,
    JobEventList,
    JobEventRead,
    JobList,
    JobRead,
)

router = APIRouter(
    prefix="/v1/fine_tuning/jobs", tags=["fine-tuning jobs"], responses=TENANT_ERRORS
)
NOT_FOUND = error_responses(404)

Limit = Annotated[int, Query(ge=1, le=100)]
# OpenAI's metadata filter: the openai client sends `metadata={"team": "x"}` as
# `metadata[team]=x`, which FastAPI cannot declare; read from the query string, documented here.
MetadataFilter = Annotated[dict[str, str] | None, Depends(deep_object("metadata"))]
METADATA_FILTER_DOC = deep_object_parameter(
    "metadata", "Only jobs whose metadata has every given pair: metadata[key]=value."
)


@router.post("", response_model=JobRead, responses=error_responses(413))
def create_job(
    job_create: JobCreate,
    auth: AuthDep,
    session: SessionDep,
    queue: TaskQueueDep,
    settings: SettingsDep,
) -> JobRead:
    """Create a fine-tuning job; it is queued for a GPU worker. 429 while the tenant has
    ``SAFEPATCH_MAX_ACTIVE_JOBS_PER_TENANT`` unfinished jobs; 413 once its files and models fill
    its storage quota; 400 ``job_too_large`` past ``SAFEPATCH_MAX_JOB_EPOCH_TOKENS``."""
    job = service.create(
        session,
        auth=auth,
        job_create=job_create,
        queue=queue,
        max_active_jobs=settings.max_active_jobs_per_tenant,
        max_epoch_tokens=settings.max_job_epoch_tokens,
        storage_quota_bytes=settings.storage_quota_bytes_per_tenant,
    )
    return JobRead.of(job)


@router.get("", response_model=JobList, responses=NOT_FOUND, openapi_extra=METADATA_FILTER_DOC)
def list_jobs(
    auth: AuthDep,
    session: SessionDep,
    metadata: MetadataFilter,
    after: str | None = None,
    limit: Limit = 20,
) -> JobList:
    """The caller's jobs, newest first; ``metadata[key]=value`` keeps the jobs whose metadata
    has every pair given."""
    jobs, has_more = service.list_jobs(
        session, auth=auth, after=after, limit=limit, metadata=metadata
    )
    return JobList(data=[JobRead.of(job) for job in jobs], has_more=has_more)


@router.get("/{fine_tuning_job_id}", response_model=JobRead, responses=NOT_FOUND)
def get_job(fine_tuning_job_id: str, auth: AuthDep, session: SessionDep) -> JobRead:
    return JobRead.of(service.get(session, auth=auth, job_id=fine_tuning_job_id))


@router.post(
    "/{fine_tuning_job_id}/cancel", response_model=JobRead, responses=error_responses(404, 409)
)
def cancel_job(fine_tuning_job_id: str, auth: AuthDep, session: SessionDep) -> JobRead:
    """Cancel a job: at once if it hasn't started, else at the worker's next checkpoint."""
    return JobRead.of(service.cancel(session, auth=auth, job_id=fine_tuning_job_id))


@router.get("/{fine_tuning_job_id}/events", response_model=JobEventList, responses=NOT_FOUND)
def list_job_events(
    fine_tuning_job_id: str,
    auth: AuthDep,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
) -> JobEventList:
    """The job's events, newest first."""
    events, has_more = service.list_events(
        session, auth=auth, job_id=fine_tuning_job_id, after=after, limit=limit
    )
    return JobEventList(data=[JobEventRead.of(event) for event in events], has_more=has_more)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=CheckpointList, responses=NOT_FOUND)
def list_job_checkpoints(
    fine_tuning_job_id: str,
    auth: AuthDep,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 10,
) -> CheckpointList:
    """The job's end-of-epoch checkpoints, latest first, each with the ASR probe taken then.
    Checkpoints are never safety-verified, so they are listed but not downloadable."""
    checkpoints, has_more = service.list_checkpoints(
        session, auth=auth, job_id=fine_tuning_job_id, after=after, limit=limit
    )
    data = [CheckpointRead.of(checkpoint) for checkpoint in checkpoints]
    return CheckpointList(
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
