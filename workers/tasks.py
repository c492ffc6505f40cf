"""Celery tasks. Messages carry only a job id; the task re-reads everything from the database.

``run_job`` is idempotent (see ``runtime.JobRun.claim``), which is what makes ``acks_late`` and
broker redelivery safe.
"""

from __future__ import annotations

import os
import time

from celery import Task

from app.core.queue import RUN_JOB_TASK
from app.jobs.states import JobStage
from workers.celery_app import celery_app
from workers.runtime import JobRun, execute_job

PLACEHOLDER_STAGES = (
    JobStage.FINE_TUNING,
    JobStage.EVALUATING,
    JobStage.PATCHING,
    JobStage.VERIFYING,
)


def placeholder_pipeline(run: JobRun) -> None:
    """PLACEHOLDER until the real pipeline lands: walks the stages, sleeping in each.

    Replace this function (same signature) with the fine-tune -> evaluate -> patch -> verify
    pipeline; ``execute_job`` already handles claiming, cancellation, failure and success.
    """
    current = run.stage
    assert current is not None
    for stage in PLACEHOLDER_STAGES[PLACEHOLDER_STAGES.index(current) :]:
        if stage != run.stage:
            run.enter_stage(stage, f"Stage {stage} started (placeholder: no work is done)")
        time.sleep(run.settings.placeholder_stage_s)


@celery_app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: str) -> None:
    """Run one fine-tuning job to a terminal state."""
    owner = self.request.hostname or f"pid-{os.getpid()}"
    execute_job(job_id, pipeline=placeholder_pipeline, owner=owner)
