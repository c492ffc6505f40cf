"""The worker side against the real database, without a broker: claim, stages, cancel, crash."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Protocol

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import SessionFactory
from app.core.settings import Settings
from app.db.base import utcnow
from app.db.models import AuditRecord, FineTuningJob, JobEvent
from app.jobs import repository
from app.jobs.states import JobStage, JobStatus, transition
from tests.factories import Caller, create_job
from workers.execution import Pipeline, execute_job
from workers.runtime import JobRun

STAGES = (JobStage.FINE_TUNING, JobStage.EVALUATING, JobStage.PATCHING, JobStage.VERIFYING)


def walk_stages(run: JobRun) -> None:
    """A pipeline that does no work: the runtime's claiming, stages and finishing alone."""
    current = run.stage
    assert current is not None
    for stage in STAGES[STAGES.index(current) :]:
        if stage != run.stage:
            run.enter_stage(stage, f"Stage {stage} started")


class RunJob(Protocol):
    def __call__(self, job_id: str, pipeline: Pipeline = ..., owner: str = ...) -> None: ...


@pytest.fixture
def run_job(settings: Settings, session_factory: SessionFactory) -> RunJob:
    """What the Celery task does, against the test's transaction."""

    def run(job_id: str, pipeline: Pipeline = walk_stages, owner: str = "worker-a") -> None:
        execute_job(
            job_id,
            pipeline=pipeline,
            owner=owner,
            settings=settings,
            session_factory=session_factory,
        )

    return run


def reload(session: Session, job: FineTuningJob) -> FineTuningJob:
    session.expire_all()
    fresh = session.get(FineTuningJob, job.id)
    assert fresh is not None
    return fresh


def messages(session: Session, job: FineTuningJob) -> list[str]:
    statement = select(JobEvent.message).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)
    return list(session.scalars(statement))


def audit_payloads(session: Session, job: FineTuningJob) -> list[dict[str, object]]:
    statement = select(AuditRecord.payload).where(AuditRecord.subject_id == job.id)
    return list(session.scalars(statement))


def state_audit(session: Session, job: FineTuningJob) -> list[tuple[str, str | None]]:
    statement = (
        select(AuditRecord)
        .where(AuditRecord.subject_id == job.id, AuditRecord.action == "job.state_changed")
        .order_by(AuditRecord.seq)
    )
    return [
        (r.payload["to"]["status"], r.payload["to"]["stage"]) for r in session.scalars(statement)
    ]


def test_a_job_walks_every_stage_to_succeeded(
    session: Session, caller: Caller, run_job: RunJob
) -> None:
    job = create_job(session, caller)
    run_job(job.id)

    job = reload(session, job)
    assert job.status == JobStatus.SUCCEEDED and job.stage is None
    assert job.started_at is not None and job.finished_at is not None
    assert (job.attempt_count, job.lease_owner) == (1, None)
    assert state_audit(session, job) == [
        ("queued", None),
        ("running", "fine_tuning"),
        ("running", "evaluating"),
        ("running", "patching"),
        ("running", "verifying"),
        ("succeeded", None),
    ]
    assert messages(session, job)[-1] == "Job succeeded"


def test_running_a_finished_job_again_changes_nothing(
    session: Session, caller: Caller, run_job: RunJob
) -> None:
    job = create_job(session, caller)
    run_job(job.id)
    before = messages(session, job)
    run_job(job.id, owner="worker-b")
    assert messages(session, job) == before
    assert reload(session, job).attempt_count == 1


def test_unknown_job_is_dropped(run_job: RunJob) -> None:
    run_job("ftjob-does-not-exist")


def test_cancel_requested_while_running_stops_at_the_next_stage(
    session: Session, caller: Caller, run_job: RunJob, session_factory: SessionFactory
) -> None:
    job = create_job(session, caller)
    reached: list[JobStage | None] = []

    def pipeline(run: JobRun) -> None:
        reached.append(run.stage)
        with session_factory() as other:  # the API, meanwhile
            row = other.get(FineTuningJob, run.job_id)
            assert row is not None
            row.cancel_requested = True
            other.commit()
        run.enter_stage(JobStage.EVALUATING, "never recorded")
        reached.append(run.stage)

    run_job(job.id, pipeline=pipeline)
    job = reload(session, job)
    assert reached == [JobStage.FINE_TUNING]
    assert job.status == JobStatus.CANCELLED
    assert "never recorded" not in messages(session, job)
    assert messages(session, job)[-1] == "Job cancelled (stopped at stage fine_tuning)"


def test_a_job_cancelled_before_a_worker_took_it_is_not_started(
    session: Session, caller: Caller, run_job: RunJob
) -> None:
    job = create_job(session, caller)
    transition(job, JobStatus.CANCELLED)
    session.commit()
    run_job(job.id)
    assert reload(session, job).started_at is None


