"""Exactly-once execution through the database, against the real database (both backends).

Celery delivers at least once (``acks_late``, redelivery after the visibility timeout); the job's
lease makes it run once: a duplicate delivery leaves without a trace, a delivery after the job
finished changes nothing, only the lease's owner records anything, a database outage is waited
out rather than failing the job, and a heartbeat thread keeps (or gives up) the lease whatever
the pipeline is doing. Real worker processes: tests/faults/test_faults.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc, func, select
from sqlalchemy.orm import Session

from app.core.db import SessionFactory
from app.core.queue import create_celery
from app.core.settings import Settings
from app.db.base import utcnow
from app.db.models import AuditRecord, FineTuningJob, JobEvent
from app.jobs.states import JobStage, JobStatus, transition
from tests.factories import Caller, create_job
from tests.waiting import SCHEDULING_MARGIN_S, Stopwatch, wait_until, work_silently
from tests.workers.test_runtime import messages, reload, start_running, walk_stages
from workers import recovery, runtime
from workers.execution import Pipeline, execute_job
from workers.runtime import AttemptAbandoned, JobRun, LeaseLost

SILENT_PHASE_LIMIT_S = 20.0  # a pipeline stuck longer than this in a test is a failure


class Crash(BaseException):
    """A worker process dying: nothing on the way up records it."""


class Outage:
    """A session factory whose database can be switched off: new sessions fail the way
    psycopg fails while PostgreSQL restarts."""

    def __init__(self, factory: SessionFactory) -> None:
        self.factory = factory
        self.down = threading.Event()
        self.refused = 0
        # Refusals left before the database is back (``for_attempts``); None: until cleared.
        self._left: int | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Session:
        with self._lock:
            if self.down.is_set():
                self.refused += 1
                if self._left is not None:
                    self._left -= 1
                    if self._left == 0:
                        self.down.clear()
                raise exc.OperationalError(
                    "BEGIN",
                    {},
                    ConnectionRefusedError("connection refused: is the server running?"),
                )
        return self.factory()

    def for_attempts(self, attempts: int) -> None:
        """Down for the next ``attempts`` connections, then back: an outage the writer must
        retry through, counted in its retries rather than in seconds of a timer thread."""
        with self._lock:
            self._left = attempts
            self.down.set()


@pytest.fixture
def worker_settings(tmp_path: Path) -> Settings:
    """A heartbeat too slow to interfere, unless a test wants it."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        broker_url=None,
        job_lease_s=60,
        job_heartbeat_s=10,
    )


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "RETRY_FIRST_S", 0.02)
    monkeypatch.setattr(runtime, "RETRY_MAX_S", 0.1)


RunJob = Callable[..., None]


@pytest.fixture
def run_job(worker_settings: Settings, session_factory: SessionFactory) -> RunJob:
    def run(
        job_id: str,
        pipeline: Pipeline = walk_stages,
        owner: str = "worker-a",
        settings: Settings | None = None,
        factory: SessionFactory | None = None,
    ) -> None:
        execute_job(
            job_id,
            pipeline=pipeline,
            owner=owner,
            settings=settings or worker_settings,
            session_factory=factory or session_factory,
        )

    return run


def trace(session: Session, job: FineTuningJob) -> tuple[Any, ...]:
    """Everything a run could leave behind: the row's state, its events, the audit trail."""
    session.expire_all()
    row = session.get(FineTuningJob, job.id)
    assert row is not None
    n_events = session.scalar(select(func.count()).where(JobEvent.job_id == job.id))
    n_audit = session.scalar(select(func.count()).select_from(AuditRecord))
    return (
        row.status,
        row.stage,
        row.lease_owner,
        row.lease_expires_at,
        row.attempt_count,
        row.error,
        n_events,
        n_audit,
    )


def take_over(session_factory: SessionFactory, job_id: str, owner: str = "worker-b") -> None:
    """What another worker's claim does once our lease expired."""
    with session_factory() as other:
        row = other.get(FineTuningJob, job_id)
        assert row is not None
        row.lease_owner = owner
        row.lease_expires_at = utcnow() + timedelta(seconds=600)
        row.attempt_count += 1
        other.commit()


def test_a_duplicate_delivery_while_the_lease_is_held_leaves_no_trace(
    session: Session, caller: Caller, run_job: RunJob
) -> None:
    job = create_job(session, caller)
    start_running(session, job, owner="worker-b", expires_in_s=600)
    before = trace(session, job)
    ran: list[str] = []

    run_job(job.id, pipeline=lambda run: ran.append(run.owner), owner="worker-a")

    assert ran == [] and trace(session, job) == before


