"""A job as its worker sees it: claim it, move it through its stages, log, finish.

Every method is one short transaction that re-reads and locks the job row, so the API (cancel)
and the worker never overwrite each other, and no transaction stays open while a stage works.
The pipeline (``workers.job_pipeline``) gets a ``JobRun`` and calls ``enter_stage``, ``event``,
``heartbeat``, and finally records the outcome itself or returns (``execute_job`` then records
success) or raises (``JobFailure`` for a reason the customer reads, anything else as internal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.db import SessionFactory, get_session_factory, session_scope
from app.core.settings import Settings, get_settings
from app.db.base import utcnow
from app.db.models import FineTuningJob
from app.jobs import repository, service
from app.jobs.states import TERMINAL, JobStage, JobStatus

log = logging.getLogger(__name__)


class JobStopped(Exception):
    """The job must not continue on this worker; the pipeline unwinds."""


class JobCancelled(JobStopped):
    """The customer cancelled; the job is now ``cancelled``."""


class LeaseLost(JobStopped):
    """Another worker took the job over (our lease expired) or it finished elsewhere."""


class JobFailure(Exception):
    """The job cannot succeed, for a reason the customer should read (``job.error``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class JobRun:
    """A job claimed by one worker (``owner``), with short transactions for every change."""

    job_id: str
    owner: str
    settings: Settings = field(default_factory=get_settings)
    session_factory: SessionFactory = field(default_factory=get_session_factory)
    # A read-only snapshot of the row, refreshed by every transaction below.
    job: FineTuningJob | None = None

    @property
    def actor(self) -> str:
        return f"worker:{self.owner}"

    @property
    def stage(self) -> JobStage | None:
        assert self.job is not None
        return JobStage(self.job.stage) if self.job.stage else None

    def claim(self) -> bool:
        """Take the job's lease and start it; False if there is nothing for this worker to do
        (finished, cancelled, or running under another worker's live lease)."""
        with session_scope(self.session_factory) as session:
            job = repository.get(session, self.job_id, for_update=True)
            if job is None:
                log.warning("job %s does not exist; dropping its message", self.job_id)
                return False
            self.job = job
            if job.status in TERMINAL:
                log.info("job %s is already %s; nothing to do", job.id, job.status)
                return False
            if job.status == JobStatus.VALIDATING_FILES:
                log.warning("job %s is still validating files; not runnable", job.id)
                return False
            now = utcnow()
            lease_live = job.lease_expires_at is not None and job.lease_expires_at > now
            # A worker runs one job at a time, so if our own name holds the lease, that attempt
            # is gone (its process died and the broker gave the message back).
            if job.status == JobStatus.RUNNING and lease_live and job.lease_owner != self.owner:
                log.info("job %s is running on %s; skipping duplicate", job.id, job.lease_owner)
                return False
            if job.cancel_requested:
                self._cancel(session, job)
                return False
            job.lease_owner = self.owner
            job.lease_expires_at = now + timedelta(seconds=self.settings.job_lease_s)
            job.attempt_count += 1
            if job.status == JobStatus.QUEUED:
                service.change_state(
                    session,
                    job,
                    JobStatus.RUNNING,
                    JobStage.FINE_TUNING,
                    actor=self.actor,
                    message=f"Fine-tuning started on {self.owner}",
                    data={"attempt": job.attempt_count},
                )
            else:
                service.add_event(
                    session,
                    job,
                    f"Resumed at stage {job.stage} on {self.owner} (attempt {job.attempt_count})",
                    level="warn",
                )
            return True

    @contextmanager
    def transaction(self) -> Iterator[tuple[Session, FineTuningJob]]:
        """A transaction with the job row locked and our lease verified and renewed.

        Raises ``LeaseLost`` if the job is no longer ours. Use it to write model versions,
        evaluations or audit records together with the job's state.
        """
        with session_scope(self.session_factory) as session:
            job = repository.get(session, self.job_id, for_update=True)
            if job is None or job.status in TERMINAL or job.lease_owner != self.owner:
                raise LeaseLost(f"job {self.job_id} is no longer held by {self.owner}")
            job.lease_expires_at = utcnow() + timedelta(seconds=self.settings.job_lease_s)
            self.job = job
            yield session, job

    def heartbeat(self) -> None:
        """Renew the lease and stop (``JobCancelled``) if the customer cancelled.
        Call it every few seconds to minutes in long loops."""
        with self.transaction() as (session, job):
            if job.cancel_requested:
                self._cancel(session, job)
        self._raise_if_cancelled()

    def enter_stage(
        self, stage: JobStage, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Move to ``stage`` (a checkpoint: a pending cancellation takes effect here)."""
        with self.transaction() as (session, job):
            if job.cancel_requested:
                self._cancel(session, job)
            else:
                service.change_state(
                    session,
                    job,
                    JobStatus.RUNNING,
                    stage,
                    actor=self.actor,
                    message=message,
                    data=data,
                )
        self._raise_if_cancelled()

    def event(
        self,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        """Add a line to the job's event log (``type="metrics"`` for numbers with ``data``)."""
        with self.transaction() as (session, job):
            service.add_event(session, job, message, level=level, type=type, data=data)

    def succeed(
        self, *, fine_tuned_model: str | None = None, trained_tokens: int | None = None
    ) -> None:
        with self.transaction() as (session, job):
            job.fine_tuned_model = fine_tuned_model
            job.trained_tokens = trained_tokens
            service.change_state(
                session,
                job,
                JobStatus.SUCCEEDED,
                actor=self.actor,
                message="Job succeeded",
                data={"fine_tuned_model": fine_tuned_model},
            )

    def fail(self, *, code: str, message: str) -> None:
        """Record a failure (idempotent: does nothing if the job is no longer ours)."""
        try:
            with self.transaction() as (session, job):
                job.error = {"code": code, "message": message, "param": None}
                service.change_state(
                    session,
                    job,
                    JobStatus.FAILED,
                    actor=self.actor,
                    level="error",
                    message=f"Job failed: {message}",
                )
        except LeaseLost:
            log.warning("job %s failed after it stopped being ours: %s", self.job_id, message)

    def audit(self, session: Session, action: str, payload: dict[str, Any]) -> None:
        """An audit record about this job, in ``session`` (from ``transaction()``)."""
        audit.record(
            session,
            action=action,
            subject_type="fine_tuning_job",
            subject_id=self.job_id,
            actor=self.actor,
            tenant_id=self.job.tenant_id if self.job else None,
            payload=payload,
        )

    def _cancel(self, session: Session, job: FineTuningJob) -> None:
        where = f" (stopped at stage {job.stage})" if job.stage else ""
        service.change_state(
            session, job, JobStatus.CANCELLED, actor=self.actor, message=f"Job cancelled{where}"
        )

    def _raise_if_cancelled(self) -> None:
        if self.job is not None and self.job.status == JobStatus.CANCELLED:
            raise JobCancelled(self.job_id)


Pipeline = Callable[[JobRun], None]


def execute_job(
    job_id: str,
    *,
    pipeline: Pipeline,
    owner: str,
    settings: Settings | None = None,
    session_factory: SessionFactory | None = None,
) -> None:
    """Claim ``job_id`` and run ``pipeline`` on it; safe to call again for the same job."""
    run = JobRun(
        job_id,
        owner,
        settings=settings or get_settings(),
        session_factory=session_factory or get_session_factory(),
    )
    if not run.claim():
        return
    try:
        pipeline(run)
        assert run.job is not None
        if run.job.status == JobStatus.RUNNING:  # unless the pipeline finished the job itself
            run.succeed(
                fine_tuned_model=run.job.fine_tuned_model, trained_tokens=run.job.trained_tokens
            )
    except JobStopped as stopped:
        log.info("job %s stopped: %s", job_id, type(stopped).__name__)
    except JobFailure as failure:
        log.warning("job %s failed: %s", job_id, failure.message)
        run.fail(code=failure.code, message=failure.message)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        run.fail(code="internal_error", message=f"{type(exc).__name__}: {exc}")
