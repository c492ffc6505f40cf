from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from app.db.models import FineTuningJob, JobEvent
from app.jobs.states import JobStatus


def get(session: Session, job_id: str, *, for_update: bool = False) -> FineTuningJob | None:
    """A job by id, any tenant (workers). ``for_update`` locks the row (PostgreSQL)."""
    statement = select(FineTuningJob).where(FineTuningJob.id == job_id)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).first()


def get_for_tenant(
    session: Session, tenant_id: str, job_id: str, *, for_update: bool = False
) -> FineTuningJob | None:
    statement = select(FineTuningJob).where(
        FineTuningJob.id == job_id, FineTuningJob.tenant_id == tenant_id
    )
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).first()


def list_for_tenant(
    session: Session,
    tenant_id: str,
    *,
    after: FineTuningJob | None,
    limit: int,
    metadata: dict[str, str] | None = None,
) -> Sequence[FineTuningJob]:
    """Newest first; ``after`` is the last job of the previous page (keyset pagination);
    ``metadata``: only jobs whose metadata has each of these pairs."""
    statement = select(FineTuningJob).where(FineTuningJob.tenant_id == tenant_id)
    dialect = session.get_bind().dialect.name
    for key, value in (metadata or {}).items():
        statement = statement.where(_metadata_has(dialect, key, value))
    if after is not None:
        statement = statement.where(
            or_(
                FineTuningJob.created_at < after.created_at,
                and_(FineTuningJob.created_at == after.created_at, FineTuningJob.id < after.id),
            )
        )
    statement = statement.order_by(FineTuningJob.created_at.desc(), FineTuningJob.id.desc())
    return session.scalars(statement.limit(limit)).all()


def _metadata_has(dialect: str, key: str, value: str) -> ColumnElement[bool]:
    """The job's metadata maps ``key`` to ``value``. SQLite's JSON paths cannot name every key
    (one with a quote or a non-ASCII letter matches nothing), so there the pairs of
    ``json_each`` are compared; PostgreSQL's ``->>`` takes the key as a bound value."""
    if dialect == "sqlite":
        pairs = func.json_each(FineTuningJob.user_metadata).table_valued("key", "value")
        return exists(
            select(1).select_from(pairs).where(pairs.c.key == key, pairs.c.value == value)
        )
    return FineTuningJob.user_metadata[key].as_string() == value


def count_active(session: Session, tenant_id: str) -> int:
    """The tenant's jobs that are not finished: validating files, queued or running."""
    active = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING)
    statement = select(func.count()).where(
        FineTuningJob.tenant_id == tenant_id, FineTuningJob.status.in_(active)
    )
    return session.scalar(statement) or 0


def next_event_seq(session: Session, job_id: str) -> int:
    """The next event number of a job. The caller holds the job's row lock (see service)."""
    current = session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
    return (current or 0) + 1


def last_logged_step(session: Session, job_id: str) -> int:
    """The highest fine-tuning step the job's metrics events report (0 if none): the step
    events and the end-of-epoch events carry ``data.step``; the patch's epochs do not."""
    step = JobEvent.data["step"].as_integer()
    statement = select(func.max(step)).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
    return session.scalar(statement) or 0


def get_event(session: Session, job_id: str, event_id: str) -> JobEvent | None:
    statement = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id == event_id)
    return session.scalars(statement).first()


def list_events(
    session: Session, job_id: str, *, before_seq: int | None, limit: int
) -> Sequence[JobEvent]:
    """Newest first, like OpenAI's events list; ``before_seq`` continues a previous page."""
    statement = select(JobEvent).where(JobEvent.job_id == job_id)
    if before_seq is not None:
        statement = statement.where(JobEvent.seq < before_seq)
    return session.scalars(statement.order_by(JobEvent.seq.desc()).limit(limit)).all()


def list_recoverable_ids(session: Session, *, now: datetime, restarted_owner: str) -> Sequence[str]:
    """Jobs that should be in the queue but might not be: queued ones (their message may have
    been lost between commit and enqueue), running ones whose worker's lease ran out, and running
    ones leased to ``restarted_owner``, a worker that just started and so no longer runs them."""
    lease_dead = or_(
        FineTuningJob.lease_expires_at.is_(None),
        FineTuningJob.lease_expires_at < now,
        FineTuningJob.lease_owner == restarted_owner,
    )
    statement = select(FineTuningJob.id).where(
        or_(
            FineTuningJob.status == JobStatus.QUEUED,
            and_(FineTuningJob.status == JobStatus.RUNNING, lease_dead),
        )
    )
    return session.scalars(statement.order_by(FineTuningJob.created_at)).all()
