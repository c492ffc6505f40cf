"""Celery tasks. Messages carry only a job id; the task re-reads everything from the database.

``run_job`` is idempotent (see ``runtime.JobRun.claim``), which is what makes ``acks_late`` and
broker redelivery safe.
"""

from __future__ import annotations

import os

from celery import Task

from app.core.queue import RUN_JOB_TASK
from workers.celery_app import celery_app
from workers.execution import execute_job
from workers.runtime import AttemptAbandoned, JobRun

# After the database stayed away past db_retry_s: run the job again this much later. The retry
# is a new message; whichever worker takes it resumes the job (ours at once, since we hold its
# lease; another once the lease has run out).
ABANDONED_RETRY_S = 10


@celery_app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: str) -> None:
    """Run one fine-tuning job to a terminal state."""
    owner = self.request.hostname or f"pid-{os.getpid()}"
    try:
        execute_job(job_id, pipeline=_pipeline, owner=owner)
    except AttemptAbandoned as abandoned:
        raise self.retry(exc=abandoned, countdown=ABANDONED_RETRY_S, max_retries=None) from None


def _pipeline(run: JobRun) -> None:
    # torch loads here, once the job is claimed: a duplicate delivery costs one query, not an
    # import of torch.
    from workers.job_pipeline import run_job_pipeline

    run_job_pipeline(run)
