"""Rules of the jobs resource. Used by the API (create, list, get, cancel) and by the workers
(``change_state`` and ``add_event``), so both write the same events and audit records."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth import repository as auth_repository
from app.auth.context import AuthContext
from app.core.db import after_commit
from app.core.errors import InvalidRequest, NotFound, QuotaExceeded
from app.core.queue import TaskQueue
from app.db.models import File, FineTuningJob, JobEvent, ModelKind, ModelVersion
from app.files import quota
from app.files import repository as files_repository
from app.jobs import repository
from app.jobs.schemas import Hyperparameters, JobCreate
from app.jobs.states import JobStage, JobStatus, transition
from app.models import repository as models_repository

# What "n_epochs": "auto" resolves to (the worker's workers.job_spec.AUTO_HYPERPARAMETERS; a test
# keeps the two equal), so an "auto" job is sized as it will run.
AUTO_N_EPOCHS = 3


def add_event(
    session: Session,
    job: FineTuningJob,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event to the job's log (flushed; committed with the caller's transaction)."""
    # Lock the job row so the API and a worker writing events at once can't take the same seq.
    session.execute(select(FineTuningJob.id).where(FineTuningJob.id == job.id).with_for_update())
    event = JobEvent(
        job_id=job.id,
        seq=repository.next_event_seq(session, job.id),
        level=level,
        type=type,
        message=message,
        data=data,
    )
    session.add(event)
    session.flush()
    return event


