"""Finding jobs whose worker is gone, so that another worker resumes them.

A worker that dies mid-job (SIGKILL, a lost host) leaves its job ``running`` under a lease that
nobody renews, and its Celery message unacknowledged. Redis gives such a message back only after
the visibility timeout (hours: it must outlast the longest job), so waiting for redelivery would
leave the job stalled that long. Instead every idle worker looks, every third of a lease, for
running jobs whose lease has expired and enqueues them again; the worker that takes the message
claims the job (``JobRun.claim``) and resumes it from its last checkpoint.

A busy worker does not look: it could not take the job itself, and an idle one will. Duplicate
messages (two idle workers, or the late redelivery) are harmless: the claim drops them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state as worker_state
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.core import db
from app.core.queue import RUN_JOB_TASK
from app.core.settings import Settings, get_settings
from app.db.base import utcnow
from app.db.models import FineTuningJob
from app.jobs.states import JobStatus

log = logging.getLogger(__name__)


def expired_lease_ids(session: Session, *, now: datetime) -> Sequence[str]:
    """Running jobs whose worker has not renewed the lease in time (dead, or cut off)."""
    statement = select(FineTuningJob.id).where(
        FineTuningJob.status == JobStatus.RUNNING,
        or_(FineTuningJob.lease_expires_at.is_(None), FineTuningJob.lease_expires_at < now),
    )
    return session.scalars(statement.order_by(FineTuningJob.created_at)).all()


def requeue_expired(
    app: Celery, settings: Settings, *, session_factory: db.SessionFactory | None = None
) -> list[str]:
    """Enqueue every running job whose lease has expired; the ids enqueued."""
    with db.session_scope(session_factory) as session:
        job_ids = list(expired_lease_ids(session, now=utcnow()))
    for job_id in job_ids:
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=settings.queue)
    if job_ids:
        log.warning("re-enqueued %d job(s), lease expired: %s", len(job_ids), ", ".join(job_ids))
    return job_ids


def sweep_interval_s(settings: Settings) -> float:
    """A third of the lease: a dead worker's job waits at most ~1.3 leases for a new worker."""
    return max(1.0, settings.job_lease_s / 3)


class LeaseSweep(bootsteps.StartStopStep):
    """A consumer bootstep: while this worker is idle, re-enqueue jobs with expired leases.

    A consumer step, not a thread: it runs on the worker's own timer in the parent process (no
    thread in a process that forks), and is started again after every broker reconnection.
    """

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:
        settings = get_settings()
        self.timer_entry = c.timer.call_repeatedly(
            sweep_interval_s(settings), self.sweep, (c.app, settings), priority=10
        )

    def stop(self, c: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop

    def sweep(self, app: Celery, settings: Settings) -> None:
        if worker_state.active_requests or worker_state.reserved_requests:
            return
        try:
            requeue_expired(app, settings)
        except Exception as error:  # the database or broker is away: try again next time
            log.warning("lease sweep failed: %s: %s", type(error).__name__, error)
