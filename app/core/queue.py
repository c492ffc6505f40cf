"""The Celery application as both sides see it, and the API's handle for enqueueing work.

The API only *sends* tasks by name, so it never imports ``workers`` (and with it, torch). Messages
carry nothing but a job id: the database is the source of truth and the task re-reads the row.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from celery import Celery
from kombu import Connection

from app.core.settings import Settings

RUN_JOB_TASK = "safepatch.run_job"

log = logging.getLogger(__name__)


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
    """Raise if the broker can't be reached, on a connection of its own (one-off checks)."""
    with _connect(settings, timeout_s) as connection:
        _probe(settings, connection, timeout_s)


class BrokerUnavailable(ConnectionError):
    """The broker's last check failed (the detail was logged when it did)."""


class BrokerCheck:
    """``/readyz``'s broker check: one connection kept for the process, and each result reused
    for ``cache_s``, so a probe every second (or a flood of them) neither opens a connection per
    call nor waits on the broker each time."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()  # one check at a time: a kombu connection is not shared
        self._connection: Connection | None = None
        self._checked_at: float | None = None
        self._failed = False

    def __call__(self) -> None:
        with self._lock:
            now = self._clock()
            fresh = (
                self._checked_at is not None
                and now - self._checked_at < self._settings.broker_check_cache_s
            )
            if not fresh:
                self._failed = not self._check()
                self._checked_at = now
            if self._failed:
                raise BrokerUnavailable("the broker did not answer its last check")

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _check(self) -> bool:
        try:
            if self._connection is None:
                self._connection = _connect(self._settings, self._timeout_s)
            _probe(self._settings, self._connection, self._timeout_s)
        except Exception:
            # The detail goes to the log, never to an unauthenticated caller of /readyz.
            log.warning("broker check failed", exc_info=True)
            self._drop()  # a broken connection is not reused: the next check makes a new one
            return False
        return True

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:
                log.debug("closing the broker check's connection failed", exc_info=True)
            self._connection = None


def _connect(settings: Settings, timeout_s: float) -> Connection:
    return Connection(
        settings.effective_broker_url,
        transport_options=settings.broker_transport_options,
        connect_timeout=timeout_s,
    )


def _probe(settings: Settings, connection: Connection, timeout_s: float) -> None:
    options = settings.broker_transport_options
    for key in ("data_folder_in", "control_folder"):  # filesystem broker: spool must be usable
        if key in options and not os.access(options[key], os.W_OK):
            raise OSError(f"broker folder {options[key]} is missing or not writable")
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