@pytest.mark.parametrize("ending", ["succeeded", "failed", "cancelled"])
def test_a_delivery_after_the_job_finished_changes_nothing(
    session: Session, caller: Caller, run_job: RunJob, ending: str
) -> None:
    job = create_job(session, caller)

    def finish(run: JobRun) -> None:
        walk_stages(run)
        if ending == "failed":
            raise runtime.JobFailure("test", "it failed")

    if ending == "cancelled":
        transition(job, JobStatus.CANCELLED)
        session.commit()
    else:
        run_job(job.id, pipeline=finish)
    before = trace(session, job)
    assert before[0] == ending

    ran: list[str] = []
    run_job(job.id, pipeline=lambda run: ran.append(run.owner), owner="worker-b")
    run_job(job.id, pipeline=lambda run: ran.append(run.owner), owner="worker-a")

    assert ran == [] and trace(session, job) == before


def _write_event(run: JobRun) -> None:
    run.event("written after the takeover")


def _heartbeat(run: JobRun) -> None:
    run.heartbeat()


def _enter_stage(run: JobRun) -> None:
    run.enter_stage(JobStage.EVALUATING, "written after the takeover")


def _transaction(run: JobRun) -> None:
    with run.transaction() as (session, _):
        run.audit(session, "job.evaluated", {"written": "after the takeover"})


def _return(run: JobRun) -> None:
    """Returning makes execute_job record success."""


def _fail(run: JobRun) -> None:
    raise runtime.JobFailure("test", "failed after the takeover")


@pytest.mark.parametrize(
    "write",
    [_write_event, _heartbeat, _enter_stage, _transaction, _return, _fail],
    ids=["event", "heartbeat", "enter_stage", "transaction", "succeed", "fail"],
)
def test_a_stale_worker_records_nothing_after_its_lease_was_taken_over(
    session: Session,
    caller: Caller,
    run_job: RunJob,
    session_factory: SessionFactory,
    write: Pipeline,
) -> None:
    job = create_job(session, caller)
    after_takeover: list[tuple[Any, ...]] = []
    raised: list[type[BaseException]] = []

    def pipeline(run: JobRun) -> None:
        run.event("written before the takeover")
        take_over(session_factory, run.job_id)
        after_takeover.append(trace(session, job))
        try:
            write(run)
        except LeaseLost:
            raised.append(LeaseLost)
            raise

    run_job(job.id, pipeline=pipeline)

    assert trace(session, job) == after_takeover[0]
    assert after_takeover[0][:3] == ("running", "fine_tuning", "worker-b")
    if write not in (_return, _fail):  # those are recorded by execute_job, which also refuses
        assert raised == [LeaseLost]
    assert "written before the takeover" in messages(session, job)


def test_a_taken_over_job_stops_even_in_a_silent_stage(
    session: Session,
    caller: Caller,
    run_job: RunJob,
    session_factory: SessionFactory,
    worker_settings: Settings,
) -> None:
    """The heartbeat thread finds the lease gone and stops the pipeline before it writes more,
    though the pipeline itself writes nothing (a long native computation, say)."""
    job = create_job(session, caller)
    worker_settings.job_heartbeat_s = HEARTBEAT_S = 0.2
    stopped_after: list[float] = []

    def pipeline(run: JobRun) -> None:
        take_over(session_factory, run.job_id)
        watch = Stopwatch()
        try:
            work_silently(SILENT_PHASE_LIMIT_S)
        except LeaseLost:
            stopped_after.append(watch.elapsed())
            raise
        run.event("never written")

    run_job(job.id, pipeline=pipeline)

    # The heartbeat thread stopped the silent stage (it did not run out on its own), ...
    assert len(stopped_after) == 1
    # ... at its first beat after the takeover: within one interval, not the SILENT_PHASE_LIMIT_S
    # the stage would take (the margin is for a busy machine; the bound is the property).
    assert stopped_after[0] < HEARTBEAT_S + SCHEDULING_MARGIN_S
    assert "never written" not in messages(session, job)
    assert reload(session, job).lease_owner == "worker-b"


