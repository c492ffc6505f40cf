"""The Celery application as both sides see it, and the API's handle for enqueueing work.

The API only *sends* tasks by name, so it never imports ``workers`` (and with it, torch). Messages
carry nothing but a job id: the database is the source of truth and the task re-reads the row.
"""

from __future__ import annotations

import os
from typing import Protocol

from celery import Celery
from kombu import Connection

from app.core.settings import Settings

RUN_JOB_TASK = "safepatch.run_job"


def create_celery(settings: Settings) -> Celery:
    """The Celery app configured for long, idempotent GPU jobs."""
    celery = Celery("safepatch", broker=settings.effective_broker_url)
    celery.conf.update(
        result_backend=settings.result_backend,
        task_ignore_result=settings.result_backend is None,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue,
        task_routes={RUN_JOB_TASK: {"queue": settings.queue}},
        # Ack after the task returns, so a worker that dies mid-job leaves the message to be
        # redelivered; take one message at a time, so a busy GPU doesn't hoard queued jobs.
        task_acks_late=True,
        # A job whose process died (OOM kill, segfault) goes back to the queue, not to "failed".
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # When the broker connection drops mid-job, let the job finish: it needs only the
        # database, and its message is redelivered later and dropped (the job is finished).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options=settings.broker_transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return celery


def check_broker(settings: Settings, timeout_s: float = 2.0) -> None:
    """Raise if the broker can't be reached (used by ``/readyz``)."""
    options = settings.broker_transport_options
    for key in ("data_folder_in", "control_folder"):  # filesystem broker: spool must be usable
        if key in options and not os.access(options[key], os.W_OK):
            raise OSError(f"broker folder {options[key]} is missing or not writable")
    with Connection(
        settings.effective_broker_url,
        transport_options=settings.broker_transport_options,
        connect_timeout=timeout_s,
    ) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0.2, timeout=timeout_s)
        ping = getattr(getattr(connection.default_channel, "client", None), "ping", None)
        if ping is not None:  # Redis connects lazily: make it answer
            ping()


class TaskQueue(Protocol):
    """What the services need from the queue; tests substitute a recording fake."""

    def enqueue_job(self, job_id: str) -> None: ...


class CeleryTaskQueue:
    def __init__(self, celery: Celery, queue: str) -> None:
        self._celery = celery
        self._queue = queue

    def enqueue_job(self, job_id: str) -> None:
        self._celery.send_task(RUN_JOB_TASK, args=[job_id], queue=self._queue)
