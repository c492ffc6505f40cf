"""Cancel works in every stage and frees the worker promptly (both backends).

The pipeline here is the worst case: once the customer cancels, it works on without a single
event (one long computation), so only the worker's heartbeat thread can notice. The bound is the
heartbeat interval: the job is ``cancelled`` within one interval of the request, and the worker
returns (free for its next job, which then runs) within two. The real pipeline, which also stops
at its next event, is cancelled in tests/workers/test_job_pipeline.py and tests/test_e2e_worker.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.core.db import SessionFactory
from app.core.settings import Settings
from app.jobs import service as jobs
from app.jobs.states import JobStage, JobStatus
from tests.factories import Caller, create_job
from tests.workers.test_runtime import STAGES, messages, reload, walk_stages
from workers.execution import execute_job
from workers.runtime import JobRun

HEARTBEAT_S = 0.5
SLACK_S = 0.75  # scheduling on a busy 2-core machine
SILENT_WORK_S = 30.0  # what the stage would still take if nothing stopped it


@pytest.fixture
def worker_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        broker_url=None,
        job_lease_s=60,
        job_heartbeat_s=HEARTBEAT_S,
    )


def run_job(job_id: str, pipeline, settings: Settings, session_factory: SessionFactory) -> float:
    """Run the job as a worker does; when it returned (time.monotonic())."""
    execute_job(
        job_id,
        pipeline=pipeline,
        owner="worker-a",
        settings=settings,
        session_factory=session_factory,
    )
    return time.monotonic()


def cancel(session_factory: SessionFactory, caller: Caller, run: JobRun) -> float:
    """POST /v1/fine_tuning/jobs/{id}/cancel, in its own transaction; when it committed."""
    # The test's sessions share one connection: take turns with the heartbeat thread.
    with run._lock, session_factory() as api:
        jobs.cancel(api, auth=caller.auth, job_id=run.job_id)
        api.commit()
    return time.monotonic()


def the_next_job_runs(
    session: Session, caller: Caller, settings: Settings, session_factory: SessionFactory
) -> None:
    following = create_job(session, caller)
    run_job(following.id, walk_stages, settings, session_factory)
    assert reload(session, following).status == JobStatus.SUCCEEDED


@pytest.mark.parametrize("stage", STAGES)
def test_cancel_in_a_running_stage_stops_the_job_within_the_heartbeat(
    session: Session,
    caller: Caller,
    session_factory: SessionFactory,
    worker_settings: Settings,
    stage: JobStage,
) -> None:
    job = create_job(session, caller)
    requested: list[float] = []
    interrupted: list[float] = []

    def pipeline(run: JobRun) -> None:
        for next_stage in STAGES[1 : STAGES.index(stage) + 1]:
            run.enter_stage(next_stage, f"Stage {next_stage}")
        requested.append(cancel(session_factory, caller, run))
        try:
            while time.monotonic() - requested[0] < SILENT_WORK_S:
                time.sleep(0.01)  # training, evaluating, ranking candidates: no event
        finally:
            interrupted.append(time.monotonic())

    returned = run_job(job.id, pipeline, worker_settings, session_factory)

    job = reload(session, job)
    assert job.status == JobStatus.CANCELLED and job.lease_owner is None
    assert messages(session, job)[-1] == f"Job cancelled (stopped at stage {stage})"
    assert job.finished_at is not None
    # finished_at is the database's clock, time.monotonic() ours: compare the intervals.
    cancelled_after = returned - requested[0]
    print(f"\ncancel in {stage}: worker free after {cancelled_after:.2f}s")
    assert interrupted[0] - requested[0] < 2 * HEARTBEAT_S + SLACK_S
    assert cancelled_after < 2 * HEARTBEAT_S + SLACK_S
    the_next_job_runs(session, caller, worker_settings, session_factory)


def test_cancelled_while_queued_the_job_never_starts_and_the_worker_moves_on(
    session: Session,
    caller: Caller,
    session_factory: SessionFactory,
    worker_settings: Settings,
) -> None:
    job = create_job(session, caller)
    with session_factory() as api:
        jobs.cancel(api, auth=caller.auth, job_id=job.id)
        api.commit()
    assert reload(session, job).status == JobStatus.CANCELLED  # at once, by the API

    started = time.monotonic()
    ran: list[str] = []
    returned = run_job(job.id, lambda run: ran.append(run.job_id), worker_settings, session_factory)

    assert ran == [] and returned - started < SLACK_S
    assert reload(session, job).started_at is None
    the_next_job_runs(session, caller, worker_settings, session_factory)


def test_a_cancel_is_recorded_within_one_heartbeat_while_the_pipeline_is_silent(
    session: Session,
    caller: Caller,
    session_factory: SessionFactory,
    worker_settings: Settings,
) -> None:
    """The job reads ``cancelled`` within one interval, before the pipeline has even been
    stopped: the customer's GET shows it at once."""
    job = create_job(session, caller)
    seen: list[tuple[float, str]] = []

    def pipeline(run: JobRun) -> None:
        requested = cancel(session_factory, caller, run)
        while time.monotonic() - requested < SILENT_WORK_S:
            with run._lock, session_factory() as api:
                status = jobs.get(api, auth=caller.auth, job_id=run.job_id).status
            seen.append((time.monotonic() - requested, status))
            if status == JobStatus.CANCELLED:
                break
            time.sleep(0.02)

    run_job(job.id, pipeline, worker_settings, session_factory)

    after, status = seen[-1]
    assert status == JobStatus.CANCELLED and after < HEARTBEAT_S + SLACK_S