def test_the_lease_is_renewed_while_a_stage_reports_nothing(
    session: Session,
    caller: Caller,
    run_job: RunJob,
    session_factory: SessionFactory,
    worker_settings: Settings,
) -> None:
    job = create_job(session, caller)
    worker_settings.job_heartbeat_s = 0.1
    seen: list[Any] = []

    def lease_expiry() -> Any:
        with session_factory() as other:
            row = other.get(FineTuningJob, job.id)
            assert row is not None
            return row.lease_expires_at

    def pipeline(run: JobRun) -> None:
        with run._lock:  # the test's sessions share one connection with the heartbeat thread
            seen.append(lease_expiry())

        def renewed() -> bool:
            with run._lock:
                return bool(lease_expiry() > seen[0])

        # No event and no heartbeat of its own: only the heartbeat thread can renew the lease.
        wait_until(renewed, what="the heartbeat thread to renew the lease", poll_s=0.05)
        walk_stages(run)

    run_job(job.id, pipeline=pipeline)  # a wait that timed out fails the job

    assert reload(session, job).status == JobStatus.SUCCEEDED


def test_writes_wait_out_a_database_outage_and_are_recorded_once(
    session: Session,
    caller: Caller,
    run_job: RunJob,
    session_factory: SessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = create_job(session, caller)
    outage = Outage(session_factory)

    def pipeline(run: JobRun) -> None:
        outage.for_attempts(3)
        run.event("step 1: loss 2.0", type="metrics", data={"step": 1})
        outage.for_attempts(3)
        run.heartbeat()
        outage.for_attempts(3)
        run.enter_stage(JobStage.EVALUATING, "Evaluating")
        outage.for_attempts(3)
        with run.transaction() as (tx, _):
            run.audit(tx, "job.evaluated", {"asr": 0.0})

    with caplog.at_level("WARNING", logger="workers.runtime"):
        run_job(job.id, pipeline=pipeline, factory=outage)
    assert not outage.down.is_set()

    job = reload(session, job)
    assert job.status == JobStatus.SUCCEEDED and job.attempt_count == 1
    assert messages(session, job).count("step 1: loss 2.0") == 1
    assert messages(session, job).count("Evaluating") == 1
    assert outage.refused == 4 * 3  # every write retried through its outage
    assert "database unavailable during event" in caplog.text


def test_a_long_outage_abandons_the_attempt_and_the_next_one_resumes(
    session: Session,
    caller: Caller,
    run_job: RunJob,
    session_factory: SessionFactory,
    worker_settings: Settings,
) -> None:
    """Past db_retry_s the attempt gives up without failing the job: it keeps its lease and
    stage, and the task's retry (the same worker) resumes it."""
    job = create_job(session, caller)
    worker_settings.db_retry_s = 0.2
    outage = Outage(session_factory)

    def first_attempt(run: JobRun) -> None:
        run.enter_stage(JobStage.EVALUATING, "Evaluating")
        outage.down.set()
        run.event("never written")

    with pytest.raises(AttemptAbandoned):
        run_job(job.id, pipeline=first_attempt, factory=outage)
    outage.down.clear()
    row = reload(session, job)
    assert (row.status, row.stage, row.lease_owner, row.error) == (
        "running",
        "evaluating",
        "worker-a",
        None,
    )

    run_job(job.id)  # the retried message

    job = reload(session, job)
    assert job.status == JobStatus.SUCCEEDED and job.attempt_count == 2
    assert "Resumed at stage evaluating on worker-a (attempt 2)" in messages(session, job)
    assert not any(m.startswith("Job failed") for m in messages(session, job))


def test_a_claim_while_the_database_is_away_is_abandoned_not_dropped(
    session: Session,
    caller: Caller,
    run_job: RunJob,
    session_factory: SessionFactory,
    worker_settings: Settings,
) -> None:
    job = create_job(session, caller)
    worker_settings.db_retry_s = 0.1
    outage = Outage(session_factory)
    outage.down.set()
    with pytest.raises(AttemptAbandoned):
        run_job(job.id, factory=outage)
    assert reload(session, job).status == JobStatus.QUEUED


def test_a_resumed_attempt_does_not_log_again_what_the_dead_one_logged(
    session: Session, caller: Caller, run_job: RunJob
) -> None:
    job = create_job(session, caller)

    def dies(run: JobRun) -> None:
        run.event("Loading base model tiny-safe")
        run.event("Step 1: training loss=2.0000", type="metrics")
        raise Crash

    with pytest.raises(Crash):
        run_job(job.id, pipeline=dies)

    def resumes(run: JobRun) -> None:
        assert run.resumed
        run.event("Loading base model tiny-safe")
        run.event("Step 1: training loss=2.0000", type="metrics")
        run.event("Step 2: training loss=1.5000", type="metrics")
        walk_stages(run)

    run_job(job.id, pipeline=resumes)  # the same worker, restarted: its own lease is taken back

    logged = messages(session, job)
    assert logged.count("Loading base model tiny-safe") == 1
    assert logged.count("Step 1: training loss=2.0000") == 1
    assert "Step 2: training loss=1.5000" in logged
    assert "Resumed at stage fine_tuning on worker-a (attempt 2)" in logged


def test_entering_the_current_stage_again_records_nothing(
    session: Session, caller: Caller, run_job: RunJob
) -> None:
    """What a retried stage change whose first commit went through does."""
    job = create_job(session, caller)
    traces: list[tuple[Any, ...]] = []

    def pipeline(run: JobRun) -> None:
        run.enter_stage(JobStage.EVALUATING, "Evaluating")
        traces.append(trace(session, job))
        run.enter_stage(JobStage.EVALUATING, "Evaluating")
        traces.append(trace(session, job))

    run_job(job.id, pipeline=pipeline)
    first, second = traces
    assert first[:2] == ("running", "evaluating")
    assert first[:3] == second[:3] and first[5:] == second[5:]  # all but the renewed lease


def test_the_celery_configuration_makes_redelivery_safe_and_needed() -> None:
    from workers.celery_app import celery_app

    conf = celery_app.conf
    assert conf.task_acks_late is True  # a worker that dies leaves its message to redeliver
    assert conf.task_reject_on_worker_lost is True  # a killed child requeues, not "failed"
    assert conf.worker_prefetch_multiplier == 1  # a busy worker does not hold other jobs
    assert conf.worker_max_tasks_per_child == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert any(step is recovery.LeaseSweep for step in celery_app.steps["consumer"])

    settings = Settings(broker_url="redis://127.0.0.1:6379/0", job_lease_s=900)
    options = create_celery(settings).conf.broker_transport_options
    assert options["visibility_timeout"] > settings.job_lease_s


def test_the_worker_takes_one_job_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import celery_app

    argv: list[list[str]] = []
    monkeypatch.setattr(celery_app.celery_app, "worker_main", argv.append)
    celery_app.start_worker(node_name="w@h")
    assert {"--pool=prefork", "--concurrency=1", "--prefetch-multiplier=1"} <= set(argv[0])


@pytest.fixture
def jobs_in_every_state(session: Session, caller: Caller) -> dict[str, FineTuningJob]:
    made = {name: create_job(session, caller) for name in ("queued", "live", "expired", "done")}
    start_running(session, made["live"], owner="worker-b", expires_in_s=600)
    start_running(session, made["expired"], owner="worker-b", expires_in_s=-1)
    transition(made["done"], JobStatus.CANCELLED)
    session.commit()
    return made


class RecordingApp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], str]] = []

    def send_task(self, name: str, *, args: list[str], queue: str) -> None:
        self.sent.append((name, args, queue))


