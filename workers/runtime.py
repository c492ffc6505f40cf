"""A job as its worker sees it: claim it, move it through its stages, log, finish.

Every method is one short transaction that re-reads and locks the job row, so the API (cancel)
and the worker never overwrite each other, and no transaction stays open while a stage works.
The pipeline (``workers.job_pipeline``) gets a ``JobRun`` and calls ``enter_stage``, ``event``,
``heartbeat``, and finally records the outcome itself or returns (``execute_job`` in
``workers.execution`` then records success) or raises (``JobFailure`` for a reason the customer
reads, anything else as internal).

Exactly once, through the database (docs/reliability.md#exactly-once-execution): the lease is
taken with the row locked, every write checks that it is still ours, and a write while the
database is away is retried with backoff. A database that stays away longer than
``settings.db_retry_s`` abandons the attempt (``AttemptAbandoned``) instead of failing the job:
the job keeps its lease and is resumed, by this worker's retry or by whoever finds the lease
expired.

While the pipeline runs, a heartbeat thread (``LeaseKeeper``) renews the lease every
``settings.job_heartbeat_s`` whatever the pipeline is doing, and records a cancellation as soon as
it is requested; a pipeline that does not notice it by its next event within one more interval
is interrupted, so a cancelled job frees its worker within about two intervals in every stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.db import (
    SessionFactory,
    discard_after_commit,
    get_session_factory,
    is_database_unavailable,
    run_after_commit,
    session_scope,
)
from app.core.redact import relative_paths, relative_paths_in
from app.core.settings import Settings, get_settings
from app.db.base import utcnow
from app.db.models import FineTuningJob, JobEvent
from app.jobs import repository, service
from app.jobs.states import TERMINAL, JobStage, JobStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

# Backoff between retries of a database write while the database is away.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 4.0


class JobStopped(Exception):
    """The job must not continue on this worker; the pipeline unwinds."""


class JobCancelled(JobStopped):
    """The customer cancelled; the job is now ``cancelled``."""


class LeaseLost(JobStopped):
    """Another worker took the job over (our lease expired) or it finished elsewhere."""


class AttemptAbandoned(Exception):
    """The database stayed away past ``db_retry_s``: this attempt stops without recording
    anything; the job keeps its lease and must be run again (``workers.tasks`` retries it)."""


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
    # Set by ``claim``: an earlier attempt ran (and died); events it already logged are not
    # logged again (``event``).
    resumed: bool = False
    # The pipeline's thread and the heartbeat thread take turns on the database (and on the one
    # connection a test's session factory may share).
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

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
        return self._retrying("claim", self._claim)

    def _claim(self) -> bool:
        with self._lock, session_scope(self.session_factory) as session:
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
            self.resumed = job.attempt_count > 1
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
        evaluations or audit records together with the job's state. Its start (connecting,
        locking the row) is retried while the database is away; the caller's block runs once.
        """
        with self._transaction(retry_begin=True) as locked:
            yield locked

    def heartbeat(self) -> None:
        """Renew the lease and stop (``JobCancelled``) if the customer cancelled.
        Call it every few seconds to minutes in long loops."""

        def renew() -> None:
            with self._transaction() as (session, job):
                if job.cancel_requested:
                    self._cancel(session, job)

        self._retrying("heartbeat", renew)
        self._raise_if_cancelled()

    def enter_stage(
        self, stage: JobStage, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Move to ``stage`` (a checkpoint: a pending cancellation takes effect here)."""

        def enter() -> None:
            with self._transaction() as (session, job):
                if job.cancel_requested:
                    self._cancel(session, job)
                elif job.stage != stage:  # already there: a retry whose first commit went through
                    service.change_state(
                        session,
                        job,
                        JobStatus.RUNNING,
                        stage,
                        actor=self.actor,
                        message=message,
                        data=data,
                    )

        self._retrying("enter_stage", enter)
        self._raise_if_cancelled()

    def event(
        self,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        """Add a line to the job's event log (``type="metrics"`` for numbers with ``data``).

        In a resumed attempt, and when retrying a write whose commit may have gone through, a
        line the log already has (same type and message) is not added again: a resumed run
        repeats the work the dead attempt did after its last checkpoint, not its log.
        """
        retried = False
        # Tenants read the log: a server path (a checkpoint that did not verify) is named
        # relative to the data directory.
        message = relative_paths(message, self.settings.data_dir)
        data = relative_paths_in(data, self.settings.data_dir)

        def append() -> None:
            nonlocal retried
            once, retried = self.resumed or retried, True
            with self._transaction() as (session, job):
                if not (once and _logged(session, job.id, type, message)):
                    service.add_event(session, job, message, level=level, type=type, data=data)

        self._retrying("event", append)

    def succeed(
        self, *, fine_tuned_model: str | None = None, trained_tokens: int | None = None
    ) -> None:
        def finish() -> None:
            with self._transaction() as (session, job):
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

        self._retrying("succeed", finish)

    def fail(self, *, code: str, message: str) -> None:
        """Record a failure (idempotent: does nothing if the job is no longer ours)."""
        message = relative_paths(message, self.settings.data_dir)  # tenants read it, see event

        def record() -> None:
            with self._transaction() as (session, job):
                job.error = {"code": code, "message": message, "param": None}
                service.change_state(
                    session,
                    job,
                    JobStatus.FAILED,
                    actor=self.actor,
                    level="error",
                    message=f"Job failed: {message}",
                )

        try:
            self._retrying("fail", record)
        except LeaseLost:
            log.warning("job %s failed after it stopped being ours: %s", self.job_id, message)

    @contextmanager
    def _transaction(self, *, retry_begin: bool = False) -> Iterator[tuple[Session, FineTuningJob]]:
        # session_scope's commit/rollback, around a start that may be retried on its own.
        with self._lock:
            session, job = self._retrying("begin", self._begin) if retry_begin else self._begin()
            try:
                if job is None or job.status in TERMINAL or job.lease_owner != self.owner:
                    raise LeaseLost(f"job {self.job_id} is no longer held by {self.owner}")
                job.lease_expires_at = utcnow() + timedelta(seconds=self.settings.job_lease_s)
                self.job = job
                yield session, job
                session.commit()
            except BaseException:
                session.rollback()
                discard_after_commit(session)
                raise
            finally:
                session.close()
            run_after_commit(session)

    def renew(self) -> type[JobStopped] | None:
        """One heartbeat for ``LeaseKeeper``: renew the lease and record a requested
        cancellation; what should stop the pipeline (``JobCancelled``, ``LeaseLost``), if any."""
        with self._lock, session_scope(self.session_factory) as session:
            job = repository.get(session, self.job_id, for_update=True)
            if job is None:
                return LeaseLost
            if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                return None  # the pipeline recorded its outcome and is about to return
            if job.status == JobStatus.CANCELLED:
                return JobCancelled
            if job.lease_owner != self.owner:
                return LeaseLost
            job.lease_expires_at = utcnow() + timedelta(seconds=self.settings.job_lease_s)
            self.job = job
            if not job.cancel_requested:
                return None
            self._cancel(session, job)
            return JobCancelled

    def _begin(self) -> tuple[Session, FineTuningJob | None]:
        session = self.session_factory()
        try:
            return session, repository.get(session, self.job_id, for_update=True)
        except BaseException:
            session.close()
            raise

    def _retrying(self, what: str, operation: Callable[[], T]) -> T:
        """``operation()``, run again with exponential backoff while the database is away, for
        up to ``settings.db_retry_s``; then (or for any other error) its exception."""
        deadline = time.monotonic() + self.settings.db_retry_s
        delay = RETRY_FIRST_S
        while True:
            try:
                return operation()
            except Exception as error:
                if not is_database_unavailable(error) or time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "job %s: database unavailable during %s, retrying in %.2fs: %s",
                    self.job_id,
                    what,
                    delay,
                    str(error).splitlines()[0] if str(error) else type(error).__name__,
                )
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

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


def _logged(session: Session, job_id: str, type: str, message: str) -> bool:
    statement = select(JobEvent.id).where(
        JobEvent.job_id == job_id, JobEvent.type == type, JobEvent.message == message
    )
    return session.scalars(statement.limit(1)).first() is not None