def change_state(
    session: Session,
    job: FineTuningJob,
    status: JobStatus,
    stage: JobStage | None = None,
    *,
    actor: str,
    message: str,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    """Move the job through the state machine, with an event and an audit record."""
    old_status, old_stage = transition(job, status, stage)
    session.flush()
    add_event(session, job, message, level=level, data=data)
    audit.record(
        session,
        action="job.state_changed",
        subject_type="fine_tuning_job",
        subject_id=job.id,
        actor=actor,
        tenant_id=job.tenant_id,
        payload={
            "from": {"status": old_status, "stage": old_stage},
            "to": {"status": job.status, "stage": job.stage},
            **({"error": job.error} if job.error else {}),
        },
    )


def _check_file(session: Session, auth: AuthContext, file_id: str, *, param: str) -> File:
    """The file exists for this tenant and was uploaded for fine-tuning (else 400, as OpenAI)."""
    file = files_repository.get_for_tenant(session, auth.tenant.id, file_id)
    if file is None:
        raise InvalidRequest(f"Invalid file ID: {file_id}", param=param, code="invalid_file_id")
    if file.purpose != "fine-tune":
        raise InvalidRequest(
            f"File {file_id} has purpose '{file.purpose}', not 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )
    return file


def _check_model(session: Session, model: str) -> None:
    """Only registered base models can be fine-tuned (400 naming the ones that can)."""
    # PostgreSQL can't compare text containing NUL (a 500); no model's name has one.
    if "\x00" in model or models_repository.get_base(session, model) is None:
        names = [base.name for base in models_repository.list_base(session)]
        available = ", ".join(names) if names else "none are registered yet"
        raise InvalidRequest(
            f"Model '{model}' is not available for fine-tuning (available: {available}).",
            param="model",
            code="model_not_available",
        )


def _check_metadata(metadata: dict[str, str] | None) -> None:
    """Metadata is stored as given, so it must be text PostgreSQL's JSONB can hold: no NUL, and
    no lone surrogate (a JSON escape such as ``\\ud800`` with no partner is not Unicode).
    Either was a 500 at the insert on PostgreSQL, or came back mangled."""
    for text in (text for pair in (metadata or {}).items() for text in pair):
        if "\x00" in text:
            raise InvalidRequest(
                "Invalid value for 'metadata': NUL characters are not allowed.",
                param="metadata",
                code="invalid_value",
            )
        surrogate = next((char for char in text if "\ud800" <= char <= "\udfff"), None)
        if surrogate is not None:
            raise InvalidRequest(
                f"Invalid value for 'metadata': {text!r} contains a lone surrogate "
                f"(U+{ord(surrogate):04X}), which is not valid Unicode.",
                param="metadata",
                code="invalid_value",
            )


def _hyperparameters(job_create: JobCreate) -> Hyperparameters:
    """The hyperparameters asked for, at the top level or under ``method.supervised`` (OpenAI
    accepts both; given twice, they must agree)."""
    supervised = job_create.method.supervised if job_create.method is not None else None
    nested = supervised.hyperparameters if supervised is not None else None
    top = job_create.hyperparameters
    if top is not None and nested is not None and top.model_dump() != nested.model_dump():
        raise InvalidRequest(
            "'hyperparameters' and 'method.supervised.hyperparameters' disagree "
            f"({top.model_dump()} vs {nested.model_dump()}); give them once, under 'method'.",
            param="method",
            code="conflicting_hyperparameters",
        )
    return top or nested or Hyperparameters()


def _check_job_size(
    hyperparameters: Hyperparameters, training_file: File, *, max_epoch_tokens: int
) -> None:
    """400 when ``n_epochs`` passes over the training file would train on more tokens than one
    job may: the GPU time a job takes is bounded at creation, not found out at its end.

    A file's tokens are estimated as its bytes: each token of a byte-level BPE tokenizer covers
    at least one byte of text, and the JSON around the text outweighs the chat template's
    markers (contracts.chat.example_token_bound), so the estimate errs high, about four times
    the real count for English."""
    n_epochs = AUTO_N_EPOCHS if hyperparameters.n_epochs == "auto" else hyperparameters.n_epochs
    tokens = n_epochs * training_file.bytes
    if tokens > max_epoch_tokens:
        raise InvalidRequest(
            f"This job is too large: hyperparameters.n_epochs ({n_epochs}) x the tokens of "
            f"training_file {training_file.id} (about {training_file.bytes}, one per byte) is "
            f"{tokens}, over the limit of {max_epoch_tokens} tokens per job. Use fewer epochs "
            "or a smaller training file.",
            param="hyperparameters.n_epochs",
            code="job_too_large",
        )


def _check_active_jobs(session: Session, auth: AuthContext, *, max_active: int) -> None:
    """429 once the tenant has ``max_active`` unfinished jobs: one tenant must not fill the GPU
    queue for everyone. The tenant's row stays locked until the new job is committed, so two
    requests at once cannot both take the last place."""
    auth_repository.lock_tenant(session, auth.tenant.id)
    active = repository.count_active(session, auth.tenant.id)
    if active >= max_active:
        raise QuotaExceeded(
            f"Your organization has {active} fine-tuning jobs validating, queued or running, "
            f"the most allowed at once ({max_active}). Wait for one to finish, or cancel one, "
            "then create the job again.",
            code="active_jobs_quota_exceeded",
        )


def create(
    session: Session,
    *,
    auth: AuthContext,
    job_create: JobCreate,
    queue: TaskQueue,
    max_active_jobs: int,
    max_epoch_tokens: int | None = None,
    storage_quota_bytes: int | None = None,
) -> FineTuningJob:
    """Create a job and enqueue it once the request's transaction has committed.

    The API passes every limit from its settings; a limit left ``None`` is not checked (the
    operator's own tools and tests that build jobs directly)."""
    hyperparameters = _hyperparameters(job_create)
    _check_model(session, job_create.model)
    _check_metadata(job_create.metadata)
    training_file = _check_file(session, auth, job_create.training_file, param="training_file")
    if job_create.validation_file is not None:
        _check_file(session, auth, job_create.validation_file, param="validation_file")
    if max_epoch_tokens is not None:
        _check_job_size(hyperparameters, training_file, max_epoch_tokens=max_epoch_tokens)
    _check_active_jobs(session, auth, max_active=max_active_jobs)
    if storage_quota_bytes is not None:
        quota.check_new_job(session, auth.tenant.id, quota=storage_quota_bytes)
    job = FineTuningJob(
        tenant_id=auth.tenant.id,
        model=job_create.model,
        training_file=job_create.training_file,
        validation_file=job_create.validation_file,
        hyperparameters=hyperparameters.model_dump(),
        safety_settings=job_create.safety.model_dump(),
        seed=job_create.seed if job_create.seed is not None else secrets.randbelow(2**31),
        suffix=job_create.suffix,
        user_metadata=job_create.metadata,
        status=JobStatus.VALIDATING_FILES,
    )
    session.add(job)
    session.flush()
    add_event(session, job, f"Created fine-tuning job: {job.id}")
    audit.record(
        session,
        action="job.created",
        subject_type="fine_tuning_job",
        subject_id=job.id,
        actor=auth.actor,
        tenant_id=job.tenant_id,
        payload=job_create.model_dump(mode="json") | {"hyperparameters": job.hyperparameters},
    )
    # The files were checked above (they exist, are the tenant's, and were validated at upload).
    change_state(session, job, JobStatus.QUEUED, actor=auth.actor, message="Job queued")
    job_id = job.id
    after_commit(session, lambda: queue.enqueue_job(job_id))
    return job


def get(
    session: Session, *, auth: AuthContext, job_id: str, for_update: bool = False
) -> FineTuningJob:
    job = repository.get_for_tenant(session, auth.tenant.id, job_id, for_update=for_update)
    if job is None:
        raise NotFound(f"Could not find fine-tuning job: {job_id}.", param="fine_tuning_job_id")
    return job


def list_jobs(
    session: Session,
    *,
    auth: AuthContext,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None = None,
) -> tuple[Sequence[FineTuningJob], bool]:
    """A page of the tenant's jobs, newest first, and whether more follow; with ``metadata``,
    only the jobs whose metadata has every one of its pairs."""
    _check_metadata(metadata)
    cursor = get(session, auth=auth, job_id=after) if after is not None else None
    jobs = repository.list_for_tenant(
        session, auth.tenant.id, after=cursor, limit=limit + 1, metadata=metadata or {}
    )
    return jobs[:limit], len(jobs) > limit


def cancel(session: Session, *, auth: AuthContext, job_id: str) -> FineTuningJob:
    """Cancel now if no worker has started the job; otherwise ask its worker to stop.

    A job that already finished raises ``IllegalTransition`` (409).
    """
    job = get(session, auth=auth, job_id=job_id, for_update=True)
    if job.status != JobStatus.RUNNING:
        change_state(session, job, JobStatus.CANCELLED, actor=auth.actor, message="Job cancelled")
        return job
    if not job.cancel_requested:
        job.cancel_requested = True
        add_event(session, job, "Cancellation requested; the worker stops at the next checkpoint")
        audit.record(
            session,
            action="job.cancel_requested",
            subject_type="fine_tuning_job",
            subject_id=job.id,
            actor=auth.actor,
            tenant_id=job.tenant_id,
            payload={"stage": job.stage},
        )
    return job


def list_events(
    session: Session, *, auth: AuthContext, job_id: str, after: str | None, limit: int
) -> tuple[Sequence[JobEvent], bool]:
    """A page of the job's events, newest first; ``after`` is the last event id already seen."""
    job = get(session, auth=auth, job_id=job_id)
    before_seq = None
    if after is not None:
        cursor = repository.get_event(session, job.id, after)
        if cursor is None:
            raise NotFound(f"Could not find event {after} of job {job_id}.", param="after")
        before_seq = cursor.seq
    events = repository.list_events(session, job.id, before_seq=before_seq, limit=limit + 1)
    return events[:limit], len(events) > limit


def list_checkpoints(
    session: Session, *, auth: AuthContext, job_id: str, after: str | None, limit: int
) -> tuple[Sequence[ModelVersion], bool]:
    """A page of the job's end-of-epoch checkpoints, latest step first."""
    job = get(session, auth=auth, job_id=job_id)
    checkpoints = sorted(
        models_repository.list_versions_for_tenant(
            session, auth.tenant.id, job_id=job.id, kind=ModelKind.CHECKPOINT
        ),
        key=lambda version: version.step or 0,
        reverse=True,
    )
    if after is not None:
        ids = [checkpoint.id for checkpoint in checkpoints]
        if after not in ids:
            raise NotFound(f"Could not find checkpoint {after} of job {job_id}.", param="after")
        checkpoints = checkpoints[ids.index(after) + 1 :]
    return checkpoints[:limit], len(checkpoints) > limit