def test_an_idle_worker_reenqueues_jobs_whose_lease_expired(
    session_factory: SessionFactory,
    jobs_in_every_state: dict[str, FineTuningJob],
    worker_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expired = jobs_in_every_state["expired"].id
    app = RecordingApp()
    monkeypatch.setattr(
        recovery, "requeue_expired", _bound(recovery.requeue_expired, session_factory)
    )
    sweep = recovery.LeaseSweep.__new__(recovery.LeaseSweep)

    sweep.sweep(app, worker_settings)  # type: ignore[arg-type]
    assert app.sent == [("safepatch.run_job", [expired], worker_settings.queue)]

    monkeypatch.setattr(recovery.worker_state, "active_requests", {"busy"})
    sweep.sweep(app, worker_settings)  # type: ignore[arg-type]
    assert len(app.sent) == 1  # a busy worker leaves it to an idle one
    assert recovery.sweep_interval_s(worker_settings) == 20.0


def _bound(requeue: Callable[..., list[str]], factory: SessionFactory) -> Callable[..., list[str]]:
    def call(app: Any, settings: Settings) -> list[str]:
        return requeue(app, settings, session_factory=factory)

    return call


def test_the_task_retries_an_abandoned_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import tasks

    class Retried(Exception):
        pass

    retries: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retried:
        retries.append(options)
        return Retried()

    def abandoned(job_id: str, **_: Any) -> None:
        raise AttemptAbandoned(job_id)

    monkeypatch.setattr(tasks, "execute_job", abandoned)
    monkeypatch.setattr(tasks.run_job, "retry", retry)
    with pytest.raises(Retried):
        tasks.run_job.run("ftjob-x")
    assert retries[0]["countdown"] == tasks.ABANDONED_RETRY_S
    assert retries[0]["max_retries"] is None
