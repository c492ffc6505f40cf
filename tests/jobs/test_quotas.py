"""The active-jobs quota: past ``SAFEPATCH_MAX_ACTIVE_JOBS_PER_TENANT`` unfinished jobs a tenant
gets a 429 that says what frees a place, and nothing is written; concurrent requests cannot
both take the last place (PostgreSQL, real commits)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.db import create_db_engine, create_session_factory
from app.core.errors import QuotaExceeded
from app.core.settings import Settings
from app.db import migrate
from app.db.models import AuditRecord, FineTuningJob, JobEvent
from app.jobs import service as job_service
from app.jobs.schemas import JobCreate
from tests.conftest import RecordingQueue
from tests.databases import scratch_postgres
from tests.factories import (
    BASE_MODEL,
    Caller,
    NullQueue,
    create_caller,
    create_file,
    make_settings,
)

JOBS = "/v1/fine_tuning/jobs"
MAX_ACTIVE = 2


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, max_active_jobs_per_tenant=MAX_ACTIVE)


def counts(session: Session) -> tuple[int, int, int]:
    return (
        session.scalar(select(func.count()).select_from(FineTuningJob)) or 0,
        session.scalar(select(func.count()).select_from(JobEvent)) or 0,
        session.scalar(select(func.count()).select_from(AuditRecord)) or 0,
    )


def test_past_the_quota_a_job_is_a_429_and_nothing_is_written(
    client: TestClient, caller: Caller, session: Session, task_queue: RecordingQueue
) -> None:
    body = {"model": BASE_MODEL, "training_file": create_file(session, caller).id}
    created = [client.post(JOBS, json=body, headers=caller.headers) for _ in range(MAX_ACTIVE)]
    assert [r.status_code for r in created] == [200] * MAX_ACTIVE
    before = counts(session)

    refused = client.post(JOBS, json=body, headers=caller.headers)
    assert refused.status_code == 429
    # No Retry-After: when a job finishes is not known; the message says what frees a place.
    assert "retry-after" not in refused.headers
    assert refused.json()["error"] == {
        "message": f"Your organization has {MAX_ACTIVE} fine-tuning jobs validating, queued or "
        f"running, the most allowed at once ({MAX_ACTIVE}). Wait for one to finish, or cancel "
        "one, then create the job again.",
        "type": "insufficient_quota",
        "param": None,
        "code": "active_jobs_quota_exceeded",
    }
    assert counts(session) == before
    assert task_queue.job_ids == [r.json()["id"] for r in created]

    # Another tenant has its own places; a finished (here cancelled) job frees one.
    other = create_caller(session)
    theirs = {"model": BASE_MODEL, "training_file": create_file(session, other).id}
    assert client.post(JOBS, json=theirs, headers=other.headers).status_code == 200
    first = created[0].json()["id"]
    assert client.post(f"{JOBS}/{first}/cancel", headers=caller.headers).status_code == 200
    assert client.post(JOBS, json=body, headers=caller.headers).status_code == 200
    assert client.post(JOBS, json=body, headers=caller.headers).status_code == 429


def test_concurrent_creates_cannot_both_take_the_last_place(tmp_path: Path) -> None:
    """Eight requests at once for a tenant with room for three, each in its own transaction
    on PostgreSQL: exactly three jobs. Without the tenant's row lock, each counts the others'
    uncommitted jobs as absent and more get in."""
    threads_n, max_active = 8, 3
    with scratch_postgres() as url:
        migrate.upgrade(url)
        engine = create_db_engine(url)
        factory = create_session_factory(engine)
        try:
            with factory() as session:
                caller = create_caller(session)
                request = JobCreate(model=BASE_MODEL, training_file=create_file(session, caller).id)
            barrier = threading.Barrier(threads_n)
            outcomes: list[str] = []

            def create() -> None:
                with factory() as session:
                    barrier.wait()
                    try:
                        job_service.create(
                            session,
                            auth=caller.auth,
                            job_create=request,
                            queue=NullQueue(),
                            max_active_jobs=max_active,
                        )
                        session.commit()
                        outcomes.append("created")
                    except QuotaExceeded:
                        session.rollback()
                        outcomes.append("refused")

            threads = [threading.Thread(target=create) for _ in range(threads_n)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            with factory() as session:
                jobs = session.scalar(select(func.count()).select_from(FineTuningJob))
        finally:
            engine.dispose()
    assert sorted(outcomes) == ["created"] * max_active + ["refused"] * (threads_n - max_active)
    assert jobs == max_active