def test_a_crashing_pipeline_fails_the_job_with_a_reference_to_its_error(
    session: Session, caller: Caller, run_job: RunJob, caplog: pytest.LogCaptureFixture
) -> None:
    job = create_job(session, caller)

    def pipeline(run: JobRun) -> None:
        run.enter_stage(JobStage.EVALUATING, "Evaluating")
        raise RuntimeError("CUDA out of memory at /srv/data/artifacts/x on host gpu-7")

    run_job(job.id, pipeline=pipeline)
    job = reload(session, job)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    # The tenant reads a stable message and a reference; the detail is in the server's log only.
    reference = job.error["message"].removeprefix("internal error; reference ")
    assert job.error == {"code": "internal_error", "message": job.error["message"], "param": None}
    assert re.fullmatch(r"err-[A-Za-z0-9]{16}", reference)
    assert state_audit(session, job)[-1] == ("failed", None)
    tenant_visible = " ".join(messages(session, job)) + str(audit_payloads(session, job))
    assert reference in tenant_visible
    assert "CUDA" not in tenant_visible and "/srv/data" not in tenant_visible
    logged = [r for r in caplog.records if reference in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "CUDA out of memory at /srv/data/artifacts/x" in str(logged[0].exc_info[1])


def test_a_pipeline_that_skips_evaluation_cannot_succeed(
    session: Session, caller: Caller, run_job: RunJob, caplog: pytest.LogCaptureFixture
) -> None:
    job = create_job(session, caller)
    run_job(job.id, pipeline=lambda run: None)
    job = reload(session, job)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error["code"] == "internal_error"
    assert "cannot go from running (fine_tuning) to succeeded" in caplog.text


def test_pipeline_writes_its_own_events_and_audit_records(
    session: Session, caller: Caller, run_job: RunJob
) -> None:
    job = create_job(session, caller)

    def pipeline(run: JobRun) -> None:
        run.event("step 10/100 loss 1.23", type="metrics", data={"step": 10, "loss": 1.23})
        run.heartbeat()
        run.enter_stage(JobStage.EVALUATING, "Evaluating safety")
        with run.transaction() as (tx, _job):
            run.audit(tx, "job.evaluated", {"asr": 0.02})

    run_job(job.id, pipeline=pipeline)
    job = reload(session, job)
    assert job.status == JobStatus.SUCCEEDED
    metrics = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics")
    ).one()
    assert metrics.data == {"step": 10, "loss": 1.23}
    evaluated = session.scalars(
        select(AuditRecord).where(AuditRecord.action == "job.evaluated")
    ).one()
    assert (evaluated.subject_id, evaluated.tenant_id, evaluated.actor) == (
        job.id,
        job.tenant_id,
        "worker:worker-a",
    )


def start_running(session: Session, job: FineTuningJob, owner: str, expires_in_s: int) -> None:
    transition(job, JobStatus.RUNNING, JobStage.FINE_TUNING)
    transition(job, JobStatus.RUNNING, JobStage.EVALUATING)
    job.lease_owner = owner
    job.lease_expires_at = utcnow() + timedelta(seconds=expires_in_s)
    job.attempt_count = 1
    session.commit()


def test_a_duplicate_message_does_not_run_a_job_another_worker_holds(
    session: Session, caller: Caller, run_job: RunJob
) -> None:
    job = create_job(session, caller)
    start_running(session, job, owner="worker-b", expires_in_s=600)
    run_job(job.id, owner="worker-a")
    job = reload(session, job)
    assert (job.status, job.stage, job.lease_owner) == ("running", "evaluating", "worker-b")


@pytest.mark.parametrize(
    ("holder", "expires_in_s"),
    [("worker-b", -1), ("worker-a", 600)],
    ids=["lease-expired", "same-worker-restarted"],
)
def test_a_dead_workers_job_is_resumed_from_its_stage(
    session: Session, caller: Caller, run_job: RunJob, holder: str, expires_in_s: int
) -> None:
    job = create_job(session, caller)
    start_running(session, job, owner=holder, expires_in_s=expires_in_s)
    run_job(job.id, owner="worker-a")
    job = reload(session, job)
    assert job.status == JobStatus.SUCCEEDED
    assert job.attempt_count == 2
    assert "Resumed at stage evaluating on worker-a (attempt 2)" in messages(session, job)
    assert ("running", "fine_tuning") not in state_audit(session, job)[2:]


def test_a_worker_whose_lease_was_taken_over_stops(
    session: Session, caller: Caller, run_job: RunJob, session_factory: SessionFactory
) -> None:
    job = create_job(session, caller)

    def pipeline(run: JobRun) -> None:
        with session_factory() as other:  # our lease expired; worker-b took over
            row = other.get(FineTuningJob, run.job_id)
            assert row is not None
            row.lease_owner = "worker-b"
            other.commit()
        run.enter_stage(JobStage.EVALUATING, "not ours any more")

    run_job(job.id, pipeline=pipeline)
    job = reload(session, job)
    assert (job.status, job.stage, job.lease_owner) == ("running", "fine_tuning", "worker-b")
    assert "not ours any more" not in messages(session, job)


def test_recovery_lists_jobs_whose_message_or_worker_may_be_gone(
    session: Session, caller: Caller
) -> None:
    queued = create_job(session, caller)
    live = create_job(session, caller)
    start_running(session, live, owner="worker-b", expires_in_s=600)
    expired = create_job(session, caller)
    start_running(session, expired, owner="worker-b", expires_in_s=-1)
    mine = create_job(session, caller)
    start_running(session, mine, owner="worker-a", expires_in_s=600)
    done = create_job(session, caller)
    transition(done, JobStatus.CANCELLED)
    session.commit()

    found = repository.list_recoverable_ids(session, now=utcnow(), restarted_owner="worker-a")
    assert set(found) == {queued.id, expired.id, mine.id}
