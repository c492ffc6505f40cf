"""The workers' Celery app, run by `safepatch worker`.

The same app for Celery's own CLI: `celery -A workers.celery_app:celery_app worker -Q gpu`.

Importing this module must stay cheap and torch-free: the prefork parent imports it, and torch
belongs only in the child that runs a job.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from typing import Any

from celery.signals import worker_process_init, worker_ready

from app.core import db
from app.core.queue import RUN_JOB_TASK, create_celery
from app.core.settings import get_settings
from app.db.base import utcnow
from app.jobs import repository
from workers.audit_anchor import AuditAnchorPublisher
from workers.recovery import LeaseSweep

log = logging.getLogger(__name__)

celery_app = create_celery(get_settings())
celery_app.conf.include = ["workers.tasks"]
# One job per child process: a job's GPU memory (and anything it leaked) is returned to the
# system when its process exits, and the next job starts from a clean CUDA context.
celery_app.conf.worker_max_tasks_per_child = 1
# Idle workers re-enqueue jobs whose worker died (workers/recovery.py).
celery_app.steps["consumer"].add(LeaseSweep)
# Workers publish the audit chain's head outside the database (workers/audit_anchor.py).
celery_app.steps["consumer"].add(AuditAnchorPublisher)


@worker_process_init.connect
def _engine_per_process(**_: Any) -> None:
    """A forked child must not use the pooled connections it inherited from its parent."""
    db.reset_engine()


@worker_ready.connect
def _requeue_orphaned_jobs(sender: Any, **_: Any) -> None:
    """Re-enqueue jobs whose message may be gone: queued jobs (lost between the API's commit and
    its enqueue, or taken by a crashed worker from the filesystem broker) and running jobs whose
    worker is gone. Duplicates are harmless: ``run_job`` is idempotent."""
    with db.session_scope() as session:
        job_ids = repository.list_recoverable_ids(
            session, now=utcnow(), restarted_owner=sender.hostname
        )
    for job_id in job_ids:
        celery_app.send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().queue)
    if job_ids:
        log.info("re-enqueued %d job(s) at startup: %s", len(job_ids), ", ".join(job_ids))


def default_node_name() -> str:
    """A name that is stable across restarts and unique per GPU on a host (one worker per GPU,
    chosen with CUDA_VISIBLE_DEVICES): a restarted worker recognises the jobs it was running."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", devices) if devices else "cpu"
    return f"safepatch-{gpu}@{socket.gethostname()}"


def start_worker(*, node_name: str | None = None, loglevel: str = "INFO") -> None:
    """Run one worker in this process until it is told to stop (SIGTERM: finish the job first)."""
    get_settings().ensure_dirs()
    celery_app.worker_main(
        [
            "worker",
            f"--hostname={node_name or default_node_name()}",
            f"--queues={get_settings().queue}",
            # prefork with one child, not --pool=solo: the parent stays responsive to signals
            # while a job runs, a job that crashes its process (CUDA OOM, segfault) only takes
            # the child down, and each job gets a fresh process (worker_max_tasks_per_child).
            "--pool=prefork",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--loglevel={loglevel}",
            # No worker-to-worker chatter: it only slows startup and we don't use it.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
