"""Celery tasks. Messages carry only a job id; the task re-reads everything from the database.

``run_job`` is idempotent (see ``runtime.JobRun.claim``), which is what makes ``acks_late`` and
broker redelivery safe.
"""

from __future__ import annotations

import os

from celery import Task

from app.core.queue import RUN_JOB_TASK
from workers.celery_app import celery_app
from workers.runtime import execute_job


@celery_app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: str) -> None:
    """Run one fine-tuning job to a terminal state."""
    from workers.job_pipeline import run_job_pipeline  # torch loads in the worker, on first use

    owner = self.request.hostname or f"pid-{os.getpid()}"
    execute_job(job_id, pipeline=run_job_pipeline, owner=owner)
