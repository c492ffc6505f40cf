"""Running one job on this worker: claim it, keep its lease with a heartbeat thread while the
pipeline works, and record how it ended."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

from app.core.db import SessionFactory, get_session_factory, is_database_unavailable
from app.core.errors import log_internal_error
from app.core.settings import Settings, get_settings
from app.jobs.states import JobStatus
from workers.runtime import (
    AttemptAbandoned,
    JobCancelled,
    JobFailure,
    JobRun,
    JobStopped,
)

log = logging.getLogger(__name__)


class LeaseKeeper:
    """The heartbeat thread around a running pipeline (``with LeaseKeeper(run, ...):``).

    Every ``interval_s`` it renews the lease (``JobRun.renew``), so a stage that reports nothing
    for a while (ranking patch candidates, a probe, loading a large model) keeps its job. When it
    records a cancellation it gives the pipeline ``interval_s`` to stop at its next event, then
    raises ``JobCancelled`` in the pipeline's thread; a lease taken over by another worker stops
    the pipeline at once (``LeaseLost``), before it writes anything more. The exception arrives
    between two Python bytecodes of the pipeline, so a single long native call (one CUDA
    kernel, one file write) finishes first.
    """

    def __init__(self, run: JobRun, interval_s: float) -> None:
        self.run = run
        self.interval_s = interval_s
        self._target = threading.get_ident()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._done = False
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{run.job_id}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:  # no interruption once the pipeline has returned
            self._done = True
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                stop = self.run.renew()
            except Exception as error:  # the database is away: the pipeline's writes retry
                log.warning("job %s: heartbeat failed: %s", self.run.job_id, error)
                continue
            if stop is None:
                continue
            if stop is JobCancelled and self._stopped.wait(self.interval_s):
                return  # the pipeline stopped by itself at its next event
            self._interrupt(stop)
            return

    def _interrupt(self, stop: type[JobStopped]) -> None:
        with self._lock:
            if self._done:
                return
            log.info("job %s: interrupting the pipeline: %s", self.run.job_id, stop.__name__)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._target), ctypes.py_object(stop)
            )


Pipeline = Callable[[JobRun], None]


def execute_job(
    job_id: str,
    *,
    pipeline: Pipeline,
    owner: str,
    settings: Settings | None = None,
    session_factory: SessionFactory | None = None,
) -> None:
    """Claim ``job_id`` and run ``pipeline`` on it; safe to call again for the same job.

    Raises ``AttemptAbandoned`` when the database stayed away too long to claim or to record:
    nothing was recorded for this attempt, and the job must be run again.
    """
    run = JobRun(
        job_id,
        owner,
        settings=settings or get_settings(),
        session_factory=session_factory or get_session_factory(),
    )
    try:
        if not run.claim():
            return
    except Exception as error:
        if is_database_unavailable(error):
            raise AttemptAbandoned(f"job {job_id}: database unavailable at claim") from error
        raise
    try:
        with LeaseKeeper(run, run.settings.job_heartbeat_s):
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
        if is_database_unavailable(exc):
            # Not the job's fault: keep the lease and the checkpoints, and run it again.
            log.error("job %s: database unavailable, abandoning this attempt: %s", job_id, exc)
            raise AttemptAbandoned(f"job {job_id}: database unavailable") from exc
        # The tenant reads a reference; the exception (paths, hosts, SQL) stays in this log.
        reference = log_internal_error(log, f"job {job_id} failed", exc)
        run.fail(code="internal_error", message=f"internal error; reference {reference}")
